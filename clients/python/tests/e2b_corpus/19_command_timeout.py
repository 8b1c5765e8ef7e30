from e2b_code_interpreter import Sandbox
from e2b import TimeoutException

with Sandbox.create() as sbx:
    try:
        sbx.commands.run("sleep 30", timeout=1)
        print("finished")
    except TimeoutException:
        print("timed out")
    print(sbx.commands.run("echo next").stdout.strip())
# expect:
# timed out
# next
