"""The synchronous client against the real daemon."""
import os
import time
import threading

import pytest

from sandpit import (Client, CommandHandle, InvalidParamsError, NotFoundError, PermissionDeniedError, Sandbox,
                     SandpitError)


def test_code_state_streams_and_results(daemon):
    seen = []
    with Sandbox.create() as sb:
        assert sb.run_code("x = 20\nimport os").error is None
        ex = sb.run_code("print('a'); print('b', file=__import__('sys').stderr)\nx + 22",
                         on_stdout=lambda t: seen.append(("out", t)), on_stderr=lambda t: seen.append(("err", t)))
        assert ex.text == "42"
        assert ex.execution_count == 2
        assert "".join(ex.logs.stdout) == "a\n" and "".join(ex.logs.stderr) == "b\n"
        assert "".join(t for k, t in seen if k == "out") == "a\n" and "".join(t for k, t in seen if k == "err") == "b\n"
        err = sb.run_code("def f():\n    raise ValueError('bad input')\nf()")
        assert err.error is not None and err.error.name == "ValueError" and err.error.value == "bad input"
        assert "<cell-3>" in err.error.traceback
        assert sb.run_code("x").text == "20", "state survives a cell that raised"


def test_notebook_idioms_run_in_a_sandbox(daemon):
    """What LLM-written notebook code does, in a real sandbox: display(), !cmd, magics, top-level await,
    and the cell's value kept apart from what it displayed."""
    with Sandbox.create() as sb:
        ex = sb.run_code("display('shown')\nname = 'sandbox'\n!echo hello {name}\nfiles = !ls /\n%cd /tmp\n"
                         "import asyncio\nawait asyncio.sleep(0.01, result=('usr' in files, len(files.n) > 0))")
        assert ex.error is None, ex.error
        assert [r.text for r in ex.results] == ["'shown'", "(True, True)"]
        assert [r.is_main_result for r in ex.results] == [False, True] and ex.text == "(True, True)"
        assert "".join(ex.logs.stdout) == "hello sandbox\n/tmp\n"
        ex = sb.run_code("%%bash\nid -un; pwd")
        assert "".join(ex.logs.stdout) == "user\n/tmp\n"   # the same process's cwd: %cd moved it
        ex = sb.run_code("%%writefile notes.txt\nfrom a cell magic")
        assert sb.files.read("/tmp/notes.txt") == "from a cell magic"
        ex = sb.run_code("%pip --version\n%load_ext autoreload")
        assert "pip " in "".join(ex.logs.stdout) and "does nothing here" in "".join(ex.logs.stderr)
        ex = sb.run_code("%conda install numpy")
        assert ex.error.name == "UsageError" and "%pip" in ex.error.value
        # A checkpointed step like any cell: restoring to it brings the interpreter back.
        sb.run_code("x = await asyncio.sleep(0, result=41)")
        step = sb.run_code("x += 1").step
        sb.run_code("x = 0")
        sb.restore(step)
        assert sb.run_code("x").text == "42"


def test_commands_foreground_background_and_timeout(daemon):
    with Sandbox.create() as sb:
        chunks = []
        r = sb.commands.run("echo out; echo err >&2; exit 3", on_stdout=chunks.append)
        assert (r.exit_code, r.stdout, r.stderr) == (3, "out\n", "err\n")
        assert chunks == ["out\n"]
        r = sb.commands.run(["python3", "-c", "import sys; print(sys.stdin.read().upper())"], stdin="shout")
        assert r.stdout == "SHOUT\n" and r.ok
        h = sb.commands.run("for i in 1 2 3; do echo $i; sleep 0.05; done", background=True)
        assert isinstance(h, CommandHandle)
        got = []
        done = h.wait(on_stdout=got.append)
        assert done.exit_code == 0 and "".join(got) == "1\n2\n3\n" == done.stdout
        slow = sb.commands.run("sleep 30", timeout=0.3)
        assert slow.timed_out and not slow.ok


def test_files_roundtrip_upload_download_and_watch(daemon, tmp_path):
    with Sandbox.create() as sb:
        assert sb.files.write("notes/a.txt", "hello") == 5
        assert sb.files.read("/home/user/notes/a.txt") == "hello"
        sb.files.write("bin.dat", bytes(range(256)))
        assert sb.files.read("bin.dat", format="bytes") == bytes(range(256))
        names = {e.name for e in sb.files.list("/home/user", recursive=True)}
        assert {"notes", "a.txt", "bin.dat"} <= names
        assert sb.files.exists("notes/a.txt") and not sb.files.exists("nope")
        big = tmp_path / "big.bin"
        payload = os.urandom(9 << 20)   # more than one upload chunk
        big.write_bytes(payload)
        assert sb.files.upload(str(big), "/home/user/big.bin") == len(payload)
        assert sb.commands.run("sha256sum big.bin | cut -c1-64").stdout.strip() == __import__("hashlib").sha256(payload).hexdigest()
        back = tmp_path / "back.bin"
        assert sb.files.download("/home/user/big.bin", str(back)) == len(payload)
        assert back.read_bytes() == payload
        events = []
        got = threading.Event()

        def on_event(e):
            events.append(e)
            if e.type == "created" and e.path.endswith("/w/new.txt"):
                got.set()
        sb.files.mkdir("w")
        w = sb.files.watch("w", on_event)
        sb.commands.run("echo x > w/new.txt")
        assert got.wait(10), f"no created event, got {events}"
        w.stop()


def test_checkpoints_restore_and_fork(daemon):
    with Sandbox.create() as sb:
        sb.commands.run("echo one > f")                  # step 1
        sb.commands.run("echo two > f")                  # step 2
        sb.run_code("v = 7")                             # step 3, an interpreter context
        steps = [c.step for c in sb.checkpoints.list()]
        assert {1, 2, 3} <= set(steps)
        r = sb.restore(step=1)
        assert r.restored == ["filesystem"] and "interpreter" in r.lost
        assert sb.files.read("f") == "one\n"
        again = sb.run_code("'v' in globals()")
        assert again.restarted and again.text == "False", "the interpreter restarts fresh and says so"
        forks = sb.fork(count=2, step=1)
        try:
            assert len(forks) == 2
            forks[0].files.write("f", "changed")
            assert forks[1].files.read("f") == "one\n", "forks never see each other's writes"
            assert sb.files.read("f") == "one\n"
        finally:
            for f in forks:
                f.delete()


def test_a_damaged_checkpoint_is_refused_as_a_typed_error(daemon):
    """A restore or fork of a checkpoint whose image was written to after it was sealed raises
    CheckpointCorruptError and changes nothing."""
    from sandpit import CheckpointCorruptError
    with Sandbox.create() as sb:
        sb.commands.run("echo one > f")
        ck = sb.checkpoints.list()[-1]
        sb.commands.run("echo two > f")
        image = os.path.join(os.path.dirname(daemon), "data", "store", "sandboxes", sb.id, "checkpoints", ck.checkpoint_id + ".img")
        for _ in range(200):
            if os.path.exists(image + ".sum"):
                break
            time.sleep(0.05)
        with open(image, "r+b") as f:
            f.seek(os.lseek(f.fileno(), 1 << 20, os.SEEK_DATA) + 4096)
            b = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([b[0] ^ 0xFF]))
        with pytest.raises(CheckpointCorruptError) as e:
            sb.restore(checkpoint_id=ck.checkpoint_id)
        assert e.value.rpc_code == -32052 and e.value.data.get("checkpointId") == ck.checkpoint_id
        with pytest.raises(CheckpointCorruptError):
            sb.fork(count=1, checkpoint_id=ck.checkpoint_id)
        assert sb.files.read("f") == "two\n", "the sandbox is as it was"


def test_pause_hibernate_keepalive_and_context_manager_deletes(daemon, client):
    sb = Sandbox.create(client=client)
    with sb:
        assert sb.pause()["state"] == "paused"
        assert sb.resume()["state"] == "running"
        assert sb.hibernate()["state"] == "hibernated"
        assert sb.commands.run("echo awake").stdout == "awake\n", "a request wakes it"
        assert "keepaliveUntil" in sb.keepalive(5)
    with pytest.raises(NotFoundError) as e:
        client.call("sandbox.get", {"sandboxId": sb.id})
    assert e.value.code == "not_found" and e.value.rpc_code == -32004


def test_errors_are_typed_with_stable_codes(client):
    with pytest.raises(InvalidParamsError) as e:
        client.call("sandbox.create", {"tempalte": "default"})
    assert e.value.code == "invalid_params" and e.value.field == "tempalte" and e.value.rpc_code == -32602
    with pytest.raises(NotFoundError):
        Sandbox.connect("sb_doesnotexist", client=client)
    with pytest.raises(SandpitError) as e:
        client.call("no.such.method")
    assert e.value.code == "method_not_found" and e.value.data["method"] == "no.such.method"
    with pytest.raises(PermissionDeniedError) as e:
        Sandbox.create(client=client, limits={"memoryBytes": 1 << 40})
    assert e.value.data.get("field") == "limits.memoryBytes"
    with Sandbox.create(client=client) as sb:
        with pytest.raises(NotFoundError):
            sb.restore(step=99)
        with pytest.raises(InvalidParamsError):
            sb.commands.run("true", cwd="relative/path")


def test_many_threads_share_one_connection(client):
    sb = Sandbox.create(client=client)
    try:
        results = [None] * 8

        def work(i):
            results[i] = sb.commands.run(f"sleep 0.2; echo {i}").stdout
        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [f"{i}\n" for i in range(8)]
    finally:
        sb.delete()


def test_without_a_socket_the_client_starts_its_own_daemon(sandpit, tmp_path, monkeypatch):
    monkeypatch.delenv("SANDPIT_SOCKET", raising=False)
    with Client(sandpit=sandpit, serve_args=["--data-dir", str(tmp_path / "data"), "--warm-pool", "0"]) as c:
        assert c.info()["caller"]["admin"] is True   # stdio: the child's own client
        with Sandbox.create(client=c) as sb:
            assert sb.run_code("6 * 7").text == "42"


def test_an_upload_that_hit_the_disk_limit_cannot_be_committed(client):
    import base64
    from sandpit import LimitExceededError, NotFoundError
    sid = client.call("sandbox.create", {"limits": {"diskBytes": 16 << 20}})["sandboxId"]
    try:
        up = client.call("fs.upload", {"sandboxId": sid, "path": "big.bin"})["uploadId"]
        chunk = base64.b64encode(b"\0" * (8 << 20)).decode()
        with pytest.raises(LimitExceededError):
            for i in range(4):
                client.call("fs.uploadChunk", {"uploadId": up, "offset": i * (8 << 20), "data": chunk})
        with pytest.raises(LimitExceededError) as e:
            client.call("fs.uploadCommit", {"uploadId": up})
        assert "dropped" in str(e.value)
        with pytest.raises(NotFoundError):
            client.call("fs.stat", {"sandboxId": sid, "path": "big.bin"})
        names = [x["name"] for x in client.call("fs.list", {"sandboxId": sid, "path": "/home/user"})["entries"]]
        assert not [n for n in names if "upload" in n], names
    finally:
        client.call("sandbox.delete", {"sandboxId": sid})


def test_a_hostile_archive_fails_the_build_naming_the_entry(client, tmp_path):
    import io
    import tarfile
    from sandpit import BuildFailedError
    os.chmod(tmp_path, 0o755)
    with tarfile.open(tmp_path / "evil.tar", "w") as t:
        for name, data in (("../../escape.txt", b"pwned\n"), ("bin/ok", b"")):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    (tmp_path / "Dockerfile").write_text(f"FROM {tmp_path}/evil.tar\n")
    with pytest.raises(BuildFailedError) as e:
        client.call("template.build", {"name": "evil", "file": str(tmp_path / "Dockerfile")})
    assert "../../escape.txt" in str(e.value) and e.value.code == "build_failed"
    assert not os.path.exists(tmp_path.parent.parent / "escape.txt")


def test_request_ids_of_any_size_and_type_are_echoed_exactly(daemon, client):
    import json
    import socket
    sid = client.call("sandbox.create", {})["sandboxId"]
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(daemon)
        f = s.makefile("rwb")
        for rid in (2 ** 64 + 5, -(2 ** 70), "id-ü", 0):
            f.write((json.dumps({"jsonrpc": "2.0", "id": rid, "method": "exec.run",
                                 "params": {"sandboxId": sid, "cmd": ["echo", "x"]}}) + "\n").encode())
            f.flush()
            seen = []
            while True:
                m = json.loads(f.readline())
                if m.get("method") == "exec.output":
                    seen.append(m["params"]["requestId"])
                    continue
                assert m["id"] == rid and type(m["id"]) is type(rid) and "result" in m, m
                break
            assert seen and all(r == rid for r in seen), seen
        s.close()
    finally:
        client.call("sandbox.delete", {"sandboxId": sid})


def test_each_command_says_what_ended_it_beside_an_oom_killed_neighbour(client):
    """A memory hog is OOM-killed while two commands beside it run into their timeouts: the hog is
    oomKilled (not timedOut), the others timedOut (not oomKilled); alone, a timeout is only a timeout."""
    sid = client.call("sandbox.create", {"limits": {"memoryBytes": 128 << 20}})["sandboxId"]
    try:
        sb = Sandbox.connect(sid, client=client)
        slow = [sb.commands.run(["sleep", "30"], background=True, timeout=3) for _ in range(2)]
        time.sleep(0.3)
        hog = sb.commands.run(["python3", "-c", "x = bytearray(1 << 30); x[::4096] = b'x' * len(x[::4096])"], timeout=20)
        assert hog.oom_killed and not hog.timed_out, hog.raw
        for h in slow:
            r = h.wait()
            assert r.timed_out and not r.oom_killed, r.raw
        alone = sb.commands.run(["sleep", "30"], timeout=0.5)
        assert alone.timed_out and not alone.oom_killed, alone.raw
    finally:
        client.call("sandbox.delete", {"sandboxId": sid})


def test_a_detached_stream_nobody_reads_is_stopped(client):
    sid = client.call("sandbox.create", {})["sandboxId"]
    try:
        flood = client.call("exec.run", {"sandboxId": sid, "cmd": ["yes"], "background": True})["execId"]
        quiet = client.call("exec.run", {"sandboxId": sid, "shell": "seq 1 1000; sleep 30", "background": True})["execId"]
        state = {}
        for _ in range(300):
            state = {e["execId"]: e["state"] for e in client.call("exec.list", {"sandboxId": sid})["execs"]}
            if state.get(flood) != "running":
                break
            time.sleep(0.1)
        assert state.get(flood) != "running", "a detached `yes` nobody reads keeps running"
        r = client.call("exec.logs", {"sandboxId": sid, "execId": flood})["result"]
        assert "output went unread" in r.get("killedBy", ""), r
        assert state.get(quiet) == "running", "a command with little output is left alone"
    finally:
        client.call("sandbox.delete", {"sandboxId": sid})


def test_files_of_any_size_written_in_parallel_and_a_line_over_the_limit_answered(client):
    """Frameworks write whole files in one call, several at once: bytes, text and appends past one
    request's worth (the daemon takes 16 MiB lines) all arrive whole; a raw request over the limit is
    answered with request_too_large (its id read from the line's head) instead of waiting forever."""
    import concurrent.futures
    import hashlib
    from sandpit import RequestTooLargeError
    sb = Sandbox.create(client=client)
    try:
        blobs = {f"b{i}.bin": os.urandom(24 << 20) for i in range(3)}
        texts = {f"t{i}.txt": (f"line {i}\n" * (3 << 20)) for i in range(2)}

        def put(name):
            data = blobs.get(name) or texts[name]
            return sb.files.write(f"big/{name}", data) == len(data.encode() if isinstance(data, str) else data)

        def grow():
            sb.files.write("big/log.txt", "head\n")
            return sb.files.write("big/log.txt", "z" * (18 << 20), append=True) == 5 + (18 << 20)
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            futs = [pool.submit(put, n) for n in [*blobs, *texts]] + [pool.submit(grow)]
            assert [f.result(timeout=300) for f in futs] == [True] * 6
        sums = dict(reversed(line.split()) for line in sb.commands.run("cd big && sha256sum *").stdout.splitlines())
        want = {n: hashlib.sha256(d).hexdigest() for n, d in blobs.items()}
        want.update({n: hashlib.sha256(t.encode()).hexdigest() for n, t in texts.items()})
        want["log.txt"] = hashlib.sha256(b"head\n" + b"z" * (18 << 20)).hexdigest()
        assert sums == want
        with pytest.raises(RequestTooLargeError) as e:
            client.call("server.info", {"pad": "x" * (17 << 20)}, timeout=60)
        assert e.value.data.get("limit") == 16 << 20
        assert client.call("server.info")["backend"]
    finally:
        sb.delete()
