from e2b_code_interpreter import Sandbox

with Sandbox.create() as sbx:
    handle = sbx.commands.run("sleep 1; echo done in background", background=True)
    print(sbx.commands.run("echo meanwhile").stdout.strip())
    result = handle.wait()
    print(result.stdout.strip())
# expect:
# meanwhile
# done in background
