from e2b_code_interpreter import Sandbox

lines = []
with Sandbox.create() as sbx:
    sbx.commands.run("for i in 1 2 3; do echo line $i; done", on_stdout=lambda data: lines.append(data))
print("".join(lines), end="")
# expect:
# line 1
# line 2
# line 3
