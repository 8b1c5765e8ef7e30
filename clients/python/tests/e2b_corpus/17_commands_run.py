from e2b_code_interpreter import Sandbox

with Sandbox.create() as sbx:
    result = sbx.commands.run("echo 'hello from bash'; ls /")
print(result.stdout.splitlines()[0])
print(result.exit_code, result.stderr == "")
# expect:
# hello from bash
# 0 True
