"""The VM lane's rootless checks (scripts/vm/guest-suite): a daemon started by
an unprivileged user (scripts/rootless-user made it on the host) in a cgroup v2
subtree delegated to that user, as systemd does for user services. With a
delegated subtree rootless mode has cgroup limits: each check attacks one."""
import os
import sys

from guest_report import Checks
from sandpit import Client, Sandbox

out, delegated = sys.argv[1], sys.argv[2]
check = Checks("rootless: ")
c = Client(os.environ["SANDPIT_SOCKET"])
c.call("server.auth", {"token": os.environ["SANDPIT_ADMIN_TOKEN"]})


def group_of(sid):
    for root, dirs, _ in os.walk(delegated):
        if sid in dirs:
            return os.path.join(root, sid)
    raise AssertionError(f"no group of {sid} under {delegated}")


@check("the daemon is rootless and enforces the delegated controllers")
def _():
    info = c.call("server.info", {})
    assert info["rootless"] is True and info["cgroup"] == "v2", info
    enforced = " ".join(info["host"]["limitsEnforced"])
    for limit in ("memoryBytes", "pids", "cpuMillicores", "pause"):
        assert limit in enforced, enforced
    assert "diskBytes" not in enforced, enforced


@check("memory: a hog is OOM-killed and reported, in a group under the delegated subtree")
def _():
    s = c.call("sandbox.create", {"limits": {"memoryBytes": 64 << 20}})["sandboxId"]
    assert group_of(s).startswith(delegated + "/")
    r = c.call("exec.run", {"sandboxId": s, "cmd": ["python3", "-c", "b=[]\nwhile True: b.append(bytearray(1<<20))"], "timeoutMs": 120000})
    assert r["oomKilled"] is True and not r["timedOut"], r
    assert open(group_of(s) + "/memory.max").read().strip() == str(64 << 20)
    c.call("sandbox.delete", {"sandboxId": s})


@check("pids: a fork bomb stops at the limit")
def _():
    s = c.call("sandbox.create", {"limits": {"pids": 32}})["sandboxId"]
    c.call("exec.run", {"sandboxId": s, "shell": "for i in $(seq 1 100); do sleep 5 & done 2>/dev/null; true", "timeoutMs": 60000})
    events = open(group_of(s) + "/pids.events").read()
    assert int(events.split()[1]) > 0, events
    c.call("sandbox.delete", {"sandboxId": s})


@check("pause freezes the sandbox and resume thaws it; checkpoints restore on a directory disk")
def _():
    sb = Sandbox.create(client=c)
    a = sb.commands.run("echo one > /home/user/f")
    sb.commands.run("echo two > /home/user/f; rm /home/user/.bashrc")
    sb.pause()
    assert "frozen 1" in open(group_of(sb.id) + "/cgroup.events").read()
    sb.resume()
    sb.restore(a.step)
    r = sb.commands.run("cat /home/user/f; ls -a /home/user | grep -c bashrc")
    assert r.stdout.split() == ["one", "1"], r.stdout
    sb.delete()


check.report(out, "rootless.log", "result-rootless", "rootless checks (delegated cgroup v2)")
