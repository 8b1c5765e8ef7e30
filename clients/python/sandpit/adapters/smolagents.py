"""A smolagents remote Python executor backed by a Sandpit sandbox (``pip install 'sandpit[smolagents]'``).

    from smolagents import CodeAgent, InferenceClientModel
    from smolagents.monitoring import AgentLogger, LogLevel
    from sandpit.adapters.smolagents import SandpitExecutor

    executor = SandpitExecutor([], AgentLogger(level=LogLevel.INFO))   # a sandbox of the `smolagents` template
    agent = CodeAgent(tools=[], model=InferenceClientModel(), executor=executor)
    agent.run("What is 6 * 7?")
    executor.cleanup()                                                  # deletes the sandbox

It has the interface of smolagents' E2B and Docker executors: ``send_tools``, ``send_variables``,
``run_code_raise_errors``, ``__call__`` (→ ``CodeOutput``), ``cleanup``. The agent's code runs in a
stateful Python context of an isolated sandbox; ``final_answer`` is detected as with the other remote
executors; images come back as PIL images when Pillow is installed.

By default the sandbox comes from the ``smolagents`` template (Pillow and numpy in a virtualenv the
sandbox's user owns, as smolagents' own images have them), which the executor builds once from PyPI
when the daemon does not have it yet (``smolagents.Dockerfile`` beside this file). Packages named in
``additional_imports`` are pip-installed into that virtualenv: that needs a policy with egress to the
package index, ``policy="pypi"`` (the ``default`` policy has no network).
"""
from __future__ import annotations

import io
import threading
from typing import Any, List, Optional

from smolagents.local_python_executor import CodeOutput
from smolagents.monitoring import LogLevel
from smolagents.remote_executors import RemotePythonExecutor
from smolagents.utils import AgentError

from ..errors import NotFoundError
from ..sandbox import Client, Sandbox

#: The template the executor uses unless given another.
TEMPLATE = "smolagents"
_template_lock = threading.Lock()


def template_spec() -> str:
    """The ``smolagents`` template's spec (a Dockerfile subset), shipped beside this module."""
    import os
    with open(os.path.join(os.path.dirname(__file__), "smolagents.Dockerfile"), encoding="utf-8") as f:
        return f.read()


def ensure_template(client: Client, name: str = TEMPLATE) -> str:
    """Builds the ``smolagents`` template when the daemon does not have it (once per process; the
    daemon's layer cache makes a rebuild of the same spec instant)."""
    with _template_lock:
        try:
            client.call("template.get", {"name": name})
        except NotFoundError:
            client.call("template.build", {"name": name, "spec": template_spec()}, timeout=1800)
    return name


class SandpitExecutor(RemotePythonExecutor):
    """Runs a smolagents agent's code in a Sandpit sandbox.

    Args:
        additional_imports: packages to ``pip install`` in the sandbox (needs a policy with network,
            e.g. ``policy="pypi"``).
        logger: the agent's logger.
        allow_pickle: as for smolagents' other remote executors.
        sandbox: an existing :class:`~sandpit.Sandbox` to use (it is not deleted by :meth:`cleanup`).
        **create: arguments for :meth:`Sandbox.create` (``template``, default ``"smolagents"``, built
            on first use; ``policy``, ``limits``, ``socket``...).
    """

    def __init__(self, additional_imports: List[str], logger: Any, allow_pickle: bool = False,
                 sandbox: Optional[Sandbox] = None, **create: Any) -> None:
        super().__init__(additional_imports, logger, allow_pickle)
        self._owned = sandbox is None
        if sandbox is None and "template" not in create:
            with Client(create.get("socket")) as c:
                create["template"] = ensure_template(c)
        self.sandbox = sandbox or Sandbox.create(**create)
        self.installed_packages = self.install_packages(additional_imports)
        self.logger.log(f"Sandpit sandbox {self.sandbox.id} is running", level=LogLevel.INFO)

    # pip names whose import name differs.
    _IMPORT_NAMES = {"pillow": "PIL", "scikit-learn": "sklearn", "beautifulsoup4": "bs4", "opencv-python": "cv2"}

    def install_packages(self, additional_imports: List[str]) -> List[str]:
        """pip-installs the packages the sandbox's Python cannot already import. Installing needs a
        policy with network (the default has none): when it fails, the agent is told and goes on
        without them (tool requirements are often only needed for rare outputs)."""
        if not additional_imports:
            return []
        probe = "import importlib.util, sys\nprint(' '.join(n for n in sys.argv[1:] if importlib.util.find_spec(n.split('.')[0]) is None))"
        names = {p: self._IMPORT_NAMES.get(p.lower(), p.replace("-", "_")) for p in additional_imports}
        missing_imports = set(self.sandbox.commands.run(["python3", "-c", probe, *names.values()]).stdout.split())
        missing = [p for p, n in names.items() if n in missing_imports]
        if missing:
            # Into the interpreter's virtualenv when it runs in one (the smolagents template's is the
            # sandbox user's own); into the user's site-packages otherwise.
            in_venv = self.sandbox.commands.run(["python3", "-c", "import sys; print(sys.prefix != sys.base_prefix)"]).stdout.strip() == "True"
            where = [] if in_venv else ["--user", "--break-system-packages"]
            r = self.sandbox.commands.run(["python3", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *where, *missing])
            if r.exit_code != 0:
                self.logger.log(f"Sandpit: could not install {missing} in the sandbox (installing needs a policy with network "
                                f"to the package index, e.g. policy='pypi'): "
                                f"{r.stderr.strip().splitlines()[-1] if r.stderr.strip() else 'pip failed'}", level=LogLevel.INFO)
                return [p for p in additional_imports if p not in missing]
        return list(additional_imports)

    def run_code_raise_errors(self, code: str) -> CodeOutput:
        ex = self.sandbox.run_code(code)
        logs = "".join(ex.logs.stdout)
        if ex.error is not None:
            if ex.error.name == RemotePythonExecutor.FINAL_ANSWER_EXCEPTION:
                answer = self._deserialize_final_answer(ex.error.value, self.allow_pickle)
                return CodeOutput(output=answer, logs=logs, is_final_answer=True)
            raise AgentError(f"{logs}\nExecuting code yielded an error:\n{ex.error.name}\n{ex.error.value}\n"
                             f"{ex.error.traceback}", self.logger)
        for result in ex.results:
            if not result.is_main_result:
                continue
            image = result.png or result.jpeg
            if image is not None:
                try:
                    import PIL.Image
                    return CodeOutput(output=PIL.Image.open(io.BytesIO(image)), logs=logs, is_final_answer=False)
                except ImportError:
                    return CodeOutput(output=image, logs=logs, is_final_answer=False)
            for value in (result.json, result.html, result.markdown, result.svg, result.latex, result.text):
                if value is not None:
                    return CodeOutput(output=value, logs=logs, is_final_answer=False)
        return CodeOutput(output=None, logs=logs, is_final_answer=False)

    def cleanup(self) -> None:
        """Deletes the sandbox (when this executor made it)."""
        if getattr(self, "sandbox", None) is not None and self._owned:
            try:
                self.sandbox.delete()
            finally:
                self.sandbox = None  # type: ignore[assignment]

    delete = cleanup
