"""PacketSender: DATA frames through one buffer, whole and in turn (CPython and MicroPython)."""
import asyncio

from lkedge import link, proto
from lkedge.sender import PacketSender


class Wire:
    """A transport that records each write and yields to other tasks, as a socket may."""

    def __init__(self):
        self.writes = []

    async def write(self, data):
        self.writes.append(bytes(data))  # a copy: the sender reuses its buffer
        await asyncio.sleep(0)


def frames(data):
    """[(type, body)] of the LINK frames in data."""
    fr = link.FrameReader(1 << 20)
    fr.receive(memoryview(data))
    out = []
    body = None
    while True:
        ev = fr.next_event()
        if ev == link.NEED_DATA:
            return out
        if ev[0] == link.FRAME:
            out.append((ev[1], ev[2]))
        elif ev[0] == link.DATA_START:
            body = bytearray()
        elif ev[0] == link.DATA_PIECE:
            body += ev[1]
        elif ev[0] == link.DATA_END:
            out.append((link.DATA, bytes(body)))


def chunk(i, content):
    return {"destination_identities": ["b"],
            "stream_chunk": {"stream_id": "s", "chunk_index": i, "content": content}}


async def test_a_piece_sized_chunk_is_one_write_and_the_frame_is_the_encoding():
    s = PacketSender(512 + 256)
    s.transport = w = Wire()
    content = memoryview(bytes(range(256)) * 2)
    await s.send(chunk(3, content))
    assert len(w.writes) == 1
    assert frames(w.writes[0]) == [(link.DATA, proto.encode(proto.DATA_PACKET, chunk(3, bytes(content))))]


async def test_a_packet_bigger_than_the_buffer_goes_out_whole_in_several_writes():
    s = PacketSender(64)
    s.transport = w = Wire()
    content = bytes(range(200)) * 10
    pkt = {"destination_identities": ["b" * 40], "stream_chunk": {"stream_id": "s" * 36, "chunk_index": 1,
                                                                 "content": content}}
    await s.send(pkt)
    await s.send_frame(link.PING, b"k")
    assert len(w.writes) > 2
    assert frames(b"".join(w.writes)) == [(link.DATA, proto.encode(proto.DATA_PACKET, pkt)), (link.PING, b"k")]
    assert s.packets == 1


async def test_a_packet_waiting_for_the_link_goes_out_between_the_packets_of_a_long_stream():
    # An RPC ack queued while a stream is being written must not wait for its end: each
    # packet takes the link in turn (a sender that let its current writer take the
    # link again at once starved the board's RPC answers during file.get).
    s = PacketSender(128)
    s.transport = w = Wire()

    async def stream():
        for i in range(6):
            await s.send(chunk(i, bytes([i]) * 300))

    async def ack():
        await asyncio.sleep(0)
        await s.send({"destination_identities": ["b"], "rpc_ack": {"request_id": "r"}})

    await asyncio.gather(stream(), ack())
    kinds = []
    for ftype, body in frames(b"".join(w.writes)):
        pkt = proto.decode(proto.DATA_PACKET, body)
        kinds.append("ack" if "rpc_ack" in pkt else pkt["stream_chunk"].get("chunk_index", 0))
    assert sorted(k for k in kinds if k != "ack") == [0, 1, 2, 3, 4, 5]
    assert kinds.index("ack") <= 2, kinds


async def test_sending_without_a_transport_is_an_oserror():
    s = PacketSender(64)
    try:
        await s.send(chunk(0, b"x"))
    except OSError as e:
        assert "not connected" in str(e)
    else:
        raise AssertionError("sent without a transport")


class HalfWire(Wire):
    """A transport that can tell what went out (t.sent, as transport.StreamTransport):
    a write longer than `stall_over` puts half of its data out, then waits for `go` (a
    socket that stopped draining). `closed` says whether the sender ended the link."""

    def __init__(self, stall_over=None):
        super().__init__()
        self.stall_over = stall_over
        self.stalled = asyncio.Event()
        self.go = asyncio.Event()
        self.sent = 0
        self.closed = False

    async def write(self, data):
        self.sent = 0
        if self.stall_over is not None and len(data) > self.stall_over:
            half = len(data) // 2
            self.writes.append(bytes(data[:half]))
            self.sent = half
            self.stalled.set()
            await self.go.wait()
            data = data[half:]
        self.writes.append(bytes(data))
        self.sent += len(data)
        await asyncio.sleep(0)

    async def close(self):
        self.closed = True


async def _cancel_when_stalled(w, task):
    await w.stalled.wait()
    w.stall_over = None
    task.cancel()
    await asyncio.sleep(0)
    w.go.set()
    try:
        await task
    except asyncio.CancelledError:
        return True
    return False


async def test_a_send_cancelled_inside_its_frame_finishes_the_frame_then_is_cancelled():
    # Half a frame cannot be taken back: the link would have to end, failing every
    # call and stream on it. A transport that says what went out lets the sender
    # finish the frame; then the cancel is raised, and the sender can tell its
    # caller that this packet went out (a stream whose header it was must be ended).
    s = PacketSender(64)
    s.transport = w = HalfWire(stall_over=1000)
    pkt = chunk(1, bytes(range(256)) * 20)
    task = asyncio.create_task(s.send(pkt))
    assert await _cancel_when_stalled(w, task), "the send was not cancelled"
    await s.send_frame(link.PING, b"k")
    assert not w.closed and s.transport is w, "the link was ended"
    assert frames(b"".join(w.writes)) == [(link.DATA, proto.encode(proto.DATA_PACKET, pkt)), (link.PING, b"k")]


async def test_a_task_cancelled_inside_a_frame_sends_no_further_frame():
    # The cancel is held back until the frame is out, then raised from that send: no
    # byte of a next frame goes out.
    s = PacketSender(64)
    s.transport = w = HalfWire(stall_over=1000)
    sent = []

    async def two():
        await s.send(chunk(1, b"a" * 3000))
        sent.append(1)
        await s.send(chunk(2, b"b" * 10))
        sent.append(2)
    task = asyncio.create_task(two())
    assert await _cancel_when_stalled(w, task)
    assert sent == [], sent   # raised from the first send, once its frame was out
    got = [proto.decode(proto.DATA_PACKET, body)["stream_chunk"]["chunk_index"] for _, body in frames(b"".join(w.writes))]
    assert got == [1], got


async def test_a_cancel_inside_a_frame_on_a_transport_that_cannot_tell_what_went_out_ends_the_link():
    s = PacketSender(64)
    s.transport = w = Wire()
    w.go = asyncio.Event()

    async def stalling(data):
        w.writes.append(bytes(data))
        await w.go.wait()
    w.write = stalling
    closed = []

    async def close():
        closed.append(1)
    w.close = close
    task = asyncio.create_task(s.send(chunk(1, b"a" * 3000)))
    await asyncio.sleep(0.01)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    assert closed == [1] and s.transport is None
