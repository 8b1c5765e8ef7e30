import base64, os, tempfile
from e2b_code_interpreter import Sandbox

with Sandbox.create() as sbx:
    execution = sbx.run_code("import matplotlib.pyplot as plt\nplt.bar(['a', 'b'], [3, 5])\nplt.show()")
path = os.path.join(tempfile.mkdtemp(), "chart.png")
with open(path, "wb") as f:
    f.write(base64.b64decode(execution.results[0].png))
print(os.path.getsize(path) > 1000)
# expect:
# True
