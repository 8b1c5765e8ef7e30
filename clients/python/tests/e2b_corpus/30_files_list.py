from e2b_code_interpreter import Sandbox
from e2b import FileType

with Sandbox.create() as sbx:
    sbx.files.make_dir("/home/user/project/src")
    sbx.files.write("/home/user/project/README.md", "# hi")
    sbx.files.write("/home/user/project/src/main.py", "print(1)")
    top = sbx.files.list("/home/user/project")
    print(sorted((e.name, e.type == FileType.DIR) for e in top))
    deep = sbx.files.list("/home/user/project", depth=2)
    print(sorted(e.name for e in deep))
# expect:
# [('README.md', False), ('src', True)]
# ['README.md', 'main.py', 'src']
