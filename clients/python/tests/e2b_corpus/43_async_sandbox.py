import asyncio
from e2b_code_interpreter import AsyncSandbox

async def main():
    sbx = await AsyncSandbox.create()
    execution = await sbx.run_code("sum(range(5))")
    result = await sbx.commands.run("echo async")
    await sbx.kill()
    print(execution.text, result.stdout.strip())

asyncio.run(main())
# expect:
# 10 async
