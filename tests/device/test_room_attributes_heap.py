"""A board-profile Room in a board-sized heap survives participants announced with
1,500 tiny attributes each (PARTICIPANT frames of ~9.4 KB, under its 16 KiB max_frame):
RoomOptions.max_values budgets each participant map while its CBOR is decoded, so the
attributes are dropped before they are built. Before the budget, one such frame made
~130 KiB of objects on this 64-bit port and the board's link died of MemoryError.

Runs on CPython and under MicroPython with MP_HEAPSIZE below: the library's bytecode
(about 100 KiB of this heap on the unix port; in flash on a board with frozen modules)
and the test runner take ~110 KiB, the in-memory relay, a peer and the board's Room
~30 KiB more, which leaves the board about 100 KiB free. One module for this one test:
the runner's earlier tests would leave the heap fuller.
"""
import gc
import sys

from attribute_helpers import Warnings, join_with, participant_frame, relay_says
from room_helpers import close, raw, settle

from lkedge.config import RoomOptions
from lkedge.memroom import MemRoom

MP_HEAPSIZE = "240K"
_MP = sys.implementation.name == "micropython"


def _alloc():
    gc.collect()
    return gc.mem_alloc() if _MP else 0


async def test_1500_attributes_in_one_frame_no_longer_exhaust_a_board_sized_heap():
    mem = MemRoom()
    b = await join_with(mem, "b", RoomOptions.for_board())
    peer = await raw(mem, "peer")
    await settle(lambda: "peer" in b.remote_participants)
    base = _alloc()
    kept = []
    with Warnings() as warns:
        for i in range(3):   # one after another: nothing of them piles up
            size = await relay_says(mem, "b", participant_frame("op-%d" % i, "PA_op%d" % i, 1500))
            assert 9000 < size < 10000, size   # the ~9.4 KB frame measured at ~141 KiB
            await settle(lambda: "op-%d" % i in b.remote_participants or b.connection_state != "connected")
            assert b.connection_state == "connected", "the board's link died: %s" % b.last_error
            kept.append(_alloc() - base)
    assert [b.remote_participants["op-%d" % i].attributes_dropped for i in range(3)] == [True] * 3
    assert len(warns) == 3, warns
    if _MP:
        # Each participant keeps ~0.5 KB (its identity, sid, capabilities and this
        # test's copy of the warning), not ~130 KiB. (The last frame's bytes may stay
        # referenced from a task's stale stack slots until the next frame comes.)
        print("heap kept after each 1,500-attribute PARTICIPANT frame: %s bytes" % kept)
        assert kept[2] - kept[0] < 2 * 1000, kept
    # the link goes on: a stream from the peer still arrives
    got = []

    async def handler(reader, sender):
        got.append(await reader.read_all())
    b.register_text_stream_handler("t", handler)
    await peer.send({"destination_identities": ["b"], "stream_header": {
        "stream_id": "s1", "topic": "t", "text_header": {}, "total_length": 2, "inline_content": b"ok"}})
    await settle(lambda: got)
    assert got == ["ok"]
    if _MP:
        left = _alloc() - base
        print("... and once a DataPacket followed: %d bytes" % left)
        assert left < 8000, left
    await close(b, peer)
