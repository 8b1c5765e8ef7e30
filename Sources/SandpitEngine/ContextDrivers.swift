// The programs that run interpreter contexts inside a sandbox. They are
// passed with the exec (Python's in its environment, bash's on the command
// line), so nothing in the sandbox can replace them, and they need nothing
// beyond the interpreter itself.
enum ContextDrivers {
    /// What `python3 -c` runs: the driver, from the environment variable the
    /// daemon sets for that one exec (so `ps` in the sandbox shows this line,
    /// not the driver's source). It is removed before any cell runs, so cells
    /// and their subprocesses do not see it.
    static let pythonBootstrap = #"import os; exec(compile(os.environ.pop("SANDPIT_DRIVER"), "<sandpit-driver>", "exec"))"#

    // `python`, the Python driver, is Drivers/python_driver.py, embedded at
    // build time by the EmbedDrivers plugin (a Swift string in the generated
    // ContextDrivers+Python.swift), so it is linted and tested as Python.

    static let bash = #"""
# Sandpit's bash context driver: runs cells in one shell so cwd, variables,
# functions and aliases persist. Started as `bash --norc --noprofile -c <this> sandpit NONCE`.
# Cells arrive on fd 3 (the original stdin) as "N LENGTH\n" and LENGTH bytes of code;
# user code sees /dev/null as stdin. After each cell the driver writes the frame
# "\036sandpit:NONCE:N:STATUS\036" to stdout and to stderr, which the daemon strips
# (DriverFrames): all of the cell's output on that stream came before it.
__sp_nonce=$1
exec 3<&0 0</dev/null
shopt -s expand_aliases
trap ':' INT
while IFS=' ' read -r __sp_n __sp_len <&3; do
    __sp_code=
    if [ "$__sp_len" -gt 0 ]; then LC_ALL=C IFS= read -r -d '' -N "$__sp_len" __sp_code <&3; fi
    eval "$__sp_code"
    __sp_status=$?
    printf '\036sandpit:%s:%s:%s\036' "$__sp_nonce" "$__sp_n" "$__sp_status"
    printf '\036sandpit:%s:%s:%s\036' "$__sp_nonce" "$__sp_n" "$__sp_status" >&2
done
"""#
}
