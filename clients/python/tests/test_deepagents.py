"""The Deep Agents backend: a real `create_deep_agent` graph whose (scripted) model asks for several
tools in one turn, so LangGraph runs them in parallel against one Sandpit sandbox: Deep Agents' own
execute, write_file, read_file, edit_file, ls, glob and grep tools. Then the backend's contract
directly: merged output in order, exit codes, truncation, a timeout, per-file upload/download errors;
and the provider's get_or_create / delete."""
import threading

import pytest

pytest.importorskip("deepagents")

from deepagents import create_deep_agent  # noqa: E402
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel  # noqa: E402
from langchain_core.messages import AIMessage  # noqa: E402

from sandpit import Client  # noqa: E402
from sandpit.adapters.deepagents import SandpitProvider  # noqa: E402
from sandpit.errors import NotFoundError  # noqa: E402


class ScriptedModel(GenericFakeChatModel):
    """A chat model that answers from a script and accepts tools (what create_deep_agent binds)."""

    def bind_tools(self, tools, **kwargs):
        return self


def call(name, args, i):
    return {"name": name, "args": args, "id": f"call_{i}", "type": "tool_call"}


def test_a_deep_agent_runs_parallel_tool_calls_in_one_sandbox(daemon):
    provider = SandpitProvider()
    backend = provider.get_or_create()
    try:
        model = ScriptedModel(messages=iter([
            AIMessage(content="", tool_calls=[
                call("write_file", {"file_path": "/home/user/app/main.py", "content": "print('v1')\n"}, 1),
                call("write_file", {"file_path": "/home/user/app/util.py", "content": "X = 41\n"}, 2),
                call("execute", {"command": "mkdir -p /home/user/data && seq 1 5 > /home/user/data/n.txt && echo made"}, 3),
            ]),
            AIMessage(content="", tool_calls=[
                call("edit_file", {"file_path": "/home/user/app/util.py", "old_string": "X = 41", "new_string": "X = 42"}, 4),
                call("ls", {"path": "/home/user/app"}, 5),
                call("glob", {"pattern": "**/*.py", "path": "/home/user"}, 6),
                call("grep", {"pattern": "print", "path": "/home/user/app"}, 7),
            ]),
            AIMessage(content="", tool_calls=[
                call("execute", {"command": "cd /home/user/app && python3 -c 'import util; print(util.X)' && cat /home/user/data/n.txt | wc -l"}, 8),
                call("read_file", {"file_path": "/home/user/app/util.py"}, 9),
            ]),
            AIMessage(content="done"),
        ]))
        agent = create_deep_agent(model=model, backend=backend)
        result = agent.invoke({"messages": [{"role": "user", "content": "set X to 42"}]})
        tools = {m.tool_call_id: m.content for m in result["messages"] if m.type == "tool"}
        assert "made" in tools["call_3"], tools["call_3"]
        assert "main.py" in tools["call_5"] and "util.py" in tools["call_5"], tools["call_5"]
        assert "main.py" in tools["call_6"] and "util.py" in tools["call_6"], tools["call_6"]
        assert "main.py" in tools["call_7"], tools["call_7"]
        assert "42\n5" in tools["call_8"], tools["call_8"]
        assert "X = 42" in tools["call_9"], tools["call_9"]
        assert result["messages"][-1].content == "done"
        # What the agent wrote is in the sandbox, seen from outside the agent.
        assert backend.sandbox.files.read("/home/user/app/util.py") == "X = 42\n"
    finally:
        provider.delete(sandbox_id=backend.id)


def test_the_backend_contract_and_the_provider(daemon):
    provider = SandpitProvider(timeout=30)
    backend = provider.get_or_create()
    try:
        r = backend.execute("echo out1; echo err1 >&2; echo out2; exit 3")
        assert (r.output, r.exit_code, r.truncated) == ("out1\nerr1\nout2\n", 3, False)
        backend.max_output_bytes = 1000
        r = backend.execute("head -c 5000 /dev/zero | tr '\\0' x")
        assert r.truncated and len(r.output) == 1000
        r = backend.execute("sleep 20", timeout=1)
        assert r.exit_code == 124 and "timed out" in r.output
        up = backend.upload_files([("/home/user/a/b.bin", b"\x00\xff" * 10), ("/proc/nope/x", b"1"), ("/home/user/a", b"dir")])
        assert up[0].error is None and up[1].error and up[2].error, up
        down = backend.download_files(["/home/user/a/b.bin", "/home/user/missing", "/home/user/a"])
        assert down[0].content == b"\x00\xff" * 10
        assert [d.error for d in down[1:]] == ["file_not_found", "is_directory"], down
        # Eight threads at once on one backend (parallel tool calls).
        outs, threads = {}, []
        for i in range(8):
            threads.append(threading.Thread(target=lambda i=i: outs.__setitem__(i, backend.execute(f"echo {i}; sleep 0.2").output)))
            threads[-1].start()
        for t in threads:
            t.join(60)
        assert outs == {i: f"{i}\n" for i in range(8)}
        again = provider.get_or_create(sandbox_id=backend.id)
        assert again.execute("cat /home/user/a/b.bin | wc -c").output == "20\n"
    finally:
        provider.delete(sandbox_id=backend.id)
    provider.delete(sandbox_id=backend.id)   # already gone: fine
    with pytest.raises(NotFoundError):
        provider.get_or_create(sandbox_id=backend.id)
    with Client(daemon) as c:
        assert [s for s in c.list_sandboxes() if s["sandboxId"] == backend.id and s["state"] != "deleted"] == []
