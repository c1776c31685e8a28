"""RPC.md rules on the sans-I/O machines lkedge.rpc, on MicroPython and CPython.

One test per rule, named after it. No oracle here: the wire form of these packets is
checked against livekit-protocol in tests/lib/test_rpc.py.
"""
import gc

from lkedge.consts import (ATTR_RPC_METHOD, ATTR_RPC_REQUEST_ID, ATTR_RPC_TIMEOUT,
                           ATTR_RPC_VERSION, TOPIC_RPC_RESPONSE)
from lkedge.rpc import RpcError, RpcInvocationData, RpcServer, StreamResponse
from lkedge.rpc_caller import Completion, RpcClient

# Compiling this (large) test module from source needs the heap, not lkedge.rpc:
# the library alone imports in ~17 KiB and a pending call costs ~320 bytes.
MP_HEAPSIZE = "256K"


def _ids():
    n = [0]

    def new_id():
        n[0] += 1
        return "req-%d" % n[0]
    return new_id


def _client():
    return RpcClient(new_id=_ids())


def _raises(code, fn, *args):
    try:
        fn(*args)
    except RpcError as e:
        assert e.code == code, "expected RpcError %d, got %r" % (code, e)
        return e
    raise AssertionError("expected RpcError %d, nothing raised" % code)


def _raises_value_error(fn, *args):
    try:
        fn(*args)
    except ValueError as e:
        return str(e)
    raise AssertionError("expected ValueError")


def _attrs(rid="r1", method="m", timeout="15000", version="2"):
    a = {}
    for k, v in ((ATTR_RPC_REQUEST_ID, rid), (ATTR_RPC_METHOD, method),
                 (ATTR_RPC_TIMEOUT, timeout), (ATTR_RPC_VERSION, version)):
        if v is not None:
            a[k] = v
    return a


def _v1_req(rid="r1", method="m", payload="p", timeout=8000, version=1):
    return {"id": rid, "method": method, "payload": payload,
            "response_timeout_ms": timeout, "version": version}


def _kinds(packets):
    return [k for p in packets for k in ("rpc_ack", "rpc_response") if k in p]


def _error_code(pkt):
    return pkt["rpc_response"]["error"]["code"]


# ===================================================================== RpcError
def test_builtin_error_codes_and_default_messages_match_wire_md():
    table = ((1500, "APPLICATION_ERROR", "Application error in method handler"),
             (1501, "CONNECTION_TIMEOUT", "Connection timeout"),
             (1502, "RESPONSE_TIMEOUT", "Response timeout"),
             (1503, "RECIPIENT_DISCONNECTED", "Recipient disconnected"),
             (1504, "RESPONSE_PAYLOAD_TOO_LARGE", "Response payload too large"),
             (1505, "SEND_FAILED", "Failed to send"),
             (1400, "UNSUPPORTED_METHOD", "Method not supported at destination"),
             (1401, "RECIPIENT_NOT_FOUND", "Recipient not found"),
             (1402, "REQUEST_PAYLOAD_TOO_LARGE", "Request payload too large"),
             (1403, "UNSUPPORTED_SERVER", "RPC not supported by server"),
             (1404, "UNSUPPORTED_VERSION", "Unsupported RPC version"))
    for code, name, message in table:
        assert getattr(RpcError, name) == code, name
        assert getattr(RpcError.ErrorCode, name) == code, "RpcError.ErrorCode." + name
        e = RpcError(code)
        assert (e.code, e.message, e.data) == (code, message, None), repr(e)


def test_own_error_code_keeps_message_and_data():
    e = RpcError(4242, "custom", '{"k": 1}')
    assert (e.code, e.message, e.data) == (4242, "custom", '{"k": 1}')
    assert RpcError(4242).message == ""


def test_error_str_shows_code_and_message():
    assert str(RpcError(1502)) == "RpcError 1502: Response timeout"
    assert "4242" in str(RpcError(4242, "boom")) and "boom" in str(RpcError(4242, "boom"))


def test_error_message_truncated_on_character_boundary():
    e = RpcError(1, "a" + "é" * 200)   # 1 + 400 bytes; 256 would split an é
    assert len(e.message.encode("utf-8")) == 255 and e.message == "a" + "é" * 127
    assert RpcError(1, "x" * 256).message == "x" * 256, "exactly 256 bytes stays whole"
    assert RpcError(1, "€" * 100).message == "€" * 85  # 3-byte characters: 255 bytes


def test_error_data_truncated_to_15360_bytes_on_character_boundary():
    e = RpcError(1, "m", "ab" + "😀" * 4000)  # 2 + 16000 bytes
    assert len(e.data.encode("utf-8")) == 15358 and e.data == "ab" + "😀" * 3839
    assert RpcError(1, "m", "d" * 15360).data == "d" * 15360


def test_error_to_proto_and_from_proto_keep_code_message_data():
    e = RpcError(4242, "msg", "data")
    assert e.to_proto() == {"code": 4242, "message": "msg", "data": "data"}
    assert "data" not in RpcError(1500).to_proto(), "absent data stays absent"
    back = RpcError.from_proto({"code": 4242, "message": "msg", "data": "data"})
    assert (back.code, back.message, back.data) == (4242, "msg", "data")
    empty = RpcError.from_proto({})
    assert (empty.code, empty.message, empty.data) == (0, "", None), "the remote's fields are kept as sent"


def test_error_code_must_fit_uint32_and_fields_be_str():
    for bad in (-1, 1 << 32, "1500", None):
        _raises_value_error(RpcError, bad)
    try:
        RpcError(1500, b"bytes")
    except TypeError:
        pass
    else:
        raise AssertionError("a bytes message must be refused")


def test_invocation_data_has_python_sdk_fields():
    d = RpcInvocationData("id", "caller", "payload", 9.5)
    assert (d.request_id, d.caller_identity, d.payload, d.response_timeout) == ("id", "caller", "payload", 9.5)
    assert d.reader is None


# ======================================================================= caller
def test_v1_request_packet_carries_id_method_payload_wire_timeout_version_1():
    c = _client()
    call = c.start(0, "b", 0, "echo", 2, 15000)
    assert call.version == 1 and call.destination == "b" and call.request_id == "req-1"
    assert call.request_packet("hi") == {
        "destination_identities": ["b"],
        "rpc_request": {"id": "req-1", "method": "echo", "payload": "hi",
                        "response_timeout_ms": 15000, "version": 1}}


def test_wire_timeout_is_max_of_requested_and_8000():
    c = _client()
    assert c.start(0, "b", 0, "m", 0, 1000).wire_timeout_ms == 8000
    assert c.start(0, "b", 0, "m", 0, 8000).wire_timeout_ms == 8000
    assert c.start(0, "b", 0, "m", 0, 20000).wire_timeout_ms == 20000
    assert c.start(0, "b", 0, "m", 0).wire_timeout_ms == 15000, "default timeout is 15 s"


def test_v2_request_stream_has_four_attributes_with_decimal_timeout():
    c = _client()
    call = c.start(0, "b", 1, "echo", 0, 3000)
    assert call.version == 2
    assert call.stream_attributes() == {ATTR_RPC_REQUEST_ID: "req-1", ATTR_RPC_METHOD: "echo",
                                        ATTR_RPC_TIMEOUT: "8000", ATTR_RPC_VERSION: "2"}


def test_transport_chosen_from_destination_client_protocol():
    c = _client()
    assert [c.start(0, "b", p, "m", 0).version for p in (0, 1, 2, 7)] == [1, 2, 2, 2]


def test_wrong_transport_form_is_refused_with_clear_error():
    c = _client()
    msg = _raises_value_error(c.start(0, "b", 1, "m", 0).request_packet, "x")
    assert "stream" in msg
    assert "request_packet" in _raises_value_error(c.start(0, "b", 0, "m", 0).stream_attributes)


def test_v1_payload_over_15360_fails_fast_with_1402():
    c = _client()
    e = _raises(1402, c.start, 0, "b", 0, "m", 15361)
    assert e.message == "Request payload too large"
    assert len(c) == 0 and c.next_deadline() is None, "nothing registered, nothing to send"
    assert c.start(0, "b", 0, "m", 15360).version == 1, "exactly 15360 bytes is allowed"


def test_v2_payload_has_no_size_limit():
    assert _client().start(0, "b", 1, "m", 10 * 1024 * 1024).version == 2


def test_unknown_destination_fails_with_1401():
    c = _client()
    _raises(1401, c.start, 0, "ghost", None, "m", 0)
    assert len(c) == 0


def test_bad_method_or_timeout_is_a_clear_value_error():
    c = _client()
    assert "method" in _raises_value_error(c.start, 0, "b", 0, "", 0)
    assert "timeout" in _raises_value_error(c.start, 0, "b", 0, "m", 0, 0)
    assert "timeout" in _raises_value_error(c.start, 0, "b", 0, "m", 0, 1.5)
    assert len(c) == 0


def test_pending_ack_and_response_registered_before_send():
    # The adapter sends after start() returns; an ack and response that overtake the
    # send (processed before the send call returns) must find the state already there.
    c = _client()
    call = c.start(0, "b", 0, "m", 1)
    assert c.get(call.request_id) is call and c.next_deadline() == 7000
    assert c.on_ack(1, "b", call.request_id) is True
    done = c.on_response(2, "b", {"request_id": call.request_id, "payload": "ok"})
    assert done.payload == "ok" and done.error is None


def test_no_ack_within_7000ms_rejects_connection_timeout():
    c = _client()
    call = c.start(100, "b", 0, "m", 1, 60000)
    assert c.next_deadline() == 7100
    assert c.handle_timer(7099) == []
    done = c.handle_timer(7100)
    assert len(done) == 1 and done[0].request_id == call.request_id
    assert done[0].error.code == RpcError.CONNECTION_TIMEOUT and done[0].payload is None
    assert len(c) == 0 and c.next_deadline() is None, "pending state dropped"


def test_ack_stops_the_connection_timer_not_the_response_timer():
    c = _client()
    call = c.start(0, "b", 0, "m", 1, 20000)
    c.on_ack(10, "b", call.request_id)
    assert c.next_deadline() == 20000
    assert c.handle_timer(19999) == []
    assert [x.error.code for x in c.handle_timer(20000)] == [RpcError.RESPONSE_TIMEOUT]


def test_response_timer_is_the_requested_timeout_default_15s():
    c = _client()
    call = c.start(0, "b", 0, "m", 1)
    c.on_ack(5, "b", call.request_id)
    assert c.handle_timer(14999) == []
    assert [x.error.code for x in c.handle_timer(15000)] == [1502]


def test_short_timeout_without_ack_is_response_timeout_not_connection_timeout():
    c = _client()
    c.start(0, "b", 0, "m", 1, 1000)
    assert c.next_deadline() == 1000
    assert [x.error.code for x in c.handle_timer(1000)] == [1502]


def test_late_timer_run_reports_the_earlier_deadline():
    c = _client()
    c.start(0, "b", 0, "m", 1, 9000)      # ack due 7000, response due 9000: 1501
    c.start(0, "b", 0, "m", 1, 7000)      # both due 7000: the ack timer wins the tie
    c.start(0, "b", 0, "m", 1, 5000)      # response due 5000, before the ack: 1502
    done = c.handle_timer(60000)          # the timer task ran late: all three are due
    assert [(x.request_id, x.error.code) for x in done] == [
        ("req-3", 1502), ("req-1", 1501), ("req-2", 1501)], done


def test_sent_restarts_the_response_timer():
    c = _client()
    call = c.start(0, "b", 1, "m", 1, 10000)
    c.on_ack(100, "b", call.request_id)
    c.sent(3000, call.request_id)          # a long v2 request stream finished at 3000 ms
    assert c.next_deadline() == 13000
    assert c.handle_timer(12999) == []
    assert [x.error.code for x in c.handle_timer(13000)] == [1502]
    c.sent(0, "unknown")                   # unknown ids are ignored


def test_response_timer_is_not_armed_while_the_request_is_still_being_sent():
    """client-sdk-js arms the response timer once the request is published: a request
    stream that takes longer than the timeout to go out is not a 1502."""
    c = _client()
    call = c.start(0, "b", 2, "m", 1, 1000, sending=True)
    assert c.next_deadline() == 7000, "only the ack timer runs during the send"
    c.on_ack(100, "b", call.request_id)
    assert c.next_deadline() is None
    assert c.handle_timer(60000) == [], "no response timeout while sending"
    c.sent(60000, call.request_id)
    assert c.next_deadline() == 61000
    assert c.handle_timer(60999) == []
    assert [x.error.code for x in c.handle_timer(61000)] == [1502]


def test_ack_timer_runs_while_the_request_is_still_being_sent():
    c = _client()
    call = c.start(0, "b", 2, "m", 1, 60000, sending=True)
    assert c.handle_timer(6999) == []
    assert [(x.request_id, x.error.code) for x in c.handle_timer(7000)] == [(call.request_id, 1501)]


def test_a_response_during_the_send_completes_the_call():
    c = _client()
    call = c.start(0, "b", 2, "m", 1, 1000, sending=True)
    c.on_ack(10, "b", call.request_id)
    done = c.on_response(50000, "b", {"request_id": call.request_id, "error": {"code": 1400, "message": "x"}})
    assert done.error.code == 1400 and len(c) == 0


def test_destination_leaving_rejects_1503_and_spares_other_calls():
    c = _client()
    a = c.start(0, "b", 0, "m", 1)
    other = c.start(0, "x", 0, "m", 1)
    done = c.on_participant_left("b")
    assert [(x.request_id, x.error.code) for x in done] == [(a.request_id, 1503)]
    assert c.get(other.request_id) is other and c.on_participant_left("nobody") == []


def test_link_lost_fails_every_pending_call_once():
    c = _client()
    ids = [c.start(0, d, 0, "m", 1).request_id for d in ("b", "b", "x")]
    err = RpcError(RpcError.RECIPIENT_DISCONNECTED, None, "link lost")
    done = c.fail_all(err)
    assert sorted(x.request_id for x in done) == sorted(ids) and all(x.error is err for x in done)
    assert c.fail_all(err) == [] and c.handle_timer(10 ** 9) == []


def test_late_response_after_timeout_is_ignored():
    c = _client()
    call = c.start(0, "b", 0, "m", 1, 8000)
    c.on_ack(1, "b", call.request_id)
    assert len(c.handle_timer(8000)) == 1
    assert c.on_response(9000, "b", {"request_id": call.request_id, "payload": "late"}) is None
    assert c.on_response(9000, "b", {"request_id": call.request_id, "error": {"code": 1}}) is None
    assert c.accept_response_stream("b", call.request_id) is None
    assert c.complete(call.request_id, payload="late") is None


def test_late_ack_after_timeout_is_ignored():
    c = _client()
    call = c.start(0, "b", 0, "m", 1)
    assert c.handle_timer(7000)[0].error.code == 1501
    assert c.on_ack(7001, "b", call.request_id) is False
    assert len(c) == 0


def test_ack_handled_after_its_deadline_is_ignored_even_before_the_timer_runs():
    c = _client()
    call = c.start(0, "b", 0, "m", 1, 10000)
    assert c.on_ack(7000, "b", call.request_id) is False   # the ack deadline has passed
    assert not call.acked
    assert [x.error.code for x in c.handle_timer(7000)] == [RpcError.CONNECTION_TIMEOUT]


def test_response_handled_after_a_deadline_completes_with_that_timeout():
    c = _client()
    late = c.start(0, "b", 0, "m", 1, 10000)
    c.on_ack(100, "b", late.request_id)
    done = c.on_response(10000, "b", {"request_id": late.request_id, "payload": "too late"})
    assert done.payload is None and done.error.code == RpcError.RESPONSE_TIMEOUT
    unacked = c.start(0, "b", 0, "m", 1, 10000)
    done = c.on_response(7000, "b", {"request_id": unacked.request_id, "payload": "no ack in time"})
    assert done.error.code == RpcError.CONNECTION_TIMEOUT
    assert c.handle_timer(60000) == [] and len(c) == 0      # each completed once
    in_time = c.start(0, "b", 0, "m", 1, 10000)
    assert c.on_response(6999, "b", {"request_id": in_time.request_id, "payload": "ok"}).payload == "ok"


def test_ack_or_response_for_unknown_id_is_ignored():
    c = _client()
    assert c.on_ack(0, "b", "nope") is False
    assert c.on_response(0, "b", {"request_id": "nope", "payload": "x"}) is None
    assert c.on_response(0, "b", {}) is None
    assert c.accept_response_stream("b", "nope") is None


def test_a_call_completes_exactly_once():
    c = _client()
    call = c.start(0, "b", 0, "m", 1)
    first = c.on_response(1, "b", {"request_id": call.request_id, "payload": "one"})
    assert isinstance(first, Completion) and first.payload == "one"
    assert c.on_response(2, "b", {"request_id": call.request_id, "payload": "two"}) is None
    assert c.complete(call.request_id, error=RpcError(1)) is None
    assert c.handle_timer(10 ** 6) == [] and c.fail_all(RpcError(1503)) == []


def test_response_before_ack_completes_and_clears_the_ack_timer():
    c = _client()
    call = c.start(0, "b", 0, "m", 1)
    assert c.on_response(5, "b", {"request_id": call.request_id, "payload": "fast"}).payload == "fast"
    assert c.next_deadline() is None and c.handle_timer(7000) == []
    assert c.on_ack(6, "b", call.request_id) is False, "the late ack is ignored"


def test_response_from_other_identity_is_ignored():
    c = _client()
    call = c.start(0, "b", 0, "m", 1)
    assert c.on_response(1, "evil", {"request_id": call.request_id, "payload": "forged"}) is None
    assert c.get(call.request_id) is call, "the call stays pending"
    assert c.on_response(2, "b", {"request_id": call.request_id, "payload": "real"}).payload == "real"


def test_ack_from_other_identity_is_ignored():
    c = _client()
    call = c.start(0, "b", 0, "m", 1)
    assert c.on_ack(1, "evil", call.request_id) is False
    assert c.handle_timer(7000)[0].error.code == 1501


def test_response_stream_from_other_identity_is_ignored():
    c = _client()
    call = c.start(0, "b", 1, "m", 1)
    assert c.accept_response_stream("evil", call.request_id) is None
    assert c.get(call.request_id) is call, "the call stays pending"


def test_response_stream_from_destination_is_read_then_completed():
    c = _client()
    call = c.start(0, "b", 1, "m", 1, 9000)
    assert c.accept_response_stream("b", call.request_id) is call
    assert c.next_deadline() == 9000, "no ack timer once the response is arriving"
    assert c.handle_timer(8999) == []
    done = c.complete(call.request_id, payload="streamed")
    assert (done.request_id, done.payload, done.error) == (call.request_id, "streamed", None)


def test_a_second_response_stream_for_a_call_is_ignored():
    c = _client()
    call = c.start(0, "b", 1, "m", 1, 9000)
    assert c.accept_response_stream("b", call.request_id) is call
    assert c.accept_response_stream("b", call.request_id) is None


def test_a_response_stream_after_a_deadline_is_too_late():
    c = _client()
    call = c.start(0, "b", 1, "m", 1, 10000)
    assert c.accept_response_stream("b", call.request_id, 7500) is None   # no ack by 7000
    assert not call.acked
    assert [x.error.code for x in c.handle_timer(7500)] == [RpcError.CONNECTION_TIMEOUT]
    on_time = c.start(0, "b", 1, "m", 1, 10000)
    assert c.accept_response_stream("b", on_time.request_id, 6999) is on_time


def test_a_response_stream_we_cannot_take_fails_its_call_once():
    c = _client()
    call = c.start(0, "b", 1, "m", 1, 10000)
    assert c.on_refused_stream("evil", call.request_id, "no slot") is None   # not the destination
    done = c.on_refused_stream("b", call.request_id, "too many open streams (limit 1)")
    assert done.error.code == 1500 and done.error.message == "Response stream refused"
    assert done.error.data == "too many open streams (limit 1)" and len(c) == 0
    assert c.on_refused_stream("b", call.request_id, "again") is None


def test_response_timer_covers_reading_the_response_stream():
    c = _client()
    call = c.start(0, "b", 1, "m", 1, 9000)
    c.accept_response_stream("b", call.request_id)
    assert [x.error.code for x in c.handle_timer(9000)] == [1502]
    assert c.complete(call.request_id, payload="too late") is None


def test_success_accepted_by_either_transport():
    # Real SDKs pick the response transport from the caller's protocol alone.
    c = _client()
    v2 = c.start(0, "b", 2, "m", 1)
    assert c.on_response(1, "b", {"request_id": v2.request_id, "payload": "by packet"}).payload == "by packet"
    v1 = c.start(0, "b", 0, "m", 1)
    assert c.accept_response_stream("b", v1.request_id) is v1


def test_concurrent_calls_get_distinct_ids_and_never_cross():
    c = RpcClient()   # real random UUIDs
    calls = [c.start(0, "b", i % 2, "m", 1) for i in range(50)]
    ids = [x.request_id for x in calls]
    assert len(set(ids)) == 50 and all(len(i) == 36 for i in ids)
    for x in reversed(calls):
        done = c.on_response(1, "b", {"request_id": x.request_id, "payload": "for " + x.request_id})
        assert done.request_id == x.request_id and done.payload == "for " + x.request_id
    assert len(c) == 0


def test_new_id_never_reuses_a_pending_id():
    seq = ["dup", "dup", "fresh"]
    c = RpcClient(new_id=lambda: seq.pop(0))
    assert [c.start(0, "b", 0, "m", 1).request_id for _ in range(2)] == ["dup", "fresh"]


def test_cancel_clears_pending_state():
    c = _client()
    call = c.start(0, "b", 0, "m", 1)
    assert c.cancel(call.request_id) is True and c.cancel(call.request_id) is False
    assert len(c) == 0 and c.next_deadline() is None and c.handle_timer(10 ** 6) == []
    assert c.on_response(1, "b", {"request_id": call.request_id, "payload": "x"}) is None


def test_error_response_surfaces_remote_code_message_and_data():
    c = _client()
    call = c.start(0, "b", 0, "m", 1)
    done = c.on_response(1, "b", {"request_id": call.request_id,
                                  "error": {"code": 4242, "message": "custom", "data": "d"}})
    assert done.payload is None and isinstance(done.error, RpcError)
    assert (done.error.code, done.error.message, done.error.data) == (4242, "custom", "d")


def test_empty_payload_response_is_a_success_with_empty_string():
    c = _client()
    call = c.start(0, "b", 0, "m", 1)
    done = c.on_response(1, "b", {"request_id": call.request_id, "payload": ""})
    assert done.payload == "" and done.error is None


def test_response_with_only_compressed_payload_is_ignored():
    c = _client()
    call = c.start(0, "b", 0, "m", 1)
    assert c.on_response(1, "b", {"request_id": call.request_id, "compressed_payload": b"\x00"}) is None
    assert c.get(call.request_id) is call


# ====================================================================== handler
def test_second_handler_for_same_method_is_an_error():
    s = RpcServer()
    s.register("m", lambda d: "1")
    msg = _raises_value_error(s.register, "m", lambda d: "2")
    assert "'m'" in msg and "unregister" in msg


def test_unregister_then_register_again():
    s = RpcServer()
    h1 = lambda d: "1"  # noqa: E731
    h2 = lambda d: "2"  # noqa: E731
    s.register("m", h1)
    s.unregister("m")
    s.unregister("m")   # unregistering an absent method is harmless
    assert s.lookup("m") is None
    s.register("m", h2)
    assert s.lookup("m") is h2


def test_register_refuses_bad_name_or_handler():
    s = RpcServer()
    _raises_value_error(s.register, "", lambda d: "")
    try:
        s.register("m", "not callable")
    except TypeError:
        pass
    else:
        raise AssertionError("a non-callable handler must be refused")


def test_ack_is_sent_before_method_lookup():
    s = RpcServer()
    packets, inv = s.on_request_packet("a", _v1_req(method="nope"), "p")
    assert inv is None and _kinds(packets) == ["rpc_ack", "rpc_response"]
    assert packets[0] == {"destination_identities": ["a"], "rpc_ack": {"request_id": "r1"}}
    assert _error_code(packets[1]) == RpcError.UNSUPPORTED_METHOD
    assert packets[1]["rpc_response"]["error"]["message"] == "Method not supported at destination"


def test_v1_request_with_version_not_1_is_acked_then_1404():
    s = RpcServer()
    s.register("m", lambda d: "x")
    for v in (0, 2):
        packets, inv = s.on_request_packet("a", _v1_req(version=v), "p")
        assert inv is None and _kinds(packets) == ["rpc_ack", "rpc_response"]
        assert _error_code(packets[1]) == RpcError.UNSUPPORTED_VERSION


def test_v1_request_to_registered_method_is_acked_and_invoked():
    s = RpcServer()
    h = lambda d: d.payload  # noqa: E731
    s.register("echo", h)
    packets, inv = s.on_request_packet("a", _v1_req(rid="r9", method="echo", timeout=9000), "hello")
    assert _kinds(packets) == ["rpc_ack"]
    assert (inv.request_id, inv.caller_identity, inv.method, inv.handler, inv.streaming,
            inv.transport, inv.payload) == ("r9", "a", "echo", h, False, "packet", "hello")
    assert inv.response_timeout == 9.0


def test_handler_receives_id_caller_payload_and_timeout_in_seconds():
    s = RpcServer()
    s.register("m", lambda d: "")
    _, inv = s.on_request_packet("caller", _v1_req(rid="id7", timeout=12500), "pl")
    d = inv.data()
    assert (d.request_id, d.caller_identity, d.payload, d.response_timeout, d.method) == \
        ("id7", "caller", "pl", 12.5, "m")
    _, inv = s.on_request_packet("caller", _v1_req(rid="id8", payload="from dict"))
    assert inv.payload == "from dict", "without a separate payload the packet's own is used"


def test_v1_request_without_id_is_dropped_with_a_reason():
    s = RpcServer()
    assert s.on_request_packet("a", _v1_req(rid=""), "p") == ([], None)
    assert "without an id" in s.last_rejection


def test_streaming_flag_reaches_the_invocation():
    s = RpcServer()
    s.register("big", lambda d: "", streaming=True)
    _, inv = s.on_request_stream("a", _attrs(method="big"))
    assert inv.streaming is True and inv.transport == "stream" and inv.payload is None


def test_v2_request_stream_is_acked_then_invoked():
    s = RpcServer()
    s.register("m", lambda d: "")
    packets, inv = s.on_request_stream("a", _attrs(rid="s1", timeout="20000"))
    assert packets == [{"destination_identities": ["a"], "rpc_ack": {"request_id": "s1"}}]
    assert (inv.request_id, inv.caller_identity, inv.transport, inv.response_timeout) == \
        ("s1", "a", "stream", 20.0)


def test_v2_malformed_stream_answers_application_error_without_ack():
    s = RpcServer()
    s.register("m", lambda d: "")
    for attrs in (_attrs(method=None), _attrs(method=""), _attrs(timeout="soon"),
                  _attrs(timeout=None), _attrs(version="two"), _attrs(version=None)):
        packets, inv = s.on_request_stream("a", attrs)
        assert inv is None and _kinds(packets) == ["rpc_response"], attrs
        err = packets[0]["rpc_response"]["error"]
        # livekit-client's wire form: the built-in message, the text in data
        assert err["code"] == RpcError.APPLICATION_ERROR and err["message"] == "Application error in method handler"
        assert err["data"].startswith("RPC data stream malformed: lk.rpc_request_"), \
            "data says which attribute is wrong: %r" % err["data"]


def test_v2_malformed_stream_without_id_sends_nothing():
    s = RpcServer()
    for attrs in (_attrs(rid=None), _attrs(rid=""), _attrs(rid=None, method=None), None):
        assert s.on_request_stream("a", attrs) == ([], None)
    assert "lk.rpc_request_id" in s.last_rejection


def test_v2_stream_version_not_2_is_acked_then_1404():
    s = RpcServer()
    s.register("m", lambda d: "")
    packets, inv = s.on_request_stream("a", _attrs(version="1"))
    assert inv is None and _kinds(packets) == ["rpc_ack", "rpc_response"]
    assert _error_code(packets[1]) == RpcError.UNSUPPORTED_VERSION


def test_v2_unknown_method_is_acked_then_1400():
    s = RpcServer()
    packets, inv = s.on_request_stream("a", _attrs(method="nope"))
    assert inv is None and _kinds(packets) == ["rpc_ack", "rpc_response"]
    assert _error_code(packets[1]) == RpcError.UNSUPPORTED_METHOD


def test_v2_numeric_attributes_are_read_like_parse_int():
    s = RpcServer()
    s.register("m", lambda d: "")
    _, inv = s.on_request_stream("a", _attrs(timeout=" 8000.9", version="2.0"))
    assert inv is not None and inv.response_timeout == 8.0
    packets, inv = s.on_request_stream("a", _attrs(timeout="+9000ms"))
    assert inv.response_timeout == 9.0
    packets, inv = s.on_request_stream("a", _attrs(timeout="-"))
    assert inv is None and packets[0]["rpc_response"]["error"]["code"] == 1500


def test_v2_numeric_attributes_of_thousands_of_digits_are_still_answered():
    srv = RpcServer()
    srv.register("m", lambda d: "x")
    attrs = {"lk.rpc_request_id": "r-big", "lk.rpc_request_method": "m",
             "lk.rpc_request_response_timeout_ms": "8000", "lk.rpc_request_version": "0" * 4999 + "2"}
    packets, inv = srv.on_request_stream("c", attrs)   # leading zeros: version 2, as parseInt reads it
    assert inv is not None and len(packets) == 1 and "rpc_ack" in packets[0]
    attrs["lk.rpc_request_version"] = "9" * 5000
    packets, inv = srv.on_request_stream("c", attrs)
    assert inv is None and packets[1]["rpc_response"]["error"]["code"] == 1404
    attrs["lk.rpc_request_version"] = "2"
    attrs["lk.rpc_request_response_timeout_ms"] = "7" * 5000
    packets, inv = srv.on_request_stream("c", attrs)
    assert inv is not None and inv.response_timeout >= 10 ** 15


def test_response_to_v1_caller_is_an_rpc_response_packet():
    s = RpcServer()
    s.register("m", lambda d: "")
    _, inv = s.on_request_packet("a", _v1_req(rid="r1"), "p")
    assert s.response(inv, "ok") == [{"destination_identities": ["a"],
                                      "rpc_response": {"request_id": "r1", "payload": "ok"}}]
    assert s.response_packets(inv, None)[0]["rpc_response"]["payload"] == "", "None answers \"\""


def test_v1_response_over_15360_bytes_becomes_1504():
    s = RpcServer()
    s.register("m", lambda d: "")
    _, inv = s.on_request_packet("a", _v1_req(), "p")
    assert s.response(inv, "x" * 15360)[0]["rpc_response"]["payload"] == "x" * 15360
    for too_big in ("x" * 15361, "é" * 7681, "😀" * 3841):
        packets = s.response(inv, too_big)
        assert len(packets) == 1 and _error_code(packets[0]) == RpcError.RESPONSE_PAYLOAD_TOO_LARGE
        assert "payload" not in packets[0]["rpc_response"]
    assert s.response(inv, "é" * 7680)[0]["rpc_response"]["payload"] == "é" * 7680


def test_non_str_response_is_a_clear_type_error():
    s = RpcServer()
    s.register("m", lambda d: 42)
    _, inv = s.on_request_packet("a", _v1_req(), "p")
    try:
        s.response(inv, 42)
    except TypeError as e:
        assert "'m'" in str(e) and "str" in str(e)
    else:
        raise AssertionError("an int response must be refused")
    assert s.error_response(inv, TypeError("x"))["rpc_response"]["error"]["code"] == 1500


class _Blob:
    def __init__(self, size):
        self.size = size


def test_v1_response_cap_applies_to_blobs_by_size():
    s = RpcServer()
    s.register("m", lambda d: "")
    _, inv = s.on_request_packet("a", _v1_req(), "p")
    blob = _Blob(15360)
    assert s.response(inv, blob)[0]["rpc_response"]["payload"] is blob
    assert _error_code(s.response(inv, _Blob(15361))[0]) == 1504


def test_v2_response_is_never_capped():
    s = RpcServer()
    s.register("m", lambda d: "")
    _, inv = s.on_request_stream("a", _attrs(rid="s1"))
    for payload in ("x" * 40000, _Blob(10 ** 8), None):
        out = s.response(inv, payload)
        assert isinstance(out, StreamResponse)
        assert (out.kind, out.topic, out.destination_identities, out.attributes) == \
            ("text", TOPIC_RPC_RESPONSE, ["a"], {ATTR_RPC_REQUEST_ID: "s1"})
    assert "stream" in _raises_value_error(s.response_packets, inv, "x")


def test_handler_rpc_error_goes_back_unchanged():
    s = RpcServer()
    s.register("m", lambda d: "")
    for packets_inv in (s.on_request_packet("a", _v1_req(), "p"), s.on_request_stream("a", _attrs())):
        inv = packets_inv[1]
        pkt = s.error_response(inv, RpcError(4242, "custom failure", "some data"))
        assert pkt == {"destination_identities": ["a"], "rpc_response": {"request_id": "r1", "error": {
            "code": 4242, "message": "custom failure", "data": "some data"}}}


def test_other_exception_becomes_1500_with_its_text_in_data_on_v1():
    s = RpcServer()
    s.register("m", lambda d: "")
    _, inv = s.on_request_packet("a", _v1_req(), "p")
    err = s.error_response(inv, ValueError("kaputt"))["rpc_response"]["error"]
    assert err == {"code": 1500, "message": "Application error in method handler",
                   "data": "ValueError: kaputt"}


def test_other_exception_on_v2_becomes_1500_without_data():
    s = RpcServer()
    s.register("m", lambda d: "")
    _, inv = s.on_request_stream("a", _attrs())
    assert s.error_response(inv, KeyError("k"))["rpc_response"]["error"] == {
        "code": 1500, "message": "Application error in method handler"}


def test_errors_always_go_back_as_packets_even_between_v2_peers():
    s = RpcServer()
    s.register("m", lambda d: "")
    _, inv = s.on_request_stream("a", _attrs())
    pkt = s.error_response(inv, RpcError(1504))
    assert isinstance(pkt, dict) and "rpc_response" in pkt and "error" in pkt["rpc_response"]


def test_methods_registered_before_any_request_are_found():
    s = RpcServer()
    s.register("early", lambda d: "here")
    assert s.on_request_packet("a", _v1_req(method="early"), "")[1] is not None
    assert s.on_request_stream("a", _attrs(method="early"))[1] is not None


# ======================================================================= memory
def test_pending_calls_cost_little_heap_and_all_of_it_comes_back():
    c = RpcClient()
    gc.collect()
    before = gc.mem_alloc() if hasattr(gc, "mem_alloc") else 0
    calls = [c.start(0, "b", 1, "m", 1) for _ in range(20)]
    gc.collect()
    per_call = ((gc.mem_alloc() - before) // 20) if hasattr(gc, "mem_alloc") else 0
    print("heap per pending call: %d bytes" % per_call)
    assert per_call < 1024, "a pending call must stay small on a 64 KiB heap: %d" % per_call
    for x in calls:
        c.on_response(1, "b", {"request_id": x.request_id, "payload": ""})
    assert len(c) == 0
