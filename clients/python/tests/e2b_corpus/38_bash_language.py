from e2b_code_interpreter import Sandbox

with Sandbox.create() as sbx:
    sbx.run_code("export COLOR=blue; cd /tmp", language="bash")
    execution = sbx.run_code("echo $COLOR; pwd", language="bash")
print("".join(execution.logs.stdout), end="")
# expect:
# blue
# /tmp
