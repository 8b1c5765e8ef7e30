from e2b_code_interpreter import Sandbox

with Sandbox.create() as sbx:
    info = sbx.files.write("/home/user/notes.txt", "first line\n")
    print(info.name, info.path)
    print(sbx.files.read("/home/user/notes.txt"), end="")
    print(sbx.run_code("open('/home/user/notes.txt').read()").text)
# expect:
# notes.txt /home/user/notes.txt
# first line
# 'first line\n'
