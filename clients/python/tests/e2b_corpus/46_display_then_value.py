# display() shows a result as the cell runs; the last expression stays the main result.
from e2b_code_interpreter import Sandbox

with Sandbox.create() as sbx:
    execution = sbx.run_code("display('first')\ndisplay({'k': 1})\n'last'")
print(execution.text, [r.text for r in execution.results], [r.is_main_result for r in execution.results])
# expect:
# 'last' ["'first'", "{'k': 1}", "'last'"] [False, False, True]
