# envs given at creation reach commands and cells.
from e2b_code_interpreter import Sandbox

with Sandbox.create(envs={"MY_TOKEN": "s3cret"}) as sbx:
    print(sbx.commands.run("echo $MY_TOKEN").stdout.strip())
    print(sbx.run_code("import os; os.environ['MY_TOKEN']").text)
# expect:
# s3cret
# 's3cret'
