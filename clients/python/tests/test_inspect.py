"""The Inspect provider through a real `inspect_ai.eval`: 20 samples in parallel, each in its own Sandpit
sandbox. Inspect's mockllm model, scripted, makes real tool calls to Inspect's own bash() and python()
tools through Inspect's tool loop; then a solver uses the sandbox API directly. Afterwards no sandbox
is left. The provider is found through the entry point only."""
import asyncio

import pytest

from sandpit import Client

inspect_ai = pytest.importorskip("inspect_ai")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")   # inspect_ai's own, from its retry library

from inspect_ai import Task, eval as inspect_eval, task  # noqa: E402
from inspect_ai.dataset import Sample  # noqa: E402
from inspect_ai.model import ModelOutput, ModelUsage, get_model  # noqa: E402
from inspect_ai.scorer import CORRECT, INCORRECT, Score, Target, accuracy, scorer  # noqa: E402
from inspect_ai.solver import Generate, TaskState, generate, solver, use_tools  # noqa: E402
from inspect_ai.tool import bash, python  # noqa: E402
from inspect_ai.util import OutputLimitExceededError, sandbox  # noqa: E402


def scripted_model(input, tools, tool_choice, config):
    """A model that calls bash, then python, then answers: what a tool-using model does, minus the model."""
    n = int(next(m for m in input if m.role == "user").text.split()[1])
    done = sum(m.role == "tool" for m in input)
    if done == 0:
        out = ModelOutput.for_tool_call("mockllm/model", "bash", {"command": f"echo sample-{n} > mine.txt; cat mine.txt; id -u; pwd"})
    elif done == 1:
        out = ModelOutput.for_tool_call("mockllm/model", "python", {"code": f"print(sum(range({n} + 1)))"})
    else:
        out = ModelOutput.from_content("mockllm/model", "done")
    out.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)   # no tokenizer download
    return out


@solver
def use_the_sandbox():
    async def solve(state: TaskState, generate: Generate) -> TaskState:
        sb = sandbox()
        tool_results = [m.text for m in state.messages if m.role == "tool"]
        seen = {"bash": tool_results[0] if tool_results else None, "python": tool_results[1] if len(tool_results) > 1 else None}
        # The sandbox API: binary and text files, relative paths, parents made, CRLF kept.
        await sb.write_file("deep/dir/blob.bin", bytes(range(256)) * 4)
        seen["bytes"] = await sb.read_file("deep/dir/blob.bin", text=False) == bytes(range(256)) * 4
        await sb.write_file("crlf.txt", "a\r\nb\r\n")
        seen["crlf"] = await sb.read_file("crlf.txt") == "a\r\nb\r\n"
        r = await sb.exec(["sh", "-c", "cat; echo \"$GREETING\" >&2; exit 3"], input="piped", env={"GREETING": "hej"}, cwd="deep")
        seen["exec"] = (r.success, r.returncode, r.stdout, r.stderr)
        seen["cwd"] = (await sb.exec(["pwd"], cwd="deep/dir")).stdout.strip()
        seen["missing"] = (await sb.exec(["no-such-program"])).returncode
        try:
            await sb.exec(["sleep", "30"], timeout=1)
            seen["timeout"] = "no error"
        except TimeoutError:
            seen["timeout"] = "TimeoutError"
        for name, call in (("read_missing", sb.read_file("nope.txt")), ("read_dir", sb.read_file("deep"))):
            try:
                await call
                seen[name] = "no error"
            except (FileNotFoundError, IsADirectoryError) as e:
                seen[name] = type(e).__name__
        try:
            await sb.exec(["head", "-c", "2000", "/dev/zero"])
            seen["limit"] = "no error"
        except OutputLimitExceededError:
            seen["limit"] = "OutputLimitExceededError"
        state.metadata["seen"] = seen
        return state
    return solve


@scorer(metrics=[accuracy()])
def what_it_saw():
    async def score(state: TaskState, target: Target) -> Score:
        n = int(state.sample_id)
        s = state.metadata["seen"]
        want = {
            "bash": f"sample-{n}\n1000\n/home/user\n",   # tool results as the model saw them
            "python": f"{n * (n + 1) // 2}\n",
            "bytes": True, "crlf": True,
            "exec": (False, 3, "piped", "hej\n"),
            "cwd": "/home/user/deep/dir",
            "missing": 127,
            "timeout": "TimeoutError",
            "read_missing": "FileNotFoundError", "read_dir": "IsADirectoryError",
            "limit": "OutputLimitExceededError",
        }
        wrong = {k: (s.get(k), v) for k, v in want.items() if s.get(k) != v}
        return Score(value=CORRECT if not wrong else INCORRECT, explanation=repr(wrong))
    return score


@task
def twenty_samples():
    return Task(dataset=[Sample(id=i, input=f"sample {i}") for i in range(1, 21)],
                solver=[use_tools(bash(timeout=60), python(timeout=60)), generate(), use_the_sandbox()],
                scorer=what_it_saw(), sandbox="sandpit")


def test_inspect_eval_runs_twenty_samples_in_parallel_in_their_own_sandboxes(daemon, tmp_path, monkeypatch):
    monkeypatch.setenv("INSPECT_SANDBOX_MAX_EXEC_OUTPUT_SIZE", "1000")
    with Client(daemon) as c:
        before = c.info()["sandboxes"]
    model = get_model("mockllm/model", custom_outputs=scripted_model)
    logs = inspect_eval(twenty_samples(), model=model, max_samples=20, max_sandboxes=20,
                        log_dir=str(tmp_path / "logs"), display="none")
    log = logs[0]
    assert log.status == "success", log.error
    wrong = {s.id: s.scores["what_it_saw"].explanation for s in log.samples if s.scores["what_it_saw"].value != CORRECT}
    assert wrong == {}, wrong
    assert log.results.scores[0].metrics["accuracy"].value == 1.0
    with Client(daemon) as c:
        left = [s for s in c.list_sandboxes() if "sandpit.inspect" in s.get("metadata", {}) and s["state"] != "deleted"]
        assert left == [] and c.info()["sandboxes"] == before, "every sample's sandbox is deleted"


def test_a_spec_file_becomes_the_samples_template(daemon, tmp_path):
    spec = tmp_path / "sandpit.Dockerfile"
    spec.write_text("FROM default\nRUN mkdir -p /home/user/eval && echo built > /home/user/eval/marker\nENV EVAL_MODE=strict\n")

    @solver
    def probe():
        async def solve(state, generate):
            r = await sandbox().exec(["sh", "-c", "cat /home/user/eval/marker; echo $EVAL_MODE"])
            state.metadata["out"] = r.stdout
            return state
        return solve

    @scorer(metrics=[accuracy()])
    def built():
        async def score(state, target):
            return Score(value=CORRECT if state.metadata["out"] == "built\nstrict\n" else INCORRECT, explanation=state.metadata["out"])
        return score

    t = Task(dataset=[Sample(id=i, input="x") for i in range(3)], solver=probe(), scorer=built(), sandbox=("sandpit", str(spec)))
    log = inspect_eval(t, model=get_model("mockllm/model", custom_outputs=scripted_model), log_dir=str(tmp_path / "logs"), display="none")[0]
    assert log.status == "success", log.error
    assert [s.scores["built"].value for s in log.samples] == [CORRECT] * 3, [s.scores["built"].explanation for s in log.samples]


def test_the_provider_is_registered_through_the_entry_point(daemon):
    from importlib.metadata import entry_points
    eps = [ep for ep in entry_points(group="inspect_ai") if ep.name == "sandpit"]
    assert [ep.value for ep in eps] == ["sandpit.adapters.inspect_ai"]
    from inspect_ai.util._sandbox.registry import registry_find_sandboxenv
    cls = registry_find_sandboxenv("sandpit")
    assert cls.__name__ == "SandpitSandboxEnvironment"
    # Inspect's default max_sandboxes: what the daemon on SANDPIT_SOCKET admits (--max-sandboxes, 256 by default).
    with Client(daemon) as c:
        assert cls.default_concurrency() == c.info()["usage"]["maxSandboxes"] == 256
    assert asyncio.run(_unsupported_user(cls)) == "SandboxUserUnsupportedError"


async def _unsupported_user(cls):
    envs = await cls.sample_init("t", None, {})
    env = envs["default"]
    try:
        await env.exec(["id"], user="root")
        return "no error"
    except Exception as e:
        return type(e).__name__
    finally:
        await cls.sample_cleanup("t", None, envs, False)
        await cls.task_cleanup("t", None, True)

