from e2b_code_interpreter import Sandbox

with Sandbox.create() as sbx:
    sbx.files.write("/home/user/old.txt", "x")
    print(sbx.files.exists("/home/user/old.txt"))
    entry = sbx.files.rename("/home/user/old.txt", "/home/user/new.txt")
    print(entry.name, sbx.files.exists("/home/user/old.txt"))
    sbx.files.remove("/home/user/new.txt")
    print(sbx.files.exists("/home/user/new.txt"))
# expect:
# True
# new.txt False
# False
