"""asyncio.wait_for that never loses a cancellation, for CPython before 3.12.

Their wait_for returns the awaitable's result when the awaitable completes in the same
loop turn as the task that awaits it is cancelled (python/cpython#86296): the cancel is
lost and the cancelled task runs on. A Room awaits wait_for in disconnect(), connect()
and its timer, so `task.cancel()` on an application task inside disconnect() was lost
in most loop turns (171 of 200 on CPython 3.11 with an in-memory link), and the task
went on as if never cancelled. Here the wait is asyncio.wait, which never swallows a
cancel; the awaitable is cancelled and waited for, as wait_for does, before the cancel
or the TimeoutError goes on.

clock.wait_for is this on CPython 3.9-3.11 and asyncio.wait_for elsewhere (3.12 made it
right; MicroPython's keeps the cancel), so a board never loads this module.
"""
import asyncio


async def wait_for(aw, timeout):
    """Await aw for at most `timeout` seconds (None: no limit), as asyncio.wait_for."""
    task = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait((task,), timeout=timeout)
    except asyncio.CancelledError:   # this task was cancelled: aw is too, and ends first
        # (not on GeneratorExit: a coroutine closed, its loop maybe gone, awaits nothing)
        await _stopped(task)
        raise
    if not done:
        await _stopped(task)
        if task.cancelled():
            raise asyncio.TimeoutError
    return task.result()   # (or aw finished, or failed, as it was cancelled at the timeout)


async def _stopped(task):
    task.cancel()
    await asyncio.wait((task,))
    if not task.cancelled():
        task.exception()   # retrieved: asyncio would warn that nobody did
