# A cell that raises: execution.error has name, value and traceback; the sandbox goes on.
from e2b_code_interpreter import Sandbox

with Sandbox.create() as sbx:
    execution = sbx.run_code("raise ValueError('bad input')")
    print(execution.error.name)
    print(execution.error.value)
    print("ValueError" in execution.error.traceback)
    print(sbx.run_code("'still alive'").text)
# expect:
# ValueError
# bad input
# True
# 'still alive'
