from e2b_code_interpreter import Sandbox

sbx = Sandbox.create()
sbx.files.write("/home/user/mark", "here")
again = Sandbox.connect(sbx.sandbox_id)
print(again.files.read("/home/user/mark"))
print(Sandbox.kill(sbx.sandbox_id))
print(Sandbox.kill(sbx.sandbox_id))
# expect:
# here
# True
# False
