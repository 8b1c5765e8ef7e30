"""The smolagents executor and the LangChain tool, with the real packages, driven directly (no LLM)."""
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
