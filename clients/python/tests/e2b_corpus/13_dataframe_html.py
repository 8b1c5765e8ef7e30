# A DataFrame as the last expression: text and html representations.
from e2b_code_interpreter import Sandbox

with Sandbox.create() as sbx:
    execution = sbx.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': [3, 4]})")
result = execution.results[0]
print(result.text.split())
print("<table" in result.html)
print(sorted(result.formats()))
# expect:
# ['a', 'b', '0', '1', '3', '1', '2', '4']
# True
# ['html', 'text']
