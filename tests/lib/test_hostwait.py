"""hostwait.wait_for: asyncio.wait_for's behaviour, without losing a cancellation
(CPython 3.9-3.11's returned the result when the awaitable completed in the loop turn
its caller was cancelled, python/cpython#86296), and clock.wait_for picks it there."""
import asyncio
import sys

import pytest

from lkedge import clock, hostwait
from lkedge.hostwait import wait_for


def run(coro):
    return asyncio.run(coro)


async def _done_in_one_turn():
    await asyncio.sleep(0)
    return "done"


def test_a_cancel_in_the_turn_the_awaitable_completes_is_not_lost():
    async def main():
        lost = 0
        for turns in range(1, 4):
            t = asyncio.ensure_future(wait_for(_done_in_one_turn(), 5))
            for _ in range(turns):
                await asyncio.sleep(0)
            if t.done():
                break
            t.cancel()
            try:
                await t
                lost += 1
            except asyncio.CancelledError:
                pass
        return lost, turns
    lost, turns = run(main())
    assert lost == 0 and turns > 1


def test_the_result_and_the_exception_of_the_awaitable_come_through():
    async def fails():
        raise KeyError("x")
    assert run(wait_for(_done_in_one_turn(), 1)) == "done"
    assert run(wait_for(_done_in_one_turn(), None)) == "done"
    with pytest.raises(KeyError):
        run(wait_for(fails(), 1))


async def _slow(ended):
    """Sleeps long; cancelled, its clean-up takes a while (to be waited for), then says so."""
    try:
        await asyncio.sleep(10)
    finally:
        await asyncio.sleep(0.01)
        ended.append("cleaned up")


def test_a_timeout_cancels_the_awaitable_and_waits_for_it_to_end_first():
    ended = []

    async def main():
        try:
            await wait_for(_slow(ended), 0.02)
        except asyncio.TimeoutError:
            return list(ended)
        raise AssertionError("no TimeoutError")
    assert run(main()) == ["cleaned up"]


def test_an_awaitable_that_finishes_its_work_when_cancelled_at_the_timeout_gives_its_result():
    # as asyncio.wait_for: PacketSender finishes a frame before the cancel goes on
    async def finishes():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "finished"
    assert run(wait_for(finishes(), 0.01)) == "finished"


def test_an_outside_cancel_cancels_the_awaitable_and_waits_for_it_before_going_on():
    ended = []

    async def main():
        t = asyncio.ensure_future(wait_for(_slow(ended), 5))
        await asyncio.sleep(0.01)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        return list(ended)
    assert run(main()) == ["cleaned up"]


def test_a_failure_of_the_awaitable_while_it_is_cancelled_is_not_left_unretrieved():
    # asyncio logs "Task exception was never retrieved" for an exception nobody asked for
    logged = []

    async def fails_when_cancelled():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise KeyError("clean-up failed")

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: logged.append(ctx["message"]))
        t = asyncio.ensure_future(wait_for(fails_when_cancelled(), 5))
        await asyncio.sleep(0.01)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
    run(main())
    import gc
    gc.collect()
    assert logged == []


def test_clock_wait_for_is_this_one_before_3_12_and_asyncios_after():
    want = hostwait.wait_for if sys.version_info < (3, 12) else asyncio.wait_for
    assert clock.wait_for is want


def test_a_coroutine_closed_while_it_waits_closes_quietly_even_with_its_loop_gone():
    # a Room left connected when its loop ended: its timer's coroutine is closed when it
    # is collected, and must not try to cancel a task on the closed loop (an "Exception
    # ignored ... Event loop is closed" in every such test run)
    loop = asyncio.new_event_loop()
    coro = wait_for(asyncio.sleep(10), 5)
    loop.run_until_complete(asyncio.sleep(0))
    step = loop.create_task(coro)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert not step.done()
    loop.close()
    coro.close()   # GeneratorExit inside wait_for: no RuntimeError
