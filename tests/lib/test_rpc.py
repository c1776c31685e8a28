"""lkedge.rpc on the wire, checked against the official LiveKit protobuf classes
(livekit-protocol): every packet the machines emit is byte-identical to the official
serialization, and official bytes drive the machines. The rules themselves run on both
runtimes in tests/device/test_rpc.py."""
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit.protocol import models

from lkedge import proto, rpc, streams
from lkedge.consts import ATTR_RPC_REQUEST_ID, ATTR_RPC_TIMEOUT, TOPIC_RPC_REQUEST
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


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["ack", "resp", "err", "timer", "left", "cancel", "stream"]), max_size=12))
def test_any_event_order_completes_a_call_at_most_once_and_never_raises(events):
    c = RpcClient()
    call = c.start(0, "b", 1, "m", 1, 9000)
    rid = call.request_id
    outcomes = 0
    now = 0
    for ev in events:
        now += 1000
        if ev == "ack":
            c.on_ack(now, "b", rid)
        elif ev == "resp":
            outcomes += c.on_response(now, "b", {"request_id": rid, "payload": "p"}) is not None
        elif ev == "err":
            outcomes += c.on_response(now, "b", {"request_id": rid, "error": {"code": 9}}) is not None
        elif ev == "timer":
            outcomes += len(c.handle_timer(now))
        elif ev == "left":
            outcomes += len(c.on_participant_left("b"))
        elif ev == "cancel":
            outcomes += 2 * c.cancel(rid)  # cancelling ends the call without an outcome
        elif ev == "stream" and c.accept_response_stream("b", rid) is not None:
            outcomes += c.complete(rid, payload="s") is not None
    assert outcomes <= 2 and (outcomes in (1, 2)) == (len(c) == 0)
