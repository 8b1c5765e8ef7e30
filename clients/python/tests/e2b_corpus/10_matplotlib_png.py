# A chart: the figure arrives as a result whose png is a base64 string.
import base64
from e2b_code_interpreter import Sandbox

code = """
import matplotlib.pyplot as plt
plt.plot([1, 2, 3], [1, 4, 9])
plt.title("squares")
plt.show()
"""
with Sandbox.create() as sbx:
    execution = sbx.run_code(code)
result = execution.results[0]
print(type(result.png).__name__)
print(base64.b64decode(result.png)[:8] == b"\x89PNG\r\n\x1a\n")
print("png" in result.formats())
# expect:
# str
# True
# True
