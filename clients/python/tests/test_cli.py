"""The `sandpit` CLI as docker and podman users drive it: help, strict options, stdin, exit statuses,
the sandbox lifecycle from the CLI alone, copies both ways, completion; and retention by default."""
import json
import os
import subprocess
import time

import pytest

from sandpit import Client


def cli(sandpit, daemon, *args, input=None, check=False):
    r = subprocess.run([sandpit, *args], input=input, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, SANDPIT_SOCKET=daemon), stdin=None if input is not None else subprocess.DEVNULL)
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def test_help_and_unknown_options_never_run_a_command(sandpit, daemon):
    for flag in ("-h", "--help"):
        r = cli(sandpit, daemon, "run", flag)
        assert r.returncode == 0 and "USAGE: sandpit run" in r.stdout, r
    r = cli(sandpit, daemon, "run", "--bogus", "--", "true")
    assert r.returncode != 0 and "unknown option '--bogus'" in r.stderr, r
    # Daemon options belong to serve: other commands' help does not list them.
    assert "--storage-gib" not in cli(sandpit, daemon, "run", "--help").stdout
    assert "--storage-gib" in cli(sandpit, daemon, "serve", "--help").stdout


def test_stdin_is_forwarded_and_exit_statuses_say_why(sandpit, daemon):
    r = cli(sandpit, daemon, "run", "--", "cat", input="x\n")
    assert r.returncode == 0 and r.stdout == "x\n", r
    big = "line\n" * 200_000   # 1 MB through stdin
    r = cli(sandpit, daemon, "run", "--", "wc", "-l", input=big)
    assert r.stdout.strip() == "200000", r
    r = cli(sandpit, daemon, "run", "--timeout-ms", "300", "--", "sleep", "5")
    assert r.returncode == 124 and "timed out" in r.stderr, r
    r = cli(sandpit, daemon, "run", "--", "bash", "-c", "kill -9 $$")
    assert r.returncode == 137 and "SIGKILL" in r.stderr, r
    r = cli(sandpit, daemon, "run", "--", "bash", "-c", "exit 3")
    assert r.returncode == 3 and r.stderr == "", r


def test_the_sandbox_lifecycle_from_the_cli_alone(sandpit, daemon, tmp_path):
    sid = cli(sandpit, daemon, "create", "--name", "cli-demo", "--label", "team=qa", check=True).stdout.strip()
    assert sid.startswith("sb_")
    try:
        r = cli(sandpit, daemon, "exec", sid, "--", "bash", "-c", "echo hello > notes.txt; mkdir -p d/e; echo deep > d/e/f; echo out; echo err >&2")
        assert r.returncode == 0 and r.stdout == "out\n" and r.stderr == "err\n", r
        assert cli(sandpit, daemon, "logs", sid, check=True).stdout == "out\n"
        steps = cli(sandpit, daemon, "checkpoint", "ls", sid, check=True).stdout.splitlines()
        assert steps[0].startswith("STEP") and steps[1].split()[0] == "1"
        # cp, both directions, directories too.
        cli(sandpit, daemon, "cp", f"{sid}:d", str(tmp_path), check=True)
        assert (tmp_path / "d" / "e" / "f").read_text() == "deep\n"
        (tmp_path / "up").mkdir()
        (tmp_path / "up" / "a.txt").write_text("from host\n")
        cli(sandpit, daemon, "cp", str(tmp_path / "up"), f"{sid}:/home/user/", check=True)
        assert cli(sandpit, daemon, "exec", sid, "--", "cat", "up/a.txt").stdout == "from host\n"
        cli(sandpit, daemon, "exec", sid, "--", "rm", "notes.txt", check=True)
        r = cli(sandpit, daemon, "restore", sid, "--step", "1", check=True)
        assert "filesystem" in r.stdout
        assert cli(sandpit, daemon, "exec", sid, "--", "cat", "notes.txt").stdout == "hello\n"
        fork = cli(sandpit, daemon, "fork", sid, "--step", "1", check=True).stdout.strip()
        assert fork.startswith("sb_") and fork != sid
        cli(sandpit, daemon, "pause", sid, check=True)
        ps = cli(sandpit, daemon, "ps", check=True).stdout
        row = next(l for l in ps.splitlines() if l.startswith(sid))
        assert "paused" in row and "cli-demo" in row and ("in 7d" in row or "in 6d" in row), ps
        cli(sandpit, daemon, "resume", sid, check=True)
        cli(sandpit, daemon, "stop", sid, check=True)
        assert sid not in cli(sandpit, daemon, "ps", "-q").stdout.split(), "ps hides hibernated sandboxes without -a"
        assert sid in cli(sandpit, daemon, "ps", "-a", "-q").stdout.split()
        info = json.loads(cli(sandpit, daemon, "inspect", sid, check=True).stdout)[0]
        assert info["state"] == "hibernated" and info["metadata"] == {"name": "cli-demo", "team": "qa"}
        r = cli(sandpit, daemon, "rm", fork)
        assert r.returncode == 1 and "rm -f" in r.stderr, "a running sandbox needs -f"
        cli(sandpit, daemon, "rm", "-f", fork, sid, check=True)
        assert sid not in cli(sandpit, daemon, "ps", "-a", "-q").stdout
    finally:
        cli(sandpit, daemon, "rm", "-f", sid)


def test_attach_replays_and_follows_a_running_command(sandpit, daemon):
    with Client(daemon) as c:
        sid = c.call("sandbox.create", {})["sandboxId"]
        ex = c.call("exec.run", {"sandboxId": sid, "shell": "echo first; read x; echo got $x; exit 4", "stdin": "pipe",
                                 "background": True})["execId"]
        time.sleep(0.3)
        p = subprocess.Popen([sandpit, "attach", "--socket", daemon, sid, ex], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        out, err = p.communicate("later\n", timeout=60)
        assert p.returncode == 4 and out == "first\ngot later\n", (out, err)
        c.call("sandbox.delete", {"sandboxId": sid})


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(sandpit, daemon, shell):
    r = cli(sandpit, daemon, "completion", shell, check=True)
    assert "sandpit" in r.stdout and len(r.stdout) > 500
    if shell == "bash":
        assert subprocess.run(["bash", "-n"], input=r.stdout, text=True).returncode == 0


def test_idle_sandboxes_are_deleted_by_default_retention_and_watchers_are_told(daemon):
    import socket
    with Client(daemon) as c:
        assert c.call("policy.get", {})["policy"]["idle"]["deleteAfterMs"] == 7 * 86_400_000
        sb = c.call("sandbox.create", {})
        assert sb["deleteAt"] is not None and sb["deleteAt"] > sb["createdAt"], sb
        s = socket.socket(socket.AF_UNIX)
        s.connect(daemon)
        f = s.makefile("rwb")
        f.write(b'{"jsonrpc":"2.0","id":1,"method":"sandbox.watch","params":{}}\n')
        f.flush()
        assert json.loads(f.readline())["id"] == 1
        short = c.call("sandbox.create", {"idle": {"deleteAfterMs": 400}})["sandboxId"]
        s.settimeout(15)
        while True:
            m = json.loads(f.readline())
            p = m.get("params", {})
            if m.get("method") == "sandbox.state" and p.get("sandboxId") == short and p.get("state") == "deleted":
                break
        assert p["reason"].startswith("retention: idle for"), p
        s.close()
        c.call("sandbox.delete", {"sandboxId": sb["sandboxId"]})


def test_a_failure_of_sandpit_itself_exits_125(sandpit, daemon):
    r = cli(sandpit, daemon, "exec", "sb_AAAAAAAAAAAA", "--", "true")
    assert r.returncode == 125 and "not_found" in r.stderr, r
    r = cli(sandpit, daemon, "run", "--template", "no-such-template", "--", "true")
    assert r.returncode == 125 and "no-such-template" in r.stderr, r
