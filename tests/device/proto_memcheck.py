"""The decoder's memory figure: one DataPacket carrying a 15000-byte stream_chunk
content, decoded from a 512-byte buffer refilled the way a link reader is.

The packet is generated on the fly (a fixed prefix, then content bytes (offset & 0xFF))
so the test itself holds no 15 KB copy. `measure()` returns (bytes allocated while
decoding with the GC off, the decoded msg, content bytes seen, mismatching bytes).
Used by tests/device/test_proto.py and, with mpy-cross output, by the host test that
runs it under a 32K heap.
"""
import gc

from lkedge import proto

CONTENT_LEN = 15000
STREAM_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
# DataPacket{participant_identity: "board-1", stream_chunk{stream_id, chunk_index: 3,
# content: 15000 bytes}, participant_sid: "PA_abc"} up to the content bytes, from
# livekit-protocol's SerializeToString; the sid field follows the content.
PREFIX = bytes.fromhex(
    "2207626f6172642d3172c3750a2430663866616435622d643963622d343639662d613136352d"
    "37303836373732383935306510031a9875")
SUFFIX = bytes.fromhex("8a010650415f616263")
PACKET_LEN = len(PREFIX) + CONTENT_LEN + len(SUFFIX)


def _fill(buf, pos):
    """Copies packet bytes [pos, pos + len(buf)) into buf; returns how many."""
    n = min(len(buf), PACKET_LEN - pos)
    p = len(PREFIX)
    c_end = p + CONTENT_LEN
    for k in range(n):
        a = pos + k
        if a < p:
            buf[k] = PREFIX[a]
        elif a < c_end:
            buf[k] = (a - p) & 0xFF
        else:
            buf[k] = SUFFIX[a - c_end]
    return n


def _decode(dec, buf, mv):
    dec.start(PACKET_LEN)
    pos = 0
    seen = 0
    bad = 0
    while True:
        n = _fill(buf, pos)
        pos += n
        dec.receive(mv[:n])   # a slice per read, as the room's reader loop makes
        while True:
            ev = dec.next_event()
            if ev is proto.NEED_DATA:
                break
            if ev[0] == proto.PACKET:
                return ev[1], seen, bad
            piece = ev[2]
            for k in range(len(piece)):
                if piece[k] != (seen + k) & 0xFF:
                    bad += 1
            seen += len(piece)


def measure():
    """MicroPython: bytes allocated (gc.mem_alloc, GC off). CPython, which has no
    gc.mem_alloc: the tracemalloc peak, to show the content is never held whole."""
    buf = bytearray(512)
    mv = memoryview(buf)
    dec = proto.PacketDecoder()
    _decode(dec, buf, mv)   # warm up: first-use allocations are not per packet
    gc.collect()
    if not hasattr(gc, "mem_alloc"):
        import tracemalloc
        tracemalloc.start()
        try:
            msg, seen, bad = _decode(dec, buf, mv)
            used = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return used, msg, seen, bad
    gc.disable()
    try:
        before = gc.mem_alloc()
        msg, seen, bad = _decode(dec, buf, mv)
        used = gc.mem_alloc() - before
    finally:
        gc.enable()
    return used, msg, seen, bad


if __name__ == "__main__":
    used, msg, seen, bad = measure()
    print("decoder allocated", used, "bytes for a", PACKET_LEN, "byte packet;", seen, "content bytes,", bad, "bad")
