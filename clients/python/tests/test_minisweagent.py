"""The mini-swe-agent environment under mini-swe-agent's own DefaultAgent, driven by its own
DeterministicModel (the pattern of its environment tests): eight agents in parallel threads, each in
its own sandbox, edit a file, hit an error, run out of time once and submit. Each agent's trajectory
says what its commands did; afterwards no sandbox is left."""
import threading

import pytest

pytest.importorskip("minisweagent")

import yaml  # noqa: E402
from minisweagent.agents.default import DefaultAgent  # noqa: E402
from minisweagent.config import builtin_config_dir  # noqa: E402
from minisweagent.models.test_models import DeterministicModel, make_output  # noqa: E402

from sandpit import Client  # noqa: E402
from sandpit.adapters.minisweagent import SandpitEnvironment  # noqa: E402


def agent_config():
    cfg = yaml.safe_load((builtin_config_dir / "default.yaml").read_text())["agent"]
    cfg["step_limit"] = 10
    return cfg


def test_default_agents_run_in_their_own_sandboxes_in_parallel(daemon):
    results, envs, errors = {}, {}, []

    def one(n):
        try:
            model = DeterministicModel(outputs=[
                make_output("write", [{"command": f"mkdir -p src && printf 'def f():\\n    return {n}\\n' > src/mod.py && python3 -c 'import sys; sys.path.insert(0, \"src\"); import mod; print(mod.f())'"}]),
                make_output("stderr in order", [{"command": "echo out1; echo err1 >&2; echo out2; ls /no/such/dir"}]),
                make_output("too slow", [{"command": "sleep 30"}]),
                make_output("submit", [{"command": "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT && cat src/mod.py"}]),
            ])
            env = envs[n] = SandpitEnvironment(timeout=2)
            agent = DefaultAgent(model, env, **agent_config())
            results[n] = (agent.run(f"task {n}"), agent.messages)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append((n, repr(e)))

    threads = [threading.Thread(target=one, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == []
    ids = {envs[n].sandbox.id for n in envs}
    assert len(ids) == 8, "a sandbox per agent"
    for n, (out, messages) in results.items():
        assert out["exit_status"] == "Submitted", out
        assert out["submission"] == f"def f():\n    return {n}\n"
        observations = [m["content"] for m in messages if m.get("role") == "user"][1:]
        assert f"<returncode>0</returncode>\n<output>\n{n}\n</output>" in observations[0], observations[0]
        assert "<returncode>2</returncode>\n<output>\nout1\nerr1\nout2\nls: cannot access '/no/such/dir'" in observations[1], observations[1]
        assert "timed out after 2 seconds" in observations[2] and "<returncode>-1</returncode>" in observations[2], observations[2]
    for env in envs.values():
        env.cleanup()
    with Client(daemon) as c:
        left = [s["sandboxId"] for s in c.list_sandboxes() if s["sandboxId"] in ids and s["state"] != "deleted"]
        assert left == []


def test_config_by_class_path_and_template_vars(daemon):
    from minisweagent.environments import get_environment
    env = get_environment({"environment_class": "sandpit.adapters.minisweagent.SandpitEnvironment", "cwd": "/tmp",
                           "env": {"MODE": "ci"}, "timeout": 5})
    try:
        r = env.execute({"command": "pwd; echo $MODE"})
        assert r == {"output": "/tmp\nci\n", "returncode": 0, "exception_info": ""}
        assert env.get_template_vars(extra=1)["cwd"] == "/tmp" and env.get_template_vars(extra=1)["extra"] == 1
        assert env.serialize()["info"]["config"]["environment_type"] == "sandpit.adapters.minisweagent.SandpitEnvironment"
    finally:
        env.cleanup()
