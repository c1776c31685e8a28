"""lkedge.rpc on the wire, checked against the official LiveKit protobuf classes
(livekit-protocol): every packet the machines emit is byte-identical to the official
serialization, and official bytes drive the machines. The rules themselves run on both
runtimes in tests/device/test_rpc.py (machines) and tests/device/test_room_rpc.py (Room).

The second half drives whole Rooms in a MemRoom: what a Room writes is captured as bytes
and decoded by livekit-protocol, what its peers send is serialized by livekit-protocol."""
import asyncio
import binascii
import os
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st
from livekit.protocol import models
from room_helpers import close, join, raw, settle

from lkedge import link, proto, rpc, streams
from lkedge.consts import ATTR_RPC_REQUEST_ID, ATTR_RPC_TIMEOUT, TOPIC_RPC_REQUEST
from lkedge.memroom import MemRoom
from lkedge.rpc import RpcError, RpcServer
from lkedge.rpc_caller import RpcClient


class MemBlob:
    """A big field already in memory, as proto.encode_segments takes it."""

    def __init__(self, data):
        self.data = data
        self.size = len(data)


def ours(pkt):
    return proto.encode(proto.DATA_PACKET, pkt)


def official(**fields):
    return models.DataPacket(**fields).SerializeToString(deterministic=True)


def incoming(sender, **fields):
    """Official bytes of a packet from `sender`, decoded the way the room decodes them."""
    return proto.decode_packet(official(participant_identity=sender, **fields))


def _server():
    s = RpcServer()
    s.register("echo", lambda d: d.payload)
    return s


# ------------------------------------------------------------------ outgoing
def test_v1_request_packet_is_byte_identical_to_livekit_protocol():
    call = RpcClient().start(0, "b", 0, "echo", 5, 3000)
    want = official(destination_identities=["b"], rpc_request=models.RpcRequest(
        id=call.request_id, method="echo", payload="héllo", response_timeout_ms=8000, version=1))
    assert ours(call.request_packet("héllo")) == want


def test_v1_request_with_blob_payload_streams_the_same_bytes():
    call = RpcClient().start(0, "b", 0, "echo", 5)
    data = "héllo".encode("utf-8")
    segs = proto.encode_segments(proto.DATA_PACKET, call.request_packet(MemBlob(data)))
    joined = b"".join(bytes(s.data) if isinstance(s, MemBlob) else s for s in segs)
    assert joined == ours(call.request_packet("héllo"))


def test_v2_request_stream_header_carries_the_attributes_on_the_wire():
    call = RpcClient().start(0, "b", 2, "echo", 5, 20000)
    pkt = streams.header_packet("sid", "text", TOPIC_RPC_REQUEST, ["b"], total_length=5,
                                attributes=call.stream_attributes())
    h = models.DataPacket.FromString(ours(pkt)).stream_header
    assert h.topic == "lk.rpc_request" and dict(h.attributes) == {
        "lk.rpc_request_id": call.request_id, "lk.rpc_request_method": "echo",
        "lk.rpc_request_response_timeout_ms": "20000", "lk.rpc_request_version": "2"}


def test_ack_and_unknown_method_answer_are_byte_identical():
    packets, inv = RpcServer().on_request_packet("a", {"id": "r1", "method": "nope", "version": 1}, "")
    assert inv is None
    assert ours(packets[0]) == official(destination_identities=["a"], rpc_ack=models.RpcAck(request_id="r1"))
    assert ours(packets[1]) == official(destination_identities=["a"], rpc_response=models.RpcResponse(
        request_id="r1", error=models.RpcError(code=1400, message="Method not supported at destination")))


def test_success_response_is_byte_identical_including_empty_payload():
    s = _server()
    _, inv = s.on_request_packet("a", {"id": "r1", "method": "echo", "version": 1}, "x")
    for payload in ("ok ✓", ""):
        got = ours(s.response(inv, payload)[0])
        assert got == official(destination_identities=["a"], rpc_response=models.RpcResponse(
            request_id="r1", payload=payload))
        assert models.DataPacket.FromString(got).rpc_response.WhichOneof("value") == "payload", \
            "an empty payload is still the payload case: a success with \"\""


def test_error_response_with_data_is_byte_identical():
    s = _server()
    _, inv = s.on_request_packet("a", {"id": "r1", "method": "echo", "version": 1}, "x")
    got = ours(s.error_response(inv, RpcError(4242, "nope ✗", '{"why": 1}')))
    assert got == official(destination_identities=["a"], rpc_response=models.RpcResponse(
        request_id="r1", error=models.RpcError(code=4242, message="nope ✗", data='{"why": 1}')))


def test_truncated_error_fields_decode_as_valid_utf8_within_limits():
    s = _server()
    _, inv = s.on_request_packet("a", {"id": "r1", "method": "echo", "version": 1}, "x")
    err = models.DataPacket.FromString(ours(s.error_response(inv, RpcError(7, "é" * 300, "😀" * 5000)))).rpc_response.error
    assert len(err.message.encode()) == 256 and err.message == "é" * 128
    assert len(err.data.encode()) == 15360 and err.data == "😀" * 3840


def test_v1_response_over_cap_is_1504_on_the_wire():
    s = _server()
    _, inv = s.on_request_packet("a", {"id": "r1", "method": "echo", "version": 1}, "x")
    m = models.DataPacket.FromString(ours(s.response(inv, "é" * 8000)[0]))
    assert m.rpc_response.WhichOneof("value") == "error" and m.rpc_response.error.code == 1504


# ------------------------------------------------------------------ incoming
def test_official_success_response_completes_the_call():
    c = RpcClient()
    call = c.start(0, "b", 0, "echo", 1)
    ack = incoming("b", rpc_ack=models.RpcAck(request_id=call.request_id))
    assert c.on_ack(1, ack["participant_identity"], ack["rpc_ack"]["request_id"]) is True
    msg = incoming("b", rpc_response=models.RpcResponse(request_id=call.request_id, payload=""))
    done = c.on_response(2, msg["participant_identity"], msg["rpc_response"])
    assert (done.payload, done.error) == ("", None)


def test_official_error_response_surfaces_code_message_data():
    c = RpcClient()
    call = c.start(0, "b", 1, "echo", 1)
    msg = incoming("b", rpc_response=models.RpcResponse(
        request_id=call.request_id, error=models.RpcError(code=1404, message="Unsupported RPC version", data="d")))
    done = c.on_response(1, "b", msg["rpc_response"])
    assert (done.error.code, done.error.message, done.error.data) == (1404, "Unsupported RPC version", "d")


def test_official_compressed_payload_response_is_ignored():
    c = RpcClient()
    call = c.start(0, "b", 0, "echo", 1)
    msg = incoming("b", rpc_response=models.RpcResponse(request_id=call.request_id, compressed_payload=b"\x01"))
    assert c.on_response(1, "b", msg["rpc_response"]) is None and len(c) == 1


def test_official_v1_request_runs_the_method():
    msg = incoming("a", rpc_request=models.RpcRequest(id="r7", method="echo", payload="hi",
                                                      response_timeout_ms=10000, version=1))
    packets, inv = _server().on_request_packet(msg["participant_identity"], msg["rpc_request"],
                                               msg["rpc_request"]["payload"])
    assert [ours(p) for p in packets] == [official(destination_identities=["a"], rpc_ack=models.RpcAck(request_id="r7"))]
    assert (inv.request_id, inv.caller_identity, inv.payload, inv.response_timeout) == ("r7", "a", "hi", 10.0)


def test_official_request_without_version_field_is_1404():
    # proto3 omits version 0: a pre-versioning request decodes without the key.
    msg = incoming("a", rpc_request=models.RpcRequest(id="r8", method="echo", payload="hi"))
    assert "version" not in msg["rpc_request"]
    packets, inv = _server().on_request_packet("a", msg["rpc_request"], "hi")
    assert inv is None
    assert models.DataPacket.FromString(ours(packets[1])).rpc_response.error.code == 1404


def test_v2_response_instruction_names_the_stream_to_send():
    s = _server()
    _, inv = s.on_request_stream("a", {"lk.rpc_request_id": "s1", "lk.rpc_request_method": "echo",
                                       ATTR_RPC_TIMEOUT: "8000", "lk.rpc_request_version": "2"})
    out = s.response(inv, "x" * 100000)
    pkt = streams.header_packet("sid", out.kind, out.topic, out.destination_identities,
                                attributes=out.attributes)
    h = models.DataPacket.FromString(ours(pkt))
    assert list(h.destination_identities) == ["a"] and h.stream_header.topic == "lk.rpc_response"
    assert dict(h.stream_header.attributes) == {ATTR_RPC_REQUEST_ID: "s1"}


# ------------------------------------------------------------------ properties
@settings(max_examples=300, deadline=None)
@given(st.text(), st.integers(min_value=0, max_value=64))
def test_truncation_keeps_the_longest_character_prefix_within_the_limit(text, limit):
    out = rpc.truncate_utf8(text, limit)
    b = out.encode("utf-8")
    assert text.startswith(out) and len(b) <= limit
    if out != text:
        assert len(b) + len(text[len(out)].encode("utf-8")) > limit, "not the longest prefix"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["ack", "resp", "err", "timer", "left", "cancel", "stream", "fail_all"]),
                max_size=12))
def test_any_event_order_completes_a_call_at_most_once_and_never_raises(events):
    # "A pending call resolves or rejects exactly once": a completion or a cancel ends
    # it, and nothing after that (however late, whatever kind) completes it again.
    c = RpcClient()
    call = c.start(0, "b", 1, "m", 1, 9000)
    rid = call.request_id
    ended = 0
    now = 0
    for ev in events:
        now += 1000
        out = []
        if ev == "ack":
            c.on_ack(now, "b", rid)
        elif ev == "resp":
            out = [c.on_response(now, "b", {"request_id": rid, "payload": "p"})]
        elif ev == "err":
            out = [c.on_response(now, "b", {"request_id": rid, "error": {"code": 9}})]
        elif ev == "timer":
            out = c.handle_timer(now)
        elif ev == "left":
            out = c.on_participant_left("b")
        elif ev == "fail_all":
            out = c.fail_all(RpcError(1503))
        elif ev == "cancel":
            ended += c.cancel(rid)   # ends the call without an outcome
        elif ev == "stream" and c.accept_response_stream("b", rid) is not None:
            out = [c.complete(rid, payload="s")]
        out = [x for x in out if x is not None]
        assert all(x.request_id == rid and (x.payload is None) != (x.error is None) for x in out), out
        ended += len(out)
        assert ended <= 1, "the call ended twice: %r" % (events,)
    assert (ended == 1) == (len(c) == 0)


# ====================================================================================
# RPC.md rules through the whole stack, on captured bytes: a Room in a MemRoom, every
# DataPacket it writes captured as bytes and decoded by livekit-protocol; the peers'
# packets are serialized by livekit-protocol. (The same rules on decoded dicts, on both
# runtimes: tests/device/test_room_rpc.py.)
class Wire:
    """Every DataPacket participants write to `mem`, captured as bytes."""

    def __init__(self, mem):
        self.raw = []
        real = mem._data

        async def data(conn, body):
            self.raw.append((conn.identity, bytes(body)))
            await real(conn, body)
        mem._data = data

    def sent_by(self, identity):
        out = []
        for ident, body in self.raw:
            if ident == identity:
                m = models.DataPacket.FromString(body)
                assert m.SerializeToString(deterministic=True) == body, \
                    "not byte-identical to the official serialization: %r" % m
                out.append(m)
        return out


async def send_official(peer, to, **fields):
    """A DataPacket serialized by livekit-protocol, written by a RawPeer."""
    await peer.t.write(link.encode_frame(link.DATA, official(destination_identities=[to], **fields)))


def kinds(msgs):
    return [m.WhichOneof("value") for m in msgs]


def stream_bytes(msgs, stream_id):
    """(header, payload bytes) of one captured stream: inline or chunks, inflated."""
    hdr = [m.stream_header for m in msgs if m.WhichOneof("value") == "stream_header"
           and m.stream_header.stream_id == stream_id][0]
    if hdr.HasField("inline_content"):
        data = hdr.inline_content
    else:
        chunks = [m.stream_chunk for m in msgs if m.WhichOneof("value") == "stream_chunk"
                  and m.stream_chunk.stream_id == stream_id]
        assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
        assert all(len(c.content) <= 15000 for c in chunks)
        assert [m.stream_trailer.stream_id for m in msgs if m.WhichOneof("value") == "stream_trailer"
                ].count(stream_id) == 1
        data = b"".join(c.content for c in chunks)
    if hdr.compression == models.DataStream.DEFLATE_RAW:
        data = zlib.decompress(data, -15)
    if hdr.HasField("total_length"):
        assert hdr.total_length == len(data)
    return hdr, data


def request_id_of(m):
    if m.WhichOneof("value") == "rpc_request":
        return m.rpc_request.id
    return m.stream_header.attributes["lk.rpc_request_id"]


async def wait_sent(wire, identity, pred, timeout=5.0):
    for _ in range(int(timeout * 100)):
        got = [m for m in wire.sent_by(identity) if pred(m)]
        if got:
            return got[0]
        await asyncio.sleep(0.01)
    raise AssertionError("nothing matching sent by %r" % identity)


def _is_request(m):
    return (m.WhichOneof("value") == "rpc_request" or
            (m.WhichOneof("value") == "stream_header" and m.stream_header.topic == "lk.rpc_request"))


async def test_caller_requests_on_the_wire_follow_each_destination_in_a_mixed_room():
    mem = MemRoom()
    wire = Wire(mem)
    a = await join(mem, "a")
    peers = {}
    for ident, proto_v, caps in (("old", 0, ()), ("p1", 1, ()), ("p2", 2, ()), ("p2c", 2, (2,))):
        peers[ident] = await raw(mem, ident, proto_v, caps)
    await settle(lambda: len(a.remote_participants) == 4)
    small = "ü✓" * 200                                                # 1000 bytes, compressible
    noisy = binascii.hexlify(os.urandom(30000)).decode()              # 60000 bytes, ~half compressible
    expect = {  # destination -> payload -> (inline, compressed)
        "old": {small: None},
        "p1": {small: (False, False), noisy: (False, False)},
        "p2": {small: (True, False), noisy: (False, False)},
        "p2c": {small: (True, True), noisy: (False, True)},
    }
    lp = a.local_participant
    for ident, cases in expect.items():
        for payload, form in cases.items():
            before = len(wire.sent_by("a"))
            task = asyncio.create_task(lp.perform_rpc(destination_identity=ident, method="echo",
                                                      payload=payload, response_timeout=20))
            first = await wait_sent(wire, "a", lambda m: _is_request(m) and m not in wire.sent_by("a")[:before])
            rid = request_id_of(first)
            assert list(first.destination_identities) == [ident]
            if form is None:
                r = first.rpc_request
                assert (r.method, r.payload, r.response_timeout_ms, r.version) == ("echo", payload, 20000, 1)
            else:
                if not first.stream_header.HasField("inline_content"):   # the rest of the stream
                    sid = first.stream_header.stream_id
                    await wait_sent(wire, "a", lambda m: m.WhichOneof("value") == "stream_trailer"
                                    and m.stream_trailer.stream_id == sid)
                h, data = stream_bytes(wire.sent_by("a"), first.stream_header.stream_id)
                assert data.decode("utf-8") == payload
                assert h.WhichOneof("content_header") == "text_header" and h.mime_type == "text/plain"
                assert dict(h.attributes) == {"lk.rpc_request_id": rid, "lk.rpc_request_method": "echo",
                                              "lk.rpc_request_response_timeout_ms": "20000",
                                              "lk.rpc_request_version": "2"}
                assert (h.HasField("inline_content"),
                        h.compression == models.DataStream.DEFLATE_RAW) == form, (ident, len(payload), h)
            await send_official(peers[ident], "a", rpc_response=models.RpcResponse(request_id=rid, payload="ok"))
            assert await task == "ok"
    await close(a, *peers.values())


async def test_handler_answers_on_the_wire_ack_first_then_by_the_callers_transport():
    mem = MemRoom()
    wire = Wire(mem)
    a = await join(mem, "a")
    lp = a.local_participant
    lp.register_rpc_method("echo", lambda d: d.payload)
    lp.register_rpc_method("double", lambda d: d.payload * 2)

    def fail(d):
        raise RpcError(4242, "custom ✗", "some data")
    lp.register_rpc_method("fail", fail)
    old = await raw(mem, "old", 0)
    p1 = await raw(mem, "p1", 1)
    p2c = await raw(mem, "p2c", 2, (2,))
    await settle(lambda: len(a.remote_participants) == 3)
    big = "€" * 7000      # 21000 bytes: over the v1 cap, compressible

    def answers(rid):
        return [m for m in wire.sent_by("a") if
                (m.WhichOneof("value") == "rpc_ack" and m.rpc_ack.request_id == rid) or
                (m.WhichOneof("value") == "rpc_response" and m.rpc_response.request_id == rid) or
                (m.WhichOneof("value") == "stream_header" and m.stream_header.attributes.get("lk.rpc_request_id") == rid)]

    # v1 caller: ack, then a packet (payload, 1504 over the cap, the error unchanged)
    for rid, method, payload, check in (
            ("v1-ok", "echo", "héllo", lambda r: r.WhichOneof("value") == "payload" and r.payload == "héllo"),
            ("v1-edge", "echo", "€" * 5120, lambda r: r.payload == "€" * 5120),   # 15360 bytes
            ("v1-big", "double", "€" * 3000, lambda r: r.WhichOneof("value") == "error" and r.error.code == 1504),
            ("v1-fail", "fail", "x", lambda r: (r.error.code, r.error.message, r.error.data) == (4242, "custom ✗", "some data"))):
        await send_official(old, "a", rpc_request=models.RpcRequest(
            id=rid, method=method, payload=payload, response_timeout_ms=8000, version=1))
        await wait_sent(wire, "a", lambda m: m.WhichOneof("value") == "rpc_response" and m.rpc_response.request_id == rid)
        got = answers(rid)
        assert kinds(got) == ["rpc_ack", "rpc_response"] and list(got[1].destination_identities) == ["old"]
        assert check(got[1].rpc_response), got[1]

    # v2 callers: ack, then a lk.rpc_response text stream as the caller can read it; errors by packet
    for peer, inline, compressed in ((p1, False, False), (p2c, True, finite_can_compress())):
        rid = "v2-" + peer.identity
        sid = "req-" + rid
        await send_official(peer, "a", stream_header=models.DataStream.Header(
            stream_id=sid, timestamp=1, topic="lk.rpc_request", mime_type="text/plain",
            text_header=models.DataStream.TextHeader(), total_length=len(big.encode()),
            attributes={"lk.rpc_request_id": rid, "lk.rpc_request_method": "echo",
                        "lk.rpc_request_response_timeout_ms": "8000", "lk.rpc_request_version": "2"}))
        data = big.encode()
        for i in range(0, len(data), 15000):
            await send_official(peer, "a", stream_chunk=models.DataStream.Chunk(
                stream_id=sid, chunk_index=i // 15000, content=data[i:i + 15000]))
        await send_official(peer, "a", stream_trailer=models.DataStream.Trailer(stream_id=sid))
        hdr = await wait_sent(wire, "a", lambda m: m.WhichOneof("value") == "stream_header"
                              and m.stream_header.attributes.get("lk.rpc_request_id") == rid)
        if not hdr.stream_header.HasField("inline_content"):
            sid = hdr.stream_header.stream_id
            await wait_sent(wire, "a", lambda m: m.WhichOneof("value") == "stream_trailer"
                            and m.stream_trailer.stream_id == sid)
        assert kinds(answers(rid)) == ["rpc_ack", "stream_header"], kinds(answers(rid))
        h, out = stream_bytes(wire.sent_by("a"), hdr.stream_header.stream_id)
        assert out.decode("utf-8") == big, "a v2 response is never capped"
        assert list(hdr.destination_identities) == [peer.identity]
        assert h.topic == "lk.rpc_response" and dict(h.attributes) == {"lk.rpc_request_id": rid}
        assert h.WhichOneof("content_header") == "text_header" and h.mime_type == "text/plain"
        assert h.HasField("inline_content") == inline, h
        assert (h.compression == models.DataStream.DEFLATE_RAW) == compressed, h
        erid = "v2-fail-" + peer.identity
        await send_official(peer, "a", stream_header=models.DataStream.Header(
            stream_id="req-" + erid, timestamp=1, topic="lk.rpc_request", mime_type="text/plain",
            text_header=models.DataStream.TextHeader(), total_length=1, inline_content=b"x",
            attributes={"lk.rpc_request_id": erid, "lk.rpc_request_method": "fail",
                        "lk.rpc_request_response_timeout_ms": "8000", "lk.rpc_request_version": "2"}))
        await wait_sent(wire, "a", lambda m: m.WhichOneof("value") == "rpc_response" and m.rpc_response.request_id == erid)
        got = answers(erid)
        assert kinds(got) == ["rpc_ack", "rpc_response"], kinds(got)
        e = got[1].rpc_response.error
        assert (e.code, e.message, e.data) == (4242, "custom ✗", "some data")
    await close(a, old, p1, p2c)


def finite_can_compress():
    from lkedge import finite
    return finite.can_compress()


async def test_v1_caller_room_to_v2_handler_room_packets_decode_with_livekit_protocol():
    mem = MemRoom()
    wire = Wire(mem)
    a = await join(mem, "a", client_protocol=0)
    b = await join(mem, "b")
    await settle(lambda: "b" in a.remote_participants and "a" in b.remote_participants)
    b.local_participant.register_rpc_method("echo", lambda d: d.payload)
    payload = "é" * 7680   # exactly 15360 bytes
    assert await a.local_participant.perform_rpc(destination_identity="b", method="echo", payload=payload,
                                                 response_timeout=3) == payload
    (req,) = wire.sent_by("a")
    r = req.rpc_request
    assert list(req.destination_identities) == ["b"]
    assert (r.method, r.payload, r.response_timeout_ms, r.version) == ("echo", payload, 8000, 1)
    ack, resp = wire.sent_by("b")
    assert ack.rpc_ack.request_id == r.id and resp.rpc_response.request_id == r.id
    assert resp.rpc_response.payload == payload
    await close(a, b)


async def test_streaming_handler_response_on_the_wire_is_incremental_uncompressed():
    mem = MemRoom()
    wire = Wire(mem)
    a = await join(mem, "a")
    peer = await raw(mem, "p", 2, (2,))
    await settle(lambda: "p" in a.remote_participants)

    class Pieces:
        def __init__(self):
            self.n = 3

        def __aiter__(self):
            return self

        async def __anext__(self):
            if not self.n:
                raise StopAsyncIteration
            self.n -= 1
            return "abc" * 2000

    async def gen(data):
        return Pieces()
    a.local_participant.register_rpc_method("gen", gen, streaming=True)
    await send_official(peer, "a", stream_header=models.DataStream.Header(
        stream_id="req", timestamp=1, topic="lk.rpc_request", mime_type="text/plain",
        text_header=models.DataStream.TextHeader(), total_length=0, inline_content=b"",
        attributes={"lk.rpc_request_id": "g", "lk.rpc_request_method": "gen",
                    "lk.rpc_request_response_timeout_ms": "8000", "lk.rpc_request_version": "2"}))
    hdr = await wait_sent(wire, "a", lambda m: m.WhichOneof("value") == "stream_header")
    await wait_sent(wire, "a", lambda m: m.WhichOneof("value") == "stream_trailer")
    h, data = stream_bytes(wire.sent_by("a"), hdr.stream_header.stream_id)
    assert not h.HasField("total_length") and not h.HasField("inline_content")
    assert h.compression == models.DataStream.NONE and data == b"abc" * 6000
    assert kinds(wire.sent_by("a")) == ["rpc_ack", "stream_header", "stream_chunk", "stream_chunk",
                                        "stream_chunk", "stream_trailer"]
    await close(a, peer)


def test_an_answer_lost_with_the_link_is_one_log_line_not_a_handler_failure(capsys):
    # The handler did not fail: its answer could not go, the link being gone (its
    # caller got 1503 from that loss). One line says so; no traceback, no 1500 tried.
    async def main():
        mem = MemRoom()
        a = await join(mem, "a")
        gate = asyncio.Event()

        async def slow(d):
            await gate.wait()
            return "late"
        a.local_participant.register_rpc_method("slow", slow)
        host = await join(mem, "host")
        await settle(lambda: "a" in host.remote_participants)
        call = asyncio.create_task(host.local_participant.perform_rpc(
            destination_identity="a", method="slow", payload="", response_timeout=30))
        await settle(lambda: a._invoking)
        await mem.kick("a", link.LEAVE_SHUTDOWN, "relay restarting")
        await settle(lambda: a.connection_state != "connected")
        gate.set()
        await settle(lambda: not a._invoking)
        try:
            await call
        except RpcError as e:
            assert e.code == RpcError.RECIPIENT_DISCONNECTED, e
        await close(a, host)
    asyncio.run(main())
    out = capsys.readouterr().out
    assert "could not answer RPC" in out, out
    assert "failed (caller" not in out and "Traceback" not in out, out
