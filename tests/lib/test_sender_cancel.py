"""CPython's own cancel bookkeeping around a frame finished after a cancel (the rest of
the behaviour is tested on both runtimes in tests/device/test_sender.py and
test_room_concurrency.py): asyncio.timeout (3.11+) counts the cancels a task was
asked, and must turn the one that landed in a frame into TimeoutError, with no stray
cancel left for later code."""
import asyncio

import pytest

from test_room_concurrency import _goes_on_after_the_cancel, _room_on_half_transport


@pytest.mark.skipif(not hasattr(asyncio, "timeout"), reason="asyncio.timeout is CPython 3.11+")
async def test_asyncio_timeout_around_a_send_cut_in_a_frame_raises_timeout_and_nothing_later():
    t, a, b, lost, errors, got, _ = await _room_on_half_transport()
    t.stall_over = 5000

    async def release():
        await t.stalled.wait()
        await asyncio.sleep(0.2)
        t.stall_over = None
        t.go.set()
    asyncio.create_task(release())
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await a.local_participant.send_bytes(b"y" * 100000, topic="big", destination_identities=["b"],
                                                 compress=False)
    await asyncio.sleep(0.1)   # a cancel held back and delivered late would land here
    assert asyncio.current_task().cancelling() == 0
    await _goes_on_after_the_cancel(t, a, b, lost, errors, got)
