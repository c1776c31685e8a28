"""The board side of the bounded-memory scenario (runs under MicroPython).

    LKEDGE_TOKEN=<jwt> micropython -X heapsize=96K board_memory.py URL COMPRESS RESPONSE_BYTES [garbage]

(The token travels in the environment: the unix port dies with "FATAL: uncaught NLR"
on a command-line argument longer than about 256 bytes, and a JWT is longer.)

Joins the room as a board (RoomOptions.for_board), serves a streaming RPC method
"sink" that consumes the whole request and answers RESPONSE_BYTES of text in pieces,
and a byte stream topic "blob" whose content it hashes. Prints machine-readable lines:

    ROMFS heap=<bytes>                       with LKEDGE_ROMFS only: the heap in use once
                                             the image is read and mounted
    MEM import=<bytes> room=<bytes>          heap in use after imports / after Room()
    READY                                    joined; the host may start
    LIVE joined=<bytes> call=<bytes> stream=<bytes>
                                             heap in use (after a collection) once
                                             joined, halfway through the call's
                                             request, halfway through the byte stream
    SINK <request bytes> <sha256 hex>        the call's request as received
    BLOB <bytes> <sha256 hex>                the byte stream as received
    qstr pool: ... n_qstr=<count> ... n_total_bytes=<bytes>
                                             interned names (micropython.qstr_info())
                                             and the heap their pools and text take
    GARBAGE request=<B> answer=<B> stream=<B>
                                             with "garbage" only: bytes allocated per KiB
                                             of the call's request received, of its
                                             answer sent and of the byte stream
                                             received, over the second 16 KiB of each
                                             with collections off (a generous heap)
    PEAK <bytes>                             highest gc.mem_alloc() sampled
    FAIL <what>: <exception>                 a handler failed (then the board exits)
    LOST <reason>                            the link was lost (then the board exits)
"""
import gc
import os
import sys

# With LKEDGE_ROMFS=<image> and LKEDGE_ROMFS_AT=<mount point> (board_heap --romfs) the
# library comes from a ROMFS image, its bytecode executed in place as from a board's
# ROMFS partition, except that the image is read into this heap first (one block that
# the bench takes out again). Written without names of its own: an interned name more
# would be the board's 621st, whose pool costs 7 KB.
if os.getenv("LKEDGE_ROMFS"):
    import vfs
    gc.collect()
    _m0 = gc.mem_alloc()
    vfs.mount(vfs.VfsRom(open(os.getenv("LKEDGE_ROMFS"), "rb").read()), os.getenv("LKEDGE_ROMFS_AT"))
    sys.path.insert(0, os.getenv("LKEDGE_ROMFS_AT"))
    gc.collect()
    # the collection threshold lkedge sets for a board's heap, which has no image in it
    # (the whole heap's here is ~80% larger: garbage piled up between what stays, and
    # 1 MiB compressed needed 4 KiB more)
    gc.threshold(max(4096, (gc.mem_free() + _m0) // 16))
    print("ROMFS heap=%d" % gc.mem_alloc())

gc.collect()
_m0 = gc.mem_alloc()

import asyncio  # noqa: E402
import binascii  # noqa: E402
import hashlib  # noqa: E402

from lkedge.config import RoomOptions  # noqa: E402
from lkedge.room import Room  # noqa: E402

PIECE = "0123456789abcdef" * 32  # 512 characters, produced again and again, no growth


# With "garbage" the board counts what it allocates per KiB moved (garbage_probe.py,
# imported only then: the measured runs carry no code of it).
probe = None
if len(sys.argv) > 4 and sys.argv[4] == "garbage":
    import garbage_probe as probe  # noqa: E402


class Answer:
    def __init__(self, n):
        self.left = self.total = n

    def __aiter__(self):
        return self

    async def __anext__(self):
        if probe:
            probe.at("answer", self.total - self.left)
        if not self.left:
            raise StopAsyncIteration
        n = min(self.left, len(PIECE))
        self.left -= n
        return PIECE if n == len(PIECE) else PIECE[:n]


peak = [0]
live = {}


def live_at(key, n, total):
    """Heap in use after a collection, once per key, when half the payload is through
    (not when measuring garbage: the collection would free what is being counted)."""
    if key not in live and total and n * 2 >= total and not probe:
        gc.collect()
        live[key] = gc.mem_alloc()


def sample():
    a = gc.mem_alloc()
    if a > peak[0]:
        peak[0] = a


async def main(url, token, compress, response_bytes):
    gc.collect()
    m_import = gc.mem_alloc()
    room = Room(RoomOptions.for_board(None, advertise_compression=compress, auto_reconnect=False))
    gc.collect()
    print("MEM import=%d room=%d" % (m_import, gc.mem_alloc()))
    done = asyncio.Event()
    results = {}

    def failed(what, e):
        print("FAIL %s: %r" % (what, e))
        done.set()

    stopping = []  # our own disconnect() at the end is no loss
    room.on("disconnected", lambda why: stopping or (print("LOST %s" % why), done.set()))

    async def sink(data):
        try:
            return await consume_request(data)
        except Exception as e:
            failed("sink", e)
            raise

    async def consume_request(data):
        h = hashlib.sha256()
        n = 0
        async for s in data.reader:
            b = s.encode()
            h.update(b)
            n += len(b)
            sample()
            live_at("call", n, response_bytes)
            if probe:
                probe.at("request", n)
        print("SINK %d %s" % (n, binascii.hexlify(h.digest()).decode()))
        results["sink"] = 1
        return Answer(response_bytes)

    async def blob(reader, sender):
        try:
            await consume_blob(reader)
        except Exception as e:
            failed("blob", e)

    async def consume_blob(reader):
        h = hashlib.sha256()
        buf = bytearray(512)
        n = 0
        while True:
            k = await reader.readinto(buf)
            if not k:
                break
            h.update(memoryview(buf)[:k])
            n += k
            sample()
            live_at("stream", n, reader.info.total_length)
            if probe:
                probe.at("stream", n)
        print("BLOB %d %s" % (n, binascii.hexlify(h.digest()).decode()))
        results["blob"] = 1
        if len(results) == 2:
            done.set()

    room.local_participant.register_rpc_method("sink", sink, streaming=True)
    room.register_byte_stream_handler("blob", blob)
    await room.connect(url, token)
    gc.collect()
    live["joined"] = gc.mem_alloc()
    print("READY")
    await done.wait()
    if len(results) < 2:
        return
    await asyncio.sleep(0.2)
    print("LIVE joined=%d call=%d stream=%d" % (live["joined"], live.get("call", 0), live.get("stream", 0)))
    if probe:
        probe.report()
    import micropython
    micropython.qstr_info()   # "qstr pool: n_pool=.., n_qstr=.., n_str_data_bytes=.., n_total_bytes=.."
    print("PEAK %d" % peak[0])   # last: the host stops reading here
    stopping.append(1)
    await room.disconnect()


asyncio.run(main(sys.argv[1], os.getenv("LKEDGE_TOKEN"), sys.argv[2] == "1", int(sys.argv[3])))
