"""Rootless mode: `sandpit serve` started by an unprivileged user.

The suite runs as root (CI does): it makes a user with a subordinate id range, starts the daemon as that
user with `runuser`, and talks to it as another tenant (root's uid is unmapped in the daemon's user
namespace) that authenticates as admin for the host report. It checks what works rootless and what the
daemon says is not enforced, attacks the isolation that remains, and kills the daemon to see that nothing
of it survives."""
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from sandpit import Client, Sandbox, SandpitError

USER = "sandpit-rootless"
SUB_START, SUB_COUNT = 300000, 65536
TOKEN = "rootless-test-admin-token-0123456789"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="makes a test user: run as root (CI does)")


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def ensure_user(name, subordinate=True):
    """The user (scripts/rootless-user makes it, with its subordinate range); without one when `subordinate` is false."""
    subprocess.run([os.path.join(REPO, "scripts", "rootless-user"), name, str(SUB_START), str(SUB_COUNT)], check=True)
    pw = pwd.getpwnam(name)
    if not subordinate:
        for f in ("/etc/subuid", "/etc/subgid"):
            lines = [l for l in open(f).read().splitlines() if l and l.split(":")[0] not in (name, str(pw.pw_uid))]
            with open(f, "w") as out:
                out.write("\n".join(lines) + "\n")
    return pw


def processes_of(uids):
    """Pids whose real uid is in `uids` (host ids)."""
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                for line in open(f"/proc/{p}/status"):
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) in uids:
                            out.append(int(p))
                        break
            except OSError:
                pass
    return out


def serving(uid):
    """The user's `sandpit serve` processes: the one it started and, its child, the daemon in the namespace."""
    return [p for p in processes_of({uid}) if b"serve" in open(f"/proc/{p}/cmdline", "rb").read()]


def parent(pid):
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])


def outer_daemons(uid):
    s = serving(uid)
    return [p for p in s if parent(p) not in s]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_daemon(sandpit, home, sock, log, *extra):
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "XDG_DATA_HOME": os.path.join(home, "xdg"), "LANG": "C.UTF-8"}
    d = subprocess.Popen(["runuser", "-u", USER, "--", "env", "-i"] + [f"{k}={v}" for k, v in env.items()]
                         + [sandpit, "serve", "--socket", sock, "--admin-token-file", os.path.join(home, "token"),
                            "--policies", os.path.join(home, "policies"), "--warm-pool", "1", *extra],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    for _ in range(600):
        if d.poll() is not None or os.path.exists(sock):
            break
        time.sleep(0.05)
    return d


@pytest.fixture(scope="module")
def rootless(sandpit):
    if shutil.which("newuidmap") is None:
        pytest.fail("newuidmap is missing: scripts/install-deps installs it (apt package uidmap)")
    pw = ensure_user(USER)
    home = tempfile.mkdtemp(prefix="sandpit-rootless-", dir="/tmp")
    os.chmod(home, 0o755)
    with open(os.path.join(home, "token"), "w") as f:
        f.write(TOKEN)
    with open(os.path.join(home, "secret.txt"), "w") as f:
        f.write("the user's own file\n")
    os.chmod(os.path.join(home, "secret.txt"), 0o600)
    # The shipped policies, and one whose egress allowlist names a port on the host's loopback.
    repo_policies = os.path.join(REPO, "Policies")
    shutil.copytree(repo_policies, os.path.join(home, "policies"))
    web_port = free_port()
    with open(os.path.join(home, "policies", "egress.json"), "w") as f:
        f.write('{"name": "egress", "network": "allowlist", "allow": ["127.0.0.1:%d"]}' % web_port)
    for root, dirs, files in os.walk(home):
        for n in dirs + files:
            os.chown(os.path.join(root, n), pw.pw_uid, pw.pw_gid)
    os.chown(home, pw.pw_uid, pw.pw_gid)
    sock = os.path.join(home, "s.sock")
    log = open(os.path.join(home, "daemon.log"), "w")
    d = start_daemon(sandpit, home, sock, log)
    if not os.path.exists(sock):
        pytest.fail("the rootless daemon did not start:\n" + open(os.path.join(home, "daemon.log")).read())
    c = Client(sock)
    c.call("server.auth", {"token": TOKEN})
    state = {"client": c, "home": home, "sock": sock, "daemon": d, "user": pw, "log": log, "web_port": web_port}
    yield state
    if state["client"] is not None:
        state["client"].close()
    # A clean stop, as a user would: SIGTERM to their `sandpit serve`, passed on to the daemon inside.
    d = state["daemon"]   # a test may have restarted it
    left = []
    if d.poll() is None:
        for p in outer_daemons(pw.pw_uid):
            os.kill(p, signal.SIGTERM)
        try:
            d.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(d.pid, signal.SIGKILL)
        for _ in range(100):
            left = processes_of({pw.pw_uid} | set(range(SUB_START, SUB_START + SUB_COUNT)))
            if not left:
                break
            time.sleep(0.1)
        for p in left:
            os.kill(p, signal.SIGKILL)
    shutil.rmtree(home, ignore_errors=True)
    assert left == [], "processes outlived the daemon's stop"


def test_the_daemon_says_it_is_rootless_and_what_it_enforces(rootless):
    info = rootless["client"].info()
    assert info["rootless"] is True
    assert info["storage"]["mode"] == "dir"
    # The default data dir of a user: $XDG_DATA_HOME/sandpit.
    assert info["dataDir"] == os.path.join(rootless["home"], "xdg", "sandpit")
    assert os.stat(info["dataDir"]).st_uid == rootless["user"].pw_uid
    host = info["host"]
    assert host["rootless"] is True
    enforced = host["limitsEnforced"]
    # This host's cgroups (v1) belong to root: no memory, pids or cpu limits, no disk size; said so.
    assert host["cgroup"]["controllers"] == [] and info["cgroup"] == "none"
    assert not any(e.startswith(("memoryBytes", "pids", "cpuMillicores", "diskBytes", "pause")) for e in enforced), enforced
    assert {"tmpBytes", "openFiles", "execTimeoutMs", "outputBytes"} <= set(enforced)
    steps = {s["name"]: s["detail"] for s in rootless["client"].call("policy.get", {})["steps"]}
    assert "rootless" in steps["disk"] and "no size" in steps["disk"]
    assert "rootless" in steps["cgroup"]
    assert "never" in steps["idle"].split(",")[0], steps["idle"]   # no freezer: never paused


def test_commands_run_on_the_users_subordinate_ids_never_as_the_user(rootless):
    c = rootless["client"]
    with Sandbox.create(client=c) as sb:
        r = sb.commands.run("id -u; id -g; cat /proc/self/uid_map; echo hi > /home/user/f; exec sleep 30", background=True)
        # The sleep, seen from the host: its uid is the subordinate id for sandbox uid 1000.
        pids = []
        for _ in range(100):
            pids = [p for p in processes_of({SUB_START + 1000}) if open(f"/proc/{p}/cmdline", "rb").read() == b"sleep\x0030\x00"]
            if pids:
                break
            time.sleep(0.05)
        assert pids, "the command runs as host uid %d" % (SUB_START + 1000)
        assert not [p for p in processes_of({rootless["user"].pw_uid}) if open(f"/proc/{p}/cmdline", "rb").read() == b"sleep\x0030\x00"]
        r.kill()
        out = r.wait()
        lines = out.stdout.split("\n")
        assert lines[:2] == ["1000", "1000"]
        assert lines[2].split() == ["0", "1", "65536"]   # the daemon's ids 1.. (its subordinate range)
        assert sb.files.read("/home/user/f") == "hi\n"
        # The sandbox's root, with a container root's capabilities, rootless too: it owns the user's files.
        r = sb.commands.run("chown root /home/user/f && stat -c %U /home/user/f && id -u", user="root")
        assert r.stdout == "root\n0\n", r.stderr


def test_the_host_and_the_users_files_stay_out_of_reach(rootless):
    c = rootless["client"]
    home = rootless["home"]
    with Sandbox.create(client=c) as sb:
        r = sb.commands.run(f"cat {home}/secret.txt; ls {home}; ls /tmp; cat /etc/shadow; touch /usr/x; "
                            "python3 -c 'import socket; socket.create_connection((\"1.1.1.1\", 53), timeout=2)'")
        assert r.exit_code != 0
        assert "the user's own file" not in r.stdout and "s.sock" not in r.stdout
        assert "Read-only file system" in r.stderr or "Permission denied" in r.stderr
        assert "Network is unreachable" in r.stderr or "OSError" in r.stderr
        # Root inside is not the user outside: it cannot reach the daemon's socket or data either.
        r = sb.commands.run("ls /proc/1/root/..; cat /proc/1/environ | tr '\\0' '\\n' | grep -c XDG || true")
        assert "xdg" not in r.stdout


def test_checkpoints_restore_and_fork_are_exact_on_directory_disks(rootless):
    c = rootless["client"]
    with Sandbox.create(client=c) as sb:
        a = sb.commands.run("mkdir -p /home/user/d && echo one > /home/user/d/a && echo keep > /home/user/k")
        step1 = a.step
        # Step 2: a file of the template deleted (a whiteout), a directory replaced (opaque), a file changed.
        b = sb.commands.run("rm /home/user/.bashrc && rm -r /home/user/d && mkdir /home/user/d && echo two > /home/user/d/b "
                            "&& echo changed > /home/user/k")
        assert b.exit_code == 0 and b.step == step1 + 1
        assert sb.commands.run("ls -A /home/user; ls /home/user/d").stdout == ".profile\nd\nk\nb\n"
        # A fork of step 2 has step 2's files; the two then go their own ways.
        fork = sb.fork(step=step1 + 1)[0]
        try:
            assert fork.commands.run("ls -A /home/user/d; cat /home/user/k").stdout == "b\nchanged\n"
            fork.commands.run("echo forked > /home/user/k")
            res = sb.restore(step1)
            assert res.step == step1
            r = sb.commands.run("ls -A /home/user; ls /home/user/d; cat /home/user/d/a /home/user/k")
            assert r.stdout == ".bashrc\n.profile\nd\nk\na\none\nkeep\n", r.stdout
            assert fork.files.read("/home/user/k") == "forked\n"
        finally:
            fork.delete()
        # A step that changes nothing shares the previous checkpoint's files (hard links), and restores the same.
        n = sb.commands.run("true")
        assert sb.restore(n.step).step == n.step
        assert sb.files.read("/home/user/k") == "keep\n"


def test_code_cells_files_and_parallel_sandboxes(rootless):
    c = rootless["client"]
    errors = []
    big = os.urandom(3 << 20)

    def agent(i):
        try:
            with Sandbox.create(client=c) as sb:
                sb.run_code(f"x = {i}")
                assert "".join(sb.run_code("print(x * 2)").logs.stdout) == f"{i * 2}\n"
                sb.files.write(f"/home/user/blob{i}", big)
                assert sb.files.read(f"/home/user/blob{i}", format="bytes") == big
                r = sb.commands.run(f"sha256sum /home/user/blob{i} | cut -c1-8")
                assert r.exit_code == 0 and len(r.stdout.strip()) == 8
        except Exception as e:  # collected: an assert in a thread would be lost
            errors.append(f"{i}: {e!r}")

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == []


def test_egress_allowlist_works_rootless(rootless):
    c = rootless["client"]
    # The egress proxy: a host web server the policy allows, reached from a sandbox through the proxy.
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    port = rootless["web_port"]
    srv.bind(("127.0.0.1", port))
    srv.listen(4)

    def serve():
        conn, _ = srv.accept()
        conn.recv(1000)
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        conn.close()
    threading.Thread(target=serve, daemon=True).start()
    with Sandbox.create(client=c, policy="egress") as sb:
        # Through the proxy by hand: no_proxy names the loopback, so urllib would go direct.
        r = sb.commands.run(["python3", "-c", "import socket, os\n"
                             "s = socket.create_connection(('127.0.0.1', int(os.environ['HTTP_PROXY'].rsplit(':', 1)[1])))\n"
                             f"s.sendall(b'GET http://127.0.0.1:{port}/ HTTP/1.0\\r\\n\\r\\n')\n"
                             "data = b''\n"
                             "while chunk := s.recv(100): data += chunk\n"
                             "print(data.split(b'\\r\\n')[0].decode(), data.rsplit(b'\\n', 1)[1].decode())"])
        assert r.stdout == "HTTP/1.0 200 OK ok\n", r.stderr
        # Anything else stays out: the daemon's own port, another host port.
        r = sb.commands.run(["python3", "-c", "import socket\n"
                             "try: socket.create_connection(('10.0.0.1', 80), timeout=2); print('direct')\n"
                             "except OSError: print('no route')"])
        assert r.stdout == "no route\n"
    srv.close()


def test_pause_is_refused_with_a_clear_error_and_the_sandbox_runs_on(rootless):
    with Sandbox.create(client=rootless["client"]) as sb:
        with pytest.raises(SandpitError) as e:
            sb.pause()
        assert e.value.code == "unavailable" and "freezer" in str(e.value)
        assert sb.commands.run("echo still").stdout == "still\n"
        sb.hibernate()
        assert sb.commands.run("cat /etc/hostname").stdout == "sandpit\n"   # woken from hibernation


def test_without_cgroups_a_timeout_kills_the_process_group_and_deletion_kills_the_rest(rootless):
    with Sandbox.create(client=rootless["client"]) as sb:
        r = sb.commands.run("sleep 301 & setsid sleep 302 & sleep 303", timeout=1)
        assert r.timed_out
        left = sb.commands.run("ps -eo args | grep '^sleep' | sort").stdout
        # As SECURITY.md says: the group went, the process that left it with setsid lives on ...
        assert left == "sleep 302\n", left
        sid = sb.id
    # ... until the sandbox goes (its pid namespace with it).
    time.sleep(0.5)
    assert not [p for p in processes_of(set(range(SUB_START, SUB_START + SUB_COUNT)))
                if open(f"/proc/{p}/cmdline", "rb").read().startswith(b"sleep\x00302")], sid


def test_a_user_without_subordinate_ids_is_told_what_to_do(sandpit):
    pw = ensure_user("sandpit-nosubid", subordinate=False)
    r = subprocess.run(["runuser", "-u", pw.pw_name, "--", sandpit, "doctor"], capture_output=True, text=True, timeout=120,
                       cwd="/tmp")
    assert r.returncode == 1
    assert "/etc/subuid" in r.stdout and "usermod --add-subuids" in r.stdout, r.stdout
    r = subprocess.run(["runuser", "-u", pw.pw_name, "--", sandpit, "serve"], capture_output=True, text=True, timeout=120,
                       cwd="/tmp", stdin=subprocess.DEVNULL)
    assert r.returncode != 0 and "/etc/subuid" in r.stderr, r.stderr


def test_killing_the_rootless_daemon_leaves_nothing_running_and_a_restart_finds_its_sandboxes(rootless, sandpit):
    c = rootless["client"]
    sb = Sandbox.create(client=c)
    sb.commands.run("echo kept > /home/user/kept")
    sb.commands.run("sleep 600", background=True)
    sid = sb.id
    c.close()
    rootless["client"] = None
    ids = set(range(SUB_START, SUB_START + SUB_COUNT))
    assert processes_of(ids)
    # The crash: the daemon itself (root of its user namespace, the child of the user's `sandpit serve`) killed.
    d = rootless["daemon"]
    both = serving(rootless["user"].pw_uid)
    inner = [p for p in both if parent(p) in both]
    assert len(inner) == 1 and len(both) == 2, both
    os.kill(inner[0], signal.SIGKILL)
    assert d.wait(30) != 0
    for _ in range(100):
        if not processes_of(ids) and not processes_of({rootless["user"].pw_uid}):
            break
        time.sleep(0.1)
    assert processes_of(ids) == [], "sandbox processes outlived the daemon"
    assert processes_of({rootless["user"].pw_uid}) == [], "the daemon's own processes outlived it"
    os.unlink(rootless["sock"])
    d2 = start_daemon(sandpit, rootless["home"], rootless["sock"], rootless["log"])
    rootless["daemon"] = d2
    assert os.path.exists(rootless["sock"]), open(os.path.join(rootless["home"], "daemon.log")).read()
    c2 = Client(rootless["sock"])
    c2.call("server.auth", {"token": TOKEN})
    rootless["client"] = c2
    again = Sandbox.connect(sid, client=c2)
    assert again.commands.run("cat /home/user/kept").stdout == "kept\n"
    again.commands.run("sleep 600", background=True)
    # The other way down: the user's own `sandpit serve` (the namespace's parent) killed; the daemon and
    # its sandboxes go with it (the daemon has a parent-death signal).
    outer = outer_daemons(rootless["user"].pw_uid)
    assert len(outer) == 1 and len(serving(rootless["user"].pw_uid)) == 2
    os.kill(outer[0], signal.SIGKILL)
    d2.wait(30)
    for _ in range(100):
        if not processes_of(ids) and not processes_of({rootless["user"].pw_uid}):
            break
        time.sleep(0.1)
    assert processes_of(ids) == [] and processes_of({rootless["user"].pw_uid}) == []
    c2.close()
    rootless["client"] = None
