"""The smolagents executor and the LangChain tool, with the real packages, driven directly (no LLM)."""
import os

import pytest

from sandpit import Client, NotFoundError


@pytest.fixture(scope="module")
def sci_template(daemon):
    """smolagents' tool code imports numpy and PIL in the sandbox (as in its E2B and Docker images): the
    fixture template has them (built once from PyPI through the build policy's proxy, then cached)."""
    from conftest import ROOT
    with Client(daemon) as c:
        c.call("template.build", {"name": "sci", "file": f"{ROOT}/Fixtures/templates/sci/Dockerfile"}, timeout=900)
    return "sci"


def test_smolagents_executor_runs_tools_variables_and_final_answer(daemon, sci_template):
    from smolagents.default_tools import FinalAnswerTool
    from smolagents.monitoring import AgentLogger, LogLevel
    from smolagents.utils import AgentError

    from sandpit.adapters.smolagents import SandpitExecutor

    ex = SandpitExecutor(["numpy"], AgentLogger(level=LogLevel.OFF), template=sci_template)
    assert ex.installed_packages == ["numpy"], "already importable in the template: nothing to install"
    sid = ex.sandbox.id
    ex.send_tools({"final_answer": FinalAnswerTool()})
    ex.send_variables({"n": 5, "names": ["a", "b"]})
    out = ex("y = n * 2\nprint('working')\ny")
    assert out.output == "10" and "working" in out.logs and not out.is_final_answer   # the repr, as with E2B
    assert ex("len(names)").output == "2"
    with pytest.raises(AgentError) as e:
        ex("1 / 0")
    assert "ZeroDivisionError" in str(e.value)
    final = ex("final_answer({'answer': y + 1})")
    assert final.is_final_answer and final.output == {"answer": 11}
    ex.cleanup()
    with Client(daemon) as c, pytest.raises(NotFoundError):
        c.call("sandbox.get", {"sandboxId": sid})


def test_langchain_tool_keeps_state_and_reports_errors(daemon):
    from langchain_core.tools import BaseTool

    from sandpit.adapters.langchain import SandpitPythonTool

    tool = SandpitPythonTool()
    assert isinstance(tool, BaseTool) and tool.name == "sandpit_python"
    assert tool.args == {"code": tool.args["code"]} and tool.args["code"]["type"] == "string"
    try:
        assert tool.invoke({"code": "a = 2\na + 3"}) == "5"
        assert tool.invoke({"code": "print(a * 10)"}).strip() == "20"
        err = tool.invoke({"code": "def g():\n    return 1 / 0\ng()"})
        assert "ZeroDivisionError" in err and "<cell-" in err
        long = tool.invoke({"code": "print('x' * 50000)"})
        assert "characters cut" in long and len(long) < 9000
    finally:
        sid = tool.sandbox.id
        tool.close()
    with Client(daemon) as c, pytest.raises(NotFoundError):
        c.call("sandbox.get", {"sandboxId": sid})


def test_langgraph_toolnode_parallel_first_calls_share_one_sandbox_and_errors_are_errors(daemon):
    """LangGraph's ToolNode runs a message's tool calls in parallel: on first use they race to make
    the tool's sandbox. Three rounds, each a fresh tool: one sandbox each, and a raising call comes
    back as an error ToolMessage, not as a result."""
    from langchain_core.messages import AIMessage
    from langgraph.graph import END, START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode

    from sandpit.adapters.langchain import SandpitPythonTool

    for round_ in range(3):
        tag = f"lg-{round_}-{os.getpid()}"
        tool = SandpitPythonTool(create_args={"metadata": {"test": tag}})
        calls = [{"name": "sandpit_python", "args": {"code": f"v{i} = {i}\nprint('call', {i} * 11)"}, "id": f"c{i}", "type": "tool_call"}
                 for i in range(5)]
        calls.append({"name": "sandpit_python", "args": {"code": "raise ValueError('nope')"}, "id": "bad", "type": "tool_call"})
        try:
            graph = StateGraph(MessagesState)
            graph.add_node("tools", ToolNode([tool]))
            graph.add_edge(START, "tools")
            graph.add_edge("tools", END)
            out = graph.compile().invoke({"messages": [AIMessage(content="", tool_calls=calls)]})
            msgs = {m.tool_call_id: m for m in out["messages"] if getattr(m, "tool_call_id", None)}
            for i in range(5):
                assert f"call {i * 11}" in msgs[f"c{i}"].content and msgs[f"c{i}"].status == "success", msgs[f"c{i}"]
            assert msgs["bad"].status == "error" and "ValueError: nope" in msgs["bad"].content, msgs["bad"]
            with Client(daemon) as c:
                mine = [s for s in c.list_sandboxes() if s.get("metadata", {}).get("test") == tag and s["state"] != "deleted"]
            assert len(mine) == 1, f"round {round_}: {len(mine)} sandboxes for one tool"
            # State is shared: every parallel call ran in the one interpreter.
            assert tool.invoke({"code": "v0 + v1 + v2 + v3 + v4"}) == "10"
        finally:
            tool.close()


def test_smolagents_code_agent_runs_on_the_executors_default_template(daemon):
    """CodeAgent.run with a scripted model: the executor's default template (built from PyPI on first
    use) has what smolagents' tool code imports (PIL), so sending the tools does not fail."""
    from smolagents import CodeAgent
    from smolagents.models import ChatMessage, Model
    from smolagents.monitoring import AgentLogger, LogLevel

    from sandpit.adapters.smolagents import SandpitExecutor

    class Scripted(Model):
        def generate(self, messages, stop_sequences=None, response_format=None, tools_to_call_from=None, **kw):
            return ChatMessage(role="assistant", content="Thought: compute it.\n<code>\nx = 6 * 7\nfinal_answer(x)\n</code>")

    executor = SandpitExecutor([], AgentLogger(level=LogLevel.OFF))
    try:
        assert executor.sandbox.info["template"].split(":")[0] == "smolagents"
        agent = CodeAgent(tools=[], model=Scripted(), executor=executor)
        assert agent.run("What is 6 * 7?") == 42
        assert executor("import PIL, numpy\nint(numpy.arange(4).sum())").output == "6"
    finally:
        executor.cleanup()


def test_smolagents_additional_imports_install_into_the_templates_virtualenv(daemon):
    from smolagents.monitoring import AgentLogger, LogLevel

    from sandpit.adapters.smolagents import SandpitExecutor

    executor = SandpitExecutor(["tomli-w"], AgentLogger(level=LogLevel.OFF), policy="pypi")
    try:
        assert executor.installed_packages == ["tomli-w"]
        assert executor("import tomli_w\ntomli_w.dumps({'a': 1})").output.strip("'\"").startswith("a = 1")
    finally:
        executor.cleanup()


def test_pip_install_leaves_the_source_tree_clean(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT
    src = os.path.join(ROOT, "clients", "python")
    before = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all", "."], cwd=src,
                            capture_output=True, text=True).stdout
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(tmp_path / "t"), src],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    after = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all", "."], cwd=src,
                           capture_output=True, text=True).stdout
    assert after == before, "pip install wrote into the source tree:\n" + after
    assert (tmp_path / "t" / "sandpit" / "adapters" / "smolagents.Dockerfile").exists()


def test_plots_print_no_fontconfig_error(daemon, sci_template):
    """The sandbox's /etc has no fontconfig setup: the driver gives the interpreter a minimal one, so a
    plot's cell output is the plot, not a "Fontconfig error" line."""
    from sandpit import Sandbox
    with Sandbox.create(sci_template) as sb:
        ex = sb.run_code("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()")
        assert ex.error is None, ex.error
        assert "Fontconfig" not in "".join(ex.logs.stderr) + "".join(ex.logs.stdout), ex.logs
        assert any(r.png for r in ex.results), "the figure came back"
