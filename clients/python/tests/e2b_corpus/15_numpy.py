from e2b_code_interpreter import Sandbox

with Sandbox.create() as sbx:
    print(sbx.run_code("import numpy as np\nint(np.arange(10).sum())").text)
# expect:
# 45
