"""A LangChain tool that runs Python in a Sandpit sandbox (``pip install 'sandpit[langchain]'``).

    from sandpit.adapters.langchain import SandpitPythonTool
    tool = SandpitPythonTool()            # one sandbox, made on first use; tool.close() deletes it
    llm_with_tools = llm.bind_tools([tool])
    # or in LangGraph: ToolNode([tool]), which may call it several times in parallel

State persists between calls (it is one interpreter context). The output is what the model should see:
stdout, the last expression's value. When the code raised, the tool raises ``ToolException`` with the
error and its traceback: LangChain hands it to the model as an error (``ToolMessage(status="error")``)
rather than as a result. The sandbox is made once, however many calls race on first use. Long
output keeps its head and tail.
"""
from __future__ import annotations

import threading
from typing import Any, Dict, Optional, Type

from langchain_core.tools import BaseTool, ToolException
from pydantic import BaseModel, Field, PrivateAttr

from ..sandbox import Sandbox


class PythonInput(BaseModel):
    code: str = Field(description="Python code to run. Variables persist between calls; the last expression's value is returned.")


class SandpitPythonTool(BaseTool):
    """Runs Python code in an isolated Sandpit sandbox."""

    name: str = "sandpit_python"
    description: str = ("Run Python code in an isolated sandbox (no network). State persists between calls. "
                        "Returns printed output, the value of the last expression, or the error traceback.")
    args_schema: Type[BaseModel] = PythonInput
    max_output_chars: int = 8000
    create_args: Dict[str, Any] = Field(default_factory=dict)
    # A raised ToolException goes back to the model as the tool's error, not as an exception in the graph.
    handle_tool_error: Any = True
    _sandbox: Optional[Sandbox] = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def _get_sandbox(self) -> Sandbox:
        # Parallel tool calls (LangGraph's ToolNode) race here on first use: one creates, the rest wait.
        with self._lock:
            if self._sandbox is None:
                self._sandbox = Sandbox.create(**self.create_args)
            return self._sandbox

    @property
    def sandbox(self) -> Sandbox:
        return self._get_sandbox()

    def _shape(self, s: str) -> str:
        if len(s) <= self.max_output_chars:
            return s
        half = self.max_output_chars // 2
        return f"{s[:half]}\n… [{len(s) - 2 * half} characters cut] …\n{s[-half:]}"

    def _run(self, code: str, run_manager: Any = None) -> str:
        ex = self._get_sandbox().run_code(code)
        parts = []
        if ex.restarted:
            parts.append("(the interpreter was restarted: earlier variables are gone)")
        out = "".join(ex.logs.stdout)
        if out:
            parts.append(self._shape(out))
        err = "".join(ex.logs.stderr)
        if err:
            parts.append("stderr:\n" + self._shape(err))
        if ex.error is not None:
            parts.append(self._shape(ex.error.traceback or f"{ex.error.name}: {ex.error.value}"))
            raise ToolException("\n".join(parts))
        if ex.text is not None:
            parts.append(self._shape(ex.text))
        if any(r.is_figure for r in ex.results):
            parts.append(f"({sum(r.is_figure for r in ex.results)} figure(s) produced)")
        return "\n".join(parts) if parts else "(no output)"

    def close(self) -> None:
        """Deletes the tool's sandbox."""
        with self._lock:
            sb, self._sandbox = self._sandbox, None
        if sb is not None:
            sb.delete()
