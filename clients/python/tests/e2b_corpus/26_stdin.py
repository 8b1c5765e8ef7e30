from e2b_code_interpreter import Sandbox

with Sandbox.create() as sbx:
    handle = sbx.commands.run("read name; echo hello $name", background=True, stdin=True)
    sbx.commands.send_stdin(handle.pid, "sandbox\n")
    print(handle.wait().stdout.strip())
# expect:
# hello sandbox
