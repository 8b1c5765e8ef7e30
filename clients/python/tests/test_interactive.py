"""Interactive I/O over the real protocol: programs on a PTY, stdin to running commands, yield-style
commands, reattaching after a disconnect, and `sandpit exec -it` driven through tmux."""
import hashlib
import os
import shutil
import subprocess
import threading
import time

import pytest

from sandpit import Client, LimitExceededError, Sandbox


class Screen:
    """Collects a PTY's output (on_data runs on the client's loop thread)."""

    def __init__(self):
        self.data = b""
        self.lock = threading.Lock()

    def __call__(self, b: bytes):
        with self.lock:
            self.data += b

    def text(self) -> str:
        with self.lock:
            return self.data.decode(errors="replace")

    def wait_for(self, needle: str, timeout: float = 15, after: int = 0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            i = self.text().find(needle, after)
            if i >= 0:
                return i + len(needle)
            time.sleep(0.02)
        raise AssertionError(f"{needle!r} not seen in: {self.text()[-2000:]!r}")


def test_python_repl_on_a_pty_keeps_state_survives_ctrl_c_and_exits_zero(daemon):
    with Sandbox.create() as sb:
        screen = Screen()
        pty = sb.pty.create(24, 80, screen, cmd=["python3", "-q"])
        at = screen.wait_for(">>> ")
        pty.send_input("x = 6*7\r")
        at = screen.wait_for(">>> ", after=at)
        pty.send_input("print(x)\r")
        at = screen.wait_for("42", after=at)
        pty.send_input("while True: pass\r")
        time.sleep(0.5)
        pty.send_input("\x03")   # Ctrl-C: the terminal's line discipline signals the foreground group
        at = screen.wait_for("KeyboardInterrupt", after=at)
        pty.send_input("print('still', x)\r")
        screen.wait_for("still 42", after=at)
        pty.send_input("exit()\r")
        r = pty.wait(30)
        assert r.exit_code == 0 and not r.timed_out
        # The exec log keeps what was typed and what came back (a replay after a reconnect).
        with Client(daemon) as c:
            chunks = c.call("exec.logs", {"sandboxId": sb.id, "execId": pty.exec_id})["chunks"]
        streams = {ch["stream"] for ch in chunks}
        assert streams == {"pty", "stdin"}, streams
        typed = "".join(ch["data"] for ch in chunks if ch["stream"] == "stdin")
        assert "x = 6*7\r" in typed and "exit()\r" in typed


def test_stty_size_follows_resize_and_term_is_set(daemon):
    with Sandbox.create() as sb:
        screen = Screen()
        pty = sb.pty.create(30, 100, screen, cmd="trap 'stty size' WINCH; echo TERM=$TERM; stty size; while :; do sleep 0.05; done")
        at = screen.wait_for("30 100")
        assert "TERM=xterm-256color" in screen.text()
        pty.resize(40, 120)
        screen.wait_for("40 120", after=at)
        pty.kill()
        r = pty.wait(30)
        assert r.signal == "SIGKILL"


def test_stdin_pipe_answers_a_prompt_and_closes_with_eof(daemon):
    with Sandbox.create() as sb:
        h = sb.commands.run("read name; echo hi $name; cat; echo end", background=True, stdin=True)
        h.send_stdin("bob\n")
        h.send_stdin(b"more\n")
        h.close_stdin()
        r = h.wait()
        assert r.exit_code == 0 and r.stdout == "hi bob\nmore\nend\n", r.stdout
        with pytest.raises(Exception) as e:
            h.send_stdin("late")
        assert "ended" in str(e.value) or "closed" in str(e.value)
        # A command started without stdin=True has no stdin to write to.
        plain = sb.commands.run("sleep 5", background=True)
        with pytest.raises(Exception) as e:
            plain.send_stdin("x")
        assert "no open stdin" in str(e.value)
        plain.kill()


def daemon_rss_kib(sock: str) -> int:
    out = subprocess.run(["pgrep", "-f", f"serve --socket {sock}"], capture_output=True, text=True).stdout.split()
    return max(int(l.split()[1]) for pid in out for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:"))


def test_64_mib_through_exec_input_arrives_byte_identical_with_bounded_daemon_memory(daemon):
    payload = os.urandom(1 << 20) * 64
    want = hashlib.sha256(payload).hexdigest()
    with Sandbox.create() as sb:
        before = daemon_rss_kib(daemon)
        h = sb.commands.run("cat | sha256sum", background=True, stdin=True)
        for i in range(0, len(payload), 1 << 20):
            h.send_stdin(payload[i:i + (1 << 20)])
        h.close_stdin()
        r = h.wait()
        grew = daemon_rss_kib(daemon) - before
        assert r.stdout.split()[0] == want
        print(f"daemon RSS grew {grew // 1024} MiB while 64 MiB went through exec.input")
        assert grew < 128 << 10


def test_input_a_command_never_reads_fails_after_the_wait_with_limit_exceeded(daemon):
    with Sandbox.create() as sb:
        h = sb.commands.run("sleep 60", background=True, stdin=True)
        t0 = time.monotonic()
        with pytest.raises(LimitExceededError):
            for _ in range(64):   # 64 MiB: far past the pipe's and the daemon's window
                h.send_stdin(b"x" * (1 << 20))
        assert time.monotonic() - t0 < 30
        h.kill()


def test_yield_style_command_answers_early_then_finishes_with_wait(daemon):
    with Sandbox.create() as sb:
        t0 = time.monotonic()
        h = sb.commands.run("echo started; sleep 2; echo done", yield_ms=500)
        took = time.monotonic() - t0
        assert h.first.running and 0.4 < took < 1.8, took
        assert h.first.stdout == "started\n"
        p = h.poll(yield_ms=10_000)
        assert not p.running and p.exit_code == 0 and p.stdout == "done\n", p
        # maxOutputBytes keeps the head and the tail and says how much it left out.
        h = sb.commands.run("seq 1 100000", yield_ms=10_000, max_output_bytes=1000)
        assert not h.first.running and h.first.omitted_bytes > 500_000
        assert h.first.stdout.startswith("1\n2\n") and h.first.stdout.endswith("99999\n100000\n")
        full = sb.commands.run("true")  # the exec is a step; exec.logs still has every chunk
        assert full.exit_code == 0


def test_a_pty_exec_outlives_its_client_and_another_client_reattaches(daemon, sandpit):
    c1 = Client(daemon)
    sb = Sandbox.connect(c1.call("sandbox.create", {})["sandboxId"], client=c1)
    screen = Screen()
    pty = sb.pty.create(24, 80, screen, cmd=["bash", "--norc", "-i"])
    pty.send_input("echo marker-$((40+1))\r")
    screen.wait_for("marker-41")
    c1.close()   # the client goes away mid-session: the exec keeps running (documented rule)
    with Client(daemon) as c2:
        ids = {"sandboxId": sb.id, "execId": pty.exec_id}
        [e] = [e for e in c2.call("exec.list", {"sandboxId": sb.id})["execs"] if e["execId"] == pty.exec_id]
        assert e["state"] == "running"
        replay = c2.call("exec.logs", ids)
        assert "marker-41" in "".join(ch["data"] for ch in replay["chunks"] if ch["stream"] == "pty")
        c2.call("exec.input", {**ids, "data": "echo again-$((1+1))\r"})
        seen = ""
        since = replay["chunks"][-1]["seq"] + 1
        for _ in range(50):
            r = c2.call("exec.wait", {**ids, "yieldMs": 200, "sinceSeq": since})
            seen += "".join(ch["data"] for ch in r["chunks"] if ch["stream"] == "pty")
            since = r["nextSeq"]
            if "again-2" in seen:
                break
        assert "again-2" in seen
        c2.call("exec.input", {**ids, "data": "exit 3\r"})
        r = c2.call("exec.wait", {**ids, "sinceSeq": since})
        assert r["running"] is False and r["exitCode"] == 3
        c2.call("sandbox.delete", {"sandboxId": sb.id})


def test_terminal_attacks_on_a_pty_exec_are_refused(daemon):
    """TIOCSTI (push input into a terminal) and TIOCLINUX stay blocked on the sandbox's own PTY; the
    controlling terminal (/dev/tty) is the exec's own."""
    code = ("import fcntl, termios, os\n"
            "for name, req in (('TIOCSTI', termios.TIOCSTI), ('TIOCLINUX', 0x541C)):\n"
            "    try:\n"
            "        fcntl.ioctl(0, req, b'x')\n"
            "        print(name, 'ALLOWED')\n"
            "    except OSError as e:\n"
            "        print(name, 'refused', e.errno)\n"
            "open('/dev/tty', 'w').write('via-dev-tty\\n')\n")
    with Sandbox.create() as sb:
        sb.files.write("probe.py", code)
        screen = Screen()
        pty = sb.pty.create(24, 80, screen, cmd=["python3", "probe.py"])
        r = pty.wait(30)
        out = screen.text()
        assert r.exit_code == 0, out
        assert "TIOCSTI refused" in out and "TIOCLINUX refused" in out and "ALLOWED" not in out, out
        assert "via-dev-tty" in out


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is installed by scripts/install-deps")
def test_cli_exec_it_gives_a_real_terminal_under_tmux(daemon, sandpit, tmp_path):
    with Client(daemon) as c:
        sid = c.call("sandbox.create", {})["sandboxId"]
    session = f"sp{os.getpid()}"
    done = tmp_path / "status"
    cmd = f"{sandpit} exec -it --socket {daemon} {sid} -- python3 -q; echo exit=$? > {done}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "100", "-y", "30", cmd], check=True)

    def screen() -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout

    def wait_for(needle):
        for _ in range(300):
            if needle in screen():
                return
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not on the screen:\n{screen()}")
    try:
        wait_for(">>>")
        subprocess.run(["tmux", "send-keys", "-t", session, "import os; print(6*7, os.get_terminal_size())", "Enter"], check=True)
        wait_for("42 os.terminal_size(columns=100, lines=30)")
        subprocess.run(["tmux", "resize-window", "-t", session, "-x", "120", "-y", "40"], check=True)
        time.sleep(0.5)
        subprocess.run(["tmux", "send-keys", "-t", session, "print(os.get_terminal_size())", "Enter"], check=True)
        wait_for("columns=120, lines=40")
        subprocess.run(["tmux", "send-keys", "-t", session, "exit(5)", "Enter"], check=True)
        for _ in range(200):
            if done.exists():
                break
            time.sleep(0.05)
        assert done.read_text().strip() == "exit=5"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        with Client(daemon) as c:
            c.call("sandbox.delete", {"sandboxId": sid})
