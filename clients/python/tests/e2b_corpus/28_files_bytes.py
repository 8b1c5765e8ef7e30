from e2b_code_interpreter import Sandbox

payload = bytes(range(256))
with Sandbox.create() as sbx:
    sbx.files.write("/home/user/blob.bin", payload)
    data = sbx.files.read("/home/user/blob.bin", format="bytes")
print(type(data).__name__, bytes(data) == payload)
# expect:
# bytearray True
