from e2b_code_interpreter import Sandbox

with Sandbox.create() as sbx:
    execution = sbx.run_code("import sys; print('a'); print('b', file=sys.stderr)")
print("".join(execution.logs.stdout), end="")
print("".join(execution.logs.stderr), end="")
# expect:
# a
# b
