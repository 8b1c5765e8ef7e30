# Printed output and the value of the last expression are kept apart.
from e2b_code_interpreter import Sandbox

with Sandbox.create() as sbx:
    execution = sbx.run_code("print('computing')\n6 * 7")
print(execution.logs.stdout, execution.text, len(execution.results))
# expect:
# ['computing\n'] 42 1
