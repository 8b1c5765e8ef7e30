# Several sandboxes at once, as agent frameworks do.
import asyncio
from e2b_code_interpreter import AsyncSandbox

async def work(i):
    sbx = await AsyncSandbox.create()
    try:
        return (await sbx.run_code(f"{i} * {i}")).text
    finally:
        await sbx.kill()

async def main():
    print(await asyncio.gather(*(work(i) for i in range(4))))

asyncio.run(main())
# expect:
# ['0', '1', '4', '9']
