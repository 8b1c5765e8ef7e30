from e2b_code_interpreter import Sandbox
from e2b import TimeoutException

with Sandbox.create() as sbx:
    sbx.run_code("kept = 'state survives'")
    try:
        sbx.run_code("import time\ntime.sleep(60)", timeout=1)
    except TimeoutException:
        print("cell timed out")
    print(sbx.run_code("kept").text)
# expect:
# cell timed out
# 'state survives'
