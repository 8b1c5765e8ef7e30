#!/usr/bin/env python3
"""Sandpit latency benchmark: medians and p90 against baselines measured in the same run.

  (a) new sandbox -> first output of `echo ok`   vs  bwrap --unshare-all echo ok, bare fork+exec
      warm: a pre-started sandbox from the pool (the pool refills between creates, untimed);
      cold: the pool bypassed, every namespace, mount and cgroup made on the request path
  (b) exec.run `true` in a live sandbox           vs  bare fork+exec+wait of /bin/true, bwrap
  (c)-(f) barriers, checkpoints, idle lifecycle, templates (see the headings)
  (g) a 1 GiB upload and download through the socket, in base64 chunks and by descriptor (fd)
      vs  `cat FILE > /dev/null` on the host;
      fs.read of a 1 KiB file                          vs  exec.run `cat` of it
  (h) code.run `x = 1` and `print(x)`, checkpointed   vs  a Jupyter kernel's execute of the same cells;
      without frozen interpreter copies, and the CPU one cell costs the daemon and the sandbox with and
      without them; rollback in place vs by relaunch
  (i) new sandbox -> first cell importing numpy, pandas, matplotlib: a PRELOAD template (from its pool,
      and forked from its zygote at once when the pool is empty) vs the same packages without PRELOAD
      (builds Fixtures/templates/sci from PyPI once); memory charged to each sandbox
  (j) a keystroke through a PTY exec                 vs  a host PTY; exec.input throughput vs a host pipe
  (k) think time, as agents call: new sandbox -> the *result* of its first command (warm and cold);
      exec.run `true` 20 ms, 200 ms and 1 s apart   vs  bare fork+exec+wait spaced the same;
      code.run `x = 1` 200 ms apart                 vs  a Jupyter kernel's execute spaced the same (+ CPU per cell);
      an agent loop (create, then 20 steps of exec.run / code.run / fs.write+fs.read 4 KiB, 200 ms of
      think time before each): the time the agent waited  vs  the same steps unsandboxed

Usage: sudo python3 Benchmarks/bench.py [--n 50] [--file-mb 1024] [--sandpit .build/release/sandpit] [--plot bench.png]
Starts its own daemon on a scratch data dir; installs bubblewrap with apt-get if missing, and makes a
venv with ipykernel and jupyter_client (from PyPI) under ~/.cache/sandpit-bench once (and matplotlib
there for --plot).
"""
import argparse, base64, json, os, shutil, socket, statistics, subprocess, sys, tempfile, time

def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]

class Client:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.f = self.s.makefile("rb")   # buffered: file chunks arrive as multi-megabyte lines
        self.n = 0
    def send(self, method, params):
        self.n += 1
        self.s.sendall((json.dumps({"jsonrpc": "2.0", "id": self.n, "method": method, "params": params}) + "\n").encode())
        return self.n
    def read(self):
        return json.loads(self.f.readline())
    def call_raw(self, method, params=None):
        i = self.send(method, params or {})
        while True:
            m = self.read()
            if m.get("id") == i: return m
    def call(self, method, params=None, on_note=None):
        i = self.send(method, params or {})
        while True:
            m = self.read()
            if m.get("id") == i:
                if "error" in m: raise RuntimeError(m["error"])
                return m["result"]
            if on_note: on_note(m)

def ensure_bwrap():
    if shutil.which("bwrap"): return shutil.which("bwrap")
    print("installing bubblewrap for the baseline ...", file=sys.stderr)
    subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap", shell=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return shutil.which("bwrap")

def jupyter_python():
    """A venv with ipykernel and jupyter_client for the Jupyter baseline (made once, from PyPI)."""
    venv = os.path.expanduser("~/.cache/sandpit-bench/jupyter-venv")
    py = f"{venv}/bin/python"
    if not os.path.exists(f"{venv}/.ready"):
        print("making a venv with ipykernel and jupyter_client for the Jupyter baseline ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", "--clear", venv], check=True)
        subprocess.run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "ipykernel", "jupyter_client"], check=True)
        subprocess.run([py, "-m", "ipykernel", "install", "--user", "--name", "python3"], check=True, stdout=subprocess.DEVNULL)
        open(f"{venv}/.ready", "w").close()
    return py

def proc_cpu_ns(pid):
    """CPU time of every thread of a process so far, in ns (schedstat)."""
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try: total += int(open(f"/proc/{pid}/task/{t}/schedstat").read().split()[0])
        except (OSError, ValueError): pass
    return total

def cgroup_dir(sid, roots):
    """The first directory named after the sandbox under any of `roots`, with its file names."""
    for root in roots:
        for dirpath, dirs, files in os.walk(root):
            if os.path.basename(dirpath) == sid: return dirpath, files
    return None, []

def cgroup_cpu_ns(sid):
    """CPU time of everything a sandbox ran, in ns: its cgroup's counter (v2 cpu.stat, or v1 cpuacct.usage
    where cpuacct shares the cpu hierarchy); else the user and system time of each process in its pids
    group with the children it reaped (the interpreter reaps its evicted frozen copies), at clock-tick
    resolution."""
    path, files = cgroup_dir(sid, ("/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup"))
    if "cpuacct.usage" in files: return int(open(os.path.join(path, "cpuacct.usage")).read())
    for l in open(os.path.join(path, "cpu.stat")) if "cpu.stat" in files else []:
        if l.startswith("usage_usec"): return int(l.split()[1]) * 1000
    path, _ = cgroup_dir(sid, ("/sys/fs/cgroup/pids",))
    if path is None: return None
    tick, total = 1e9 / os.sysconf("SC_CLK_TCK"), 0
    for sub, _, _ in os.walk(path):
        for pid in open(os.path.join(sub, "cgroup.procs")).read().split():
            try: f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            except OSError: continue
            total += sum(int(x) for x in f[11:15]) * tick
    return total

def time_cmd(argv, n, gap=0.0):
    out = []
    for _ in range(n + 3):
        if gap: time.sleep(gap)
        t = time.perf_counter_ns()
        pid = os.posix_spawn(argv[0], argv, {"PATH": "/usr/bin:/bin"}, file_actions=[(os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0)])
        os.waitpid(pid, 0)
        out.append((time.perf_counter_ns() - t) / 1e6)
    return out[3:]  # first runs warm caches

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--sandpit", default=None)
    ap.add_argument("--file-mb", type=int, default=1024, help="size of the file for the transfer section (g)")
    ap.add_argument("--plot", metavar="PNG", help="also draw the table: one panel per section, Sandpit beside its baselines")
    a = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    exe = a.sandpit or next((p for p in [f"{root}/.build/release/sandpit", f"{root}/.build/debug/sandpit"] if os.path.exists(p)), None)
    if not exe: sys.exit("build sandpit first (swift build -c release)")
    subprocess.run([f"{root}/scripts/build-agent", os.path.dirname(exe)], check=True)   # the lean, libc-only agent
    scratch = tempfile.mkdtemp(prefix="sandpit-bench-", dir="/tmp"); os.chmod(scratch, 0o755)
    sock = f"{scratch}/s.sock"
    policies = f"{scratch}/policies"
    shutil.copytree(f"{root}/Policies", policies)
    with open(f"{policies}/bench-nobarriers.json", "w") as f:
        json.dump({"name": "bench-nobarriers", "description": "default without seccomp and cgroups (benchmark only)",
                   "seccomp": False, "cgroup": False}, f)
    with open(f"{policies}/bench-nodisk.json", "w") as f:
        json.dump({"name": "bench-nodisk", "description": "default without an own disk image (benchmark only)",
                   "diskBytes": None, "diskInodes": None, "checkpoints": "off"}, f)
    d = subprocess.Popen([exe, "serve", "--socket", sock, "--data-dir", f"{scratch}/data", "--storage-gib", "4", "--policies", policies, "--warm-pool", "2"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(f"{scratch}/daemon.log", "w"))
    try:
        for _ in range(600):
            if os.path.exists(sock) or d.poll() is not None: break
            time.sleep(0.05)
        if not os.path.exists(sock):
            sys.exit("the daemon did not start:\n" + open(f"{scratch}/daemon.log").read())
        c = Client(sock)
        # warm-up
        sb = c.call("sandbox.create")["sandboxId"]; c.call("exec.run", {"sandboxId": sb, "cmd": ["true"]}); c.call("sandbox.delete", {"sandboxId": sb})

        def pool_ready():
            for _ in range(2000):
                w = c.call("server.info")["warmPool"]
                if w["ready"] >= w["target"]: return
                time.sleep(0.005)

        def create_and_run(params, cmd, first_out, create_only, first_result=None):
            """sandbox.create, then cmd: appends create time, create -> first output and create -> the
            command's result (ms); deletes it."""
            t0 = time.perf_counter_ns()
            sb = c.call("sandbox.create", params)["sandboxId"]
            t1 = time.perf_counter_ns()
            got = []
            def note(m):
                if not got and m.get("method") == "exec.output": got.append(time.perf_counter_ns())
            c.call("exec.run", {"sandboxId": sb, "cmd": cmd}, on_note=note)
            t2 = time.perf_counter_ns()
            first_out.append((got[0] - t0) / 1e6); create_only.append((t1 - t0) / 1e6)
            if first_result is not None: first_result.append((t2 - t0) / 1e6)
            c.call("sandbox.delete", {"sandboxId": sb})

        def measure(policy, n, warm=False, results=None):
            first_out, create_only = [], []
            for _ in range(n):
                params = {"policy": policy}
                if warm: pool_ready()   # outside the timed region: the pool refills between creates
                else: params["limits"] = {"pids": 512}   # any override bypasses the pool: a cold start
                # An agent thinks before its first call, too: the sandbox is not created right after the previous one.
                if results is not None: time.sleep(0.1)
                create_and_run(params, ["echo", "ok"], first_out, create_only, results)
            sb = c.call("sandbox.create", {"policy": policy})["sandboxId"]
            rt, agent_run = [], []
            for _ in range(n * 4):
                t = time.perf_counter_ns()
                r = c.call("exec.run", {"sandboxId": sb, "cmd": ["/bin/true"]})
                rt.append((time.perf_counter_ns() - t) / 1e6)
                agent_run.append((r["timings"]["spawnUs"] + r["timings"]["runUs"]) / 1000)
            c.call("sandbox.delete", {"sandboxId": sb})
            return first_out, create_only, rt, agent_run

        warm_result, cold_result = [], []
        warm_first, warm_create, _, _ = measure("default", a.n, warm=True, results=warm_result)
        first_out, create_only, rt, agent_run = measure("default", a.n, results=cold_result)
        # The cost of the barriers: the same with seccomp and cgroups off, and without an own disk.
        bare_first, _, bare_rt, _ = measure("bench-nobarriers", a.n)
        nodisk_first, _, nodisk_rt, _ = measure("bench-nodisk", a.n)
        info = c.call("server.info")

        # (d) checkpoints: a one-file change in an empty sandbox and in one holding 500 MB of its own files;
        # restore and fork from a 1 MB and a 500 MB state.
        def ck_costs(fill_mb, n):
            sb = c.call("sandbox.create", {"limits": {"pids": 512}})["sandboxId"]
            if fill_mb:
                c.call("exec.run", {"sandboxId": sb, "shell": f"head -c {fill_mb << 20} /dev/urandom > /home/user/fill", "timeoutMs": 600000})
            ck, restore, fork = [], [], []
            for i in range(n):
                r = c.call("exec.run", {"sandboxId": sb, "shell": f"echo {i} > /home/user/one"})
                ck.append(r["timings"]["checkpointUs"] / 1000)
            k = r["checkpoint"]["step"]
            for _ in range(max(5, n // 4)):
                t = time.perf_counter_ns(); c.call("sandbox.restore", {"sandboxId": sb, "step": k}); restore.append((time.perf_counter_ns() - t) / 1e6)
                t = time.perf_counter_ns(); f = c.call("sandbox.fork", {"sandboxId": sb, "step": k})["sandboxes"][0]["sandboxId"]
                fork.append((time.perf_counter_ns() - t) / 1e6)
                c.call("sandbox.delete", {"sandboxId": f})
            c.call("sandbox.delete", {"sandboxId": sb})
            return ck, restore, fork
        ck_small, restore_small, fork_small = ck_costs(1, a.n)
        ck_big, restore_big, fork_big = ck_costs(500, a.n)

        # (e) lifecycle: a sandbox holding 100 MB of its own files and a running python process.
        sb = c.call("sandbox.create", {"limits": {"pids": 512}})["sandboxId"]
        c.call("exec.run", {"sandboxId": sb, "shell": "head -c 104857600 /dev/urandom > /home/user/data", "timeoutMs": 600000})
        def cg_memory(sid):
            path, files = cgroup_dir(sid, ("/sys/fs/cgroup/memory", "/sys/fs/cgroup"))
            for f in ("memory.usage_in_bytes", "memory.current"):
                if f in files: return int(open(os.path.join(path, f)).read())
            return 0
        pause_t, unpause_t, hib_t, unhib_t, mem_paused = [], [], [], [], []
        for _ in range(max(5, a.n // 4)):
            c.call("exec.run", {"sandboxId": sb, "background": True, "cmd": ["python3", "-c", "import time; x = bytearray(50 << 20); time.sleep(3600)"]})
            time.sleep(0.3)
            t = time.perf_counter_ns(); c.call("sandbox.pause", {"sandboxId": sb}); pause_t.append((time.perf_counter_ns() - t) / 1e6)
            mem_paused.append(cg_memory(sb) / 1048576)
            t = time.perf_counter_ns(); c.call("sandbox.resume", {"sandboxId": sb}); unpause_t.append((time.perf_counter_ns() - t) / 1e6)
            t = time.perf_counter_ns(); c.call("sandbox.hibernate", {"sandboxId": sb}); hib_t.append((time.perf_counter_ns() - t) / 1e6)
            t = time.perf_counter_ns(); c.call("sandbox.resume", {"sandboxId": sb}); unhib_t.append((time.perf_counter_ns() - t) / 1e6)
        c.call("sandbox.hibernate", {"sandboxId": sb})
        mem_hibernated = cg_memory(sb) / 1048576
        c.call("sandbox.delete", {"sandboxId": sb})

        # (f) create from a template of 1 MB and of 500 MB (rootfs tarballs made here; the template's layers are
        # overlay lower layers, so nothing is copied at create).
        tpl = {}
        for name, pad in (("bench-1mb", 0), ("bench-500mb", 500)):
            ctx = f"{scratch}/{name}"; os.makedirs(ctx)
            subprocess.run(["sh", f"{root}/Fixtures/templates/rootfs/make-rootfs.sh", f"{ctx}/rootfs.tar.gz"] + (["--pad-mb", str(pad)] if pad else []), check=True)
            t = time.perf_counter_ns()
            built = c.call("template.build", {"name": name, "spec": "FROM ./rootfs.tar.gz\n", "context": ctx})
            build_s = (time.perf_counter_ns() - t) / 1e9
            firsts, creates = [], []
            for _ in range(a.n):
                create_and_run({"template": name}, ["/bin/sh", "-c", "echo ok"], firsts, creates)
            tpl[name] = (built["bytes"], build_s, firsts, creates)

        # (g) files through the socket: 8 MiB chunks (base64 in JSON lines), against reading the same file on the host.
        big = f"{scratch}/big.bin"
        subprocess.run(f"head -c {a.file_mb}M /dev/urandom > {big}", shell=True, check=True)
        file_size = os.path.getsize(big)
        cat_t = []
        for _ in range(3):
            t = time.perf_counter_ns(); subprocess.run(f"cat {big} > /dev/null", shell=True, check=True); cat_t.append((time.perf_counter_ns() - t) / 1e9)
        fsb = c.call("sandbox.create", {})["sandboxId"]
        up_t, down_t = [], []
        for _ in range(3):
            t = time.perf_counter_ns()
            up = c.call("fs.upload", {"sandboxId": fsb, "path": "big.bin"})["uploadId"]
            with open(big, "rb") as fh:
                off = 0
                while chunk := fh.read(8 << 20):
                    c.call("fs.uploadChunk", {"uploadId": up, "offset": off, "data": base64.b64encode(chunk).decode()})
                    off += len(chunk)
            c.call("fs.uploadCommit", {"uploadId": up})
            up_t.append((time.perf_counter_ns() - t) / 1e9)
            got = [0]
            def on_chunk(m):
                if m.get("method") == "fs.chunk": got[0] += len(base64.b64decode(m["params"]["data"]))
            t = time.perf_counter_ns()
            c.call("fs.download", {"sandboxId": fsb, "path": "big.bin", "chunkBytes": 8 << 20}, on_note=on_chunk)
            down_t.append((time.perf_counter_ns() - t) / 1e9)
            assert got[0] == file_size, (got[0], file_size)
        # The same file by descriptor (fs.upload / fs.download with `fd`: the daemon copies in the kernel).
        fd_up_t, fd_down_t = [], []
        for _ in range(3):
            with open(big, "rb") as fh:
                t = time.perf_counter_ns()
                c.call("fs.upload", {"sandboxId": fsb, "path": "big-fd.bin", "fd": fh.fileno()})
                fd_up_t.append((time.perf_counter_ns() - t) / 1e9)
            with open(f"{scratch}/back.bin", "wb") as fh:
                t = time.perf_counter_ns()
                c.call("fs.download", {"sandboxId": fsb, "path": "big-fd.bin", "fd": fh.fileno()})
                fd_down_t.append((time.perf_counter_ns() - t) / 1e9)
            assert os.path.getsize(f"{scratch}/back.bin") == file_size
        daemon_hwm = 0
        for line in open(f"/proc/{d.pid}/status"):
            if line.startswith("VmHWM:"): daemon_hwm = int(line.split()[1]) * 1024
        c.call("fs.write", {"sandboxId": fsb, "path": "small.txt", "data": base64.b64encode(os.urandom(1024)).decode()})
        read_t, cat_small = [], []
        for _ in range(a.n * 4):
            t = time.perf_counter_ns(); c.call("fs.read", {"sandboxId": fsb, "path": "small.txt"}); read_t.append((time.perf_counter_ns() - t) / 1e6)
        for _ in range(a.n):
            t = time.perf_counter_ns(); c.call("exec.run", {"sandboxId": fsb, "cmd": ["cat", "small.txt"]}, on_note=lambda m: None); cat_small.append((time.perf_counter_ns() - t) / 1e6)
        c.call("sandbox.delete", {"sandboxId": fsb})
        os.remove(big)

        # (h) interpreter cells: code.run round trips (per-step checkpoints on, the default) against a Jupyter
        # kernel's execute round trip for the same cells, in the same run.
        csb = c.call("sandbox.create", {})["sandboxId"]
        c.call("code.run", {"sandboxId": csb, "code": "x = 1"})
        cells = ["x = 1", "print(x)"]
        code_t, code_ck = {}, {}
        cell_cpu = {}   # what one `x = 1` costs in CPU: the daemon's threads, and everything in the sandbox
        def cpu_mark(sb): return proc_cpu_ns(d.pid), cgroup_cpu_ns(sb)
        def cpu_per_cell(sb, before, n):
            after = cpu_mark(sb)
            return ((after[0] - before[0]) / n / 1e6, None if before[1] is None else (after[1] - before[1]) / n / 1e6)
        for code in cells:
            for _ in range(5): c.call("code.run", {"sandboxId": csb, "code": code}, on_note=lambda m: None)
            ts, cks = [], []
            mark = cpu_mark(csb)
            for _ in range(a.n * 10):
                t = time.perf_counter_ns(); r = c.call("code.run", {"sandboxId": csb, "code": code}, on_note=lambda m: None)
                ts.append((time.perf_counter_ns() - t) / 1e6)
                cks.append(r.get("checkpoint") is not None)
            code_t[code], code_ck[code] = ts, all(cks)
            if code == "x = 1": cell_cpu["with"] = cpu_per_cell(csb, mark, a.n * 10)
        # The same cell without frozen interpreter copies (interpreterSnapshots 0): what keeping one per step costs.
        nsb = c.call("sandbox.create", {"limits": {"interpreterSnapshots": 0}})["sandboxId"]
        for _ in range(5): c.call("code.run", {"sandboxId": nsb, "code": "x = 1"})
        nocopy_t = []
        mark = cpu_mark(nsb)
        for _ in range(a.n * 10):
            t = time.perf_counter_ns(); c.call("code.run", {"sandboxId": nsb, "code": "x = 1"}, on_note=lambda m: None)
            nocopy_t.append((time.perf_counter_ns() - t) / 1e6)
        cell_cpu["without"] = cpu_per_cell(nsb, mark, a.n * 10)
        # An agent leaves time between cells (a model call): the copy is made then, and the next cell pays
        # only for the pages it touches first. Both sandboxes, a 20 ms pause before each timed cell.
        paused_t = {}
        for name, sb in (("with", csb), ("without", nsb)):
            ts = []
            for _ in range(a.n * 3):
                time.sleep(0.02)
                t = time.perf_counter_ns(); c.call("code.run", {"sandboxId": sb, "code": "x = 1"}, on_note=lambda m: None)
                ts.append((time.perf_counter_ns() - t) / 1e6)
            paused_t[name] = ts
        # Rollback: restore to an earlier cell's step. In place (files and variables) with frozen copies;
        # a relaunch (files only) without.
        def restores(sb, n):
            base = c.call("code.run", {"sandboxId": sb, "code": "y = list(range(1000))"})["step"]
            ts = []
            for i in range(n):
                c.call("code.run", {"sandboxId": sb, "code": f"y = {i}; open('f', 'w').write('{i}')"})
                t = time.perf_counter_ns(); r = c.call("sandbox.restore", {"sandboxId": sb, "step": base})
                ts.append((time.perf_counter_ns() - t) / 1e6)
            return ts, r["restored"]
        inplace_t, inplace_what = restores(csb, a.n)
        relaunch_t, relaunch_what = restores(nsb, a.n)
        copies = c.call("context.list", {"sandboxId": csb})["contexts"][0]["snapshots"]
        c.call("sandbox.delete", {"sandboxId": csb})
        c.call("sandbox.delete", {"sandboxId": nsb})

        # (i) warm templates: a new sandbox -> the result of a first cell that imports numpy, pandas and
        # matplotlib. "sciwarm" says PRELOAD for them (a started sandbox with them imported is kept ready;
        # the refill between creates is untimed); the cold baseline is the same template without PRELOAD.
        warm_t, cold_t, forked_t, mem = [], [], [], {"warm": [], "forked": [], "cold": []}
        imports = "import numpy, pandas, matplotlib.pyplot\nint(numpy.arange(3).sum())"
        sci = c.call_raw("template.build", {"name": "sci", "file": f"{root}/Fixtures/templates/sci/Dockerfile"})
        if "error" in sci:
            print(f"(i) skipped: the sci template did not build (it needs PyPI): {sci['error']}", file=sys.stderr)
        else:
            c.call("template.build", {"name": "sciwarm", "spec": "FROM sci\nPRELOAD numpy pandas matplotlib.pyplot"})
            def template_pool_ready():
                for _ in range(1200):   # a minute: the zygote's imports, then a fork
                    if c.call("server.info")["warmPool"]["templates"] >= 1: return
                    time.sleep(0.05)
                raise RuntimeError("the PRELOAD template's pool never filled (see the daemon's log)")
            def first_cell(template, kind):
                t = time.perf_counter_ns()
                sb = c.call("sandbox.create", {"template": template})["sandboxId"]
                r = c.call("code.run", {"sandboxId": sb, "code": imports}, on_note=lambda m: None)
                dt = (time.perf_counter_ns() - t) / 1e6
                assert r["results"][0]["text/plain"] == "3", r
                mem[kind].append(c.call("sandbox.get", {"sandboxId": sb})["memoryBytes"])   # what its own cgroup is charged
                c.call("sandbox.delete", {"sandboxId": sb})
                return dt
            # The first create of a PRELOAD template starts its zygote and pool; each later create refills the pool.
            c.call("sandbox.delete", {"sandboxId": c.call("sandbox.create", {"template": "sciwarm"})["sandboxId"]})
            for _ in range(max(5, a.n // 2)):
                template_pool_ready()
                warm_t.append(first_cell("sciwarm", "warm"))
            # With the pool taken (untimed), the next create forks a sandbox from the zygote at once.
            for _ in range(5):
                template_pool_ready()
                held = c.call("sandbox.create", {"template": "sciwarm"})["sandboxId"]
                forked_t.append(first_cell("sciwarm", "forked"))
                c.call("sandbox.delete", {"sandboxId": held})
            for _ in range(5): cold_t.append(first_cell("sci", "cold"))
        jpy = jupyter_python()
        jr = subprocess.run([jpy, f"{root}/Benchmarks/jupyter_rt.py", str(a.n * 10)] + cells, capture_output=True, text=True)
        jupyter_t = json.loads(jr.stdout) if jr.returncode == 0 else None
        if jupyter_t is None: print("Jupyter baseline failed:\n" + jr.stderr[-2000:], file=sys.stderr)

        # (j) interactive I/O: a keystroke's echo through a PTY exec running `cat`, beside a host PTY; and
        # exec.input throughput into `cat > /dev/null` beside a host pipe.
        sb = c.call("sandbox.create")["sandboxId"]
        ex = c.call("exec.run", {"sandboxId": sb, "cmd": ["cat"], "pty": {"rows": 24, "cols": 80}, "yieldMs": 0})["execId"]
        follow = c.send("exec.wait", {"sandboxId": sb, "execId": ex, "follow": True})
        key_rtt = []
        for i in range(a.n * 2):
            ch = "abcdefghijklmnopqrstuvwxyz"[i % 26]
            t = time.perf_counter_ns()
            c.send("exec.input", {"sandboxId": sb, "execId": ex, "data": ch})
            while True:
                m = c.read()
                if m.get("method") == "exec.output" and ch in m["params"].get("data", ""): break
            key_rtt.append((time.perf_counter_ns() - t) / 1e6)
        c.send("exec.input", {"sandboxId": sb, "execId": ex, "data": "\r\x04"})
        while c.read().get("id") != follow: pass
        master, slave = os.openpty()
        hostcat = subprocess.Popen(["cat"], stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        host_key_rtt = []
        for i in range(a.n * 2):
            t = time.perf_counter_ns()
            os.write(master, b"k")
            got = b""
            while b"k" not in got: got += os.read(master, 1024)
            host_key_rtt.append((time.perf_counter_ns() - t) / 1e6)
        hostcat.kill(); hostcat.wait(); os.close(master)
        input_mb = 64
        blob = base64.b64encode(os.urandom(1 << 20)).decode()
        t = time.perf_counter_ns()
        ex = c.call("exec.run", {"sandboxId": sb, "shell": "cat > /dev/null", "stdin": "pipe", "background": True})["execId"]
        for _ in range(input_mb):
            c.call("exec.input", {"sandboxId": sb, "execId": ex, "dataBase64": blob})
        c.call("exec.input", {"sandboxId": sb, "execId": ex, "eof": True})
        while not c.call("exec.logs", {"sandboxId": sb, "execId": ex})["done"]: time.sleep(0.005)
        input_mbps = input_mb / ((time.perf_counter_ns() - t) / 1e9)
        c.call("sandbox.delete", {"sandboxId": sb})
        chunk = os.urandom(1 << 20)
        t = time.perf_counter_ns()
        hp = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        for _ in range(input_mb): hp.stdin.write(chunk)
        hp.stdin.close(); hp.wait()
        host_pipe_mbps = input_mb / ((time.perf_counter_ns() - t) / 1e9)

        # (k) think time: an agent waits for each call's result, then thinks (a model call) before the next.
        # exec.run `true` spaced out, beside bare fork+exec+wait spaced the same; code.run spaced 200 ms beside
        # a Jupyter kernel's execute spaced the same; and an agent loop (create, then 20 steps with 200 ms
        # of think time before each) beside the same steps unsandboxed (subprocess, Jupyter, plain files).
        gaps = (0.02, 0.2, 1.0)
        spaced, spaced_bare = {}, {}
        sb = c.call("sandbox.create")["sandboxId"]
        c.call("exec.run", {"sandboxId": sb, "cmd": ["true"]})
        for gap in gaps:
            k = a.n if gap < 1 else max(5, a.n // 2)
            ts = []
            for _ in range(k):
                time.sleep(gap)
                t = time.perf_counter_ns(); c.call("exec.run", {"sandboxId": sb, "cmd": ["/bin/true"]}); ts.append((time.perf_counter_ns() - t) / 1e6)
            spaced[gap] = ts
            spaced_bare[gap] = time_cmd(["/bin/true"], k, gap)
        c.call("code.run", {"sandboxId": sb, "code": "x = 1"})
        cell_spaced = []
        mark = cpu_mark(sb)
        for _ in range(a.n):
            time.sleep(0.2)
            t = time.perf_counter_ns(); r = c.call("code.run", {"sandboxId": sb, "code": "x = 1"}, on_note=lambda m: None)
            cell_spaced.append((time.perf_counter_ns() - t) / 1e6)
        assert r.get("checkpoint") is not None, r   # a step with its frozen copy, the default
        time.sleep(0.2)   # what the last cell's copy costs after its reply is counted too
        cell_spaced_cpu = cpu_per_cell(sb, mark, a.n)
        c.call("sandbox.delete", {"sandboxId": sb})
        loop_shell, loop_cell = "ls /tmp | wc -l", "y = sum(range(1000)); y"
        blob = os.urandom(4096)
        loop_total, loop_steps = [], []
        for _ in range(3):
            pool_ready()
            time.sleep(0.2)
            t = time.perf_counter_ns()
            sb = c.call("sandbox.create")["sandboxId"]
            waited = (time.perf_counter_ns() - t) / 1e6
            for i in range(20):
                time.sleep(0.2)
                t = time.perf_counter_ns()
                if i % 3 == 0:
                    assert c.call("exec.run", {"sandboxId": sb, "shell": loop_shell}, on_note=lambda m: None)["exitCode"] == 0
                elif i % 3 == 1:
                    c.call("code.run", {"sandboxId": sb, "code": loop_cell}, on_note=lambda m: None)
                else:
                    c.call("fs.write", {"sandboxId": sb, "path": "loop.bin", "data": base64.b64encode(blob).decode()})
                    assert base64.b64decode(c.call("fs.read", {"sandboxId": sb, "path": "loop.bin"})["data"]) == blob
                step = (time.perf_counter_ns() - t) / 1e6
                waited += step
                loop_steps.append(step)
            loop_total.append(waited)
            c.call("sandbox.delete", {"sandboxId": sb})
        jr = subprocess.run([jpy, f"{root}/Benchmarks/jupyter_rt.py", str(a.n), "--gap", "0.2", "x = 1"], capture_output=True, text=True)
        jupyter_spaced = json.loads(jr.stdout)["x = 1"] if jr.returncode == 0 else None
        loop_base = []
        for _ in range(3):
            jr = subprocess.run([jpy, f"{root}/Benchmarks/jupyter_rt.py", "--loop", "20", "--think", "0.2",
                                 "--shell", loop_shell, "--cell", loop_cell], capture_output=True, text=True)
            if jr.returncode == 0: loop_base.append(json.loads(jr.stdout)["waitedMs"])
            else: print("Jupyter loop baseline failed:\n" + jr.stderr[-2000:], file=sys.stderr)

        bare = time_cmd(["/bin/true"], a.n * 4)
        bare_echo = time_cmd(["/bin/echo", "ok"], a.n)
        bw = ensure_bwrap()
        bwrap_echo = time_cmd([bw, "--unshare-all", "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
                               "--symlink", "usr/lib64", "/lib64", "--proc", "/proc", "--dev", "/dev", "/bin/echo", "ok"], a.n) if bw else None
        bwrap_true = time_cmd([bw, "--unshare-all", "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
                               "--symlink", "usr/lib64", "/lib64", "--proc", "/proc", "--dev", "/dev", "/bin/true"], a.n) if bw else None
    finally:
        d.terminate(); d.wait(timeout=60)
        shutil.rmtree(scratch, ignore_errors=True)

    table = []   # (section, name, median, p90, is a baseline) for --plot
    section = [""]
    def heading(text):
        section[0] = text
        print(text)
    def row(name, xs, base=None):
        ratio = f"{statistics.median(xs) / statistics.median(base):6.2f}x" if base else "      "
        print(f"  {name:48s} median {statistics.median(xs):8.3f} ms   p90 {pct(xs, 0.9):8.3f} ms  {ratio}")
        name = name.strip()
        baseline = xs is base or name.split(" ")[0] in ("bare", "bwrap", "Jupyter", "host") or name.startswith("the same")
        table.append((section[0], name, statistics.median(xs), pct(xs, 0.9), baseline))
    print(f"sandpit bench: n={a.n}, {os.cpu_count()} cores, cgroup {info['cgroup']}, storage {info['storage']['mode']}, binary {exe}")
    heading("(a) new sandbox -> first output of `echo ok`   (ratio vs bwrap)")
    row("sandpit, warm pool ready (default)", warm_first, bwrap_echo)
    row("  of which sandbox.create", warm_create, bwrap_echo)
    row("sandpit, cold start (pool bypassed)", first_out, bwrap_echo)
    row("  of which sandbox.create", create_only, bwrap_echo)
    if bwrap_echo: row("bwrap --unshare-all echo ok", bwrap_echo, bwrap_echo)
    row("bare fork+exec+wait echo ok", bare_echo, bwrap_echo)
    heading("(b) run `true` in a live sandbox   (ratio vs bare fork+exec+wait)")
    row("sandpit exec.run round trip (socket)", rt, bare)
    row("  of which agent spawn+run", agent_run, bare)
    row("bare fork+exec+wait /bin/true", bare, bare)
    if bwrap_true: row("bwrap --unshare-all /bin/true", bwrap_true, bare)
    heading("(c) what the barriers cost   (ratio vs the default policy)")
    row("cold first output, default policy", first_out, first_out)
    row("cold first output, seccomp + cgroups off", bare_first, first_out)
    row("cold first output, no own disk image", nodisk_first, first_out)
    row("exec.run true, default policy", rt, rt)
    row("exec.run true, seccomp + cgroups off", bare_rt, rt)
    row("exec.run true, no own disk image", nodisk_rt, rt)
    heading("(d) checkpoints, restore, fork   (ratio vs the 1 MB sandbox)")
    row("checkpoint of a one-file change, 1 MB sandbox", ck_small, ck_small)
    row("checkpoint of a one-file change, 500 MB sandbox", ck_big, ck_small)
    row("restore to step k, 1 MB", restore_small, restore_small)
    row("restore to step k, 500 MB", restore_big, restore_small)
    row("fork from step k, 1 MB", fork_small, fork_small)
    row("fork from step k, 500 MB", fork_big, fork_small)
    heading("(e) idle lifecycle, sandbox with 100 MB of its own files and a 50 MB process")
    row("pause (freeze)", pause_t)
    row("resume from pause", unpause_t)
    row("hibernate (checkpoint + stop)", hib_t)
    row("resume from hibernation", unhib_t)
    print(f"  memory charged while paused: {statistics.median(mem_paused):.1f} MiB; while hibernated: {mem_hibernated:.1f} MiB (no cgroup, nothing resident)")
    heading("(f) create from a template   (ratio vs the 1 MB template)")
    for name in ("bench-1mb", "bench-500mb"):
        size, build_s, firsts, creates = tpl[name]
        row(f"{name} ({size / 1048576:.0f} MiB, built in {build_s:.1f} s): create", creates, tpl["bench-1mb"][3])
        row(f"{name}: create -> first output", firsts, tpl["bench-1mb"][2])
    heading(f"(g) files through the socket: {file_size >> 20} MiB in 8 MiB chunks, median of 3   (ratio vs host cat)")
    mbps = lambda ts: file_size / 1e6 / statistics.median(ts)
    print(f"  {'host: cat FILE > /dev/null':48s} {mbps(cat_t):8.0f} MB/s")
    print(f"  {'fs.upload (fs.uploadChunk x N, commit)':48s} {mbps(up_t):8.0f} MB/s   {mbps(up_t) / mbps(cat_t):6.3f}x")
    print(f"  {'fs.download (fs.chunk notifications)':48s} {mbps(down_t):8.0f} MB/s   {mbps(down_t) / mbps(cat_t):6.3f}x")
    print(f"  {'fs.upload by descriptor (fd)':48s} {mbps(fd_up_t):8.0f} MB/s   {mbps(fd_up_t) / mbps(cat_t):6.3f}x")
    print(f"  {'fs.download by descriptor (fd)':48s} {mbps(fd_down_t):8.0f} MB/s   {mbps(fd_down_t) / mbps(cat_t):6.3f}x")
    print(f"  daemon peak RSS after the transfers: {daemon_hwm / 1048576:.0f} MiB")
    row("fs.read of a 1 KiB file", read_t, cat_small)
    row("exec.run `cat` of the same file", cat_small, cat_small)
    heading("(h) interpreter cells: round trip until the result (and all output) is back   (ratio vs Jupyter)")
    for code in cells:
        base = jupyter_t[code] if jupyter_t else None
        row(f"sandpit code.run `{code}` (checkpointed: {'yes' if code_ck[code] else 'NO'})", code_t[code], base)
        if base: row(f"Jupyter kernel execute `{code}`", base, base)
    row("sandpit code.run `x = 1` without frozen copies", nocopy_t, code_t["x = 1"])
    def ms(v): return "n/a" if v is None else f"{v:.2f} ms"
    for k in ("with", "without"):
        dcpu, scpu = cell_cpu[k]
        print(f"    CPU per `x = 1` {k} frozen copies: daemon {ms(dcpu)}, sandbox (interpreter{' and copies' if k == 'with' else ''}) {ms(scpu)}")
    print("    the same cell 20 ms after the previous one (an agent between cells)   (ratio vs without copies)")
    row("  with a frozen copy per cell (default)", paused_t["with"], paused_t["without"])
    row("  without frozen copies", paused_t["without"], paused_t["without"])
    print(f"  frozen copies kept: {len(copies['executionCounts'])}, private memory {copies['memoryBytes'] / 1048576:.1f} MiB")
    print("    rollback to an earlier cell's step   (ratio vs relaunch)")
    row(f"sandbox.restore in place -> {'+'.join(inplace_what)}", inplace_t, relaunch_t)
    row(f"sandbox.restore by relaunch -> {'+'.join(relaunch_what)}", relaunch_t, relaunch_t)
    if warm_t:
        heading("(i) warm templates: create -> first cell importing numpy, pandas, matplotlib   (ratio vs cold)")
        row("warm template (PRELOAD): from the pool", warm_t, cold_t)
        row("  pool empty: forked from the zygote at once", forked_t, cold_t)
        row("cold: same packages, no PRELOAD", cold_t, cold_t)
        print(f"  speedup: {statistics.median(cold_t) / statistics.median(warm_t):.0f}x from the pool, "
              f"{statistics.median(cold_t) / statistics.median(forked_t):.0f}x forked at once")
        mib = lambda k: statistics.median(mem[k]) / 1048576
        print(f"  memory charged to the sandbox after that cell: {mib('warm'):.1f} MiB from the pool, {mib('forked'):.1f} MiB forked at once, "
              f"{mib('cold'):.1f} MiB cold (a forked interpreter shares the zygote's pages until it writes them)")
    heading("(j) interactive I/O: a keystroke echoed through a PTY running `cat`   (ratio vs a host PTY)")
    row("sandpit PTY exec: exec.input -> exec.output echo", key_rtt, host_key_rtt)
    row("host PTY (openpty + cat)", host_key_rtt, host_key_rtt)
    print(f"  exec.input into `cat > /dev/null`: {input_mbps:.0f} MB/s (64 MiB, 1 MiB base64 chunks); host pipe {host_pipe_mbps:.0f} MB/s "
          f"({input_mbps / host_pipe_mbps:.3f}x)")
    heading("(k) think time: calls spaced out as an agent makes them, and the first result of a new sandbox")
    row("warm pool: create -> result of `echo ok`", warm_result, bwrap_echo)
    row("cold start: create -> result of `echo ok`", cold_result, bwrap_echo)
    for gap in gaps:
        row(f"exec.run true, {gap * 1000:.0f} ms apart", spaced[gap], spaced_bare[gap])
        row(f"  bare fork+exec+wait /bin/true, {gap * 1000:.0f} ms apart", spaced_bare[gap], spaced_bare[gap])
    row("code.run `x = 1`, 200 ms apart (frozen copy per cell)", cell_spaced, jupyter_spaced)
    if jupyter_spaced: row("  Jupyter kernel execute `x = 1`, 200 ms apart", jupyter_spaced, jupyter_spaced)
    dcpu, scpu = cell_spaced_cpu
    print(f"    CPU per spaced cell (the frozen copy made after the reply included): daemon {ms(dcpu)}, sandbox {ms(scpu)}")
    row("agent loop: create + 20 steps, time waited", loop_total, loop_base or None)
    if loop_base: row("  the same 20 steps unsandboxed", loop_base, loop_base)
    print(f"    per step: sandpit median {statistics.median(loop_steps):.2f} ms (exec.run, code.run, fs.write+fs.read of 4 KiB in turn; 200 ms of think time before each)")
    print(f"agent idle RSS at start: {info['agentRssBytes'] / 1048576:.2f} MiB ({os.path.basename(info['agent'])})")
    if a.plot: plot(table, a.plot, jupyter_python())

def plot(table, path, venv_python):
    """One panel per section: each row's median as a bar (p90 as a whisker), baselines grey, log scale.
    Drawn by Benchmarks/plot.py with the baseline venv's python, which gets matplotlib on first use."""
    if subprocess.run([venv_python, "-c", "import matplotlib"], capture_output=True).returncode != 0:
        print("installing matplotlib into the baseline venv for --plot ...", file=sys.stderr)
        subprocess.run([venv_python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "matplotlib"], check=True)
    here = os.path.dirname(os.path.abspath(__file__))
    rows = [{"section": s, "name": n, "median": m, "p90": p, "baseline": b} for s, n, m, p, b in table]
    subprocess.run([venv_python, f"{here}/plot.py", path], input=json.dumps(rows), text=True, check=True)
    print(f"chart: {path}")

if __name__ == "__main__":
    main()
