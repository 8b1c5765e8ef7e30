from e2b_code_interpreter import Sandbox

with Sandbox.create() as sbx:
    print(sbx.commands.run("echo $GREETING", envs={"GREETING": "hi there"}).stdout.strip())
    print(sbx.commands.run("pwd", cwd="/tmp").stdout.strip())
# expect:
# hi there
# /tmp
