"""The asyncio client against the real daemon: many requests in flight on one connection."""
import asyncio
import time

import pytest

from sandpit import AsyncClient, AsyncSandbox, NotFoundError


def run(coro):
    return asyncio.run(coro)


def test_async_code_commands_files_and_rollback(daemon):
    async def main():
        async with await AsyncSandbox.create() as sb:
            out = []
            ex = await sb.run_code("import sys\nfor i in range(3): print(i)\nsum(range(10))", on_stdout=out.append)
            assert ex.text == "45" and "".join(out) == "0\n1\n2\n"
            r = await sb.commands.run("echo hi > f && cat f")
            assert r.stdout == "hi\n"
            await sb.files.write("g", "from files")
            assert await sb.files.read("g") == "from files"
            steps = [c.step for c in await sb.checkpoints.list()]
            assert steps, "every step is checkpointed"
            await sb.commands.run("rm f g")
            back = await sb.restore(step=max(steps))
            assert back.restored == ["filesystem", "interpreter"] and back.contexts == {"default": "restored"}
            assert (await sb.run_code("i")).text == "2", "the variables of that step came back too"
            assert await sb.files.read("f") == "hi\n"
            assert not await sb.files.exists("g"), "fs.write is not a step: g was never checkpointed"
            [fork] = await sb.fork()
            try:
                assert (await fork.commands.run("cat f")).stdout == "hi\n"
            finally:
                await fork.delete()
            sid = sb.id
        async with await AsyncClient.connect() as c:
            with pytest.raises(NotFoundError):
                await c.call("sandbox.get", {"sandboxId": sid})
    run(main())


def test_requests_are_pipelined_on_one_connection(daemon):
    async def main():
        async with await AsyncClient.connect() as c:
            sb = await c.create_sandbox()
            try:
                # Ten half-second commands at once on one connection finish together, not one after another.
                t0 = time.monotonic()
                rs = await asyncio.gather(*[sb.commands.run(f"sleep 0.5; echo {i}") for i in range(10)])
                elapsed = time.monotonic() - t0
                assert [r.stdout for r in rs] == [f"{i}\n" for i in range(10)]
                assert elapsed < 5, f"10 x 0.5 s took {elapsed:.1f} s: the requests were serialized"
            finally:
                await sb.delete()
    run(main())


def test_async_callbacks_may_be_coroutines_and_cells_can_be_interrupted(daemon):
    async def main():
        async with await AsyncSandbox.create() as sb:
            got = []

            async def on_out(t):
                got.append(t)
            await sb.run_code("x = 5")
            cell = asyncio.ensure_future(sb.run_code("print('start', flush=True)\nwhile True: pass", on_stdout=on_out))
            for _ in range(200):
                if got:
                    break
                await asyncio.sleep(0.05)
            await sb.interrupt()
            ex = await cell
            assert ex.error is not None and ex.error.name == "KeyboardInterrupt"
            assert "".join(got) == "start\n"
            assert (await sb.run_code("x")).text == "5", "the interrupt kept the context's state"
    run(main())
