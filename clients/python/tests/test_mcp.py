"""`sandpit mcp` driven by a scripted MCP client over stdio: initialize, tools/list, tools/call of each tool."""
import base64
import json
import subprocess

from sandpit import Client


class MCPClient:
    def __init__(self, argv):
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.n = 0

    def send(self, method, params=None, notify=False):
        msg = {"jsonrpc": "2.0", "method": method, "params": params or {}}
        if not notify:
            self.n += 1
            msg["id"] = self.n
        self.p.stdin.write((json.dumps(msg) + "\n").encode())
        self.p.stdin.flush()
        if notify:
            return None
        while True:
            line = self.p.stdout.readline()
            assert line, "the MCP server closed stdout: " + self.p.stderr.read().decode()[-2000:]
            m = json.loads(line)
            if m.get("id") == self.n:
                assert "error" not in m, m
                return m["result"]

    def tool(self, name, **args):
        r = self.send("tools/call", {"name": name, "arguments": args})
        text = "\n".join(c["text"] for c in r["content"] if c["type"] == "text")
        return r, text

    def close(self):
        self.p.stdin.close()
        return self.p.wait(60)


def test_mcp_round_trip_over_stdio(daemon, sandpit):
    c = MCPClient([sandpit, "mcp", "--socket", daemon, "--max-output-chars", "1000"])
    init = c.send("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                 "clientInfo": {"name": "pytest", "version": "1"}})
    assert init["serverInfo"]["name"] == "sandpit" and "tools" in init["capabilities"]
    c.send("notifications/initialized", notify=True)
    names = {t["name"] for t in c.send("tools/list")["tools"]}
    assert {"run_code", "run_command", "read_file", "write_file", "list_files", "list_checkpoints", "rollback", "fork"} <= names

    r, text = c.tool("run_code", code="x = 6\nprint('hello')\nx * 7")
    assert not r.get("isError") and "hello" in text and "42" in text
    r, text = c.tool("run_code", code="x + 1")
    assert "7" in text, "state persists between run_code calls"
    r, text = c.tool("run_code", code="def f():\n    raise KeyError('missing')\nf()")
    assert r["isError"] and "KeyError" in text and "<cell-" in text, text
    r, text = c.tool("run_command", command="echo out; echo err >&2; exit 3")
    assert r["isError"] and "exit code 3" in text and "out" in text and "err" in text
    r, text = c.tool("run_command", command="seq 1 100000")
    assert "characters" in text and "cut from the middle" in text and text.rstrip().endswith("100000"), text[-300:]
    assert len(text) < 2000, "long output is cut to the budget, head and tail kept"
    r, text = c.tool("write_file", path="notes/a.txt", content="first")
    assert not r.get("isError")
    assert c.tool("read_file", path="notes/a.txt")[1] == "first"
    assert "notes/a.txt" in c.tool("list_files", recursive=True)[1]
    c.tool("run_command", command="echo second > notes/a.txt")
    r, text = c.tool("list_checkpoints")
    steps = [int(l.split()[1].rstrip(":")) for l in text.splitlines() if l.startswith("step ")]
    assert len(steps) >= 4, text
    write_step = steps[-2]   # after write_file, before `echo second`
    r, text = c.tool("rollback", step=write_step)
    assert not r.get("isError") and "lost" in text
    assert c.tool("read_file", path="notes/a.txt")[1] == "first"
    r, text = c.tool("fork")
    assert not r.get("isError") and "fork" in text
    assert c.tool("read_file", path="notes/a.txt")[1] == "first"
    r, text = c.tool("read_file", path="/etc/shadow-does-not-exist")
    assert r["isError"] and "not_found" in text
    # A figure comes back as MCP image content.
    r, _ = c.tool("run_code", code="import struct, zlib, base64\n"
                  "class P:\n    def _repr_png_(self):\n"
                  "        raw = b'\\x00\\xff\\x00\\x00'\n"
                  "        def chunk(t, d): return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))\n"
                  "        return b'\\x89PNG\\r\\n\\x1a\\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 1, 1, 8, 2, 0, 0, 0)) + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b'')\n"
                  "P()")
    images = [x for x in r["content"] if x["type"] == "image"]
    assert images and images[0]["mimeType"] == "image/png"
    assert base64.b64decode(images[0]["data"]).startswith(b"\x89PNG")
    assert c.close() == 0
    with Client(daemon) as cl:
        left = [s for s in cl.list_sandboxes() if s.get("metadata", {}).get("client") == "mcp" and s["state"] != "deleted"]
        assert left == [], "the session's sandboxes are deleted when it ends"


# --- With the official `mcp` Python SDK as the client, as MCP hosts use it: parallel calls, cancellation,
# --- spec errors and sessions that end every way a client can end.

import asyncio
import signal
import time

import pytest


def mcp_sandboxes(daemon):
    with Client(daemon) as cl:
        return [s for s in cl.list_sandboxes() if s.get("metadata", {}).get("client") == "mcp" and s["state"] != "deleted"]


def test_official_sdk_parallel_mixed_calls_each_get_their_own_output(daemon, sandpit):
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    async def main():
        params = StdioServerParameters(command=sandpit, args=["mcp", "--socket", daemon])
        async with stdio_client(params) as (r, w):
            async with ClientSession(r, w) as s:
                await s.initialize()
                # The first calls race: one sandbox, and every call answered with its own output.
                calls = [s.call_tool("run_command", {"command": f"sleep 0.3; echo cmd-{i}-$((6*7))"}) for i in range(4)]
                calls += [s.call_tool("run_code", {"code": f"print('code-{i}', {i} * 100)"}) for i in range(2)]
                calls += [s.call_tool("write_file", {"path": "p/a.txt", "content": "x" * 100_000}),
                          s.call_tool("list_files", {"path": "", "recursive": False})]
                t0 = time.monotonic()
                res = await asyncio.wait_for(asyncio.gather(*calls), 60)
                took = time.monotonic() - t0
                texts = ["\n".join(c.text for c in x.content if c.type == "text") for x in res]
                for i in range(4):
                    assert not res[i].is_error and f"cmd-{i}-42" in texts[i], texts[i]
                    assert all(f"cmd-{j}-42" not in texts[i] for j in range(4) if j != i), "no output of another call"
                for i in range(2):
                    assert f"code-{i} {i * 100}" in texts[4 + i] and "cmd-" not in texts[4 + i], texts[4 + i]
                assert "wrote 100000 bytes" in texts[6]
                assert took < 20, f"parallel calls took {took:.1f} s"
                assert len(mcp_sandboxes(daemon)) == 1, "one sandbox however many first calls race"
                # A large read comes back with head and tail kept.
                r = await s.call_tool("run_command", {"command": "seq 1 200000", "timeout_seconds": 0, "cwd": ""})
                assert not r.is_error and r.content[0].text.rstrip().endswith("200000")
                # Optional arguments filled with zero values by strict-schema clients mean "not given".
                r = await s.call_tool("fork", {"step": 0})
                assert not r.is_error and "fork" in r.content[0].text, r.content[0].text
                r = await s.call_tool("read_file", {"path": "p/a.txt"})
                assert "xxxx" in r.content[0].text
                # text/html results come back as text.
                r = await s.call_tool("run_code", {"code": "class H:\n    def _repr_html_(self): return '<b>bold</b>'\nH()"})
                assert "<b>bold</b>" in "\n".join(c.text for c in r.content if c.type == "text")
                # Rollback says what came back.
                listed = (await s.call_tool("list_checkpoints", {})).content[0].text
                first = int(listed.splitlines()[0].split()[1].rstrip(":"))
                r = await s.call_tool("rollback", {"step": first})
                assert "restored files" in r.content[0].text, r.content[0].text
                # An unknown tool is a protocol error, not a tool result.
                with pytest.raises(Exception) as e:
                    await s.call_tool("no_such_tool", {})
                assert "Unknown tool" in str(e.value)
                assert len(mcp_sandboxes(daemon)) == 2, "the session's sandbox and its fork"

    asyncio.run(main())
    assert mcp_sandboxes(daemon) == [], "the session's sandboxes are deleted when it ends"


def test_cancelled_call_is_stopped_and_the_next_call_gets_its_own_output(daemon, sandpit):
    c = MCPClient([sandpit, "mcp", "--socket", daemon])
    c.send("initialize", {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "pytest", "version": "1"}})
    c.send("notifications/initialized", notify=True)
    c.tool("run_command", command="true")
    # A long call, then its cancellation, without waiting for it.
    c.n += 1
    slow = c.n
    c.p.stdin.write((json.dumps({"jsonrpc": "2.0", "id": slow, "method": "tools/call",
                                 "params": {"name": "run_command", "arguments": {"command": "echo started; sleep 30; echo late"}}}) + "\n").encode())
    c.p.stdin.flush()
    time.sleep(1.0)
    c.send("notifications/cancelled", {"requestId": slow, "reason": "user"}, notify=True)
    t0 = time.monotonic()
    r, text = c.tool("run_command", command="echo next; pgrep -x sleep | wc -l")
    assert time.monotonic() - t0 < 10
    assert "next" in text and "late" not in text and "started" not in text, text
    assert text.split("stdout:\n")[1].split()[1] == "0", "the cancelled command was killed: " + text
    assert c.close() == 0
    assert mcp_sandboxes(daemon) == []


def test_spec_errors_parse_error_has_null_id(daemon, sandpit):
    p = subprocess.Popen([sandpit, "mcp", "--socket", daemon], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdin.write(b'{"jsonrpc": "2.0", "id": 1, "method": \n')
    p.stdin.flush()
    m = json.loads(p.stdout.readline())
    assert m["id"] is None and m["error"]["code"] == -32700, m
    p.stdin.close()
    assert p.wait(30) == 0


@pytest.mark.parametrize("ending", ["eof", "sigterm", "sigint", "sigkill"])
def test_sessions_ended_every_way_leave_no_sandbox_or_process(daemon, sandpit, ending):
    """50 sessions in all (4 endings × 13, rounded up), a tool call each, then ended: nothing is left."""
    procs = []
    for _ in range(13):
        c = MCPClient([sandpit, "mcp", "--socket", daemon])
        c.send("initialize", {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "pytest", "version": "1"}})
        c.send("notifications/initialized", notify=True)
        r, text = c.tool("run_command", command="echo alive")
        assert "alive" in text
        procs.append(c)
    assert len(mcp_sandboxes(daemon)) == 13
    for c in procs:
        if ending == "eof":
            c.p.stdin.close()
        else:
            c.p.send_signal({"sigterm": signal.SIGTERM, "sigint": signal.SIGINT, "sigkill": signal.SIGKILL}[ending])
    for c in procs:
        rc = c.p.wait(60)
        assert rc in (0, -9) and (rc == -9) == (ending == "sigkill"), rc
    for _ in range(100):
        if not mcp_sandboxes(daemon):
            break
        time.sleep(0.1)
    assert mcp_sandboxes(daemon) == [], f"sandboxes left after {ending}"


def test_an_interactive_program_over_several_tool_calls(daemon, sandpit):
    """run_command with yield_seconds returns while the program waits for input; write_stdin answers it;
    with tty the program runs on a terminal (a REPL)."""
    c = MCPClient([sandpit, "mcp", "--socket", daemon])
    c.send("initialize", {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "pytest", "version": "1"}})
    c.send("notifications/initialized", notify=True)
    r, text = c.tool("run_command", command="echo ready; read a; echo got-$a; read b; echo got-$b", yield_seconds=0.5)
    assert not r.get("isError") and "still running" in text and "ready" in text, text
    exec_id = text.split("exec_id ")[1].split(")")[0]
    r, text = c.tool("write_stdin", exec_id=exec_id, input="one\n", yield_seconds=1)
    assert "got-one" in text and "ready" not in text and "still running" in text, text
    r, text = c.tool("write_stdin", exec_id=exec_id, input="two\n", close_stdin=True, yield_seconds=5)
    assert "got-two" in text and "exit code 0" in text and not r.get("isError"), text
    r, text = c.tool("run_command", command="python3 -q", tty=True, yield_seconds=1)
    repl = text.split("exec_id ")[1].split(")")[0]
    assert ">>>" in text, text
    r, text = c.tool("write_stdin", exec_id=repl, input="print(6*7)\n", yield_seconds=1)
    assert "42" in text, text
    r, text = c.tool("write_stdin", exec_id=repl, input="exit()\n", yield_seconds=5)
    assert "exit code 0" in text, text
    assert c.close() == 0
