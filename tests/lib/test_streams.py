"""lkedge.streams on the wire, checked against the official LiveKit protobuf classes
(livekit-protocol) and CPython's zlib. The rules themselves are also exercised on
both runtimes in tests/device/test_streams.py."""
import hashlib
import os
import random
import sys
import tracemalloc
import zlib

from livekit.protocol import models

from lkedge import finite as finite_mod
from lkedge import proto, streams
from lkedge.consts import STREAM_CHUNK_SIZE_BYTES as LIMIT

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deflate_fixtures  # noqa: E402
import stream_fixtures as sf  # noqa: E402
from stream_helpers import Collector, feed_all  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
        with open(sf.path(name, ROOT), "rb") as f:
            assert inflate_raw(f.read()) == data, name
    assert hashlib.sha256(deflate_fixtures.mixed_payload()).hexdigest() == sf.MIXED_SHA256
