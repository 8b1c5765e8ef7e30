"""The Python context driver (Drivers/python_driver.py) on its own: started on the host the way the daemon
starts it in a sandbox (`python3 -u -c BOOTSTRAP NONCE`, the source in SANDPIT_DRIVER), fed cells on
stdin, its framed records read back from stdout and stderr. The integration tests run it in sandboxes."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = open(os.path.join(os.path.dirname(HERE), "python_driver.py")).read()
BOOTSTRAP = 'import os; exec(compile(os.environ.pop("SANDPIT_DRIVER"), "<sandpit-driver>", "exec"))'
NONCE = "t3stn0nce"
FRAME = re.compile(rb"\x1esandpit:" + NONCE.encode() + rb":([=\[+\]]):(.*?)\x1e", re.S)


class Driver:
    def __init__(self, python=sys.executable, cwd=None):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": cwd or tempfile.gettempdir(), "SANDPIT_DRIVER": SOURCE}
        self.p = subprocess.Popen([python, "-u", "-c", BOOTSTRAP, NONCE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=env, cwd=cwd or tempfile.gettempdir())
        self.buf = {1: b"", 2: b""}
        self.cond = threading.Condition()
        for fd, stream in ((1, self.p.stdout), (2, self.p.stderr)):
            threading.Thread(target=self.pump, args=(fd, stream), daemon=True).start()
        self.n = 0
        self.ready = self.record(1, lambda r: r.get("t") == "ready")

    def pump(self, fd, stream):
        while True:
            data = stream.read1(65536)
            with self.cond:
                self.buf[fd] += data
                self.cond.notify_all()
            if not data:
                return

    def records(self, fd):
        """(records, user output) of a stream so far: frames reassembled, everything else is the user's."""
        out, recs, partial = b"", [], b""
        data, pos = self.buf[fd], 0
        for m in FRAME.finditer(data):
            out += data[pos:m.start()]
            pos = m.end()
            kind, body = m.group(1), m.group(2)
            if kind == b"=":
                recs.append(json.loads(body))
            elif kind == b"[":
                partial = body
            elif kind == b"+":
                partial += body
            else:
                recs.append(json.loads(partial + body))
        return recs, out + data[pos:]

    def record(self, fd, match, timeout=60):
        with self.cond:
            ok = self.cond.wait_for(lambda: any(match(r) for r in self.records(fd)[0]) or self.p.poll() is not None, timeout)
            recs = [r for r in self.records(fd)[0] if match(r)]
            assert ok and recs, f"no record; stdout {self.buf[1][-2000:]!r} stderr {self.buf[2][-2000:]!r}"
            return recs[-1]

    def run(self, code):
        """Runs a cell: (its result record, what it printed on stdout, on stderr)."""
        self.n += 1
        n = self.n
        before = {fd: len(self.records(fd)[1]) for fd in (1, 2)}
        self.p.stdin.write((json.dumps({"n": n, "code": code}) + "\n").encode())
        self.p.stdin.flush()
        result = self.record(1, lambda r: r.get("t") == "r" and r.get("n") == n)
        self.record(2, lambda r: r.get("t") == "e" and r.get("n") == n)
        with self.cond:
            return result, self.records(1)[1][before[1]:].decode(), self.records(2)[1][before[2]:].decode()

    def close(self):
        self.p.stdin.close()
        self.p.wait(10)


@pytest.fixture
def driver():
    d = Driver()
    yield d
    d.close()


def texts(result):
    return [r.get("text/plain") for r in result["results"]]


def test_ready_then_a_value_as_the_main_result(driver):
    assert driver.ready["python"] == sys.version.split()[0] and driver.ready["pid"] == driver.p.pid
    r, out, err = driver.run("x = 20\nx + 22")
    assert texts(r) == ["42"] and r["main"] == 0 and r["error"] is None and out == "" and err == ""
    r, _, _ = driver.run("y = 1")
    assert r["results"] == [] and r["main"] is None


def test_a_record_longer_than_a_pipe_write_is_split_and_joined(driver):
    r, _, _ = driver.run("'x' * 20000")
    assert texts(r) == [repr("x" * 20000)]


def test_output_streams_between_the_frames_in_order(driver):
    r, out, err = driver.run("import sys, os\nprint('a')\nos.write(1, b'b\\n')\nprint('c', file=sys.stderr)")
    assert out == "a\nb\n" and err == "c\n"


def test_rich_results_and_a_traceback_that_points_at_the_cells(driver):
    driver.run("class Page:\n    def _repr_html_(self): return '<b>hi</b>'\n    def __repr__(self): return 'Page()'\n"
               "def boom():\n    raise ValueError('bad')")
    r, _, _ = driver.run("Page()")
    assert r["results"] == [{"text/plain": "Page()", "text/html": "<b>hi</b>"}]
    r, _, _ = driver.run("1\nboom()")
    e = r["error"]
    assert e["name"] == "ValueError" and e["value"] == "bad"
    assert '<cell-3>", line 2' in e["traceback"] and '<cell-1>", line 5' in e["traceback"] and "sandpit-driver" not in e["traceback"]


def test_display_gives_rich_results_before_the_cells_value(driver):
    r, _, _ = driver.run("class H:\n    def _repr_html_(self): return '<i>h</i>'\ndisplay(1, 'two')\ndisplay(H())\n3")
    assert texts(r)[:2] == ["1", "'two'"] and r["results"][2]["text/html"] == "<i>h</i>"
    assert texts(r)[3] == "3" and r["main"] == 3
    r, _, _ = driver.run("display('only')")
    assert texts(r) == ["'only'"] and r["main"] is None


def test_ipython_display_module_works_with_or_without_ipython(driver):
    r, _, _ = driver.run("from IPython.display import display, HTML, Markdown\ndisplay(HTML('<b>x</b>'))\ndisplay(Markdown('*y*'))")
    assert [b.get("text/html") for b in r["results"]][0] == "<b>x</b>"
    assert r["results"][1].get("text/markdown") == "*y*" and r["error"] is None


def test_bang_lines_run_shell_commands_with_python_values(driver):
    r, out, _ = driver.run("name = 'world'\n!echo hello {name} $name\nfor i in range(2):\n    !echo line $i\n")
    assert out == "hello world world\nline 0\nline 1\n" and r["error"] is None
    r, out, _ = driver.run("files = !printf 'a\\nb\\n'\nfiles, files.n, files.s")
    assert texts(r) == ["(['a', 'b'], 'a\\nb', 'a b')"] and out == ""
    r, _, _ = driver.run("!exit 3\n_exit_code")
    assert texts(r) == ["3"]


def test_a_string_that_looks_like_a_magic_is_left_alone(driver):
    r, _, _ = driver.run('s = """\n!not a command\n%not a magic\n"""\nlen(s.splitlines())')
    assert texts(r) == ["3"]
    r, _, _ = driver.run("a = 5 % 3 != 1\na")
    assert texts(r) == ["True"]


def test_line_magics(driver):
    r, out, _ = driver.run("%cd /tmp\n%pwd")
    assert out.strip() == os.path.realpath("/tmp") and texts(r) == [repr(os.path.realpath("/tmp"))]
    r, out, _ = driver.run("%env SANDPIT_X=1\nimport os\nos.environ['SANDPIT_X']")
    assert texts(r) == ["'1'"]
    r, out, err = driver.run("%matplotlib inline\n%pip --version")
    assert "pip " in out and r["error"] is None
    r, out, _ = driver.run("%timeit -n 10 -r 2 sum(range(100))")
    assert re.search(r"^[\d.]+ [nµm]?s ± [\d.]+ [nµm]?s per loop \(mean ± std\. dev\. of 2 runs, 10 loops each\)$", out.strip()), out
    r, out, _ = driver.run("%time sum(range(10))")
    assert "Wall time:" in out and texts(r) == ["45"]
    r, _, _ = driver.run("%nosuchmagic x")
    assert r["error"]["name"] == "UsageError" and "%nosuchmagic" in r["error"]["value"]
    r, _, err = driver.run("%load_ext autoreload\n%autoreload 2\n1")
    assert texts(r) == ["1"] and "does nothing here" in err


def test_cell_magics(driver, tmp_path):
    r, out, _ = driver.run("%%bash\nx=$((1+2))\necho $x\necho err >&2")
    assert out == "3\n" and r["error"] is None
    path = tmp_path / "hello.py"
    r, out, _ = driver.run(f"%%writefile {path}\nprint('hi')\n")
    assert out == f"Writing {path}\n" and path.read_text() == "print('hi')\n"
    r, out, _ = driver.run("%%time\nimport time\ntime.sleep(0.01)\n7")
    assert "Wall time:" in out and texts(r) == ["7"]
    r, out, _ = driver.run("%%timeit -n 5 -r 1 base = 2\nbase ** 10")
    assert "of 1 run, 5 loops each" in out
    r, _, _ = driver.run("%%html\n<p>para</p>")
    assert r["results"][0]["text/html"] == "<p>para</p>"
    r, _, _ = driver.run("%%nosuch\nx")
    assert r["error"]["name"] == "UsageError"


def test_top_level_await_and_a_loop_kept_between_cells(driver):
    r, _, _ = driver.run("import asyncio\nawait asyncio.sleep(0)\nasync def twice(x):\n    await asyncio.sleep(0.01)\n    return 2 * x\nawait twice(21)")
    assert texts(r) == ["42"]
    driver.run("task = asyncio.ensure_future(twice(5))")
    r, _, _ = driver.run("await task")
    assert texts(r) == ["10"]


def test_without_ipython_installed_the_stand_in_module_is_used():
    system = shutil.which("python3", path="/usr/bin")
    if system is None or subprocess.run([system, "-c", "import IPython"], capture_output=True).returncode == 0:
        pytest.skip("needs a python3 without IPython")
    d = Driver(python=system)
    try:
        # Nothing stands in until a cell imports it: libraries (matplotlib) look for an IPython to hook into.
        r, _, _ = d.run("import sys\n'IPython' in sys.modules")
        assert texts(r) == ["False"]
        r, _, _ = d.run("from IPython.display import display, HTML, Image\nimport IPython\ndisplay(HTML('<b>s</b>'))\nIPython.__name__")
        assert r["results"][0]["text/html"] == "<b>s</b>" and texts(r)[-1] == "'IPython'"
    finally:
        d.close()
