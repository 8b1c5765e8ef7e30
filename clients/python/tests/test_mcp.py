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
