from e2b_code_interpreter import Sandbox
from e2b import NotFoundException

with Sandbox.create() as sbx:
    try:
        sbx.files.read("/home/user/does-not-exist.txt")
    except NotFoundException:
        print("not found")
# expect:
# not found
