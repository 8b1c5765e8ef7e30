from e2b_code_interpreter import Sandbox

with Sandbox.create() as sbx:
    infos = sbx.files.write_files([
        {"path": "/home/user/a.txt", "data": "A"},
        {"path": "/home/user/b.txt", "data": b"B"},
    ])
    print(sorted(i.name for i in infos))
    print(sbx.commands.run("cat /home/user/a.txt /home/user/b.txt").stdout)
# expect:
# ['a.txt', 'b.txt']
# AB
