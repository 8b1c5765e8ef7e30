# The quickstart: a cell's last expression comes back as execution.text.
from e2b_code_interpreter import Sandbox

sbx = Sandbox.create()
execution = sbx.run_code("print('hello world')")
print(execution.logs.stdout)
execution = sbx.run_code("1 + 1")
print(execution.text)
sbx.kill()
# expect:
# ['hello world\n']
# 2
