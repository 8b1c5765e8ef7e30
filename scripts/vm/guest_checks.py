"""The checks the VM lane runs on a distribution kernel with a cgroup v2 root
(scripts/test-vm): isolation, resource limits, pause, checkpoints, file locks,
teardown. Each check attacks or measures for real through one daemon and
records pass or fail with what it saw; the result file says which failed."""
import os
import sys
import time

from guest_report import Checks
from sandpit import Client, Sandbox

out, bin_dir = sys.argv[1], sys.argv[2]
check = Checks()
c = Client(os.environ["SANDPIT_SOCKET"])


def run(sid, script, timeout=None):
    """Runs a shell command; returns (the exec's result, its stdout)."""
    r = Sandbox.connect(sid, client=c).commands.run(script, timeout=timeout)
    return r.raw, r.stdout


def tick_of(sid):
    """/tmp/tick of a sandbox, read from the host side through its agent's root (no exec: it may be paused)."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if open(f"/proc/{name}/comm").read().strip() == "sandpit-agent" and sid in open(f"/proc/{name}/cgroup").read():
                    return open(f"/proc/{name}/root/tmp/tick").read()
            except OSError:
                pass
    raise AssertionError(f"no agent of {sid}")


def cg_parent():
    """The sandboxes' parent group (sandpit-*) under the cgroup2 root."""
    for name in os.listdir("/sys/fs/cgroup"):
        if name.startswith("sandpit-") and os.path.isdir(f"/sys/fs/cgroup/{name}"):
            return name
    raise AssertionError("no sandpit-* group under /sys/fs/cgroup")


sb = c.call("sandbox.create", {"metadata": {"lane": "vm"}})["sandboxId"]
info = c.call("server.info", {})


@check("cgroup v2 detected and its controllers in use")
def _():
    assert '"v2"' in repr(info).replace("'", '"'), info


@check("a command runs as the unprivileged sandbox user in its own namespaces")
def _():
    r, text = run(sb, "id -u; cat /proc/self/uid_map | tr -s ' '; grep CapEff /proc/self/status")
    assert r["exitCode"] == 0, r
    lines = text.split("\n")
    assert lines[0] == "1000" and lines[1].strip() == "0 100000 65536" and "0000000000000000" in lines[2], text


@check("namespaces and mounts cannot be made inside")
def _():
    r, text = run(sb, "unshare -Ur true; echo u=$?; mount -t tmpfs x /tmp 2>/dev/null; echo m=$?")
    assert "u=1" in text and "m=0" not in text, text


@check("memory limit: a hog is OOM-killed and reported, swap off")
def _():
    s = c.call("sandbox.create", {"limits": {"memoryBytes": 64 << 20}})["sandboxId"]
    r = c.call("exec.run", {"sandboxId": s, "cmd": ["python3", "-c", "b=[]\nwhile True: b.append(bytearray(1<<20))"], "timeoutMs": 120000})
    assert r["oomKilled"] is True and not r["timedOut"], r
    swap = open(f"/sys/fs/cgroup/{cg_parent()}/{s}/memory.swap.max").read().strip()
    assert swap == "0", swap
    # Counted per command, in its own group: a hog whose child was taken is marked though it exits
    # 254 itself; a neighbour that SIGKILLs itself meanwhile is not.
    other = c.call("exec.run", {"sandboxId": s, "shell": "sleep 3; kill -9 $$", "background": True})["execId"]
    r = c.call("exec.run", {"sandboxId": s, "shell": "python3 -c 'x = bytearray(512 << 20)'; exit 254", "timeoutMs": 120000})
    assert r["oomKilled"] is True and r["exitCode"] == 254, r
    w = c.call("exec.wait", {"sandboxId": s, "execId": other})
    assert w["signal"] == "SIGKILL" and w["oomKilled"] is False, w
    c.call("sandbox.delete", {"sandboxId": s})



@check("pids limit: a fork bomb stops at it")
def _():
    s = c.call("sandbox.create", {"limits": {"pids": 32}})["sandboxId"]
    run(s, "for i in $(seq 1 100); do sleep 5 & done 2>/dev/null; true", timeout=60)
    group = f"/sys/fs/cgroup/{cg_parent()}/{s}"
    assert open(group + "/pids.max").read().strip() == "32"
    events = open(group + "/pids.events").read()
    assert int(events.split()[1]) > 0, f"the limit was never hit: {events}"
    assert int(open(group + "/pids.current").read()) <= 32
    c.call("sandbox.delete", {"sandboxId": s})


@check("cpu quota written to cpu.max")
def _():
    s = c.call("sandbox.create", {"limits": {"cpuMillicores": 250}})["sandboxId"]
    assert open(f"/sys/fs/cgroup/{cg_parent()}/{s}/cpu.max").read().split() == ["25000", "100000"]
    c.call("sandbox.delete", {"sandboxId": s})


@check("pause freezes every process (cgroup.freeze) and resume thaws them")
def _():
    s = c.call("sandbox.create", {})["sandboxId"]
    c.call("exec.run", {"sandboxId": s, "shell": "nohup sh -c 'while :; do date +%s%N > /tmp/tick; sleep 0.05; done' >/dev/null 2>&1 &"})
    time.sleep(1)
    c.call("sandbox.pause", {"sandboxId": s})
    frozen = open(f"/sys/fs/cgroup/{cg_parent()}/{s}/cgroup.events").read()
    assert "frozen 1" in frozen, frozen
    before = tick_of(s)
    time.sleep(1)
    assert tick_of(s) == before, "a process of the paused sandbox ran"
    c.call("sandbox.resume", {"sandboxId": s})
    assert "frozen 0" in open(f"/sys/fs/cgroup/{cg_parent()}/{s}/cgroup.events").read()
    # Thawed: it moves again (emulated CPUs are slow: up to 10 s).
    r, text = run(s, "a=$(cat /tmp/tick); for i in $(seq 1 100); do sleep 0.1; [ \"$(cat /tmp/tick)\" != \"$a\" ] && echo moving && break; done")
    assert "moving" in text, text
    c.call("sandbox.delete", {"sandboxId": s})


@check("checkpoint and restore bring each step back")
def _():
    s = c.call("sandbox.create", {})["sandboxId"]
    r1 = c.call("exec.run", {"sandboxId": s, "shell": "echo one > f"})
    c.call("exec.run", {"sandboxId": s, "shell": "echo two > f; rm -f /home/user/.bashrc"})
    c.call("sandbox.restore", {"sandboxId": s, "step": r1["step"]})
    r, text = run(s, "cat f; ls -a /home/user | grep -c bashrc")
    assert text.split() == ["one", "1"], text
    fork = c.call("sandbox.fork", {"sandboxId": s, "count": 1})["sandboxes"][0]["sandboxId"]
    r, text = run(fork, "cat f")
    assert text.strip() == "one", text
    for x in (s, fork):
        c.call("sandbox.delete", {"sandboxId": x})


@check("a file lock in one sandbox is not seen by another or by the host")
def _():
    a = c.call("sandbox.create", {})["sandboxId"]
    c.call("exec.run", {"sandboxId": a, "shell": "nohup flock /usr/bin/env sleep 30 >/dev/null 2>&1 &"})
    time.sleep(1)
    b = c.call("sandbox.create", {})["sandboxId"]
    r, text = run(b, "flock -n /usr/bin/env echo free")
    assert "free" in text, text
    import fcntl
    with open("/usr/bin/env", "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    for x in (a, b):
        c.call("sandbox.delete", {"sandboxId": x})


@check("an exec timeout kills its whole tree")
def _():
    r = c.call("exec.run", {"sandboxId": sb, "shell": "sleep 60 & sleep 60", "timeoutMs": 1500})
    assert r["timedOut"] is True and not r["oomKilled"], r
    r, text = run(sb, "ps -e -o comm | grep -c sleep")
    assert text.strip() == "0", text


@check("after a pause a command comes from a spare already in its own group, and exec.kill reaches its tree")
def _():
    group = f"/sys/fs/cgroup/{cg_parent()}/{sb}"

    def comms(g):
        return [open(f"/proc/{p}/comm").read().strip() for p in open(f"{group}/{g}/cgroup.procs").read().split()]
    for _ in range(100):
        spares = [g for g in os.listdir(group) if g.startswith("ex_") and comms(g) == ["sandpit-spare"]]
        if spares:
            break
        time.sleep(0.05)
    assert len(spares) == 1, os.listdir(group)
    # The agent lives in a leaf of its own, so the commands' groups have the memory controller.
    assert "memory" in open(f"{group}/cgroup.subtree_control").read() and comms("agent") == ["sandpit-agent"]
    pid = open(f"{group}/{spares[0]}/cgroup.procs").read().split()[0]
    bg = c.call("exec.run", {"sandboxId": sb, "shell": "setsid sleep 300 & exec sleep 300", "background": True})
    time.sleep(0.5)
    procs = open(f"{group}/{spares[0]}/cgroup.procs").read().split()
    assert pid in procs and len(procs) == 2, ("the spare became the command, its child beside it", procs)
    c.call("exec.kill", {"sandboxId": sb, "execId": bg["execId"]})
    time.sleep(1)
    r, text = run(sb, "ps -e -o comm | grep -c sleep")
    assert text.strip() == "0", text


@check("delete leaves no process, cgroup or mount")
def _():
    s = c.call("sandbox.create", {})["sandboxId"]
    c.call("exec.run", {"sandboxId": s, "shell": "nohup sleep 300 >/dev/null 2>&1 &"})
    parent = cg_parent()
    c.call("sandbox.delete", {"sandboxId": s})
    for _ in range(100):
        if not os.path.exists(f"/sys/fs/cgroup/{parent}/{s}"):
            break
        time.sleep(0.1)
    assert not os.path.exists(f"/sys/fs/cgroup/{parent}/{s}")
    assert s not in open("/proc/self/mountinfo").read()


@check("sandpit doctor: a sandbox can be made, cgroup v2 with memory, pids, cpu and freeze")
def _():
    import subprocess
    p = subprocess.run([os.path.join(bin_dir, "sandpit"), "doctor"], capture_output=True, text=True, timeout=600)
    print(p.stdout, flush=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "v2: memory, pids, cpu, freeze" in p.stdout, p.stdout


c.call("sandbox.delete", {"sandboxId": sb})
check.report(out, "checks.log", "result", f"checks on kernel {os.uname().release}, cgroup v2")
