from e2b_code_interpreter import Sandbox

with Sandbox.create() as sbx:
    print(sbx.files.make_dir("/home/user/out"))
    print(sbx.files.make_dir("/home/user/out"))
# expect:
# True
# False
