from e2b_code_interpreter import Sandbox

with Sandbox.create() as sbx:
    handle = sbx.commands.run("sleep 120", background=True)
    running = [p.pid for p in sbx.commands.list()]
    print(handle.pid in running)
    print(sbx.commands.kill(handle.pid))
# expect:
# True
# True
