from e2b_code_interpreter import Sandbox

code = """
import matplotlib.pyplot as plt
plt.figure(); plt.plot([1, 2])
plt.figure(); plt.plot([2, 1])
plt.show()
"""
with Sandbox.create() as sbx:
    execution = sbx.run_code(code)
print(len([r for r in execution.results if r.png]))
# expect:
# 2
