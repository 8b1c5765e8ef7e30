"""A mini-swe-agent environment that runs the agent's commands in a Sandpit sandbox
(``pip install 'sandpit[minisweagent]'``).

    from minisweagent.agents.default import DefaultAgent
    from sandpit.adapters.minisweagent import SandpitEnvironment
    env = SandpitEnvironment(template="swe-task", timeout=60)
    DefaultAgent(model, env, **agent_config).run(task)
    env.cleanup()                                   # deletes the sandbox

or in a mini-swe-agent YAML config::

    environment:
      environment_class: sandpit.adapters.minisweagent.SandpitEnvironment
      template: swe-task

It keeps the contract of mini-swe-agent's Docker environment: ``execute(action, cwd, timeout=)`` runs
``action["command"]`` through ``interpreter`` (``bash -lc``) with stderr merged into stdout in the order
written, and returns ``{output, returncode, exception_info}``; a command that runs out of time is killed
with its whole tree and comes back with ``returncode -1`` and the exception text, as there; the output
that starts with ``COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT`` raises ``Submitted``. The sandbox is made on
the first command (once, however many threads race) and each step is a checkpoint:
``env.sandbox.restore(step)`` rolls the agent's work back.
"""
from __future__ import annotations

import os
import platform
import threading
from typing import Any, Dict, List, Optional

from minisweagent.exceptions import Submitted
from minisweagent.utils.serialize import recursive_merge
from pydantic import BaseModel

from ..errors import SandpitError
from ..sandbox import Sandbox


class SandpitEnvironmentConfig(BaseModel):
    template: str = "default"
    policy: str = "default"
    limits: Optional[Dict[str, Any]] = None
    cwd: str = ""
    """Working directory for commands; empty: the template's."""
    env: Dict[str, str] = {}
    forward_env: List[str] = []
    """Host environment variables passed on when set (``env`` wins on a clash)."""
    timeout: int = 30
    interpreter: List[str] = ["bash", "-lc"]
    socket: Optional[str] = None


class SandpitEnvironment:
    def __init__(self, *, config_class: type = SandpitEnvironmentConfig, **kwargs: Any) -> None:
        self.config = config_class(**kwargs)
        self._sandbox: Optional[Sandbox] = None
        self._lock = threading.Lock()

    @property
    def sandbox(self) -> Sandbox:
        with self._lock:
            if self._sandbox is None:
                self._sandbox = Sandbox.create(self.config.template, policy=self.config.policy, limits=self.config.limits,
                                               socket=self.config.socket, metadata={"sandpit.minisweagent": "1"})
            return self._sandbox

    def execute(self, action: dict, cwd: str = "", *, timeout: Optional[int] = None) -> Dict[str, Any]:
        command = action.get("command", "")
        env = {k: v for k in self.config.forward_env if (v := os.environ.get(k)) is not None}
        env.update(self.config.env)
        limit = timeout or self.config.timeout
        # stderr into stdout at the process, as subprocess's stderr=STDOUT: one stream, in order.
        argv = ["/bin/sh", "-c", 'exec "$@" 2>&1', "sh", *self.config.interpreter, command]
        try:
            r = self.sandbox.commands.run(argv, cwd=cwd or self.config.cwd or None, env=env or None, timeout=limit)
            if r.timed_out:
                output: Dict[str, Any] = {
                    "output": r.stdout, "returncode": -1,
                    "exception_info": f"An error occurred while executing the command: Command '{command}' timed out after {limit} seconds",
                    "extra": {"exception_type": "TimeoutExpired", "exception": f"timed out after {limit} seconds"},
                }
            else:
                output = {"output": r.stdout, "returncode": r.exit_code, "exception_info": ""}
        except SandpitError as e:
            output = {"output": "", "returncode": -1, "exception_info": f"An error occurred while executing the command: {e}",
                      "extra": {"exception_type": type(e).__name__, "exception": str(e)}}
        self._check_finished(output)
        return output

    def _check_finished(self, output: dict) -> None:
        lines = output.get("output", "").lstrip().splitlines(keepends=True)
        if lines and lines[0].strip() == "COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT" and output["returncode"] == 0:
            submission = "".join(lines[1:])
            raise Submitted({"role": "exit", "content": submission,
                             "extra": {"exit_status": "Submitted", "submission": submission}})

    def get_template_vars(self, **kwargs: Any) -> Dict[str, Any]:
        # The sandbox runs on the host's kernel: its uname is the host's (but for the node name).
        return recursive_merge(self.config.model_dump(), {**platform.uname()._asdict(), "node": "sandpit"}, kwargs)

    def serialize(self) -> dict:
        return {"info": {"config": {"environment": self.config.model_dump(mode="json"),
                                    "environment_type": f"{self.__class__.__module__}.{self.__class__.__name__}"}}}

    def cleanup(self) -> None:
        """Deletes the sandbox (if one was made)."""
        with self._lock:
            sb, self._sandbox = self._sandbox, None
        if sb is not None:
            try:
                sb.delete()
            except SandpitError:
                pass

    def __del__(self) -> None:
        try:
            self.cleanup()
        except Exception:
            pass
