"""The OpenAI Agents SDK's sandbox client: a real ``Runner.run`` of a ``SandboxAgent`` whose scripted
model calls the SDK's own tools in parallel (``exec_command`` with and without a terminal,
``write_stdin``, ``apply_patch``) in one Sandpit sandbox; snapshots persisted as checkpoints and as tar
archives, resumed after the session was deleted; and the session contract directly (exit codes,
timeouts, users, files of any size in parallel, bounded reads, terminals)."""
import asyncio
import io
import json
import re
from pathlib import Path

import pytest

pytest.importorskip("agents.sandbox")

from agents import Runner  # noqa: E402
from agents.items import ModelResponse  # noqa: E402
from agents.models.interface import Model  # noqa: E402
from agents.run_config import RunConfig, SandboxRunConfig  # noqa: E402
from agents.sandbox import LocalSnapshotSpec, Manifest, SandboxAgent  # noqa: E402
from agents.sandbox.errors import (ExecTimeoutError, ExecTransportError, PtySessionNotFoundError,  # noqa: E402
                                   WorkspaceArchiveWriteError, WorkspaceReadNotFoundError)
from agents.usage import Usage  # noqa: E402
from openai.types.responses import (ResponseCustomToolCall, ResponseFunctionToolCall,  # noqa: E402
                                    ResponseOutputMessage, ResponseOutputText)

from sandpit import Client  # noqa: E402
from sandpit.adapters.openai_agents import (SandpitSandboxClient, SandpitSandboxClientOptions,  # noqa: E402
                                            SandpitSandboxSession)


def fn(name, args, i):
    return ResponseFunctionToolCall(type="function_call", name=name, arguments=json.dumps(args), call_id=f"c{i}",
                                    id=f"fc{i}", status="completed")


def say(text):
    return ResponseOutputMessage(type="message", id="m", role="assistant", status="completed",
                                 content=[ResponseOutputText(type="output_text", text=text, annotations=[])])


class ScriptedModel(Model):
    """Answers each turn from ``turns``: a function of the tool outputs so far to the items to emit."""

    def __init__(self, turns):
        self.turns = list(turns)
        self.outputs = {}

    async def get_response(self, system_instructions, input, model_settings, tools, output_schema, handoffs,
                           tracing, *, previous_response_id=None, conversation_id=None, prompt=None):
        for item in input if isinstance(input, list) else []:
            if isinstance(item, dict) and item.get("type") in ("function_call_output", "custom_tool_call_output"):
                out = item.get("output")
                self.outputs[item["call_id"]] = out if isinstance(out, str) else json.dumps(out)
        self.tools = sorted(t.name for t in tools)
        return ModelResponse(output=self.turns.pop(0)(self.outputs), usage=Usage(), response_id=None)

    def stream_response(self, *a, **kw):
        raise NotImplementedError


def sandboxes(role=None):
    """Live sandboxes this client made: sessions' and snapshots' (``role``: one of them)."""
    c = Client()
    try:
        return [s for s in c.list_sandboxes() if "openai-agents.session" in s.get("metadata", {})
                and role in (None, s["metadata"].get("openai-agents.role"))]
    finally:
        c.close()


def delete_snapshots(before):
    c = Client()
    try:
        for s in sandboxes("snapshot"):
            if s["sandboxId"] not in before:
                c.call("sandbox.delete", {"sandboxId": s["sandboxId"]})
    finally:
        c.close()


def test_a_sandbox_agent_runs_parallel_tool_calls_in_one_sandbox(daemon):
    before = {s["sandboxId"] for s in sandboxes()}
    patch = "*** Begin Patch\n*** Add File: notes/plan.md\n+step one\n+step two\n*** End Patch\n"

    def turn1(_):
        return [fn("exec_command", {"cmd": "echo hello > greet.txt && pwd && id -un", "yield_time_ms": 5000}, 1),
                fn("exec_command", {"cmd": "python3 -q -i", "tty": True, "yield_time_ms": 1000}, 2),
                fn("exec_command", {"cmd": "read line; echo got:$line", "yield_time_ms": 500}, 3),
                fn("exec_command", {"cmd": "seq 1 200000", "max_output_tokens": 200, "yield_time_ms": 5000}, 4),
                ResponseCustomToolCall(type="custom_tool_call", name="apply_patch", input=patch, call_id="c5",
                                       id="ct5")]

    def session_of(out):
        return int(re.search(r"session ID (\d+)", out).group(1))

    def turn2(o):
        return [fn("write_stdin", {"session_id": session_of(o["c2"]), "chars": "print(6*7)\r", "yield_time_ms": 2000}, 6),
                fn("write_stdin", {"session_id": session_of(o["c3"]), "chars": "typed\n", "yield_time_ms": 2000}, 7),
                fn("exec_command", {"cmd": "cat greet.txt notes/plan.md", "yield_time_ms": 5000}, 8)]

    def turn3(o):
        return [fn("write_stdin", {"session_id": session_of(o["c2"]), "chars": "exit()\r", "yield_time_ms": 2000}, 9)]

    model = ScriptedModel([turn1, turn2, turn3, lambda o: [say("done")]])
    agent = SandboxAgent(name="coder", instructions="Use the tools.", model=model)
    config = RunConfig(sandbox=SandboxRunConfig(client=SandpitSandboxClient(),
                                                options=SandpitSandboxClientOptions(template="default")))
    result = asyncio.run(Runner.run(agent, "go", run_config=config, max_turns=8))
    assert result.final_output == "done"
    o = model.outputs
    assert {"exec_command", "write_stdin", "apply_patch"} <= set(model.tools)
    assert "Process exited with code 0" in o["c1"] and "/workspace\nuser\n" in o["c1"]
    assert "session ID" in o["c2"] and "session ID" in o["c3"]          # still running after their yield
    assert "Original token count" in o["c4"] and "200000" in o["c4"]     # truncated: head and tail kept
    assert "42" in o["c6"]                                               # typed into the terminal's REPL
    assert "got:typed" in o["c7"] and "Process exited with code 0" in o["c7"]
    assert o["c8"].endswith("hello\nstep one\nstep two")
    assert "Process exited with code 0" in o["c9"]
    # The run deleted its sandbox; the snapshot the Runner persists at the end is a hibernated fork,
    # kept for a day.
    left = [s for s in sandboxes() if s["sandboxId"] not in before]
    assert [(s["state"], s["metadata"]["openai-agents.role"]) for s in left] == [("hibernated", "snapshot")]
    import datetime
    keep = datetime.datetime.fromisoformat(left[0]["deleteAt"].replace("Z", "+00:00")) - datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(hours=23) < keep <= datetime.timedelta(hours=24)
    delete_snapshots(before)


async def _persisted_then_resumed(tmp_path, persistence):
    client = SandpitSandboxClient()
    session = await client.create(snapshot=LocalSnapshotSpec(base_path=tmp_path), manifest=Manifest(),
                                  options=SandpitSandboxClientOptions(workspace_persistence=persistence))
    await session.start()
    await session.write(Path("src/app.py"), io.BytesIO(b"print('v1')\n"))
    r = await session.exec("mkdir -p data && seq 1 3 > data/n.txt && echo outside > /home/user/outside.txt")
    assert r.exit_code == 0
    first = session.state.sandbox_id
    await session.stop()                       # persists the snapshot
    await session.write(Path("src/app.py"), io.BytesIO(b"print('v2, after the snapshot')\n"))
    payload = client.serialize_session_state(session.state)
    await session.shutdown()
    await client.delete(session)
    state = client.deserialize_session_state(json.loads(json.dumps(payload)))
    resumed = await client.resume(state)
    await resumed.start()
    try:
        assert resumed.state.sandbox_id != first
        info = await (await resumed._inner._sandbox()).refresh()
        assert info["metadata"]["openai-agents.role"] == "session" and info["state"] == "running"
        app = (await resumed.read(Path("src/app.py"))).read()
        n = (await resumed.read(Path("data/n.txt"))).read()
        outside = await resumed.exec("cat /home/user/outside.txt 2>/dev/null || echo missing")
        return app, n, outside.stdout.decode()
    finally:
        await resumed.shutdown()
        await client.delete(resumed)


def test_a_snapshot_resumes_after_its_session_was_deleted_from_a_checkpoint_or_a_tar(daemon, tmp_path):
    before = {s["sandboxId"] for s in sandboxes()}
    # A checkpoint: the whole sandbox as it was at stop(), files outside the workspace too.
    app, n, outside = asyncio.run(_persisted_then_resumed(tmp_path / "ck", "checkpoint"))
    assert (app, n, outside) == (b"print('v1')\n", b"1\n2\n3\n", "outside\n")
    snap = next((tmp_path / "ck").iterdir()).read_bytes()
    assert snap.startswith(b"sandpit-workspace-reference/1\n") and len(snap) < 1000
    # A tar: the workspace only, portable.
    app, n, outside = asyncio.run(_persisted_then_resumed(tmp_path / "tar", "tar"))
    assert (app, n, outside) == (b"print('v1')\n", b"1\n2\n3\n", "missing\n")
    with __import__("tarfile").open(next((tmp_path / "tar").iterdir())) as t:
        assert {"./src/app.py", "./data/n.txt"} <= set(t.getnames())
    # Nothing left but the last snapshot fork of the checkpoint run (kept for its reference).
    left = [s for s in sandboxes() if s["sandboxId"] not in before]
    assert [s["metadata"]["openai-agents.role"] for s in left] == ["snapshot"]
    delete_snapshots(before)


def test_a_reference_to_a_deleted_snapshot_fails_clearly(daemon, tmp_path):
    async def go():
        client = SandpitSandboxClient()
        s = await client.create(snapshot=LocalSnapshotSpec(base_path=tmp_path))
        await s.start()
        ref = await s._inner.persist_workspace()
        holder = json.loads(ref.read().split(b"\n", 1)[1])["sandboxId"]
        await (await s._inner._sandbox(holder)).delete()
        with pytest.raises(WorkspaceArchiveWriteError) as e:
            await s._inner.hydrate_workspace(io.BytesIO(b"sandpit-workspace-reference/1\n" +
                                                        json.dumps({"sandboxId": holder}).encode()))
        assert e.value.context["reason"] == "sandpit_snapshot_gone" and "tar" in str(e.value)
        await client.delete(s)
    asyncio.run(go())


def test_the_session_contract_under_parallel_calls_and_large_files(daemon):
    async def go():
        client = SandpitSandboxClient()
        # Concurrent first calls share one connection, and each gets its own sandbox.
        sessions = await asyncio.gather(*(client.create(manifest=Manifest()) for _ in range(4)))
        assert len(client._connections._by_loop) == 1
        assert len({s.state.sandbox_id for s in sessions}) == 4
        for s in sessions:
            await s.start()
        s = sessions[0]
        inner: SandpitSandboxSession = s._inner
        try:
            assert (await s.exec("exit 3")).exit_code == 3
            assert (await s.exec("id -u", user="root")).stdout == b"0\n"
            with pytest.raises(ExecTransportError, match="'user' or 'root'"):
                await s.exec("true", user="alice")
            with pytest.raises(ExecTimeoutError):
                await s.exec("sleep 30", timeout=0.5)
            with pytest.raises(WorkspaceReadNotFoundError):
                await s.read(Path("nope.txt"))
            blobs = {f"big/{i}.bin": bytes([i]) * ((20 << 20) + i) for i in range(4)}
            await asyncio.gather(*(s.write(Path(p), io.BytesIO(b)) for p, b in blobs.items()),
                                 *(t.exec("seq 1 100000 | wc -l") for t in sessions[1:]))
            back = await asyncio.gather(*(s.read(Path(p)) for p in blobs))
            assert [b.read() for b in back] == list(blobs.values())
            assert await s.read_bounded(Path("big/1.bin"), max_bytes=10) == b"\x01" * 10
            await s.write(Path("mine.txt"), io.BytesIO(b"by root\n"), user="root")
            assert (await s.exec("stat -c %U mine.txt")).stdout == b"root\n"
            # A terminal: Ctrl-C reaches its foreground program.
            u = await inner.pty_exec_start("sleep 60; echo never", tty=True, yield_time_s=0.3)
            assert u.process_id is not None and u.exit_code is None
            u = await inner.pty_write_stdin(session_id=u.process_id, chars="\x03", yield_time_s=2)
            assert u.process_id is None and u.exit_code not in (None, 0) and b"never" not in u.output
            with pytest.raises(PtySessionNotFoundError):
                await inner.pty_write_stdin(session_id=u.process_id or 1, chars="x")
            # A command still running when the session stops is ended.
            u = await inner.pty_exec_start("sleep 60", yield_time_s=0.3)
            exec_id = inner._pty[u.process_id][0]
            await inner.pty_terminate_all()
            c = Client()
            try:
                r = c.call("exec.wait", {"sandboxId": s.state.sandbox_id, "execId": exec_id, "yieldMs": 5000})
            finally:
                c.close()
            assert r["running"] is False
        finally:
            for t in sessions:
                await client.delete(t)
        assert not [x for x in sandboxes() if x["sandboxId"] in {t.state.sandbox_id for t in sessions}]
    asyncio.run(go())
