from e2b_code_interpreter import Sandbox

with Sandbox.create(timeout=60) as sbx:
    sbx.set_timeout(120)
    print(sbx.commands.run("echo alive").stdout.strip())
# expect:
# alive
