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
#
# With --zygote (a PRELOAD template's warm parent, run as root of the zygote's
# sandbox, with no seccomp filter): after the imports it reads requests
#     {"nest": {"id": …, "agent": pid, "placeholder": pid, "nonce": …, "uid": …, "gid": …, "cwd": …,
#               "env": {…}, "nofile": n, "seccomp": hex, "snapshots": bool}}
# and forks a copy of itself into the new sandbox whose agent has that pid (a
# sandbox nested in the zygote's namespaces): the copy joins its namespaces,
# takes over the placeholder exec's pipes and says {"t":"n","id":…,"pid":…} (its pid
# in the new sandbox) or {"t":"n","id":…,"error":…} on the zygote's stdout. Once the daemon
# has moved it into the sandbox's cgroup and the agent has adopted it, a line on
# its new stdin lets it go on: it drops to the sandbox user, takes the sandbox's
# seccomp filter and becomes that sandbox's interpreter. No cell ever runs in
# the zygote itself.
import ast, base64, io, json, linecache, os, select, signal, sys, time, traceback, types, warnings

WAKE = signal.SIGRTMIN + 4
PIPE_CHUNK = 4000   # payload bytes per frame: a frame stays within PIPE_BUF (4096)


def attach(nonce):
    """The record channel on fds 0-2: cells in on a private copy of fd 0 (user code sees /dev/null
    there), records out on private copies of 1 and 2 (a cell that closes or replaces fds 1 and 2
    cannot cut the records)."""
    control_in = os.fdopen(os.dup(0), "rb")
    out_fd, err_fd = os.dup(1), os.dup(2)
    for fd in (out_fd, err_fd):
        os.set_inheritable(fd, False)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return ("\x1esandpit:%s:" % nonce).encode(), control_in, out_fd, err_fd


def plotting_env():
    """Plots render off-screen; and where the sandbox has no fontconfig setup (its /etc is its own),
    a minimal one, so libraries that load fontconfig do not print "Fontconfig error" into a cell's output."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    if "FONTCONFIG_FILE" not in os.environ and not os.path.exists("/etc/fonts/fonts.conf"):
        path = "/tmp/.sandpit-fonts.conf"
        try:
            if not os.path.exists(path):
                with open(path, "w") as f:
                    f.write('<?xml version="1.0"?>\n<fontconfig><dir>/usr/share/fonts</dir>'
                            '<cachedir prefix="xdg">fontconfig</cachedir></fontconfig>\n')
            os.environ["FONTCONFIG_FILE"] = path
        except OSError:
            pass


def main():
    nonce = sys.argv[1]
    args = sys.argv[2:]
    sys.argv = [""]   # cells see an interactive interpreter's argv, not the driver's options
    head, control_in, out_fd, err_fd = attach(nonce)

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
    plotting_env()

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

    copies = []   # frozen copies this process forked (the daemon evicts them; reaped here)

    def fork_hooks():
        """libc fork and CPython's fork hooks, where ctypes has them (and a GIL: not free-threaded builds)."""
        if not getattr(sys, "_is_gil_enabled", lambda: True)():
            return None
        try:
            import ctypes
            lib, api = ctypes.PyDLL(None), ctypes.pythonapi   # PyDLL: the GIL stays held across the call
            hooks = (lib.fork, api.PyOS_BeforeFork, api.PyOS_AfterFork_Parent, api.PyOS_AfterFork_Child)
            hooks[0].restype, hooks[0].argtypes = ctypes.c_int, []
            for f in hooks[1:]:
                f.restype, f.argtypes = None, []
            return hooks
        except Exception:
            return None
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

    snapshots = "--snapshots" in args
    if "--zygote" in args:
        emit({"t": "ready", "pid": os.getpid(), "python": sys.version.split()[0], "preloaded": preloaded,
              "preloadErrors": preload_errors})
        request = zygote(control_in, emit)   # returns only in a copy, now inside its new sandbox
        head, control_in, out_fd, err_fd = attach(request["nonce"])
        sys.stdin = open(os.devnull)
        control_in.readline()   # the daemon's go-ahead: we are in the sandbox's cgroup, and its agent's exec
        harden(request)
        snapshots = bool(request.get("snapshots"))
    raw = fork_hooks() if snapshots else None
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

NAMESPACES = ("user", "mnt", "pid", "net", "ipc", "uts", "cgroup")   # the user namespace first: it grants the rest


def libc():
    """libc through ctypes, keeping errno (only the zygote and its copies use it)."""
    import ctypes
    lib = ctypes.CDLL(None, use_errno=True)
    lib.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    return lib


def check(rc, what):
    """Raises OSError for a libc call through ctypes that failed (rc != 0)."""
    if rc != 0:
        import ctypes
        e = ctypes.get_errno()
        raise OSError(e, "%s: %s" % (what, os.strerror(e)))


def zygote(control_in, emit):
    """The warm parent's loop: one copy of this interpreter per request, forked into its sandbox.
    Returns only in such a copy, with its request."""
    lib = libc()
    for line in control_in:
        request = json.loads(line)["nest"]
        try:
            pid = os.fork()
        except OSError as e:
            emit({"t": "n", "id": request.get("id"), "error": "fork: %s" % e})
            continue
        if pid == 0:
            try:
                return enter(request, lib, emit, control_in)
            except BaseException as e:
                try:
                    emit({"t": "n", "id": request.get("id"), "error": "%s: %s" % (type(e).__name__, e)})
                finally:
                    os._exit(1)
        os.waitpid(pid, 0)
    sys.exit(0)


def enter(request, lib, emit, control_in):
    """In a fork of the zygote: joins the new sandbox's namespaces and takes over its placeholder's pipes."""
    handles = [os.open("/proc/%d/ns/%s" % (request["agent"], n), os.O_RDONLY | os.O_CLOEXEC) for n in NAMESPACES]
    for fd, name in zip(handles, NAMESPACES):
        check(lib.setns(fd, 0), "setns " + name)
        os.close(fd)
    # A pid namespace is entered only by children, and an orphan goes to the reaper of its parent's
    # namespace: so a child (in the sandbox) forks the interpreter and exits, and the sandbox's agent
    # (its PID 1) inherits the interpreter.
    if os.fork():
        os.wait()
        os._exit(0)
    if os.fork():
        os._exit(0)
    os.setsid()
    deadline = time.monotonic() + 5
    while os.getppid() != 1:
        if time.monotonic() > deadline:
            raise RuntimeError("the sandbox's agent did not inherit the interpreter")
        time.sleep(0.0002)
    pidfd = os.pidfd_open(request["placeholder"])
    taken = []
    for n in (0, 1, 2):
        fd = lib.syscall(438, pidfd, n, 0)   # pidfd_getfd: the placeholder's stdin, stdout, stderr
        if fd < 0:
            check(-1, "pidfd_getfd")
        taken.append(fd)
    emit({"t": "n", "id": request.get("id"), "pid": os.getpid()})   # the last word on the zygote's pipe
    for n, fd in enumerate(taken):
        os.dup2(fd, n)
    # Nothing of the zygote stays open: its pipes, the namespace handles, the driver's own files.
    control_in.close()
    sys.stdin.close()
    for name in os.listdir("/proc/self/fd"):
        if int(name) > 2:
            try:
                os.close(int(name))
            except OSError:
                pass
    return request


def harden(request):
    """Becomes the sandbox's user with the sandbox's restrictions, as the agent's own commands start:
    no capabilities (and none to gain), no_new_privs, its seccomp filter, its limits. A fresh seed for
    the random modules the template imported (they were seeded once, in the zygote)."""
    import ctypes, resource
    lib = libc()
    for cap in range(64):
        if lib.prctl(24, cap, 0, 0, 0) != 0 and ctypes.get_errno() != 22:   # PR_CAPBSET_DROP; EINVAL: no such cap
            check(-1, "drop bounding capabilities")
    check(lib.prctl(28, 3, 0, 0, 0), "securebits")   # PR_SET_SECUREBITS: NOROOT | NOROOT_LOCKED
    uid, gid = request["uid"], request["gid"]
    os.setgroups([gid])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)   # the last capabilities go with uid 0
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if request.get("nofile"):
        resource.setrlimit(resource.RLIMIT_NOFILE, (request["nofile"], request["nofile"]))
    check(lib.prctl(38, 1, 0, 0, 0), "no_new_privs")   # PR_SET_NO_NEW_PRIVS
    check(lib.prctl(4, 1, 0, 0, 0), "dumpable")   # PR_SET_DUMPABLE, as after an exec
    program = bytes.fromhex(request.get("seccomp") or "")
    if program:
        class Fprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
        buf = ctypes.create_string_buffer(program, len(program))
        prog = Fprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
        check(lib.prctl(22, 2, ctypes.addressof(prog), 0, 0), "seccomp filter")   # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
    os.environ.clear()
    os.environ.update(request.get("env") or {})
    plotting_env()
    os.chdir(request.get("cwd") or "/")
    if "random" in sys.modules:
        sys.modules["random"].seed()
    if "numpy.random" in sys.modules:
        try:
            sys.modules["numpy.random"].seed()
        except Exception:
            pass


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


if __name__ == "__main__":
    main()
