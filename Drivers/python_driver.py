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
#     stdout {"t":"r","n":…,"results":[mime bundle…],"main":index|null,"error":{name,value,traceback}|null}
#                                                 results: display() calls, the last expression (main), figures
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
#
# Cells are Python with the IPython idioms notebook code (and so LLM-written
# code) uses: display(obj), `!cmd` and `x = !cmd`, line magics (%pip, %time,
# %timeit, %cd, %pwd, %env, %matplotlib, ...), cell magics (%%bash, %%sh,
# %%writefile, %%time, %%timeit, %%html, %%markdown) and top-level await. See
# Shell below; an unknown magic is a UsageError, as in IPython.
import ast, base64, builtins, io, json, linecache, os, re, select, signal, sys, time, traceback, types, warnings

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
    shell = Shell(namespace)

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
        error, main = None, None
        shell.displayed = []
        try:
            try:
                state["running"] = True
                value = shell.run_cell(code, filename)
                if value is not None:
                    namespace["_"] = value
                    main = len(shell.displayed)
                    shell.displayed.append(bundle(value))
            finally:
                state["running"] = False
        except BaseException as e:   # KeyboardInterrupt and SystemExit end the cell, not the context
            error = {"name": type(e).__name__, "value": str(e), "traceback": user_traceback(e)}
        results = shell.displayed + figures()
        shell.displayed = None
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:
                pass
        emit({"t": "e", "n": n}, err_fd)
        emit({"t": "r", "n": n, "results": results, "main": main, "error": error})
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


class UsageError(Exception):
    """A magic used wrongly, or one that does not exist (IPython's name for it)."""


class ShellLines(list):
    """`x = !cmd`: the command's output lines, with IPython's .n (joined by newlines), .s (by spaces), .l."""

    @property
    def n(self):
        return "\n".join(self)

    @property
    def s(self):
        return " ".join(self)

    @property
    def l(self):  # noqa: E743 - IPython's name
        return list(self)


class Shell:
    """The IPython idioms of a cell, turned into plain Python before it runs. A cell that parses as
    Python runs as written (so a string holding "!x" is never touched); one that does not has its
    `%%magic` first line, and its lines that start with `!` or `%` (after indentation, or after
    `name =`), rewritten into calls of this object's methods, one line for one line (tracebacks keep
    the cell's line numbers). Top-level `await` works: the cell runs on an event loop kept between
    cells, as Jupyter's is."""

    MAGIC = re.compile(r"^(\s*)(?:([A-Za-z_][\w.]*(?:\s*,\s*[A-Za-z_][\w.]*)*)\s*=\s*)?(!|%)(?!=)(.*)$")

    def __init__(self, namespace):
        self.ns = namespace
        self.displayed = None   # the running cell's display() bundles
        self.loop = None
        builtins.display = self.display
        builtins.get_ipython = lambda: self
        builtins._sandpit_shell = self
        install_ipython_display(self.display)

    # --- running a cell -----------------------------------------------------------------------------

    def transform(self, code):
        try:
            ast.parse(code)
            return code
        except SyntaxError:
            pass
        lines = code.split("\n")
        head = lines[0].strip()
        if head.startswith("%%"):
            name, _, arg = head[2:].partition(" ")
            # The body keeps its line numbers: line 1 (the magic) becomes empty.
            return "_sandpit_shell.run_cell_magic(%r, %r, %r)" % (name, arg.strip(), "\n" + "\n".join(lines[1:]))
        out = []
        for line in lines:
            m = self.MAGIC.match(line)
            if not m:
                out.append(line)
                continue
            indent, target, kind, rest = m.groups()
            assign = target + " = " if target else ""
            if kind == "!":
                call = "_sandpit_shell.system(%r, capture=%s)" % (rest, bool(target))
            else:
                name, _, arg = rest.partition(" ")
                call = "_sandpit_shell.run_line_magic(%r, %r)" % (name, arg.strip())
            out.append(indent + assign + call)
        return "\n".join(out)

    def run_cell(self, code, filename):
        """Runs a cell; returns the value of its last expression (None when there is none)."""
        tree = ast.parse(self.transform(code), filename, "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        flags = getattr(ast, "PyCF_ALLOW_TOP_LEVEL_AWAIT", 0)
        self.run(compile(tree, filename, "exec", flags=flags))
        if last is None:
            return None
        return self.run(compile(last, filename, "eval", flags=flags))

    def run(self, code):
        result = eval(code, self.ns)
        if code.co_flags & 0x80:   # CO_COROUTINE: the cell awaits at top level
            if self.loop is None:
                import asyncio
                self.loop = asyncio.new_event_loop()
                asyncio.set_event_loop(self.loop)
            result = self.loop.run_until_complete(result)
        return result

    # --- display --------------------------------------------------------------------------------------

    def display(self, *objs, **kwargs):
        """Shows each object as a rich result of the cell (in the order called, before the cell's value)."""
        for obj in objs:
            if self.displayed is None:   # outside a cell (a thread the cell left behind)
                print(repr(obj))
            elif kwargs.get("raw") and isinstance(obj, dict):
                self.displayed.append(obj)
            else:
                self.displayed.append(bundle(obj))

    # --- shell commands -------------------------------------------------------------------------------

    def expand(self, cmd):
        """IPython's expansion in `!` lines: {expression} and $name from the cell's variables; anything
        else (a shell variable like $HOME, braces that are not an expression) is left to the shell."""
        def brace(m):
            try:
                return str(eval(m.group(1), self.ns))
            except Exception:
                return m.group(0)

        def dollar(m):
            if m.group(1) == "$":
                return "$"
            return str(self.ns[m.group(1)]) if m.group(1) in self.ns else m.group(0)
        cmd = re.sub(r"(?<!\{)\{([^{}]+)\}(?!\})", brace, cmd)
        return re.sub(r"\$(\$|[A-Za-z_]\w*)", dollar, cmd)

    def system(self, cmd, capture=False):
        """`!cmd` (output streams as the command writes it) or `x = !cmd` (its stdout lines)."""
        import subprocess
        for f in (sys.stdout, sys.stderr):
            f.flush()
        argv = ["/bin/bash", "-c", self.expand(cmd)]
        if capture:
            p = subprocess.run(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
            self.ns["_exit_code"] = p.returncode
            return ShellLines(p.stdout.decode(errors="replace").splitlines())
        self.ns["_exit_code"] = subprocess.run(argv, stdin=subprocess.DEVNULL).returncode
        return None

    def getoutput(self, cmd):
        return self.system(cmd, capture=True)

    # --- magics ---------------------------------------------------------------------------------------

    def run_line_magic(self, name, line):
        f = getattr(self, "line_" + name, None)
        if f is None:
            if name in ("load_ext", "reload_ext", "autoreload", "aimport", "config", "xmode", "precision", "pdb"):
                print("sandpit: %%%s does nothing here (no IPython kernel)" % name, file=sys.stderr)
                return None
            raise UsageError("Line magic function `%%%s` not found." % name)
        return f(self.expand(line))

    def run_cell_magic(self, name, line, cell):
        f = getattr(self, "cell_" + name, None)
        if f is None:
            raise UsageError("Cell magic `%%%%%s` not found." % name)
        return f(line, cell)

    def line_pip(self, line):
        import shlex, subprocess
        sys.stdout.flush()
        rc = subprocess.run([sys.executable, "-m", "pip"] + shlex.split(line), stdin=subprocess.DEVNULL).returncode
        if rc != 0:
            print("sandpit: pip exited with status %d (installing from an index needs a policy with egress to it, "
                  "e.g. policy \"pypi\")" % rc, file=sys.stderr)
        return None

    def line_conda(self, line):
        raise UsageError("%conda is not available in this sandbox: use %pip")

    def line_cd(self, line):
        os.chdir(os.path.expanduser(line.strip() or "~"))
        print(os.getcwd())

    def line_pwd(self, line):
        return os.getcwd()

    def line_env(self, line):
        line = line.strip()
        if not line:
            return dict(os.environ)
        if "=" in line or " " in line:
            key, _, value = line.partition("=") if "=" in line else line.partition(" ")
            os.environ[key.strip()] = value.strip()
            print("env: %s=%s" % (key.strip(), value.strip()))
            return None
        return os.environ.get(line)

    def line_matplotlib(self, line):
        """Figures are always captured (Agg backend), as `inline` shows them."""
        return None

    def line_time(self, line):
        return self.timed(lambda: self.run_cell(line, "<timed>"))

    def line_timeit(self, line):
        self.timeit(line)

    def line_who(self, line):
        names = sorted(k for k, v in self.ns.items() if not k.startswith("_") and not isinstance(v, types.ModuleType))
        print("\t".join(names) if names else "Interactive namespace is empty.")

    def line_system(self, line):
        return self.system(line, capture=True)

    line_sx = line_system

    def timed(self, f):
        t0, c0 = time.perf_counter(), os.times()
        try:
            return f()
        finally:
            wall, c1 = time.perf_counter() - t0, os.times()
            user, sys_ = c1.user - c0.user, c1.system - c0.system
            print("CPU times: user %s, sys: %s, total: %s\nWall time: %s" % (fmt_time(user), fmt_time(sys_), fmt_time(user + sys_), fmt_time(wall)))

    def timeit(self, line, stmt=None):
        """%timeit [-n N] [-r R] STMT, or %%timeit [-n N] [-r R] [SETUP] over the cell: IPython's output."""
        import statistics, timeit as timeit_module
        words, number, repeat = line.split(), None, 7
        while len(words) >= 2 and words[0] in ("-n", "-r"):
            if words[0] == "-n":
                number = int(words[1])
            else:
                repeat = int(words[1])
            words = words[2:]
        rest = line[len(line) - len(" ".join(words)):] if words else ""
        setup = "pass"
        if stmt is None:
            stmt = rest
        elif rest.strip():
            setup = rest
        t = timeit_module.Timer(stmt, setup, globals=self.ns)
        if number is None:
            number = t.autorange()[0]
        runs = [x / number for x in t.repeat(repeat, number)]
        mean, std = statistics.mean(runs), statistics.pstdev(runs)
        print("%s ± %s per loop (mean ± std. dev. of %d run%s, %s loop%s each)" % (
            fmt_time(mean), fmt_time(std), len(runs), "" if len(runs) == 1 else "s", format(number, ","), "" if number == 1 else "s"))

    def cell_bash(self, line, cell):
        import subprocess
        sys.stdout.flush()
        subprocess.run(["/bin/bash", "-c", cell], stdin=subprocess.DEVNULL)

    cell_sh = cell_bash

    def cell_script(self, line, cell):
        if line.split()[:1] not in (["bash"], ["sh"]):
            raise UsageError("%%%%script %s: only bash and sh run here" % line)
        self.cell_bash(line, cell)

    def cell_writefile(self, line, cell):
        words = line.split()
        append = "-a" in words or "--append" in words
        path = os.path.expanduser([w for w in words if not w.startswith("-")][-1])
        print("%s %s" % ("Appending to" if append and os.path.exists(path) else "Overwriting" if os.path.exists(path) else "Writing", path))
        with open(path, "a" if append else "w") as f:
            f.write(cell[1:] if cell.startswith("\n") else cell)

    def cell_time(self, line, cell):
        return self.timed(lambda: self.run_cell(cell, "<timed>"))

    def cell_timeit(self, line, cell):
        self.timeit(line, cell.strip("\n"))

    def cell_html(self, line, cell):
        self.display(Markup(cell.strip(), "text/html"))

    def cell_markdown(self, line, cell):
        self.display(Markup(cell.strip(), "text/markdown"))

    def cell_capture(self, line, cell):
        raise UsageError("%%capture is not supported here: the cell's output is already captured per stream")


class Markup:
    """HTML, Markdown, SVG, LaTeX or JSON to display (IPython.display's classes, where IPython is not installed)."""

    def __init__(self, data=None, mime="text/html", url=None, filename=None, **_):
        if data is None and filename:
            with open(filename, "rb" if mime.startswith("image/") else "r") as f:
                data = f.read()
        self.data, self.mime = data, mime

    def __repr__(self):
        return "<IPython.core.display.%s object>" % type(self).__name__

    def _repr(self, mime):
        return self.data if self.mime == mime else None


# A notebook's representation methods and the MIME type each gives, in the order bundle() asks them.
REPR_METHODS = (("_repr_html_", "text/html"), ("_repr_markdown_", "text/markdown"), ("_repr_svg_", "image/svg+xml"),
                ("_repr_latex_", "text/latex"), ("_repr_json_", "application/json"), ("_repr_png_", "image/png"),
                ("_repr_jpeg_", "image/jpeg"))
for _method, _mime in REPR_METHODS:
    setattr(Markup, _method, (lambda mime: lambda self: self._repr(mime))(_mime))


def fmt_time(seconds):
    """IPython's way of printing a duration: 3 significant digits and a unit."""
    if seconds >= 60:
        m, s = divmod(seconds, 60)
        return "%dmin %.0fs" % (m, s)
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if seconds >= scale or unit == "ns":
            return "%.3g %s" % (seconds / scale, unit)


def install_ipython_display(display):
    """`from IPython.display import display, HTML, ...` works in cells: where IPython is installed its
    display() is replaced by the driver's when the module is first imported; where it is not, a small
    IPython package stands in when a cell imports it (display, HTML, Markdown, SVG, Latex, JSON, Image,
    clear_output). Nothing is put in sys.modules before a cell asks: libraries such as matplotlib look
    there for an IPython to hook into."""
    import importlib.abc, importlib.util
    if importlib.util.find_spec("IPython") is None:
        sys.meta_path.insert(0, StandIn(display))
        return

    class Patch(importlib.abc.MetaPathFinder):
        names = ("IPython.display", "IPython.core.display_functions", "IPython.core.display")

        def find_spec(self, name, path, target=None):
            if name not in self.names:
                return None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    run = spec.loader.exec_module

                    def exec_module(module, run=run):
                        run(module)
                        if hasattr(module, "display"):
                            module.display = display
                    spec.loader.exec_module = exec_module
                    return spec
            return None
    sys.meta_path.insert(0, Patch())


class StandIn:
    """A meta path finder and loader for `IPython` and `IPython.display` where IPython is not installed."""

    def __init__(self, display):
        self.display = display

    def find_spec(self, name, path, target=None):
        import importlib.util
        if name not in ("IPython", "IPython.display"):
            return None
        return importlib.util.spec_from_loader(name, self, is_package=name == "IPython")

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        if module.__name__ == "IPython":
            module.version_info = (0, 0, 0, "sandpit")
            module.get_ipython = lambda: None   # no kernel: what libraries that look for one expect
            return
        kinds = {"HTML": "text/html", "Markdown": "text/markdown", "SVG": "image/svg+xml", "Latex": "text/latex", "JSON": "application/json"}
        for name, mime in kinds.items():
            setattr(module, name, type(name, (Markup,), {"__init__": (lambda mime: lambda self, data=None, **kw: Markup.__init__(self, data, mime, **kw))(mime)}))

        class Image(Markup):
            def __init__(self, data=None, url=None, filename=None, format="png", **kw):
                Markup.__init__(self, data, "image/jpeg" if format in ("jpg", "jpeg") else "image/png", filename=filename)
        module.Image = Image
        module.display = self.display
        module.clear_output = lambda wait=False: None


def bundle(value):
    """A notebook-style MIME bundle for a cell's last expression."""
    out = {}
    try:
        out["text/plain"] = repr(value)
    except Exception as e:
        out["text/plain"] = "<repr failed: %s>" % e
    for method, mime in REPR_METHODS:
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
        if mime in ("image/png", "image/jpeg"):
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
