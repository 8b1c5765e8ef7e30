// The programs that run interpreter contexts inside a sandbox. They are
// passed on the command line (`-c`), so nothing in the sandbox can replace
// them, and they need nothing beyond the interpreter itself.
enum ContextDrivers {
    static let python = #"""
# Sandpit's Python context driver. Runs inside the sandbox as the sandbox user,
# started by the daemon as `python3 -u -c <this text>`, so no file in the sandbox
# can change it. Standard library only.
#
# Wire (private fds, set up before any user code runs):
#   in : one JSON object per line: {"n": executionCount, "code": "..."}
#   out: one JSON object per line:
#        {"t":"ready","pid":…,"python":"3.11.2","wake":signal}
#        {"t":"o","s":"stdout"|"stderr","d":text}  or  {…,"b":base64} for bytes that are not UTF-8
#        {"t":"r","n":…,"results":[mime bundle…],"error":{name,value,traceback}|null}
#        {"t":"s","n":…,"pid":…}           a frozen copy of the state after cell n (--snapshots)
#        {"t":"ready","pid":…,"restored":n,"copy":pid}   a copy was woken and is now the interpreter
# User code sees fd 0 = /dev/null and fds 1/2 = pipes the driver reads, so
# print(), os.write(1, …) and subprocesses are all captured, per stream, in order.
#
# With --snapshots, after each cell the driver forks a frozen copy of itself
# (copy-on-write: it costs only the pages the interpreter changes later). The
# copy waits in sigwaitinfo until PID 1 (the agent, at an in-place restore,
# after every other process is gone and the files are back) sends the wake
# signal; a signal from anyone else is ignored. The woken copy becomes the
# interpreter: it restarts output capture, returns to its working directory,
# forks a new frozen copy of itself (so the step can be restored again) and
# reads the next cell from the same pipe.
import ast, base64, io, json, linecache, os, signal, sys, threading, traceback, types, warnings

WAKE = signal.SIGRTMIN + 4

SENTINEL = b"\x1e\x1fsandpit-cell-end\x1f\x1e"


def main():
    control_in = os.fdopen(os.dup(0), "rb")
    control_out = os.dup(1)
    os.set_inheritable(control_out, False)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    lock = threading.Lock()

    def emit(record):
        data = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with lock:
            view = memoryview(data)
            while view:
                view = view[os.write(control_out, view):]

    def send_output(stream, data):
        if not data:
            return
        try:
            emit({"t": "o", "s": stream, "d": data.decode("utf-8")})
        except UnicodeDecodeError:
            emit({"t": "o", "s": stream, "b": base64.b64encode(data).decode()})

    def utf8_cut(buf):
        # Hold back a trailing, incomplete UTF-8 sequence for the next read.
        for k in range(1, min(4, len(buf)) + 1):
            c = buf[-k]
            if c & 0xC0 == 0x80:
                continue
            need = 2 if c & 0xE0 == 0xC0 else 3 if c & 0xF0 == 0xE0 else 4 if c & 0xF8 == 0xF0 else 1
            return len(buf) - k if need > k else len(buf)
        return len(buf)

    drained = {"stdout": threading.Event(), "stderr": threading.Event()}

    def pump(fd, stream):
        buf = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except InterruptedError:
                continue
            if not chunk:
                send_output(stream, buf)
                return
            buf += chunk
            while True:
                i = buf.find(SENTINEL)
                if i < 0:
                    break
                send_output(stream, buf[:i])
                buf = buf[i + len(SENTINEL):]
                drained[stream].set()
            keep = 0
            for k in range(len(SENTINEL) - 1, 0, -1):   # a sentinel split across reads
                if buf.endswith(SENTINEL[:k]):
                    keep = k
                    break
            cut = utf8_cut(buf[:len(buf) - keep])
            send_output(stream, buf[:cut])
            buf = buf[cut:]

    pump_reads = []

    def start_pumps():
        for r in pump_reads:
            os.close(r)
        pump_reads.clear()
        for fd, stream in ((1, "stdout"), (2, "stderr")):
            r, w = os.pipe()
            os.dup2(w, fd)
            os.close(w)
            pump_reads.append(r)
            threading.Thread(target=pump, args=(r, stream), daemon=True).start()

    start_pumps()
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

    snapshots = "--snapshots" in sys.argv[1:]
    copies = []   # frozen copies this process forked (the daemon evicts them; reaped here)

    def snapshot():
        """Forks a frozen copy. Returns its pid here; in the copy, returns 0 once it has been woken."""
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {WAKE})
        with lock, warnings.catch_warnings():   # no output record is half written in the copy
            warnings.simplefilter("ignore", DeprecationWarning)   # 3.12+: fork with threads (ours are restarted)
            pid = os.fork()
        if pid:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            copies.append(pid)
            return pid
        try:
            cwd = os.getcwd()
        except OSError:
            cwd = None
        os.setpgid(0, 0)   # out of the interpreter's process group: its signals are not ours
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("1000")   # under memory pressure a frozen copy goes before the interpreter
        except OSError:
            pass
        os.chdir("/")   # an in-place restore moves processes whose cwd is the old root
        while True:
            info = signal.sigwaitinfo({WAKE})
            if info.si_pid == 1 and info.si_code == 0:   # SI_USER from the agent, not from user code
                break
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("0")
        except OSError:
            pass
        copies.clear()   # not our children
        start_pumps()
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
            pid = snapshot()
            if pid:
                if restored:
                    os.write(control_out, b"\n")   # ends whatever line the killed interpreter left unfinished
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
    if "--preload" in sys.argv[1:]:
        import importlib
        for name in sys.argv[sys.argv.index("--preload") + 1].split(","):
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
        for fd, stream in ((1, "stdout"), (2, "stderr")):
            drained[stream].clear()
            os.write(fd, SENTINEL)
        for stream in drained:
            drained[stream].wait(5)
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
    frames = [f for f in traceback.extract_tb(tb) if not (f.filename == "<string>" and f.name == "on_sigint")]
    return "".join(["Traceback (most recent call last):\n"] + traceback.format_list(frames) + traceback.format_exception_only(type(e), e))


main()
"""#

    static let bash = #"""
# Sandpit's bash context driver: runs cells in one shell so cwd, variables,
# functions and aliases persist. Started as `bash --norc --noprofile -c <this> sandpit NONCE`.
# Cells arrive on fd 3 (the original stdin) as "N LENGTH\n" and LENGTH bytes of code;
# user code sees /dev/null as stdin. After each cell the driver writes
# "\036sandpit:NONCE:N:STATUS\036" to stdout and to stderr, which the daemon strips.
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
