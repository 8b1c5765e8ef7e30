from e2b_code_interpreter import Sandbox

with Sandbox.create() as sbx:
    sbx.files.write("/home/user/data.csv", "city,temp\nOslo,3\nRome,18\nCairo,30\n")
    execution = sbx.run_code("import pandas as pd\ndf = pd.read_csv('/home/user/data.csv')\nint(df['temp'].mean())")
print(execution.text)
# expect:
# 17
