"""E2B-shaped API (`sandpit.e2b`): a corpus of programs written against E2B's documented API
(`tests/e2b_corpus/`, each ending with the output E2B's docs say it prints) runs with only its imports
changed; and `sandpit.e2b` offers every public method of the real `e2b_code_interpreter` package from
PyPI with the same parameter names in the same order."""
import concurrent.futures
import inspect
import os
import re
import subprocess
import sys

import pytest

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2b_corpus")
IMPORTS = re.compile(r"^from (e2b_code_interpreter|e2b) import ", re.M)


def snippets():
    return sorted(f[:-3] for f in os.listdir(CORPUS) if f.endswith(".py"))


def expected(code):
    tail = code.split("# expect:\n", 1)[1]
    return "".join(line[2:] + "\n" if line.startswith("# ") else "\n" for line in tail.splitlines())


@pytest.fixture(scope="module")
def sci(daemon):
    """E2B's code-interpreter template has numpy, pandas and matplotlib: so does Fixtures/templates/sci."""
    from sandpit import Client
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(CORPUS))))
    with Client(daemon) as c:
        c.call("template.build", {"name": "sci", "file": f"{root}/Fixtures/templates/sci/Dockerfile"}, timeout=900)
    return "sci"


def run_snippet(name, daemon):
    code = open(os.path.join(CORPUS, name + ".py")).read()
    swapped, n = IMPORTS.subn("from sandpit.e2b import ", code)
    assert n >= 1, f"{name} imports nothing from e2b"
    env = dict(os.environ, SANDPIT_SOCKET=daemon, SANDPIT_E2B_TEMPLATE="sci")
    p = subprocess.run([sys.executable, "-c", swapped], capture_output=True, text=True, timeout=300, env=env)
    return code, p


def test_the_corpus_runs_unchanged_but_for_the_import(daemon, sci):
    names = snippets()
    assert len(names) >= 40
    # Four at a time, each its own process and connection: parallel callers, as agent frameworks are.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        runs = dict(zip(names, pool.map(lambda n: run_snippet(n, daemon), names)))
    failures = []
    for name, (code, p) in runs.items():
        if p.returncode != 0 or p.stdout != expected(code):
            failures.append(f"--- {name} (exit {p.returncode})\nwant:\n{expected(code)}got:\n{p.stdout}\n{p.stderr[-2000:]}")
    assert not failures, "\n".join(failures)
    from sandpit import Client
    with Client(daemon) as c:   # every snippet cleaned up after itself (kill, or the context manager)
        assert not [s for s in c.list_sandboxes() if (s.get("metadata") or {}).get("purpose") == "corpus"]


def test_every_public_method_of_e2b_is_there_with_its_parameters_in_order():
    e2b_ci = pytest.importorskip("e2b_code_interpreter")
    import e2b
    from sandpit import e2b as ours
    pairs = [(e2b_ci.Sandbox, ours.Sandbox), (e2b_ci.AsyncSandbox, ours.AsyncSandbox),
             (e2b.sandbox_sync.commands.command.Commands, ours.Commands), (e2b.sandbox_sync.filesystem.filesystem.Filesystem, ours.Filesystem),
             (e2b.sandbox_sync.commands.command_handle.CommandHandle, ours.CommandHandle)]
    # Not mirrored, on purpose: each raises NotImplementedError or does not apply to a local daemon.
    skipped = {"pty", "git", "get_metrics", "update_network", "create_snapshot", "list_snapshots", "delete_snapshot",
               "get_mcp_token", "get_mcp_url", "upload_url", "download_url", "stream_input", "beta_create", "get_host_url",
               "files", "commands", "sandbox_domain", "envd_api_url", "connection_config", "traffic_access_token",
               "mcp_url", "mcp_token", "beta_pause", "pause"}
    missing, mismatched = [], []
    for theirs, mine in pairs:
        for name, member in inspect.getmembers(theirs):
            if name.startswith("_") or name in skipped or not callable(member):
                continue
            if not hasattr(mine, name):
                missing.append(f"{theirs.__name__}.{name}")
                continue
            ours_member = getattr(mine, name)
            dual = next((k.__dict__[name] for k in mine.__mro__ if name in k.__dict__), None)
            if hasattr(dual, "_inst"):   # callable on the class with an id, or on an instance, as E2B's: compare the instance form
                ours_member = dual._inst
            try:
                want = [p for p in inspect.signature(member).parameters if p not in ("self", "cls", "args", "kwargs", "opts")]
                got = [p for p in inspect.signature(ours_member).parameters if p not in ("self", "cls", "args", "kwargs", "kw", "opts", "_")]
            except (TypeError, ValueError):
                continue
            # Positional use must mean the same: E2B's leading parameters in the same order.
            n = min(len(want), len(got), 4)
            if want[:n] != got[:n]:
                mismatched.append(f"{theirs.__name__}.{name}: e2b {want[:n]} vs {got[:n]}")
    assert not missing, missing
    assert not mismatched, mismatched


def test_what_cannot_be_mirrored_says_so(daemon):
    from sandpit.e2b import Sandbox
    with Sandbox.create() as sbx:
        for call in (lambda: sbx.commands.run("id", user="admin"), lambda: sbx.run_code("1", language="r"),
                     lambda: sbx.run_code("1", envs={"A": "1"})):
            with pytest.raises(NotImplementedError) as e:
                call()
            assert "sandpit.e2b" in str(e.value) and "not supported" in str(e.value)


def test_parallel_calls_on_one_sandbox_with_large_outputs(daemon):
    """An agent framework's parallel tool calls on one sandbox: large command output and large cell
    values and whole-file writes past one request's worth at once, each call on its own thread of one sync
    Sandbox."""
    from sandpit.e2b import Sandbox
    with Sandbox.create() as sbx:
        def call(i):
            if i % 4 == 2:   # a whole file in one call, past one request's worth; and a list of them
                blob = os.urandom(20 << 20)
                sbx.files.write(f"/tmp/f{i}", blob)
                sbx.files.write_files([{"path": f"/tmp/g{i}", "data": blob}, {"path": f"/tmp/h{i}", "data": "small"}])
                return (sbx.files.read(f"/tmp/f{i}", format="bytes") == blob == sbx.files.read(f"/tmp/g{i}", format="bytes")
                        and sbx.files.read(f"/tmp/h{i}") == "small")
            if i % 2:
                return sbx.commands.run(f"head -c {8 << 20} /dev/zero | tr '\\0' a").stdout == "a" * (8 << 20)
            ctx = sbx.create_code_context()
            return sbx.run_code(f"len('x' * {4 << 20}), 'y' * 100000", context=ctx).text == repr((4 << 20, "y" * 100000))
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(call, range(12)))
    assert results == [True] * 12
