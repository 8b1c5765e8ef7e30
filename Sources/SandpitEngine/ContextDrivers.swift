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

    static let python = #"""
# Sandpit's Python context driver. Runs inside the sandbox as the sandbox user,
# started by the daemon as `python3 -u -c <ContextDrivers.pythonBootstrap> NONCE [--snapshots] [--preload a,b]`
# with this text in SANDPIT_DRIVER, so no file in the sandbox can change it. Standard library only.
#
# Wire: cells arrive on fd 0 as one JSON object per line: {"n": executionCount, "code": "..."}.
# User code keeps the exec's own stdout and stderr pipes as fds 1 and 2 (print(),
# os.write(1, ...) and subprocesses stream straight to the daemon, in order), and
# sees /dev/null as fd 0. The driver's records travel on the same pipes, through
# private duplicates, framed so the daemon can tell them from user output:
#     RS "sandpit:" NONCE ":" KIND ":" JSON RS          (RS = 0x1E; JSON never holds a raw RS)
# KIND "=" is a whole record; a record longer than one pipe write goes as "[" ... "+" ... "]".
# Each frame is one write of at most PIPE_BUF bytes, so output from other threads or
# processes can fall between frames but never inside one. Records:
#     stdout {"t":"ready","pid":…,"python":"3.11.2","wake":signal,…}
#     stdout {"t":"r","n":…,"results":[mime bundle…],"error":{name,value,traceback}|null}
#     stderr {"t":"e","n":…}                      all of cell n's stderr came before this
#     stdout {"t":"s","n":…,"pid":…}              a frozen copy of the state after cell n (--snapshots);
#                                                 pid null: the fork failed, and step n has no copy
#     stdout {"t":"ready","pid":…,"restored":n,"copy":pid}   a copy was woken and is now the interpreter
#                                                 (copy null: it could not fork the step's new copy)
#
# With --snapshots, after each cell's result the driver forks a frozen copy of
# itself (copy-on-write: it costs only the pages the interpreter changes later).
# The copy waits in sigwaitinfo until PID 1 (the agent, at an in-place restore,
# after every other process is gone and the files are back) sends the wake
# signal; a signal from anyone else is ignored. The woken copy becomes the
# interpreter: it returns to its working directory, forks a new frozen copy of
# itself (so the step can be restored again) and reads the next cell.
#
# The copy is made cheaply where it is safe: when the interpreter has no other
# thread, it forks through libc with the GIL held and leaves CPython's
# after-fork work (about 200 page faults, each a copy of a page the interpreter
# still shares) until the copy is woken; until then the copy runs only a few
# lines that take no lock another thread could hold. With other threads it uses
# os.fork(), which does that work at once.
import ast, base64, io, json, linecache, os, select, signal, sys, traceback, types, warnings

WAKE = signal.SIGRTMIN + 4
PIPE_CHUNK = 4000   # payload bytes per frame: a frame stays within PIPE_BUF (4096)


def main():
    nonce = sys.argv[1]
    args = sys.argv[2:]
    sys.argv = [""]   # cells see an interactive interpreter's argv, not the driver's options
    head = ("\x1esandpit:%s:" % nonce).encode()
    control_in = os.fdopen(os.dup(0), "rb")
    out_fd, err_fd = os.dup(1), os.dup(2)   # private: a cell that closes or replaces fds 1 and 2 cannot cut the records
    for fd in (out_fd, err_fd):
        os.set_inheritable(fd, False)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)

    def write_all(fd, data):
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:   # a cell set the shared pipe non-blocking
                select.select([], [fd], [], 1)

    def emit(record, fd=None):
        text = json.dumps(record, separators=(",", ":")).encode()
        fd = out_fd if fd is None else fd
        if len(text) <= PIPE_CHUNK:
            write_all(fd, head + b"=:" + text + b"\x1e")
            return
        for i in range(0, len(text), PIPE_CHUNK):
            kind = b"[" if i == 0 else b"]" if i + PIPE_CHUNK >= len(text) else b"+"
            write_all(fd, head + kind + b":" + text[i:i + PIPE_CHUNK] + b"\x1e")

    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="backslashreplace", write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", write_through=True)
    sys.stdin = open(os.devnull)
    os.environ.setdefault("MPLBACKEND", "Agg")

    main_module = types.ModuleType("__main__")
    main_module.__builtins__ = __builtins__
    sys.modules["__main__"] = main_module
    namespace = main_module.__dict__
    sys.path.insert(0, "")

    state = {"running": False}

    def on_sigint(signum, frame):
        if state["running"]:
            raise KeyboardInterrupt
    signal.signal(signal.SIGINT, on_sigint)

    snapshots = "--snapshots" in args
    copies = []   # frozen copies this process forked (the daemon evicts them; reaped here)
    raw = None    # libc fork and CPython's fork hooks, where ctypes has them (and a GIL: not free-threaded builds)
    if snapshots and getattr(sys, "_is_gil_enabled", lambda: True)():
        try:
            import ctypes
            libc, api = ctypes.PyDLL(None), ctypes.pythonapi   # PyDLL: the GIL stays held across the call
            raw = (libc.fork, api.PyOS_BeforeFork, api.PyOS_AfterFork_Parent, api.PyOS_AfterFork_Child)
            raw[0].restype, raw[0].argtypes = ctypes.c_int, []
            for f in raw[1:]:
                f.restype, f.argtypes = None, []
        except Exception:
            raw = None
    current_frames = sys._current_frames
    wake_set = {WAKE}

    def oom_score(value):
        try:
            fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
            os.write(fd, value)
            os.close(fd)
        except OSError:
            pass

    def snapshot():
        """Forks a frozen copy. Returns its pid here; in the copy, returns 0 once it has been woken."""
        old = signal.pthread_sigmask(signal.SIG_BLOCK, wake_set)
        deferred = raw is not None and len(current_frames()) == 1
        if deferred:
            raw[1]()
            pid = raw[0]()
            if pid != 0:
                raw[2]()
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)   # 3.12+: fork with threads
                try:
                    pid = os.fork()
                except OSError:
                    pid = -1
        if pid:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            if pid < 0:
                return None
            copies.append(pid)
            return pid
        # The copy. Until it is woken it must not import or take a lock (see above).
        try:
            cwd = os.getcwd()
        except OSError:
            cwd = None
        os.setpgid(0, 0)   # out of the interpreter's process group: its signals are not ours
        oom_score(b"1000")   # under memory pressure a frozen copy goes before the interpreter
        os.chdir("/")   # an in-place restore moves processes whose cwd is the old root
        while True:
            info = signal.sigwaitinfo(wake_set)
            if info.si_pid == 1 and info.si_code == 0:   # SI_USER from the agent, not from user code
                break
        if deferred:
            raw[3]()   # CPython's after-fork work, now that this copy is the interpreter
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        oom_score(b"0")
        copies.clear()   # not our children
        if cwd is not None:
            try:
                os.chdir(cwd)
            except OSError:
                pass
        return 0

    def keep_copy(n):
        """After cell n: leave a frozen copy behind; in a woken copy, leave a new one and say so."""
        restored = False
        while True:
            pid = snapshot()   # None: the fork failed (the pids or memory limit), and the step has no copy now
            if pid != 0:
                if restored:
                    emit({"t": "ready", "pid": os.getpid(), "python": sys.version.split()[0], "wake": int(WAKE), "restored": n, "copy": pid})
                else:
                    emit({"t": "s", "n": n, "pid": pid})
                return
            restored = True

    def reap():
        for pid in list(copies):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                copies.remove(pid)

    # --preload a,b,c: the template's PRELOAD modules, imported before the first cell (not bound to names).
    preloaded, preload_errors = [], {}
    if "--preload" in args:
        import importlib
        for name in args[args.index("--preload") + 1].split(","):
            try:
                importlib.import_module(name)
                preloaded.append(name)
            except BaseException as e:
                preload_errors[name] = "%s: %s" % (type(e).__name__, e)

    emit({"t": "ready", "pid": os.getpid(), "python": sys.version.split()[0], "wake": int(WAKE),
          "preloaded": preloaded, "preloadErrors": preload_errors})
    for line in control_in:
        reap()
        request = json.loads(line)
        n, code = request["n"], request["code"]
        filename = "<cell-%d>" % n
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        results, error = [], None
        try:
            try:
                tree = ast.parse(code, filename, "exec")
                last = None
                if tree.body and isinstance(tree.body[-1], ast.Expr):
                    last = ast.Expression(tree.body.pop().value)
                state["running"] = True
                exec(compile(tree, filename, "exec"), namespace)
                if last is not None:
                    value = eval(compile(last, filename, "eval"), namespace)
                    if value is not None:
                        namespace["_"] = value
                        results.append(bundle(value))
            finally:
                state["running"] = False
        except BaseException as e:   # KeyboardInterrupt and SystemExit end the cell, not the context
            error = {"name": type(e).__name__, "value": str(e), "traceback": user_traceback(e)}
        results.extend(figures())
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:
                pass
        emit({"t": "e", "n": n}, err_fd)
        emit({"t": "r", "n": n, "results": results, "error": error})
        if snapshots:
            keep_copy(n)

def bundle(value):
    """A notebook-style MIME bundle for a cell's last expression."""
    out = {}
    try:
        out["text/plain"] = repr(value)
    except Exception as e:
        out["text/plain"] = "<repr failed: %s>" % e
    for method, mime in (("_repr_html_", "text/html"), ("_repr_markdown_", "text/markdown"), ("_repr_svg_", "image/svg+xml"),
                         ("_repr_latex_", "text/latex"), ("_repr_json_", "application/json"), ("_repr_png_", "image/png")):
        f = getattr(value, method, None)
        if not callable(f) or isinstance(value, type):
            continue
        try:
            data = f()
        except Exception:
            continue
        if data is None:
            continue
        if isinstance(data, tuple):
            data = data[0]
        if mime == "image/png":
            if isinstance(data, (bytes, bytearray)):
                out[mime] = base64.b64encode(bytes(data)).decode()
        elif mime == "application/json":
            out[mime] = data
        elif isinstance(data, str):
            out[mime] = data
    return out


def figures():
    """Every open matplotlib figure as a PNG (then closed), as a notebook shows them."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return []
    out = []
    try:
        for num in plt.get_fignums():
            buf = io.BytesIO()
            plt.figure(num).savefig(buf, format="png", bbox_inches="tight")
            out.append({"text/plain": "<Figure %d>" % num, "image/png": base64.b64encode(buf.getvalue()).decode()})
        plt.close("all")
    except Exception as e:
        out.append({"text/plain": "<figure could not be rendered: %s>" % e})
    return out


def user_traceback(e):
    """The traceback from the first frame of the user's cells on (the driver's frames are dropped)."""
    tb = e.__traceback__
    while tb is not None and not tb.tb_frame.f_code.co_filename.startswith("<cell-"):
        tb = tb.tb_next
    if isinstance(e, SyntaxError):
        return "".join(traceback.format_exception_only(type(e), e))
    frames = [f for f in traceback.extract_tb(tb) if not (f.filename == "<sandpit-driver>" and f.name == "on_sigint")]
    return "".join(["Traceback (most recent call last):\n"] + traceback.format_list(frames) + traceback.format_exception_only(type(e), e))


main()
"""#

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
