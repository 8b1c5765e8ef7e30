from e2b_code_interpreter import Sandbox

with Sandbox.create() as sbx:
    sbx.run_code("import math\nradius = 3")
    print(sbx.run_code("round(math.pi * radius ** 2, 2)").text)
    sbx.run_code("def area(r): return math.pi * r * r")
    print(sbx.run_code("round(area(1), 4)").text)
# expect:
# 28.27
# 3.1416
