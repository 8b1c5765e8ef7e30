from e2b_code_interpreter import Sandbox

with Sandbox.create() as sbx:
    handle = sbx.commands.run("sleep 300", background=True)
    print(handle.kill())
    print(sbx.commands.run("pgrep -c -x sleep || true").stdout.strip())
# expect:
# True
# 0
