from e2b_code_interpreter import Sandbox
from e2b import FileType

with Sandbox.create() as sbx:
    sbx.files.write("/home/user/f.txt", "12345")
    info = sbx.files.get_info("/home/user/f.txt")
    print(info.name, info.size, info.type == FileType.FILE, info.permissions)
# expect:
# f.txt 5 True rw-r--r--
