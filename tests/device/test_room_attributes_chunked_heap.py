"""A board-profile Room in a board-sized heap takes attributes sent as CBOR
indefinite-length text strings of 1-byte chunks (2 wire bytes each): the decoder
gathers the chunks into one buffer instead of holding one object per chunk (~36+ B of
heap each), and measuring a map for max_values keeps nothing. Before, a 4 KiB frame of
2,000 chunks (well under the 8 KiB budget) killed the board's link with MemoryError,
and so did a 14 KiB one over it (which must just be dropped).

Runs on CPython and under MicroPython with the heap below (see
test_room_attributes_heap.py for what it holds); one module for this one test.
"""
from attribute_helpers import Warnings, join_with, relay_says
from room_helpers import close, raw, settle

from lkedge import link, relayside
from lkedge.config import RoomOptions
from lkedge.memroom import MemRoom

MP_HEAPSIZE = "240K"


def _text(s):
    b = s.encode()
    return bytes([0x60 | len(b)]) + b


def _chunked_frame(identity, sid, n):
    """The pieces (1 KiB at most) of PARTICIPANT {identity, sid, attributes: {"k": <n
    one-byte chunks of "\\x01">}}: the test holds no frame-sized block of its own."""
    head = (b"\xa3" + _text("identity") + _text(identity) + _text("sid") + _text(sid)
            + _text("attributes") + b"\xa1" + _text("k") + b"\x7f")
    yield relayside.frame_header(link.PARTICIPANT, len(head) + 2 * n + 1) + head
    while n:
        k = min(n, 512)
        yield b"\x61\x01" * k
        n -= k
    yield b"\xff"


async def test_attributes_in_one_byte_chunks_are_kept_or_dropped_without_exhausting_the_heap():
    mem = MemRoom()
    b = await join_with(mem, "b", RoomOptions.for_board())
    peer = await raw(mem, "peer")
    await settle(lambda: "peer" in b.remote_participants)
    with Warnings() as warns:
        await relay_says(mem, "b", _chunked_frame("op", "PA_op", 2000))   # ~4 KiB: fits
        await settle(lambda: "op" in b.remote_participants or b.connection_state != "connected")
        assert b.connection_state == "connected", "the board's link died: %r" % (b.last_error,)
        p = b.remote_participants["op"]
        assert not p.attributes_dropped and p.attributes == {"k": "\x01" * 2000}
        assert not warns, warns
        await relay_says(mem, "b", _chunked_frame("op2", "PA_op2", 7000))   # ~14 KiB: over 8 KiB
        await settle(lambda: "op2" in b.remote_participants or b.connection_state != "connected")
        assert b.connection_state == "connected", "the board's link died: %r" % (b.last_error,)
        p = b.remote_participants["op2"]
        assert p.attributes_dropped and p.attributes == {}
        assert len(warns) == 1 and "op2" in warns[0], warns
    await close(b, peer)
