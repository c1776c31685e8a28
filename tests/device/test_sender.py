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
