"""lkedge.streams on the wire, checked against the official LiveKit protobuf classes
(livekit-protocol) and CPython's zlib. The rules themselves are also exercised on
both runtimes in tests/device/test_streams.py."""
import asyncio
import hashlib
import os
import random
import sys
import tracemalloc
import zlib

from livekit.protocol import models

from lkedge import finite as finite_mod
from lkedge import link, proto, relayside, streams
from lkedge.consts import STREAM_CHUNK_SIZE_BYTES as LIMIT
from lkedge.memroom import MemRoom

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deflate_fixtures  # noqa: E402
import stream_fixtures as sf  # noqa: E402
from room_helpers import close, join, pair, raw, settle  # noqa: E402
from stream_helpers import Collector, feed_all  # noqa: E402


def wire(pkt):
    """Our encoding, decoded by the official classes."""
    return models.DataPacket.FromString(proto.encode(proto.DATA_PACKET, pkt))


def finite(kind, payload, inline_ok=True, compress_ok=False, **kw):
    return list(finite_mod.finite_packets(kind, payload, "topic", ["b"], inline_ok, compress_ok,
                                           stream_id="sid", **kw))


def inflate_raw(data):
    d = zlib.decompressobj(-15)
    out = d.decompress(data) + d.flush()
    assert d.eof and not d.unused_data
    return out


def test_header_wire_form_matches_livekit_protocol():
    pkt = streams.header_packet("sid", "text", "chat", ["b", "c"], total_length=0,
                                attributes={"k": "v"}, timestamp_ms=1700000000000,
                                inline_content=b"", reply_to_stream_id="r", generated=True,
                                attached_stream_ids=["x"], version=3)
    m = wire(pkt)
    h = m.stream_header
    assert list(m.destination_identities) == ["b", "c"]
    assert (h.stream_id, h.topic, h.mime_type, h.timestamp) == ("sid", "chat", "text/plain", 1700000000000)
    assert h.HasField("total_length") and h.total_length == 0
    assert h.HasField("inline_content") and h.inline_content == b""   # present but empty
    assert dict(h.attributes) == {"k": "v"} and h.compression == models.DataStream.NONE
    th = h.text_header
    assert (th.operation_type, th.version, th.reply_to_stream_id, list(th.attached_stream_ids),
            th.generated) == (models.DataStream.CREATE, 3, "r", ["x"], True)


def test_byte_header_and_incremental_header_have_no_total_length_on_the_wire():
    out = streams.OutgoingStream("s", "bytes", "files", [], name="a.bin")
    h = wire(out.header()).stream_header
    assert not h.HasField("total_length") and not h.HasField("inline_content")
    assert h.byte_header.name == "a.bin" and h.mime_type == "application/octet-stream"


def test_chunk_and_trailer_wire_form():
    c = wire(streams.chunk_packet("s", 2, [], memoryview(b"abc"))).stream_chunk
    assert (c.stream_id, c.chunk_index, c.content) == ("s", 2, b"abc")
    t = wire(streams.trailer_packet("s", ["x"], "oops", {"a": "1"})).stream_trailer
    assert (t.stream_id, t.reason, dict(t.attributes)) == ("s", "oops", {"a": "1"})


def test_packet_size_equals_official_byte_size():
    for pkt in (finite("bytes", b"q" * 100, attributes={"a" * 300: "b" * 200})[0],
                finite("text", "ü".encode() * 7000, inline_ok=False)[0],
                streams.chunk_packet("s", 5, ["d"], b"z" * 14000)):
        assert streams.packet_size(pkt) == wire(pkt).ByteSize()


def test_inline_only_when_the_whole_packet_is_at_most_15000_bytes():
    # Find the payload size whose inline packet is exactly 15000 bytes.
    base = streams.packet_size(finite("bytes", b"")[0])
    n = LIMIT - base
    while streams.packet_size(streams.header_packet("sid", "bytes", "topic", ["b"], total_length=n,
                                                    inline_content=b"x" * n)) > LIMIT:
        n -= 1
    exact = finite("bytes", b"x" * n)
    assert len(exact) == 1 and wire(exact[0]).ByteSize() == LIMIT
    over = finite("bytes", b"x" * (n + 1))
    assert len(over) == 3 and not wire(over[0]).stream_header.HasField("inline_content")


def test_compressed_inline_only_when_compression_is_eligible_and_smaller():
    text = ("hello world " * 1000).encode()
    h = wire(finite("text", text, compress_ok=True)[0]).stream_header
    assert h.compression == models.DataStream.DEFLATE_RAW and h.total_length == len(text)
    assert inflate_raw(h.inline_content) == text
    noise = random.Random(1).randbytes(3000)
    h = wire(finite("bytes", noise, compress_ok=True)[0]).stream_header
    assert h.compression == models.DataStream.NONE and h.inline_content == noise
    h = wire(finite("text", text, compress_ok=False)[0]).stream_header
    assert h.compression == models.DataStream.NONE and h.inline_content == text


def test_compressed_chunked_is_one_deflate_stream_over_chunks_of_at_most_15000():
    rng = random.Random(2)
    words = [rng.randbytes(rng.randint(2, 9)).hex() for _ in range(3000)]
    payload = " ".join(rng.choice(words) for _ in range(60000)).encode()
    pkts = [wire(p) for p in finite("text", payload, compress_ok=True)]
    h = pkts[0].stream_header
    assert h.compression == models.DataStream.DEFLATE_RAW and h.total_length == len(payload)
    assert not h.HasField("inline_content")
    chunks = [p.stream_chunk for p in pkts[1:-1]]
    assert len(chunks) > 3 and [c.chunk_index for c in chunks] == list(range(len(chunks)))
    assert all(len(c.content) <= LIMIT for c in chunks[:-1]) and len(chunks[0].content) == LIMIT
    assert inflate_raw(b"".join(c.content for c in chunks)) == payload
    assert pkts[-1].HasField("stream_trailer")


def test_compressed_chunked_even_when_not_inline_eligible_caller_decides():
    pkts = finite("bytes", b"a" * 40000, inline_ok=False, compress_ok=True)
    assert wire(pkts[0]).stream_header.compression == models.DataStream.DEFLATE_RAW
    assert inflate_raw(b"".join(wire(p).stream_chunk.content for p in pkts[1:-1])) == b"a" * 40000


def test_64_mib_payload_is_compressed_incrementally():
    payload = random.Random(3).randbytes(64 << 20)
    tracemalloc.start()
    try:
        count = 0
        d = zlib.decompressobj(-15)
        got = hashlib.sha256()
        for pkt in finite_mod.finite_packets("bytes", payload, "t", [], True, True, stream_id="big"):
            if "stream_chunk" in pkt:
                count += 1
                got.update(d.decompress(pkt["stream_chunk"]["content"]))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count >= len(payload) // LIMIT  # incompressible: at least as many chunks as plain
    assert got.digest() == hashlib.sha256(payload).digest()
    assert peak < 4 << 20, "compressing held %d bytes at once" % peak


def test_header_of_a_chunked_stream_over_15000_bytes_is_refused_before_any_packet():
    gen = finite_mod.finite_packets("bytes", b"x" * 20000, "t", [], True, False,
                                 attributes={"a": "v" * LIMIT})
    try:
        next(gen)
    except streams.StreamError as e:
        assert "over the 15000-byte limit" in str(e)
    else:
        raise AssertionError("oversized header sent")


def _official(**fields):
    """A DataPacket built and serialized by the official classes, then decoded by ours."""
    return proto.decode_packet(models.DataPacket(**fields).SerializeToString())


def test_receiving_packets_serialized_by_the_official_classes():
    payload = random.Random(4).randbytes(40000)
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = comp.compress(payload) + comp.flush()
    hdr = models.DataStream.Header(stream_id="z", topic="t", total_length=len(payload),
                                   attributes={"a": "1"}, byte_header=models.DataStream.ByteHeader(name="n"),
                                   compression=models.DataStream.DEFLATE_RAW, timestamp=5)
    pkts = [_official(participant_identity="p", stream_header=hdr)]
    for i in range(0, len(data), LIMIT):
        pkts.append(_official(stream_chunk=models.DataStream.Chunk(stream_id="z", chunk_index=i // LIMIT,
                                                                   content=data[i:i + LIMIT])))
    pkts.append(_official(stream_trailer=models.DataStream.Trailer(stream_id="z", attributes={"b": "2"})))
    inc = streams.IncomingStreams(lambda k, t: k == "bytes" and t == "t")
    col = Collector()
    feed_all(inc, col, "p", pkts)
    info = col.opened[0]
    assert bytes(col.data["z"]) == payload and col.ended["z"] is None
    assert (info.name, info.total_length, info.timestamp, info.compression) == ("n", 40000, 5, 1)
    assert info.attributes == {"a": "1", "b": "2"}


def test_our_packets_round_trip_through_the_official_classes():
    text = "日本語 text " * 3000
    inc = streams.IncomingStreams(lambda k, t: True)
    col = Collector()
    for kw in ({"inline_ok": True, "compress_ok": True}, {"inline_ok": False, "compress_ok": False}):
        pkts = finite("text", text.encode(), **kw)
        again = [proto.decode_packet(wire(p).SerializeToString()) for p in pkts]
        col.data.clear()
        feed_all(inc, col, "a", again)
        assert bytes(col.data["sid"]).decode() == text and col.ended["sid"] is None


def test_deflate_fixtures_decode_to_their_generated_payloads():
    for name, data in deflate_fixtures.payloads().items():
        with open(sf.path(name), "rb") as f:
            assert inflate_raw(f.read()) == data, name
    assert hashlib.sha256(deflate_fixtures.mixed_payload()).hexdigest() == sf.MIXED_SHA256


# ------------------------------------------- Room level: captured wire bytes, official decoding
def _capture_raw(monkeypatch):
    """RawPeers keep each DataPacket's bytes as they came off the link (key "_raw")."""
    decode = relayside.decode_packet

    def keep(data):
        d = decode(data)
        d["_raw"] = bytes(data)
        return d
    monkeypatch.setattr(relayside, "decode_packet", keep)


def _official_stream(peer, sid):
    """The stream `sid` as received by `peer`, each packet parsed by livekit-protocol."""
    pkts = [models.DataPacket.FromString(p["_raw"]) for p in peer.packets]
    mine = [p for p in pkts if getattr(p, p.WhichOneof("value")).stream_id == sid]
    head = [p.stream_header for p in mine if p.HasField("stream_header")]
    chunks = [p.stream_chunk for p in mine if p.HasField("stream_chunk")]
    trailers = [p.stream_trailer for p in mine if p.HasField("stream_trailer")]
    assert len(head) == 1, mine
    return mine, head[0], chunks, trailers


async def _wait_stream(peer, sid):
    def done(p):
        if "stream_trailer" in p:
            return p["stream_trailer"]["stream_id"] == sid
        h = p.get("stream_header")
        return h is not None and h["stream_id"] == sid and "inline_content" in h
    await peer.wait_for(done)
    return _official_stream(peer, sid)


async def test_negotiation_per_recipient_on_captured_wire_bytes(monkeypatch):
    _capture_raw(monkeypatch)
    mem = MemRoom()
    a = await join(mem, "a")
    peers = {"v2c": await raw(mem, "v2c", 2, [2]), "v2": await raw(mem, "v2", 2, []),
             "v1c": await raw(mem, "v1c", 1, [2]), "v0": await raw(mem, "v0", 0, [])}
    await settle(lambda: len(a.remote_participants) == 4)
    lp = a.local_participant
    small = "abc\u00fc" * 1500                             # 7500 bytes
    big = random.Random(5).randbytes(30000).hex()          # 60000 bytes, ~33 KB deflated
    for name, compressed in (("v2c", True), ("v2", False)):
        sid = (await lp.send_text(small, topic="t", destination_identities=[name])).stream_id
        mine, h, chunks, trailers = await _wait_stream(peers[name], sid)
        assert len(mine) == 1 and h.HasField("inline_content") and h.total_length == 7500
        assert list(mine[0].destination_identities) == [name]
        assert h.compression == (models.DataStream.DEFLATE_RAW if compressed else models.DataStream.NONE)
        assert (inflate_raw(h.inline_content) if compressed else h.inline_content) == small.encode()
        assert h.WhichOneof("content_header") == "text_header" and h.mime_type == "text/plain"
        assert h.text_header.operation_type == models.DataStream.CREATE
    for name in ("v1c", "v0"):   # no inline, no compression: header, chunks cut between characters, trailer
        sid = (await lp.send_text(small * 3, topic="t", destination_identities=[name])).stream_id
        mine, h, chunks, trailers = await _wait_stream(peers[name], sid)
        assert not h.HasField("inline_content") and h.compression == models.DataStream.NONE
        assert h.total_length == 22500 and [c.chunk_index for c in chunks] == [0, 1]
        assert [len(c.content) for c in chunks] == [15000, 7500]
        assert "".join(c.content.decode("utf-8") for c in chunks) == small * 3
        assert len(trailers) == 1 and trailers[0].reason == "" and mine[-1].HasField("stream_trailer")
    # compression eligible, the compressed form too big for one packet: compressed chunks
    sid = (await lp.send_text(big, topic="t", destination_identities=["v2c"])).stream_id
    mine, h, chunks, trailers = await _wait_stream(peers["v2c"], sid)
    assert h.compression == models.DataStream.DEFLATE_RAW and not h.HasField("inline_content")
    assert h.total_length == len(big) and len(chunks) >= 3 and len(trailers) == 1
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    assert all(len(c.content) <= LIMIT for c in chunks) and len(chunks[0].content) == LIMIT
    assert inflate_raw(b"".join(c.content for c in chunks)) == big.encode()
    # a broadcast: one recipient below v2 makes it plain chunks for everyone
    sid = (await lp.send_bytes(b"\x00" * 9000, topic="t")).stream_id
    for peer in peers.values():
        mine, h, chunks, trailers = await _wait_stream(peer, sid)
        assert not h.HasField("inline_content") and h.compression == models.DataStream.NONE
        assert h.WhichOneof("content_header") == "byte_header" and h.byte_header.name == "unknown"
        assert h.mime_type == "application/octet-stream" and h.total_length == 9000
        assert b"".join(c.content for c in chunks) == b"\x00" * 9000 and len(trailers) == 1
        assert list(mine[0].destination_identities) == []
    await close(a, *peers.values())


async def test_a_room_receives_streams_serialized_by_the_official_classes():
    mem = MemRoom()
    a = await join(mem, "a", piece_size=512)
    peer = await raw(mem, "p", 2, [2])
    await settle(lambda: "p" in a.remote_participants)
    got = {}

    async def text_handler(reader, sender):
        pieces = []
        async for s in reader:
            pieces.append(s)
        got[reader.info.stream_id] = (sender, reader.info, pieces)

    async def byte_handler(reader, sender):
        try:
            got[reader.info.stream_id] = (sender, reader.info, await reader.read_all())
        except ValueError as e:
            got[reader.info.stream_id] = (sender, reader.info, e)
    a.register_text_stream_handler("t", text_handler)
    a.register_byte_stream_handler("b", byte_handler)

    async def send(**fields):
        await peer.t.write(link.encode_frame(link.DATA, models.DataPacket(
            destination_identities=["a"], **fields).SerializeToString()))
    DS = models.DataStream
    text = "\u00fc\u65e5\U0001f600" * 3000    # 27000 bytes, deflated inline
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    await send(stream_header=DS.Header(stream_id="i1", topic="t", total_length=27000, text_header=DS.TextHeader(),
                                       compression=DS.DEFLATE_RAW,
                                       inline_content=comp.compress(text.encode()) + comp.flush()))
    await send(stream_header=DS.Header(stream_id="i2", topic="t", total_length=0, text_header=DS.TextHeader(),
                                       inline_content=b""))
    payload = random.Random(6).randbytes(40000)
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = comp.compress(payload) + comp.flush()
    parts = [data[i:i + LIMIT] for i in range(0, len(data), LIMIT)]
    await send(stream_header=DS.Header(stream_id="c1", topic="b", total_length=40000, attributes={"a": "1", "b": "1"},
                                       byte_header=DS.ByteHeader(name="n"), compression=DS.DEFLATE_RAW))
    for i, part in enumerate(parts):
        await send(stream_chunk=DS.Chunk(stream_id="c1", chunk_index=i, content=part))
        if i == 0:   # a duplicate is dropped
            await send(stream_chunk=DS.Chunk(stream_id="c1", chunk_index=0, content=part))
    await send(stream_trailer=DS.Trailer(stream_id="c1", attributes={"b": "2", "c": "3"}))
    await send(stream_header=DS.Header(stream_id="x1", topic="b", total_length=2, byte_header=DS.ByteHeader()))
    await send(stream_chunk=DS.Chunk(stream_id="x1", chunk_index=0, content=b"abc"))
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    await send(stream_header=DS.Header(stream_id="x2", topic="b", total_length=1000, byte_header=DS.ByteHeader(),
                                       compression=DS.DEFLATE_RAW,   # a small decompression bomb
                                       inline_content=comp.compress(bytes(200000)) + comp.flush()))
    await settle(lambda: len(got) == 5)
    sender, info, pieces = got["i1"]
    assert sender == "p" and "".join(pieces) == text and len(pieces) > 1 and info.compression == 1
    assert got["i2"][2] == []
    sender, info, data = got["c1"]
    assert data == payload and info.attributes == {"a": "1", "b": "2", "c": "3"} and info.name == "n"
    for sid in ("x1", "x2"):   # more than total_length, also once inflated: not "incomplete"
        assert str(got[sid][2]).startswith("length exceeded"), got[sid]
    await close(a, peer)


def test_a_failing_stream_handler_is_reported_with_its_traceback(capsys):
    # "lkedge: stream handler for 'boomup' failed: ValueError(...)" was all: no file, no
    # line, where an RPC handler's failure prints its traceback (misuse._handler_failed)
    ran = []

    async def boomup(reader, sender):
        ran.append(await reader.read_all())
        raise ValueError("no room for " + sender)

    async def main():
        mem, a, b = await pair()
        b.register_text_stream_handler("boomup", boomup)
        await a.local_participant.send_text("x", topic="boomup", destination_identities=["b"])
        await settle(lambda: ran and not b._handling)
        await close(a, b)
    asyncio.run(main())
    out = capsys.readouterr().out
    assert ("lkedge: stream handler for 'boomup' failed (a stream from 'a'):\n"
            "Traceback (most recent call last):\n") in out, out
    line = boomup.__code__.co_firstlineno + 2
    assert '%s", line %d, in boomup\n' % (__file__, line) in out, out
    assert "ValueError: no room for a\n" in out, out
