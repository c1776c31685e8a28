"""RPC.md rules through the whole stack: Room ⇄ memroom (real LINK frames) ⇄ Room/RawPeer.

Runs on CPython and under MicroPython. RawPeer plays a LiveKit peer of any
client_protocol byte by byte, so the wire form of each rule is checked too.
"""
import asyncio

from room_helpers import (close, join, noting_cancel, pair, raises, raises_rpc, raw, request_v1, room_and_peer,
                          send_request_v1, settle)

from lkedge.clock import now_ms
from lkedge.memroom import MemRoom
from lkedge.rpc import RpcError

MP_HEAPSIZE = "1M"


async def test_v2_to_v2_round_trip_small_and_over_v1_cap():
    mem, a, b = await pair()
    b.local_participant.register_rpc_method("echo", lambda d: d.payload)
    assert await a.local_participant.perform_rpc(destination_identity="b", method="echo", payload="hi") == "hi"
    big = "é" * 20000  # 40000 UTF-8 bytes: v2 has no 15360-byte cap either way
    assert await a.local_participant.perform_rpc(destination_identity="b", method="echo", payload=big) == big
    await close(a, b)


async def test_empty_payload_round_trip():
    mem, a, b = await pair()
    b.local_participant.register_rpc_method("echo", lambda d: d.payload)
    assert await a.local_participant.perform_rpc(destination_identity="b", method="echo", payload="") == ""
    await close(a, b)


async def test_v2_caller_uses_v1_packet_to_v1_destination():
    mem, a, peer = await room_and_peer()
    task = asyncio.create_task(a.local_participant.perform_rpc(
        destination_identity="old", method="m", payload="x", response_timeout=1.0))
    req = await peer.wait_for(lambda p: "rpc_request" in p)
    r = req["rpc_request"]
    assert r["version"] == 1 and r["method"] == "m" and r["payload"] == "x"
    assert r["response_timeout_ms"] == 8000, "effective wire timeout is max(requested, 8000)"
    assert req["participant_identity"] == "a"
    await peer.send({"destination_identities": ["a"], "rpc_ack": {"request_id": r["id"]}})
    await peer.send({"destination_identities": ["a"], "rpc_response": {"request_id": r["id"], "payload": "ok"}})
    assert await task == "ok"
    await close(a, peer)


async def test_handler_acks_v1_request_before_response():
    mem = MemRoom()
    a = await join(mem, "a")
    a.local_participant.register_rpc_method("upper", lambda d: d.payload.upper())
    peer = await raw(mem, "old", client_protocol=0)
    await peer.send({"destination_identities": ["a"], "rpc_request": {
        "id": "r1", "method": "upper", "payload": "abc", "response_timeout_ms": 8000, "version": 1}})
    resp = await peer.wait_for(lambda p: "rpc_response" in p)
    kinds = [k for p in peer.packets for k in ("rpc_ack", "rpc_response") if k in p]
    assert kinds == ["rpc_ack", "rpc_response"], kinds
    assert resp["rpc_response"] == {"request_id": "r1", "payload": "ABC"}
    await close(a, peer)


async def test_unknown_method_is_acked_then_1400():
    mem, a, peer = await room_and_peer()
    resp = await request_v1(peer, "a", "r2", "nope")
    assert "rpc_ack" in peer.packets[0]
    assert resp["rpc_response"]["error"]["code"] == RpcError.UNSUPPORTED_METHOD
    await close(a, peer)


async def test_unknown_method_between_rooms_raises_1400():
    mem, a, b = await pair()
    await raises_rpc(1400, a.local_participant.perform_rpc(destination_identity="b", method="none"))
    await close(a, b)


async def test_v1_request_with_version_2_is_1404():
    mem, a, peer = await room_and_peer()
    a.local_participant.register_rpc_method("m", lambda d: "x")
    resp = await request_v1(peer, "a", "r3", "m", version=2)
    assert resp["rpc_response"]["error"]["code"] == RpcError.UNSUPPORTED_VERSION
    await close(a, peer)


async def test_rpc_error_from_handler_passes_through():
    mem, a, b = await pair()

    def fail(d):
        raise RpcError(4242, "custom failure", "some data")
    b.local_participant.register_rpc_method("fail", fail)
    e = await raises_rpc(4242, a.local_participant.perform_rpc(destination_identity="b", method="fail"))
    assert e.message == "custom failure" and e.data == "some data"
    await close(a, b)


async def test_other_exception_becomes_1500():
    mem, a, b = await pair()

    async def boom(d):
        raise ValueError("kaputt")
    b.local_participant.register_rpc_method("boom", boom)
    await raises_rpc(1500, a.local_participant.perform_rpc(destination_identity="b", method="boom"))
    # the handler's failure did not hurt the participant: it still answers
    b.local_participant.register_rpc_method("ok", lambda d: "fine")
    assert await a.local_participant.perform_rpc(destination_identity="b", method="ok") == "fine"
    await close(a, b)


async def test_v1_request_over_15360_bytes_fails_fast_with_1402():
    mem, a, peer = await room_and_peer()
    await raises_rpc(1402, a.local_participant.perform_rpc(destination_identity="old", method="m", payload="x" * 15361))
    await asyncio.sleep(0.05)
    assert not [p for p in peer.packets if "rpc_request" in p], "nothing may be sent"
    await close(a, peer)


async def test_unknown_destination_is_1401():
    mem, a, b = await pair()
    await raises_rpc(1401, a.local_participant.perform_rpc(destination_identity="ghost", method="m"))
    await close(a, b)


async def test_response_timeout_is_1502():
    mem, a, peer = await room_and_peer()
    task = asyncio.create_task(a.local_participant.perform_rpc(
        destination_identity="old", method="m", payload="x", response_timeout=0.3))
    req = await peer.wait_for(lambda p: "rpc_request" in p)
    await peer.send({"destination_identities": ["a"], "rpc_ack": {"request_id": req["rpc_request"]["id"]}})
    await raises_rpc(1502, task)
    # a late response is ignored, never raises
    await peer.send({"destination_identities": ["a"], "rpc_response": {"request_id": req["rpc_request"]["id"], "payload": "late"}})
    await asyncio.sleep(0.05)
    assert a.connection_state == "connected"
    await close(a, peer)


async def test_destination_leaving_fails_pending_call_with_1503():
    mem, a, peer = await room_and_peer()
    task = asyncio.create_task(a.local_participant.perform_rpc(destination_identity="old", method="m", payload="x"))
    await peer.wait_for(lambda p: "rpc_request" in p)
    await peer.close()
    await raises_rpc(1503, task)
    await close(a)


async def test_response_from_other_identity_is_ignored():
    mem = MemRoom()
    a = await join(mem, "a")
    peer = await raw(mem, "old", client_protocol=0)
    intruder = await raw(mem, "evil", client_protocol=0)
    await settle(lambda: "old" in a.remote_participants)
    task = asyncio.create_task(a.local_participant.perform_rpc(
        destination_identity="old", method="m", payload="x", response_timeout=2))
    req = await peer.wait_for(lambda p: "rpc_request" in p)
    rid = req["rpc_request"]["id"]
    await intruder.send({"destination_identities": ["a"], "rpc_response": {"request_id": rid, "payload": "forged"}})
    await asyncio.sleep(0.05)
    assert not task.done(), "a response from another identity must not complete the call"
    await peer.send({"destination_identities": ["a"], "rpc_ack": {"request_id": rid}})
    await peer.send({"destination_identities": ["a"], "rpc_response": {"request_id": rid, "payload": "real"}})
    assert await task == "real"
    await close(a, peer, intruder)


async def test_concurrent_calls_get_distinct_ids_and_do_not_cross():
    mem, a, b = await pair()

    async def slow_echo(d):
        await asyncio.sleep(0.01 * (len(d.payload) % 5))
        return d.payload
    b.local_participant.register_rpc_method("echo", slow_echo)
    payloads = ["p%d" % i for i in range(12)]
    results = await asyncio.gather(*[a.local_participant.perform_rpc(destination_identity="b", method="echo", payload=p)
                                     for p in payloads])
    assert list(results) == payloads
    await close(a, b)


async def test_second_handler_for_same_method_is_an_error():
    mem, a, b = await pair()
    a.local_participant.register_rpc_method("m", lambda d: "1")
    try:
        a.local_participant.register_rpc_method("m", lambda d: "2")
    except ValueError:
        pass
    else:
        raise AssertionError("registering a second handler must fail")
    a.local_participant.unregister_rpc_method("m")
    a.local_participant.register_rpc_method("m", lambda d: "2")
    await close(a, b)


async def test_decorator_registration():
    mem, a, b = await pair()

    @b.local_participant.register_rpc_method("greet")
    async def greet(data):
        return "hello " + data.caller_identity

    assert await a.local_participant.perform_rpc(destination_identity="b", method="greet") == "hello a"
    await close(a, b)


async def test_invocation_data_carries_id_caller_payload_timeout():
    mem, a, b = await pair()
    seen = []
    b.local_participant.register_rpc_method("m", lambda d: seen.append(d) or "ok")
    await a.local_participant.perform_rpc(destination_identity="b", method="m", payload="p", response_timeout=9)
    d = seen[0]
    assert d.caller_identity == "a" and d.payload == "p" and len(d.request_id) == 36
    assert 8.9 < d.response_timeout < 9.1
    await close(a, b)


class _Pieces:
    """`n` pieces, then the end (or `then` raised: a source that breaks midway)."""

    def __init__(self, n, piece, then=None):
        self.n = n
        self.piece = piece
        self.then = then

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self.n:
            raise self.then or StopAsyncIteration
        self.n -= 1
        return self.piece


async def test_streaming_handler_and_streaming_call_100k_each_way():
    mem, a, b = await pair(piece_size=512, read_buffer=512)
    got = []

    async def sink(data):
        total = 0
        async for s in data.reader:
            total += len(s)
        got.append(total)
        return _Pieces(100, "y" * 1000)
    b.local_participant.register_rpc_method("sink", sink, streaming=True)
    reader = await a.local_participant.perform_rpc_stream(destination_identity="b", method="sink",
                                                          payload=_Pieces(100, "x" * 1000))
    total = 0
    async for s in reader:
        assert s == "y" * len(s)
        total += len(s)
    assert got == [100000] and total == 100000
    await close(a, b)


async def test_streaming_handler_answers_v1_caller_within_cap():
    mem = MemRoom()
    a = await join(mem, "a")

    async def h(data):
        return _Pieces(3, "abc")
    a.local_participant.register_rpc_method("s", h, streaming=True)

    async def too_big(data):
        return _Pieces(20, "z" * 1000)
    a.local_participant.register_rpc_method("big", too_big, streaming=True)
    peer = await raw(mem, "old", client_protocol=0)
    await peer.send({"destination_identities": ["a"], "rpc_request": {
        "id": "s1", "method": "s", "payload": "", "response_timeout_ms": 8000, "version": 1}})
    r = await peer.wait_for(lambda p: "rpc_response" in p)
    assert r["rpc_response"]["payload"] == "abcabcabc"
    await peer.send({"destination_identities": ["a"], "rpc_request": {
        "id": "s2", "method": "big", "payload": "", "response_timeout_ms": 8000, "version": 1}})
    r = await peer.wait_for(lambda p: "rpc_response" in p and p["rpc_response"]["request_id"] == "s2")
    assert r["rpc_response"]["error"]["code"] == RpcError.RESPONSE_PAYLOAD_TOO_LARGE
    await close(a, peer)


async def test_methods_registered_before_connect_answer_first_request():
    mem = MemRoom()
    from lkedge.config import RoomOptions
    from lkedge.room import Room
    b = Room(RoomOptions(auto_reconnect=False))
    b.local_participant.register_rpc_method("early", lambda d: "here")
    await b.connect(mem.transport(), "b")
    a = await join(mem, "a")
    await settle(lambda: "b" in a.remote_participants)
    assert await a.local_participant.perform_rpc(destination_identity="b", method="early") == "here"
    await close(a, b)


async def test_cancelling_a_call_clears_pending_state():
    mem, a, peer = await room_and_peer()
    task = asyncio.create_task(a.local_participant.perform_rpc(destination_identity="old", method="m", payload="x"))
    await peer.wait_for(lambda p: "rpc_request" in p)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    assert not a._calls, "the waiter is gone"
    assert a._rpc_client.next_deadline() is None, "no timers left for a cancelled call"
    await close(a, peer)


async def test_invalid_utf8_payload_drops_only_that_packet():
    mem = MemRoom()
    a = await join(mem, "a")
    a.local_participant.register_rpc_method("m", lambda d: "fine")
    peer = await raw(mem, "old", client_protocol=0)
    from lkedge import link, proto
    body = proto.encode(proto.DATA_PACKET, {"destination_identities": ["a"], "rpc_request": {
        "id": "r-bad", "method": "m", "payload": "XX", "response_timeout_ms": 8000, "version": 1}})
    body = body.replace(b"XX", b"\xff\xfe")
    await peer.t.write(link.encode_frame(link.DATA, body))
    await peer.send({"destination_identities": ["a"], "rpc_request": {
        "id": "good", "method": "m", "payload": "", "response_timeout_ms": 8000, "version": 1}})
    r = await peer.wait_for(lambda p: "rpc_response" in p and p["rpc_response"]["request_id"] == "good")
    assert r["rpc_response"]["payload"] == "fine"
    assert a.connection_state == "connected", "a bad packet must not cost the link"
    await close(a, peer)


async def test_streaming_handler_failing_midway_fails_the_reading_caller_with_1500():
    mem, a, b = await pair(piece_size=512, read_buffer=512)

    async def h(data):
        return _Pieces(3, "y" * 700, ValueError("sensor unplugged"))
    b.local_participant.register_rpc_method("flaky", h, streaming=True)
    reader = await a.local_participant.perform_rpc_stream(destination_identity="b", method="flaky")
    got = 0
    try:
        async for s in reader:
            got += len(s)
        raise AssertionError("the reader ended normally after the handler failed")
    except RpcError as e:
        assert e.code == RpcError.APPLICATION_ERROR, e
    assert got <= 2100
    assert not a._calls and not a._readers, "nothing of the failed call is left behind"
    await close(a, b)


async def test_streaming_handler_failing_midway_sends_error_packet_then_abnormal_trailer():
    mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=2)

    async def h(data):
        return _Pieces(1, "abc", ValueError("sensor unplugged"))
    a.local_participant.register_rpc_method("flaky", h, streaming=True)
    await peer.send({"destination_identities": ["a"], "stream_header": {
        "stream_id": "req1", "timestamp": 1, "topic": "lk.rpc_request", "mime_type": "text/plain",
        "text_header": {"operation_type": 0},
        "attributes": {"lk.rpc_request_id": "q1", "lk.rpc_request_method": "flaky",
                       "lk.rpc_request_response_timeout_ms": "8000", "lk.rpc_request_version": "2"}}})
    await peer.send({"destination_identities": ["a"], "stream_trailer": {"stream_id": "req1", "reason": ""}})
    trailer = await peer.wait_for(lambda p: "stream_trailer" in p)
    kinds = [k for p in peer.packets for k in ("rpc_ack", "stream_header", "rpc_response", "stream_trailer") if k in p]
    assert kinds[-2:] == ["rpc_response", "stream_trailer"], kinds
    err = [p for p in peer.packets if "rpc_response" in p][0]["rpc_response"]
    assert err["request_id"] == "q1" and err["error"]["code"] == RpcError.APPLICATION_ERROR
    assert "sensor unplugged" in trailer["stream_trailer"]["reason"], trailer
    await close(a, peer)


async def _ack_and_open_response(peer, stream_id):
    """As a v2 handler: ack the call whose request stream came first, open its response
    stream `stream_id`; -> the request id."""
    hdr = await peer.wait_for(lambda p: "stream_header" in p)
    rid = hdr["stream_header"]["attributes"]["lk.rpc_request_id"]
    await peer.send({"destination_identities": ["a"], "rpc_ack": {"request_id": rid}})
    await peer.send({"destination_identities": ["a"], "stream_header": {
        "stream_id": stream_id, "timestamp": 1, "topic": "lk.rpc_response", "mime_type": "text/plain",
        "text_header": {"operation_type": 0}, "attributes": {"lk.rpc_request_id": rid}}})
    return rid


async def test_call_failing_while_its_response_stream_is_read_raises_not_hangs():
    mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=2)
    task = asyncio.create_task(a.local_participant.perform_rpc_stream(
        destination_identity="p", method="m", payload="x", response_timeout=0.4))
    await _ack_and_open_response(peer, "resp1")
    await peer.send({"destination_identities": ["a"], "stream_chunk": {
        "stream_id": "resp1", "chunk_index": 0, "content": b"part"}})
    reader = await task
    assert await reader.__anext__() == "part"
    # the stream never ends: the response timer fails the call, and the reader says so
    await raises_rpc(RpcError.RESPONSE_TIMEOUT, reader.__anext__())
    await close(a, peer)


async def _cancelled(task):
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


class _SlowPieces(_Pieces):
    async def __anext__(self):
        if self.n < 100:
            await asyncio.sleep(0.2)
        return await _Pieces.__anext__(self)


async def test_cancelling_the_task_reading_a_streaming_call_clears_its_pending_state():
    mem, a, b = await pair(piece_size=512, read_buffer=512)

    async def never(data):
        await asyncio.sleep(30)

    async def many(data):
        return _SlowPieces(100, "y" * 1000)   # more than the caller will read
    b.local_participant.register_rpc_method("never", never)
    b.local_participant.register_rpc_method("many", many, streaming=True)
    b.local_participant.register_rpc_method("echo", lambda d: d.payload)
    lp = a.local_participant

    async def read_one(reader, got):
        async for s in reader:   # cancelled while it waits for the next piece
            got.append(s)

    # cancelled while waiting for the answer
    reader = await lp.perform_rpc_stream(destination_identity="b", method="never", response_timeout=20)
    task = asyncio.create_task(read_one(reader, []))
    await asyncio.sleep(0.05)
    await _cancelled(task)
    assert not a._calls and len(a._rpc_client) == 0, (a._calls, len(a._rpc_client))
    # cancelled midway through the response stream: the rest is dropped, the link goes on
    got = []
    reader = await lp.perform_rpc_stream(destination_identity="b", method="many", response_timeout=20)
    task = asyncio.create_task(read_one(reader, got))
    await settle(lambda: got)
    await _cancelled(task)
    assert not a._calls and len(a._rpc_client) == 0
    assert await asyncio.wait_for(lp.perform_rpc(destination_identity="b", method="echo", payload="next"), 5) == "next"
    await close(a, b)


async def test_unknown_destination_with_an_async_iterable_payload_is_1401_and_leaves_it_unread():
    mem, a, b = await pair()
    src = _Pieces(20, "x" * 1000)   # 20000 bytes: over the v1 cap, which must not be what fails
    await raises_rpc(1401, a.local_participant.perform_rpc(destination_identity="ghost", method="m", payload=src))
    assert src.n == 20
    await close(a, b)


class _LeavesMidway(_Pieces):
    """Pieces whose destination leaves the room while they are being produced."""

    def __init__(self, peer, room):
        _Pieces.__init__(self, 3, "x" * 100)
        self.peer = peer
        self.room = room

    async def __anext__(self):
        if self.n == 1:
            await self.peer.close()
            await settle(lambda: self.peer.identity not in self.room.remote_participants)
        return await _Pieces.__anext__(self)


async def test_v1_destination_leaving_while_the_request_is_gathered_is_1503():
    mem, a, peer = await room_and_peer()   # "old": client_protocol 0, so the request is gathered
    await raises_rpc(1503, a.local_participant.perform_rpc(
        destination_identity="old", method="m", payload=_LeavesMidway(peer, a)))
    assert not a._calls and len(a._rpc_client) == 0
    await close(a)


async def test_buffered_payload_over_max_rpc_payload_is_1402_to_the_caller_and_1504_for_a_response():
    mem = MemRoom()
    a = await join(mem, "a", max_rpc_payload=1000)
    b = await join(mem, "b", max_rpc_payload=1000)
    await settle(lambda: "b" in a.remote_participants and "a" in b.remote_participants)
    b.local_participant.register_rpc_method("echo", lambda d: d.payload)
    b.local_participant.register_rpc_method("big", lambda d: "z" * 2000)
    try:
        await a.local_participant.perform_rpc(destination_identity="b", method="echo", payload="x" * 2000)
    except RpcError as e:
        # the handler's own cap: the request was too large for a buffered handler there
        assert e.code == RpcError.REQUEST_PAYLOAD_TOO_LARGE, (e.code, e.message, e.data)
    else:
        raise AssertionError("a 2000-character request to a 1000-character buffered handler must fail")
    try:
        await a.local_participant.perform_rpc(destination_identity="b", method="big")
    except RpcError as e:
        assert e.code == RpcError.RESPONSE_PAYLOAD_TOO_LARGE and "max_rpc_payload" in e.data, (e.code, e.data)
    else:
        raise AssertionError("a 2000-character response to a 1000-character buffered caller must fail")
    assert await a.local_participant.perform_rpc(destination_identity="b", method="echo", payload="ok") == "ok"
    # the cap counts UTF-8 bytes, what the payload takes in memory: 600 e-acutes are
    # 1200 bytes (counted in characters, a board's 16384 let 64 KiB of emoji through)
    try:
        await a.local_participant.perform_rpc(destination_identity="b", method="echo", payload="\u00e9" * 600)
    except RpcError as e:
        assert e.code == RpcError.REQUEST_PAYLOAD_TOO_LARGE and "1000-byte" in e.data, (e.code, e.data)
    else:
        raise AssertionError("1200 bytes of UTF-8 to a 1000-byte buffered handler must fail")
    assert await a.local_participant.perform_rpc(destination_identity="b", method="echo",
                                                 payload="\u00e9" * 500) == "\u00e9" * 500
    await close(a, b)


async def test_a_second_response_stream_for_a_call_is_dropped_and_the_link_goes_on():
    mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=2)
    reader = await a.local_participant.perform_rpc_stream(destination_identity="p", method="m", payload="q")
    hdr = (await peer.wait_for(lambda p: "stream_header" in p))["stream_header"]
    rid = hdr["attributes"]["lk.rpc_request_id"]

    def response_header(sid):
        return {"destination_identities": ["a"], "stream_header": {
            "stream_id": sid, "topic": "lk.rpc_response", "mime_type": "text/plain",
            "attributes": {"lk.rpc_request_id": rid}, "text_header": {}}}
    await peer.send(response_header("first"))
    await peer.send(response_header("second"))   # nobody reads it: its content must not hold the link
    await peer.send({"destination_identities": ["a"], "stream_chunk": {"stream_id": "second", "content": b"x" * 3000}})
    await peer.send({"destination_identities": ["a"], "stream_chunk": {"stream_id": "first", "content": b"answer"}})
    await peer.send({"destination_identities": ["a"], "stream_trailer": {"stream_id": "first"}})
    assert await asyncio.wait_for(reader.read_all(), 5) == "answer"
    await close(a, peer)


async def test_requests_over_max_rpc_handlers_are_acked_and_refused_not_queued():
    mem, a, peer = await room_and_peer(peer_identity="old", client_protocol=0, max_rpc_handlers=2)
    gate = asyncio.Event()

    async def slow(data):
        await gate.wait()
        return "done " + data.payload
    a.local_participant.register_rpc_method("slow", slow)
    for i in range(3):
        await peer.send({"destination_identities": ["a"], "rpc_request": {
            "id": "r%d" % i, "method": "slow", "payload": str(i), "response_timeout_ms": 8000, "version": 1}})
    refused = await peer.wait_for(lambda p: "rpc_response" in p)
    assert refused["rpc_response"]["request_id"] == "r2", refused
    err = refused["rpc_response"]["error"]
    assert err["code"] == 1500 and err["message"] == "Too many concurrent RPC requests", err
    acks = [p["rpc_ack"]["request_id"] for p in peer.packets if "rpc_ack" in p]
    assert acks == ["r0", "r1", "r2"], acks
    gate.set()
    await peer.wait_for(lambda p: "rpc_response" in p and p["rpc_response"]["request_id"] == "r1")
    answers = dict((p["rpc_response"]["request_id"], p["rpc_response"].get("payload"))
                   for p in peer.packets if "rpc_response" in p)
    assert answers["r0"] == "done 0" and answers["r1"] == "done 1", answers
    await peer.send({"destination_identities": ["a"], "rpc_request": {
        "id": "r3", "method": "slow", "payload": "3", "response_timeout_ms": 8000, "version": 1}})
    r3 = await peer.wait_for(lambda p: "rpc_response" in p and p["rpc_response"]["request_id"] == "r3")
    assert r3["rpc_response"]["payload"] == "done 3"   # the slots came back
    await close(a, peer)


async def test_a_request_stream_refused_for_want_of_stream_slots_is_answered_with_an_error():
    mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=2, max_streams=1)
    a.register_byte_stream_handler("hog", lambda reader, sender: None)
    a.local_participant.register_rpc_method("m", lambda d: "never")
    await peer.send({"destination_identities": ["a"], "stream_header": {
        "stream_id": "hog-1", "topic": "hog", "byte_header": {"name": "n"}}})   # left open
    await peer.send({"destination_identities": ["a"], "stream_header": {
        "stream_id": "req-1", "topic": "lk.rpc_request", "mime_type": "text/plain", "text_header": {},
        "attributes": {"lk.rpc_request_id": "r-1", "lk.rpc_request_method": "m",
                       "lk.rpc_request_response_timeout_ms": "8000", "lk.rpc_request_version": "2"}}})
    r = await peer.wait_for(lambda p: "rpc_response" in p)
    assert r["rpc_response"]["request_id"] == "r-1"
    err = r["rpc_response"]["error"]
    assert err["code"] == 1500 and err["message"] == "Application error in method handler", err
    assert err["data"].startswith("RPC request stream refused: ") and "too many open streams (limit 1)" in err["data"], err
    await close(a, peer)


async def test_a_payload_field_that_occurs_twice_is_read_last_wins():
    # WIRE.md / protobuf: of a singular field that occurs twice, the last one counts.
    from lkedge import link, proto
    mem, a, peer = await room_and_peer()
    a.local_participant.register_rpc_method("echo", lambda d: d.payload)
    first = proto.encode(proto.RPC_REQUEST, {"id": "r-twice", "method": "echo", "payload": "AAA",
                                             "response_timeout_ms": 8000, "version": 1})
    again = proto.encode(proto.RPC_REQUEST, {"payload": "BBBB"})
    inner = first + again
    body = (proto.encode(proto.DATA_PACKET, {"destination_identities": ["a"]})
            + bytes([0x52, len(inner)]) + inner)   # field 10 (rpc_request), length-delimited
    await peer.t.write(link.encode_frame(link.DATA, body))
    r = await peer.wait_for(lambda p: "rpc_response" in p)
    assert r["rpc_response"]["payload"] == "BBBB", r
    await close(a, peer)


async def test_a_data_frame_over_our_max_frame_but_within_the_relays_is_taken():
    # LINK.md: the relay takes frames up to the max_frame JOINED announces (64 KiB
    # here) and stamps them; a board's own 16 KiB limit is for what it holds whole.
    mem = MemRoom()
    a = await join(mem, "a", max_frame=16384)
    a.local_participant.register_rpc_method("echo", lambda d: d.payload)
    peer = await raw(mem, "old", client_protocol=0)
    await settle(lambda: "old" in a.remote_participants)
    await peer.send({"destination_identities": ["a"], "user": {"payload": b"u" * 40000}})
    r = await request_v1(peer, "a", "after-big", "echo", "still here")
    assert r["rpc_response"]["payload"] == "still here"
    assert a.connection_state == "connected"
    await close(a, peer)


async def test_a_link_lost_as_the_heap_runs_out_still_leaves_the_connected_state():
    mem, a, peer = await room_and_peer()
    real = a._spawn
    failed = []

    def spawn(coro):
        if not failed:   # the first spawn after this is the one handling the lost link
            failed.append(1)
            coro.close()
            raise MemoryError("simulated: the heap ran out")
        return real(coro)
    a._spawn = spawn
    await mem.kick("a")
    await settle(lambda: a.connection_state == "disconnected")
    assert failed and "LEAVE" in a.last_error, a.last_error
    await close(a, peer)


async def test_a_handler_slot_comes_back_when_the_ack_cannot_be_sent():
    mem, a, peer = await room_and_peer(max_rpc_handlers=1)
    a.local_participant.register_rpc_method("echo", lambda d: d.payload)
    real = a._send_all
    broken = []

    async def send_all(packets):
        if not broken:   # the first ack write fails, as on a link going down
            broken.append(1)
            raise OSError("write failed")
        return await real(packets)
    a._send_all = send_all
    await peer.send({"destination_identities": ["a"], "rpc_request": {
        "id": "lost", "method": "echo", "payload": "x", "response_timeout_ms": 8000, "version": 1}})
    await settle(lambda: broken)
    await asyncio.sleep(0.05)
    assert not a._invoking, a._invoking
    await close(a, peer)


async def test_a_response_stream_we_cannot_take_fails_the_call_at_once():
    mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=2, max_streams=1)
    a.register_byte_stream_handler("hog", lambda reader, sender: asyncio.sleep(30))
    await peer.send({"destination_identities": ["a"], "stream_header": {
        "stream_id": "hog-1", "topic": "hog", "byte_header": {"name": "n"}}})   # takes the one slot
    task = asyncio.create_task(a.local_participant.perform_rpc(
        destination_identity="p", method="m", payload="q", response_timeout=20))
    hdr = (await peer.wait_for(lambda p: "stream_header" in p))["stream_header"]
    rid = hdr["attributes"]["lk.rpc_request_id"]
    await peer.send({"destination_identities": ["a"], "stream_header": {
        "stream_id": "resp-1", "topic": "lk.rpc_response", "mime_type": "text/plain", "text_header": {},
        "attributes": {"lk.rpc_request_id": rid}}})
    try:
        await asyncio.wait_for(task, 5)
    except RpcError as e:
        assert e.code == 1500 and e.message == "Response stream refused", (e.code, e.message)
        assert "too many open streams" in e.data, e.data
    else:
        raise AssertionError("the call must fail")
    await close(a, peer)


async def test_a_field_too_big_to_hold_whole_drops_only_its_packet():
    # The relay forwards frames up to its own max_frame; what a board holds whole
    # (a v1 payload, inline content) stays within the board's own max_frame.
    mem, a, peer = await room_and_peer(max_frame=16384)
    a.local_participant.register_rpc_method("echo", lambda d: d.payload)
    await peer.send({"destination_identities": ["a"], "rpc_request": {
        "id": "huge", "method": "echo", "payload": "h" * 30000, "response_timeout_ms": 8000, "version": 1}})
    r = await request_v1(peer, "a", "after", "echo", "fine")
    assert r["rpc_response"]["payload"] == "fine"
    # dropped, but answered (ack, then 1500 naming why), not left to time out
    huge = [p["rpc_response"] for p in peer.packets if "rpc_response" in p and p["rpc_response"]["request_id"] == "huge"]
    assert len(huge) == 1 and huge[0]["error"]["code"] == 1500 and "max_frame" in huge[0]["error"]["data"], huge
    await close(a, peer)


# ====================================================================================
# One test per RPC.md rule that the tests above leave open or check only on one side,
# version combination or transport. RawPeer plays the other side byte by byte; _tap
# captures what each participant writes to the relay.

def _tap(mem):
    """Every DataPacket written to `mem`, as (sender identity, decoded dict)."""
    from lkedge import relayside
    seen = []
    real = mem._data

    async def data(conn, body):
        seen.append((conn.identity, relayside.decode_packet(body)))
        await real(conn, body)
    mem._data = data
    return seen


def _kinds_of(packets):
    out = []
    for p in packets:
        for k in ("rpc_request", "rpc_ack", "rpc_response", "stream_header", "stream_chunk", "stream_trailer"):
            if k in p:
                out.append(k)
    return out


def _rpc_attrs(rid, method, timeout="8000", version="2"):
    return {"lk.rpc_request_id": rid, "lk.rpc_request_method": method,
            "lk.rpc_request_response_timeout_ms": timeout, "lk.rpc_request_version": version}


async def _v2_request(peer, to, rid, method, payload="", sid=None, attrs=None, trailer=True):
    """A v2 request as a v1-style text stream (header, one chunk, trailer) from a RawPeer."""
    sid = sid or "req-" + rid
    await peer.send({"destination_identities": [to], "stream_header": {
        "stream_id": sid, "timestamp": 1, "topic": "lk.rpc_request", "mime_type": "text/plain",
        "text_header": {"operation_type": 0},
        "attributes": attrs if attrs is not None else _rpc_attrs(rid, method)}})
    if payload:
        await peer.send({"destination_identities": [to], "stream_chunk": {
            "stream_id": sid, "chunk_index": 0, "content": payload.encode("utf-8")}})
    if trailer:
        await peer.send({"destination_identities": [to], "stream_trailer": {"stream_id": sid}})


async def _v2_response(peer, to, rid, payload, sid=None):
    """A success response as a lk.rpc_response text stream (header, chunk, trailer)."""
    sid = sid or "resp-" + rid
    await peer.send({"destination_identities": [to], "stream_header": {
        "stream_id": sid, "timestamp": 1, "topic": "lk.rpc_response", "mime_type": "text/plain",
        "text_header": {"operation_type": 0}, "attributes": {"lk.rpc_request_id": rid}}})
    await peer.send({"destination_identities": [to], "stream_chunk": {
        "stream_id": sid, "chunk_index": 0, "content": payload.encode("utf-8")}})
    await peer.send({"destination_identities": [to], "stream_trailer": {"stream_id": sid}})


def _stream_text(packets, sid):
    """The text of stream `sid` among captured packets (inline, or its chunks)."""
    parts = []
    for p in packets:
        h = p.get("stream_header")
        if h is not None and h["stream_id"] == sid and "inline_content" in h:
            return bytes(h["inline_content"]).decode("utf-8")
        c = p.get("stream_chunk")
        if c is not None and c["stream_id"] == sid:
            parts.append(bytes(c.get("content", b"")))
    return b"".join(parts).decode("utf-8")


def _request_id_of(pkt):
    if "rpc_request" in pkt:
        return pkt["rpc_request"]["id"]
    return pkt["stream_header"]["attributes"]["lk.rpc_request_id"]


def _is_rpc_request(p):
    return "rpc_request" in p or ("stream_header" in p and p["stream_header"]["topic"] == "lk.rpc_request")


def _is_response_to(rid):
    return lambda p: "rpc_response" in p and p["rpc_response"]["request_id"] == rid


def _response_stream_header(rid):
    return lambda p: ("stream_header" in p and p["stream_header"]["topic"] == "lk.rpc_response"
                      and p["stream_header"]["attributes"].get("lk.rpc_request_id") == rid)


class _FakeClock:
    """Moves the adapter's clock (Room timers, calls) forward without waiting."""

    def __init__(self):
        from lkedge import calls, room
        self.mods = (room, calls)
        self.real = room.now_ms
        self.skew = 0

    def __enter__(self):
        for m in self.mods:
            m.now_ms = self.now
        return self

    def __exit__(self, *exc):
        for m in self.mods:
            m.now_ms = self.real

    def now(self):
        return self.real() + self.skew


# ------------------------------------------------------------------ v1 / v2 steps
async def test_handler_acks_before_running_the_method_v1_and_before_reading_the_payload_v2():
    mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=2)
    gate = asyncio.Event()
    seen = []

    async def slow(d):
        seen.append(d.payload)
        await gate.wait()
        return "done " + d.payload
    a.local_participant.register_rpc_method("slow", slow)
    await peer.send({"destination_identities": ["a"], "rpc_request": {
        "id": "v1", "method": "slow", "payload": "one", "response_timeout_ms": 8000, "version": 1}})
    await peer.wait_for(lambda p: "rpc_ack" in p and p["rpc_ack"]["request_id"] == "v1")
    # v2: the header alone is acked, before any payload byte has been sent
    await _v2_request(peer, "a", "v2", "slow", trailer=False)
    await peer.wait_for(lambda p: "rpc_ack" in p and p["rpc_ack"]["request_id"] == "v2")
    assert not [p for p in peer.packets if "rpc_response" in p or "stream_header" in p], peer.packets
    await peer.send({"destination_identities": ["a"], "stream_chunk": {
        "stream_id": "req-v2", "chunk_index": 0, "content": b"two"}})
    await peer.send({"destination_identities": ["a"], "stream_trailer": {"stream_id": "req-v2"}})
    await settle(lambda: len(seen) == 2)
    assert not [p for p in peer.packets if "rpc_response" in p or "stream_header" in p]
    gate.set()
    r1 = await peer.wait_for(_is_response_to("v1"))
    assert r1["rpc_response"]["payload"] == "done one"
    h2 = await peer.wait_for(_response_stream_header("v2"))
    await peer.wait_for(lambda p: "stream_trailer" in p or "inline_content" in h2["stream_header"])
    assert _stream_text(peer.packets, h2["stream_header"]["stream_id"]) == "done two"
    await close(a, peer)


async def test_v1_request_packet_on_the_wire_to_a_v1_destination():
    mem, a, peer = await room_and_peer()
    task = asyncio.create_task(a.local_participant.perform_rpc(
        destination_identity="old", method="m", payload="héllo", response_timeout=20))
    req = await peer.wait_for(lambda p: "rpc_request" in p)
    r = req["rpc_request"]
    assert req["destination_identities"] == ["old"]
    assert (r["method"], r["payload"], r["response_timeout_ms"], r["version"]) == ("m", "héllo", 20000, 1)
    rid = r["id"]
    assert len(rid) == 36 and rid.count("-") == 4 and rid[14] == "4", "a new (version 4) UUID: %r" % rid
    await peer.send({"destination_identities": ["a"], "rpc_ack": {"request_id": rid}})
    await peer.send({"destination_identities": ["a"], "rpc_response": {"request_id": rid, "payload": "ok"}})
    assert await task == "ok"
    await close(a, peer)


async def test_v2_request_stream_on_the_wire_follows_what_the_destination_advertises_in_a_mixed_room():
    from lkedge import finite
    mem = MemRoom()
    a = await join(mem, "a")
    peers = {}
    for ident, proto_v, caps in (("old", 0, ()), ("p1", 1, ()), ("p2", 2, ()), ("p2c", 2, (2,))):
        peers[ident] = await raw(mem, ident, proto_v, caps)
    await settle(lambda: len(a.remote_participants) == 4)
    payload = "ü" * 300    # 600 bytes: inline-sized and compressible
    lp = a.local_participant
    for ident, peer in peers.items():
        task = asyncio.create_task(lp.perform_rpc(destination_identity=ident, method="echo",
                                                  payload=payload, response_timeout=20))
        first = await peer.wait_for(_is_rpc_request)
        rid = _request_id_of(first)
        assert first["destination_identities"] == [ident], first
        if ident == "old":
            assert first["rpc_request"]["version"] == 1 and first["rpc_request"]["payload"] == payload
        else:
            h = first["stream_header"]
            assert h["attributes"] == {"lk.rpc_request_id": rid, "lk.rpc_request_method": "echo",
                                       "lk.rpc_request_response_timeout_ms": "20000",
                                       "lk.rpc_request_version": "2"}, h["attributes"]
            assert h["mime_type"] == "text/plain" and "text_header" in h and "byte_header" not in h
            assert h["total_length"] == 600
            if ident == "p1":   # client_protocol 1: no inline, no compression
                assert "inline_content" not in h and not h.get("compression")
                await peer.wait_for(lambda p: "stream_trailer" in p)
                assert _stream_text(peer.packets, h["stream_id"]) == payload
            elif ident == "p2":  # protocol 2 without the capability: inline, never compressed
                assert not h.get("compression") and bytes(h["inline_content"]) == payload.encode("utf-8")
            else:                # the one room member that can inflate
                assert "inline_content" in h
                assert h.get("compression", 0) == (1 if finite.can_compress() else 0), h
        # a success response by packet completes every one of them
        await peer.send({"destination_identities": ["a"], "rpc_response": {"request_id": rid, "payload": ident}})
        assert await task == ident
    await close(a, *peers.values())


async def test_v2_success_response_is_a_text_stream_to_the_caller_with_only_the_request_id():
    mem = MemRoom()
    a = await join(mem, "a")
    a.local_participant.register_rpc_method("echo", lambda d: d.payload)
    p1 = await raw(mem, "p1", 1)
    p2 = await raw(mem, "p2", 2)
    old = await raw(mem, "old", 0)    # a v1 member in the room changes nothing
    await settle(lambda: len(a.remote_participants) == 3)
    big = "€" * 6000                  # 18000 bytes: over the v1 cap and a chunk
    for peer, payload in ((p2, "héllo"), (p1, "héllo"), (p2, big)):
        rid = "q-%s-%d" % (peer.identity, len(payload))
        await _v2_request(peer, "a", rid, "echo", payload)
        hp = await peer.wait_for(_response_stream_header(rid))
        h = hp["stream_header"]
        assert hp["destination_identities"] == [peer.identity]
        assert h["attributes"] == {"lk.rpc_request_id": rid}, h["attributes"]
        assert h["mime_type"] == "text/plain" and "text_header" in h
        inline = "inline_content" in h
        assert inline == (peer is p2 and len(payload) < 100), h   # inline only to protocol 2
        if not inline:
            await peer.wait_for(lambda p: "stream_trailer" in p and p["stream_trailer"]["stream_id"] == h["stream_id"])
        assert _stream_text(peer.packets, h["stream_id"]) == payload
        assert not [p for p in peer.packets if _is_response_to(rid)(p)], "no packet besides the stream"
    assert not [p for p in old.packets if "stream_header" in p or "rpc_response" in p]
    await close(a, p1, p2, old)


async def test_errors_always_go_back_as_packets_even_to_a_v2_caller():
    mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=2, capabilities=[2])

    def fail(d):
        raise RpcError(4242, "custom failure", "some data")

    def boom(d):
        raise ValueError("kaputt")
    a.local_participant.register_rpc_method("fail", fail)
    a.local_participant.register_rpc_method("boom", boom)
    a.local_participant.register_rpc_method("big", lambda d: "z" * 20000)
    cases = (("e1", "fail", _rpc_attrs("e1", "fail"), (4242, "custom failure", "some data")),
             ("e2", "boom", _rpc_attrs("e2", "boom"), (1500, "Application error in method handler", None)),
             ("e3", "nope", _rpc_attrs("e3", "nope"), (1400, "Method not supported at destination", None)),
             ("e4", "fail", _rpc_attrs("e4", "fail", version="1"), (1404, "Unsupported RPC version", None)))
    for rid, method, attrs, (code, message, data) in cases:
        await _v2_request(peer, "a", rid, method, "x", attrs=attrs)
        r = await peer.wait_for(_is_response_to(rid))
        err = r["rpc_response"]["error"]
        assert (err["code"], err["message"]) == (code, message), err
        if data is not None:
            assert err["data"] == data, err
        assert r["destination_identities"] == ["p"]
        mine = [p for p in peer.packets if _is_response_to(rid)(p) or
                ("rpc_ack" in p and p["rpc_ack"]["request_id"] == rid)]
        assert _kinds_of(mine) == ["rpc_ack", "rpc_response"], (rid, _kinds_of(mine))
    await _v2_request(peer, "a", "ok", "big", "x")   # a success still goes by stream, uncapped
    await peer.wait_for(_response_stream_header("ok"))
    assert [p["stream_header"]["attributes"]["lk.rpc_request_id"] for p in peer.packets
            if "stream_header" in p] == ["ok"], "no error went by stream"
    await close(a, peer)


async def test_v2_malformed_request_stream_is_answered_1500_without_ack_and_unanswerable_ones_not_at_all():
    mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=2)
    a.local_participant.register_rpc_method("m", lambda d: "never")
    for rid, attrs in (("bad1", {"lk.rpc_request_id": "bad1", "lk.rpc_request_response_timeout_ms": "8000",
                                 "lk.rpc_request_version": "2"}),
                       ("bad2", _rpc_attrs("bad2", "m", timeout="soon")),
                       ("bad3", _rpc_attrs("bad3", "m", version="two"))):
        await _v2_request(peer, "a", rid, "m", "x", attrs=attrs)
        r = await peer.wait_for(_is_response_to(rid))
        err = r["rpc_response"]["error"]
        assert err["code"] == 1500 and err["message"] == "Application error in method handler", err
        assert err["data"].startswith("RPC data stream malformed: "), err
        assert not [p for p in peer.packets if "rpc_ack" in p], "nothing is acked before it validates"
    await _v2_request(peer, "a", "", "m", "x", attrs={"lk.rpc_request_method": "m"})   # no id
    r = await request_v1(peer, "a", "after", "m")
    assert r["rpc_response"]["payload"] == "never"
    assert [p["rpc_response"]["request_id"] for p in peer.packets if "rpc_response" in p] == \
        ["bad1", "bad2", "bad3", "after"]
    await close(a, peer)


# ----------------------------------------------------------- transport table
async def test_v1_caller_to_v2_handler_uses_packets_both_ways():
    mem = MemRoom()
    seen = _tap(mem)
    a = await join(mem, "a", client_protocol=0)
    b = await join(mem, "b")
    await settle(lambda: "b" in a.remote_participants and "a" in b.remote_participants)
    b.local_participant.register_rpc_method("echo", lambda d: d.payload)

    def fail(d):
        raise RpcError(4242, "custom failure", "some data")
    b.local_participant.register_rpc_method("fail", fail)
    big = "é" * 7680   # exactly 15360 UTF-8 bytes
    assert await a.local_participant.perform_rpc(destination_identity="b", method="echo", payload=big) == big
    e = await raises_rpc(4242, a.local_participant.perform_rpc(destination_identity="b", method="fail"))
    assert (e.message, e.data) == ("custom failure", "some data")
    by_a = _kinds_of([p for i, p in seen if i == "a"])
    by_b = _kinds_of([p for i, p in seen if i == "b"])
    assert by_a == ["rpc_request", "rpc_request"], by_a
    assert by_b == ["rpc_ack", "rpc_response", "rpc_ack", "rpc_response"], by_b
    await close(a, b)


async def test_v2_caller_to_v1_handler_error_response_is_a_packet_with_code_message_data():
    mem, a, peer = await room_and_peer()
    task = asyncio.create_task(a.local_participant.perform_rpc(destination_identity="old", method="m"))
    rid = (await peer.wait_for(lambda p: "rpc_request" in p))["rpc_request"]["id"]
    await peer.send({"destination_identities": ["a"], "rpc_ack": {"request_id": rid}})
    await peer.send({"destination_identities": ["a"], "rpc_response": {"request_id": rid, "error": {
        "code": 1404, "message": "Unsupported RPC version", "data": "d"}}})
    e = await raises_rpc(1404, task)
    assert (e.message, e.data) == ("Unsupported RPC version", "d")
    assert not [p for p in peer.packets if "stream_header" in p]
    await close(a, peer)


async def test_caller_accepts_a_success_by_either_transport():
    mem = MemRoom()
    a = await join(mem, "a")
    p = await raw(mem, "p", 2)
    old = await raw(mem, "old", 0)
    await settle(lambda: len(a.remote_participants) == 2)
    lp = a.local_participant
    # a v2 request (stream) answered by an rpc_response packet
    task = asyncio.create_task(lp.perform_rpc(destination_identity="p", method="m", payload="x"))
    rid = _request_id_of(await p.wait_for(_is_rpc_request))
    await p.send({"destination_identities": ["a"], "rpc_ack": {"request_id": rid}})
    await p.send({"destination_identities": ["a"], "rpc_response": {"request_id": rid, "payload": "by packet"}})
    assert await task == "by packet"
    # a v1 request (packet) answered by a lk.rpc_response stream, buffered and streaming
    for streaming in (False, True):
        if streaming:
            call = lp.perform_rpc_stream(destination_identity="old", method="m", payload="x")
        else:
            call = lp.perform_rpc(destination_identity="old", method="m", payload="x")
        task = asyncio.create_task(call)
        req = await old.wait_for(lambda q: "rpc_request" in q and q["rpc_request"]["id"] != rid)
        rid = req["rpc_request"]["id"]
        await old.send({"destination_identities": ["a"], "rpc_ack": {"request_id": rid}})
        await _v2_response(old, "a", rid, "by stream ✓")
        got = await task
        if streaming:
            got = await got.read_all()
        assert got == "by stream ✓", got
    assert not a._calls and len(a._rpc_client) == 0
    await close(a, p, old)


# ------------------------------------------------------------------- caller rules
async def test_v1_request_cap_counts_utf8_bytes_and_applies_only_on_v1_paths():
    mem = MemRoom()
    a = await join(mem, "a")
    v1_self = await join(mem, "v1self", client_protocol=0)   # a participant that speaks v1 only
    b = await join(mem, "b")
    old = await raw(mem, "old", 0)
    await settle(lambda: len(a.remote_participants) == 3 and len(v1_self.remote_participants) == 3)
    b.local_participant.register_rpc_method("len", lambda d: str(len(d.payload.encode("utf-8"))))
    over = "é" * 7681        # 7681 characters, 15362 bytes
    await raises_rpc(1402, a.local_participant.perform_rpc(destination_identity="old", method="len", payload=over))
    await raises_rpc(1402, v1_self.local_participant.perform_rpc(destination_identity="b", method="len", payload=over))
    assert await v1_self.local_participant.perform_rpc(
        destination_identity="b", method="len", payload="é" * 7680) == "15360"
    assert await a.local_participant.perform_rpc(destination_identity="b", method="len", payload=over) == "15362"
    await asyncio.sleep(0.02)
    assert not [p for p in old.packets if "rpc_request" in p], "nothing sent for a 1402"
    await close(a, v1_self, b, old)


async def test_ack_and_response_arriving_while_the_request_is_still_being_sent_are_not_lost():
    for proto_v, payload in ((0, "x"), (1, "x" * 20000), (2, "y" * 40000)):
        mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=proto_v)
        real = a._send
        answered = []

        async def send(pkt, peer=peer, real=real, answered=answered, a=a):
            await real(pkt)
            if not answered and _is_rpc_request(pkt):
                # the first packet of the request is out, the rest is not: answer now
                answered.append(1)
                rid = _request_id_of(await peer.wait_for(_is_rpc_request))
                await peer.send({"destination_identities": ["a"], "rpc_ack": {"request_id": rid}})
                await peer.send({"destination_identities": ["a"], "rpc_response": {"request_id": rid, "payload": "early"}})
                await settle(lambda: rid not in a._calls)   # handled before the send returned
        a._send = send
        got = await asyncio.wait_for(a.local_participant.perform_rpc(
            destination_identity="p", method="m", payload=payload), 5)
        assert answered and got == "early", (proto_v, got)
        assert not a._calls and len(a._rpc_client) == 0 and a._rpc_client.next_deadline() is None
        await close(a, peer)


async def test_no_ack_within_7000ms_rejects_connection_timeout_and_drops_the_pending_state():
    with _FakeClock() as clock:
        for proto_v in (0, 2):
            mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=proto_v)
            task = asyncio.create_task(a.local_participant.perform_rpc(
                destination_identity="p", method="m", payload="x", response_timeout=60))
            rid = _request_id_of(await peer.wait_for(_is_rpc_request))
            clock.skew += 6900
            a._wake_timer()
            await asyncio.sleep(0.05)
            assert not task.done(), "no timeout before 7000 ms"
            clock.skew += 200
            a._wake_timer()
            await raises_rpc(RpcError.CONNECTION_TIMEOUT, asyncio.wait_for(task, 5))
            assert not a._calls and len(a._rpc_client) == 0 and a._rpc_client.next_deadline() is None
            # the late ack and response are ignored, never raise
            await peer.send({"destination_identities": ["a"], "rpc_ack": {"request_id": rid}})
            await peer.send({"destination_identities": ["a"], "rpc_response": {"request_id": rid, "payload": "late"}})
            await asyncio.sleep(0.05)
            assert a.connection_state == "connected"
            await close(a, peer)


async def test_response_timer_is_the_requested_timeout_default_15s_after_the_ack():
    with _FakeClock() as clock:
        mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=2)
        lp = a.local_participant
        done = []
        for timeout, ms in ((None, 15000), (20, 20000)):
            task = asyncio.create_task(lp.perform_rpc(destination_identity="p", method="m", payload="x",
                                                      response_timeout=timeout))
            req = await peer.wait_for(lambda p: _is_rpc_request(p) and _request_id_of(p) not in done)
            rid = _request_id_of(req)
            done.append(rid)
            assert req["stream_header"]["attributes"]["lk.rpc_request_response_timeout_ms"] == str(ms)
            await peer.send({"destination_identities": ["a"], "rpc_ack": {"request_id": rid}})
            await settle(lambda: a._rpc_client.get(rid).acked)
            clock.skew += ms - 200
            a._wake_timer()
            await asyncio.sleep(0.05)
            assert not task.done(), "acked: no timeout before %d ms" % ms
            clock.skew += 300
            a._wake_timer()
            await raises_rpc(RpcError.RESPONSE_TIMEOUT, asyncio.wait_for(task, 5))
            assert not a._calls and len(a._rpc_client) == 0
        await close(a, peer)


async def test_a_streaming_call_whose_request_outlasts_the_response_timeout_does_not_time_out_while_sending():
    """The response timer starts once the request is out (client-sdk-js does the same):
    a slow request stream longer than response_timeout is not a 1502."""
    with _FakeClock() as clock:
        mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=2)
        go = asyncio.Event()

        class Slow:
            def __init__(self):
                self.n = 0

            def __aiter__(self):
                return self

            async def __anext__(self):
                self.n += 1
                if self.n == 2:
                    await go.wait()
                if self.n > 3:
                    raise StopAsyncIteration
                return "piece%d" % self.n

        task = asyncio.create_task(a.local_participant.perform_rpc(
            destination_identity="p", method="m", payload=Slow(), response_timeout=1))
        rid = _request_id_of(await peer.wait_for(_is_rpc_request))
        await peer.send({"destination_identities": ["a"], "rpc_ack": {"request_id": rid}})
        await settle(lambda: a._rpc_client.get(rid).acked)
        clock.skew += 60000        # a minute into the send: still sending
        a._wake_timer()
        await asyncio.sleep(0.05)
        assert not task.done(), "timed out while the request was still being sent"
        go.set()
        await peer.wait_for(lambda p: "stream_trailer" in p)
        await settle(lambda: not a._rpc_client.get(rid).sending)
        clock.skew += 800
        a._wake_timer()
        await asyncio.sleep(0.05)
        assert not task.done(), "the response timer starts when the request is out"
        clock.skew += 300
        a._wake_timer()
        await raises_rpc(RpcError.RESPONSE_TIMEOUT, asyncio.wait_for(task, 5))
        await close(a, peer)


async def test_v2_destination_leaving_fails_pending_call_with_1503_also_while_its_response_streams():
    for during_response in (False, True):
        mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=2)
        task = asyncio.create_task(a.local_participant.perform_rpc(destination_identity="p", method="m", payload="x"))
        rid = _request_id_of(await peer.wait_for(_is_rpc_request))
        await peer.send({"destination_identities": ["a"], "rpc_ack": {"request_id": rid}})
        if during_response:
            await peer.send({"destination_identities": ["a"], "stream_header": {
                "stream_id": "resp", "topic": "lk.rpc_response", "mime_type": "text/plain",
                "text_header": {}, "attributes": {"lk.rpc_request_id": rid}}})
            await peer.send({"destination_identities": ["a"], "stream_chunk": {
                "stream_id": "resp", "chunk_index": 0, "content": b"part"}})
            await settle(lambda: a._readers)
        await peer.close()
        await raises_rpc(RpcError.RECIPIENT_DISCONNECTED, asyncio.wait_for(task, 5))
        assert not a._calls and len(a._rpc_client) == 0 and not a._readers
        await close(a)


async def test_late_or_unknown_acks_responses_and_response_streams_are_ignored():
    mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=2)
    a.local_participant.register_rpc_method("echo", lambda d: d.payload)

    async def strays():
        await peer.send({"destination_identities": ["a"], "rpc_ack": {"request_id": "nope"}})
        await peer.send({"destination_identities": ["a"], "rpc_response": {"request_id": "nope", "payload": "x"}})
        await peer.send({"destination_identities": ["a"], "rpc_response": {"request_id": "nope", "error": {"code": 1}}})
        await _v2_response(peer, "a", "nope", "stray stream")
    await strays()          # before this participant ever called
    task = asyncio.create_task(a.local_participant.perform_rpc(destination_identity="p", method="m", payload="x"))
    rid = _request_id_of(await peer.wait_for(_is_rpc_request))
    await strays()          # while a call is pending
    await asyncio.sleep(0.05)
    assert not task.done()
    await peer.send({"destination_identities": ["a"], "rpc_response": {"request_id": rid, "payload": "first"}})
    assert await task == "first"
    await peer.send({"destination_identities": ["a"], "rpc_ack": {"request_id": rid}})   # late ack
    await peer.send({"destination_identities": ["a"], "rpc_response": {"request_id": rid, "payload": "second"}})
    await _v2_response(peer, "a", rid, "third")
    r = await request_v1(peer, "a", "still", "echo", "alive")   # the link and handler go on
    assert r["rpc_response"]["payload"] == "alive" and a.connection_state == "connected"
    assert not a._calls and len(a._rpc_client) == 0 and not a._readers
    await close(a, peer)


async def _call_answered_with(response_fields, timeout):
    """A v1 call to a raw peer, acked, then answered with an rpc_response whose fields
    after its request_id are the raw protobuf bytes response_fields (WIRE.md's cases
    the dict encoder would not write); -> what the call returns, or its RpcError code."""
    from lkedge import link, proto, relayside
    mem, a, peer = await room_and_peer(peer_identity="old", client_protocol=0)
    task = asyncio.create_task(a.local_participant.perform_rpc(
        destination_identity="old", method="m", payload="x", response_timeout=timeout))
    rid = (await peer.wait_for(lambda p: "rpc_request" in p))["rpc_request"]["id"]
    await peer.send({"destination_identities": ["a"], "rpc_ack": {"request_id": rid}})
    resp = relayside.encode(proto.RPC_RESPONSE, {"request_id": rid}) + response_fields
    body = relayside.encode(proto.DATA_PACKET, {"destination_identities": ["a"]}) + bytes([0x62, len(resp)]) + resp
    await peer.t.write(relayside.encode_frame(link.DATA, body))
    try:
        got = await asyncio.wait_for(task, 5)
    except RpcError as e:
        got = e.code
    await close(a, peer)
    return got


async def test_an_empty_payload_response_on_the_wire_is_a_success_with_the_empty_string():
    # WIRE.md: an RpcResponse whose oneof holds payload "" is a success with "". The
    # official serializer writes it as a present, empty field 2 (b"\x12\x00"): it
    # must complete the call, not look like a response without an answer.
    assert await _call_answered_with(b"\x12\x00", 2.0) == ""


async def test_a_response_whose_oneof_ends_on_compressed_payload_is_not_taken_as_its_payload():
    # payload "stale", then compressed_payload: the official parser holds the latter (to
    # be ignored), so the call stays pending; it completed with "stale"
    from lkedge import proto, relayside
    fields = (relayside.encode(proto.RPC_RESPONSE, {"payload": "stale"})
              + relayside.encode(proto.RPC_RESPONSE, {"compressed_payload": b"zz"}))
    assert await _call_answered_with(fields, 1.0) == RpcError.RESPONSE_TIMEOUT


async def test_a_response_stream_opened_after_the_calls_deadline_is_not_taken_as_its_answer():
    with _FakeClock() as clock:
        mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=2)
        task = asyncio.create_task(a.local_participant.perform_rpc(
            destination_identity="p", method="m", payload="x", response_timeout=10))
        rid = _request_id_of(await peer.wait_for(_is_rpc_request))
        await peer.send({"destination_identities": ["a"], "rpc_ack": {"request_id": rid}})
        await settle(lambda: a._rpc_client.get(rid).acked)
        clock.skew += 10500   # past the response deadline, the timer not yet run
        await _v2_response(peer, "a", rid, "too late")
        await asyncio.sleep(0.05)
        assert not task.done(), "the late stream completed the call"
        a._wake_timer()
        await raises_rpc(RpcError.RESPONSE_TIMEOUT, asyncio.wait_for(task, 5))
        await close(a, peer)


async def test_response_stream_from_other_identity_is_ignored_and_the_call_stays_pending():
    mem = MemRoom()
    a = await join(mem, "a")
    p = await raw(mem, "p", 2)
    evil = await raw(mem, "evil", 2)
    await settle(lambda: len(a.remote_participants) == 2)
    task = asyncio.create_task(a.local_participant.perform_rpc(destination_identity="p", method="m", payload="x"))
    rid = _request_id_of(await p.wait_for(_is_rpc_request))
    await _v2_response(evil, "a", rid, "forged")
    await evil.send({"destination_identities": ["a"], "rpc_ack": {"request_id": rid}})
    await asyncio.sleep(0.05)
    assert not task.done() and not a._readers, "a foreign response stream is not read"
    assert not a._rpc_client.get(rid).acked, "nor does a foreign ack count"
    await _v2_response(p, "a", rid, "real")
    assert await task == "real"
    await close(a, p, evil)


async def test_concurrent_v1_calls_to_the_same_destination_get_distinct_ids_and_do_not_cross():
    mem = MemRoom()
    a = await join(mem, "a", client_protocol=0)
    b = await join(mem, "b")
    await settle(lambda: "b" in a.remote_participants and "a" in b.remote_participants)
    ids = []

    async def slow_echo(d):
        ids.append(d.request_id)
        await asyncio.sleep(0.01 * (5 - int(d.payload[1:]) % 5))   # later calls answer first
        return d.payload
    b.local_participant.register_rpc_method("echo", slow_echo)
    payloads = ["p%d" % i for i in range(10)]
    results = await asyncio.gather(*[a.local_participant.perform_rpc(destination_identity="b", method="echo", payload=x)
                                     for x in payloads])
    assert list(results) == payloads and len(set(ids)) == 10
    await close(a, b)


async def test_cancelling_a_v2_call_clears_pending_state_also_while_its_request_is_sent():
    mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=1)
    lp = a.local_participant
    # cancelled while waiting for the answer
    task = asyncio.create_task(lp.perform_rpc(destination_identity="p", method="m", payload="x"))
    await peer.wait_for(lambda p: "stream_trailer" in p)
    await _cancelled(task)
    assert not a._calls and len(a._rpc_client) == 0 and a._rpc_client.next_deadline() is None
    # cancelled between the chunks of its request stream
    real = a._send
    gate = asyncio.Event()
    blocked = []

    async def send(pkt):
        if "stream_chunk" in pkt and not blocked:
            blocked.append(1)
            await gate.wait()
        await real(pkt)
    a._send = send
    task = asyncio.create_task(lp.perform_rpc(destination_identity="p", method="m", payload="z" * 40000))
    await settle(lambda: blocked)
    assert len(a._rpc_client) == 1
    await _cancelled(task)
    assert not a._calls and len(a._rpc_client) == 0 and a._rpc_client.next_deadline() is None
    a._send = real
    await close(a, peer)


# ------------------------------------------------------------------ handler rules
async def test_v1_handler_answers_the_remote_caller_unchanged_rpc_error_and_1500_with_text():
    mem, a, peer = await room_and_peer()

    def fail(d):
        raise RpcError(4242, "custom failure", "some data")

    def boom(d):
        raise ValueError("kaputt")
    a.local_participant.register_rpc_method("fail", fail)
    a.local_participant.register_rpc_method("boom", boom)
    err = (await request_v1(peer, "a", "f", "fail"))["rpc_response"]["error"]
    assert err == {"code": 4242, "message": "custom failure", "data": "some data"}, err
    err = (await request_v1(peer, "a", "b", "boom"))["rpc_response"]["error"]
    assert err["code"] == 1500 and err["message"] == "Application error in method handler"
    assert "kaputt" in err.get("data", ""), err
    assert _kinds_of(peer.packets) == ["rpc_ack", "rpc_response"] * 2
    await close(a, peer)


async def test_response_to_a_v1_caller_over_15360_utf8_bytes_is_1504_and_never_on_v2():
    mem = MemRoom()
    a = await join(mem, "a")
    a.local_participant.register_rpc_method("over", lambda d: "é" * 7681)   # 15362 bytes
    a.local_participant.register_rpc_method("edge", lambda d: "é" * 7680)   # 15360 bytes
    old = await raw(mem, "old", 0)
    p = await raw(mem, "p", 2)
    await settle(lambda: len(a.remote_participants) == 2)
    r = await request_v1(old, "a", "r-over", "over")
    assert r["rpc_response"]["error"]["code"] == RpcError.RESPONSE_PAYLOAD_TOO_LARGE
    assert "payload" not in r["rpc_response"]
    r = await request_v1(old, "a", "r-edge", "edge")
    assert r["rpc_response"]["payload"] == "é" * 7680
    await _v2_request(p, "a", "s-over", "over", "x")
    h = (await p.wait_for(_response_stream_header("s-over")))["stream_header"]
    await p.wait_for(lambda q: "stream_trailer" in q and q["stream_trailer"]["stream_id"] == h["stream_id"])
    assert _stream_text(p.packets, h["stream_id"]) == "é" * 7681
    assert not [q for q in p.packets if "rpc_response" in q]
    await close(a, old, p)


async def test_a_request_arriving_with_the_join_is_answered_by_a_method_registered_before_connecting():
    from lkedge import link, proto
    from lkedge.config import RoomOptions
    from lkedge.room import Room
    mem = MemRoom()
    peer = await raw(mem, "old", client_protocol=0)
    b = Room(RoomOptions(auto_reconnect=False))
    b.local_participant.register_rpc_method("early", lambda d: "here " + d.caller_identity)
    t = mem.transport()
    real = t._deliver
    injected = []

    async def deliver(frame):
        await real(frame)
        if not injected:   # the first frame is JOINED: the request follows in the same read
            injected.append(1)
            body = proto.encode(proto.DATA_PACKET, {"participant_identity": "old", "destination_identities": ["b"],
                                                    "rpc_request": {"id": "r-early", "method": "early", "payload": "",
                                                                    "response_timeout_ms": 8000, "version": 1}})
            await real(link.frame_header(link.DATA, len(body)) + body)
    t._deliver = deliver
    await b.connect(t, "b")
    r = await peer.wait_for(_is_response_to("r-early"))
    assert injected and r["rpc_response"]["payload"] == "here old"
    assert _kinds_of(peer.packets) == ["rpc_ack", "rpc_response"]
    await close(b, peer)


# ------------------------------------------------------------------ reserved topics
async def test_reserved_rpc_topics_cannot_be_registered_or_unregistered_and_rpc_still_works():
    mem, a, b = await pair()
    for room in (a, b):
        for topic in ("lk.rpc_request", "lk.rpc_response"):
            for fn, args in ((room.register_text_stream_handler, (topic, lambda r, s: None)),
                             (room.register_byte_stream_handler, (topic, lambda r, s: None)),
                             (room.unregister_text_stream_handler, (topic,)),
                             (room.unregister_byte_stream_handler, (topic,))):
                try:
                    fn(*args)
                except ValueError as e:
                    assert topic in str(e) and "reserved" in str(e), e
                else:
                    raise AssertionError("%r must be refused for %s" % (fn, topic))
    b.local_participant.register_rpc_method("echo", lambda d: d.payload)
    big = "r" * 20000   # a chunked request stream and response stream: both topics still work
    assert await a.local_participant.perform_rpc(destination_identity="b", method="echo", payload=big) == big
    await close(a, b)


# ------------------------------------------------------------- streaming extensions
async def test_streaming_handler_response_to_a_v2_caller_is_an_incremental_uncompressed_stream():
    mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=2, capabilities=[2])

    async def gen(data):
        return _Pieces(3, "abc" * 2000)   # compressible, and small enough to go inline if finite
    a.local_participant.register_rpc_method("gen", gen, streaming=True)
    await _v2_request(peer, "a", "g1", "gen", "x")
    h = (await peer.wait_for(_response_stream_header("g1")))["stream_header"]
    assert "total_length" not in h and "inline_content" not in h and not h.get("compression"), h
    assert h["attributes"] == {"lk.rpc_request_id": "g1"}
    await peer.wait_for(lambda p: "stream_trailer" in p and p["stream_trailer"]["stream_id"] == h["stream_id"])
    assert _stream_text(peer.packets, h["stream_id"]) == "abc" * 6000
    await close(a, peer)


async def test_streaming_handler_gets_the_request_in_pieces_no_larger_than_piece_size():
    mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=2, piece_size=512, read_buffer=512)
    sizes = []

    async def sink(data):
        assert data.payload is None
        parts = []
        async for s in data.reader:
            sizes.append(len(s.encode("utf-8")))
            parts.append(s)
        return str(len("".join(parts)))
    a.local_participant.register_rpc_method("sink", sink, streaming=True)
    payload = "ü" * 5000 + "x" * 3001     # one 13001-byte chunk
    await _v2_request(peer, "a", "s1", "sink", payload)
    h = (await peer.wait_for(_response_stream_header("s1")))["stream_header"]
    assert _stream_text(peer.packets, h["stream_id"]) == str(len(payload))
    # bounded: piece_size, plus at most the 3 bytes of a character split between pieces
    assert sum(sizes) == 13001 and max(sizes) <= 512 + 3 and len(sizes) >= 26, sizes
    await close(a, peer)


async def _a_and_peers_v2_v1():
    """-> (mem, a, p, old): a joined, and captured-packet peers p (v2, inflating) and
    old (v1) that a knows of."""
    mem = MemRoom()
    a = await join(mem, "a")
    p = await raw(mem, "p", 2, (2,))
    old = await raw(mem, "old", 0)
    await settle(lambda: len(a.remote_participants) == 2)
    return mem, a, p, old


async def test_streaming_call_sends_an_incremental_stream_to_v2_and_gathers_within_the_cap_for_v1():
    mem, a, p, old = await _a_and_peers_v2_v1()
    lp = a.local_participant
    task = asyncio.create_task(lp.perform_rpc_stream(destination_identity="p", method="m",
                                                     payload=_Pieces(3, "x" * 1000)))
    h = (await p.wait_for(_is_rpc_request))["stream_header"]
    rid = h["attributes"]["lk.rpc_request_id"]
    assert "total_length" not in h and "inline_content" not in h and not h.get("compression"), h
    await p.wait_for(lambda q: "stream_trailer" in q)
    assert _stream_text(p.packets, h["stream_id"]) == "x" * 3000
    await _v2_response(p, "a", rid, "ok")
    assert await (await task).read_all() == "ok"
    # v1: the pieces are gathered into one packet, up to 15360 bytes
    task = asyncio.create_task(lp.perform_rpc_stream(destination_identity="old", method="m",
                                                     payload=_Pieces(3, "abc")))
    req = await old.wait_for(lambda q: "rpc_request" in q)
    assert req["rpc_request"]["payload"] == "abcabcabc"
    rid = req["rpc_request"]["id"]
    await old.send({"destination_identities": ["a"], "rpc_response": {"request_id": rid, "payload": "done"}})
    assert await (await task).read_all() == "done"
    src = _Pieces(16, "x" * 1000)
    await raises_rpc(1402, lp.perform_rpc_stream(destination_identity="old", method="m", payload=src))
    await asyncio.sleep(0.02)
    assert len([q for q in old.packets if "rpc_request" in q]) == 1, "nothing sent for a 1402"
    assert not a._calls and len(a._rpc_client) == 0
    await close(a, p, old)


async def test_cancelling_or_timing_out_a_call_while_its_response_stream_is_gathered_stops_reading_it():
    # "Cancelling a call clears its pending state" and a call rejects exactly once:
    # nothing of a call that is over may go on gathering its response in memory.
    for how in ("cancel", "timeout"):
        mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=2)
        task = asyncio.create_task(a.local_participant.perform_rpc(
            destination_identity="p", method="m", payload="x", response_timeout=20 if how == "cancel" else 1.0))
        rid = _request_id_of(await peer.wait_for(_is_rpc_request))
        await peer.send({"destination_identities": ["a"], "rpc_ack": {"request_id": rid}})
        await peer.send({"destination_identities": ["a"], "stream_header": {
            "stream_id": "resp", "topic": "lk.rpc_response", "mime_type": "text/plain",
            "text_header": {}, "attributes": {"lk.rpc_request_id": rid}}})
        await peer.send({"destination_identities": ["a"], "stream_chunk": {
            "stream_id": "resp", "chunk_index": 0, "content": b"part"}})
        await settle(lambda: a._readers)
        if how == "cancel":
            await _cancelled(task)
        else:
            await raises_rpc(RpcError.RESPONSE_TIMEOUT, task)
        assert not a._calls and len(a._rpc_client) == 0
        await settle(lambda: all(t.done() for t in a._tasks))   # the gathering stopped
        await peer.send({"destination_identities": ["a"], "stream_chunk": {
            "stream_id": "resp", "chunk_index": 1, "content": b"more" * 1000}})
        a.local_participant.register_rpc_method("echo", lambda d: d.payload)
        r = await request_v1(peer, "a", "after", "echo", "still here")
        assert r["rpc_response"]["payload"] == "still here", how
        await close(a, peer)


async def test_method_receives_request_id_caller_identity_payload_and_timeout_v1_and_v2():
    mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=2)
    seen = []
    a.local_participant.register_rpc_method("m", lambda d: seen.append(d) or "ok")
    await peer.send({"destination_identities": ["a"], "rpc_request": {
        "id": "id-v1", "method": "m", "payload": "pl ✓", "response_timeout_ms": 12500, "version": 1}})
    await peer.wait_for(_is_response_to("id-v1"))
    await _v2_request(peer, "a", "id-v2", "m", "pl2 ✓", attrs=_rpc_attrs("id-v2", "m", timeout="20000"))
    await peer.wait_for(_response_stream_header("id-v2"))
    got = [(d.request_id, d.caller_identity, d.payload, d.response_timeout) for d in seen]
    assert got == [("id-v1", "p", "pl ✓", 12.5), ("id-v2", "p", "pl2 ✓", 20.0)], got
    await close(a, peer)


async def test_a_participant_advertising_protocol_1_calls_by_stream_but_never_inline_and_v1_by_packet():
    mem = MemRoom()
    a = await join(mem, "a", client_protocol=1)
    p2 = await raw(mem, "p2", 2, (2,))
    old = await raw(mem, "old", 0)
    await settle(lambda: len(a.remote_participants) == 2)
    for peer in (p2, old):
        task = asyncio.create_task(a.local_participant.perform_rpc(
            destination_identity=peer.identity, method="m", payload="small"))
        first = await peer.wait_for(_is_rpc_request)
        if peer is old:
            assert first["rpc_request"]["version"] == 1
        else:
            h = first["stream_header"]
            assert "inline_content" not in h and not h.get("compression"), h
        await peer.send({"destination_identities": ["a"], "rpc_response": {
            "request_id": _request_id_of(first), "payload": "ok"}})
        assert await task == "ok"
    await close(a, p2, old)


def _open_request(sid, rid, method="echo"):
    """A v2 lk.rpc_request stream header whose stream is then left open."""
    return {"destination_identities": ["a"], "stream_header": {
        "stream_id": sid, "topic": "lk.rpc_request", "mime_type": "text/plain", "text_header": {},
        "attributes": {"lk.rpc_request_id": rid, "lk.rpc_request_method": method,
                       "lk.rpc_request_response_timeout_ms": "8000", "lk.rpc_request_version": "2"}}}


async def _echo_room_and_two_peers(max_streams, max_rpc_handlers, q_protocol, more=()):
    """A room serving "echo" that evicts after 300 ms, its peer p and another peer q
    (and a v2 peer for each identity in `more`, after q)."""
    mem, a, p = await room_and_peer(peer_identity="p", client_protocol=2, max_streams=max_streams,
                                    max_rpc_handlers=max_rpc_handlers, evict_idle_ms=300)
    q = await raw(mem, "q", client_protocol=q_protocol)
    others = []
    for ident in more:   # (no await inside a comprehension on MicroPython)
        others.append(await raw(mem, ident, client_protocol=2))
    await settle(lambda: len(a.remote_participants) == 2 + len(more))
    a.local_participant.register_rpc_method("echo", lambda d: d.payload)
    return (a, p, q) + tuple(others)


async def test_an_evicted_request_stream_frees_its_handler_slot_for_the_request_that_evicted_it():
    # stream slots and RPC handler slots both full of silent request streams: the one
    # that gives way must free both, or the request that evicted it is refused anyway
    a, p, q = await _echo_room_and_two_peers(2, 2, 2)
    await p.send(_open_request("s1", "r1"))
    await p.send(_open_request("s2", "r2"))
    await asyncio.sleep(0.5)
    await q.send(_open_request("s3", "r3"))
    await q.send({"destination_identities": ["a"], "stream_chunk": {"stream_id": "s3", "content": b"hello"}})
    await q.send({"destination_identities": ["a"], "stream_trailer": {"stream_id": "s3"}})
    # the evicted call (r1 or r2: silent alike, either may go) is answered
    gone = await p.wait_for(lambda x: "rpc_response" in x)
    assert gone["rpc_response"]["request_id"] in ("r1", "r2"), gone
    assert gone["rpc_response"]["error"]["code"] == 1500, gone
    head = (await q.wait_for(lambda x: "stream_header" in x))["stream_header"]   # r3's answer
    assert head["topic"] == "lk.rpc_response" and head["attributes"]["lk.rpc_request_id"] == "r3", head
    assert head["inline_content"] == b"hello", head
    assert not [x for x in q.packets if "rpc_response" in x and "error" in x["rpc_response"]], q.packets
    await close(a, p, q)


async def test_silent_request_streams_holding_every_handler_slot_give_way_to_a_new_request():
    # more stream slots than RPC handler slots: streams never run out, so the handler
    # slots themselves make the silent request streams give way (two callers holding
    # two each: neither holds more than half, so only silence frees one)
    a, p, q, p2 = await _echo_room_and_two_peers(8, 4, 0, ["p2"])
    for i in range(4):
        await (p if i < 2 else p2).send(_open_request("s%d" % i, "r%d" % i))
    await asyncio.sleep(0.05)
    r = await request_v1(q, "a", "early", "echo", "hi")   # not silent long enough yet
    assert r["rpc_response"]["error"]["message"] == "Too many concurrent RPC requests", r
    await asyncio.sleep(0.5)
    r = await request_v1(q, "a", "late", "echo", "hi")
    assert r["rpc_response"].get("payload") == "hi", r
    await settle(lambda: [x for x in p.packets + p2.packets if "rpc_response" in x])   # one of the four
    gone = [x for x in p.packets + p2.packets if "rpc_response" in x]
    assert gone[0]["rpc_response"]["error"]["code"] == 1500, gone
    await close(a, p, p2, q)


async def test_one_caller_holding_most_handler_slots_gives_one_up_to_another_caller_at_once():
    # per-caller fairness: p's four request streams hold all four handler slots (not
    # silent long enough to give way); q's request takes p's stalest slot at once
    a, p, q = await _echo_room_and_two_peers(8, 4, 0)
    for i in range(4):
        await p.send(_open_request("s%d" % i, "r%d" % i))
    await asyncio.sleep(0.05)
    r = await request_v1(q, "a", "early", "echo", "hi")
    assert r["rpc_response"].get("payload") == "hi", r
    gone = await p.wait_for(lambda x: "rpc_response" in x)
    err = gone["rpc_response"]["error"]
    assert err["code"] == 1500 and "'p' held 4 of the 4 slots; another sender's stream took this one" in err["data"], err
    await close(a, p, q)


async def test_a_full_house_of_rpc_handlers_evicts_only_a_request_stream_that_holds_a_slot():
    # one RPC handler slot: s0's streaming handler answered without reading (its stream
    # stays open but holds no slot), s1's handler holds the slot, reading; both go
    # silent. A new request must take s1's slot, not end s0 for nothing.
    a, p, q = await _echo_room_and_two_peers(8, 1, 0)
    lp = a.local_participant
    lp.register_rpc_method("quick", lambda d: "done", streaming=True)

    async def reads(d):
        out = []
        async for x in d.reader:
            out.append(x)
        return "".join(out)
    lp.register_rpc_method("reads", reads, streaming=True)
    await p.send(_open_request("s0", "r0", "quick"))
    await p.wait_for(lambda x: "stream_header" in x or "rpc_response" in x)   # r0 answered
    await settle(lambda: not a._invoking)
    await p.send(_open_request("s1", "r1", "reads"))
    await settle(lambda: a._invoking)
    await asyncio.sleep(0.5)   # both silent past evict_idle_ms
    r = await request_v1(q, "a", "new", "echo", "hi")
    assert r["rpc_response"].get("payload") == "hi", r
    assert "s0" in a._incoming.open   # not ended for nothing
    gone = await p.wait_for(lambda x: "rpc_response" in x and x["rpc_response"]["request_id"] == "r1")
    assert gone["rpc_response"]["error"]["code"] == 1500, gone
    await close(a, p, q)


# ------------------------------------------- text that is not valid UTF-8 never goes out
# MicroPython's json makes a str holding a lone surrogate of "\ud800" (so does CPython's);
# in a protobuf string field the relay refuses the whole packet and drops the sender.
def _surrogate():
    import json
    return json.loads('"bad \\ud800 path"')


async def test_an_rpc_error_whose_message_is_not_utf8_still_reaches_the_caller_with_its_code():
    mem, a, b = await pair()

    def stat(d):
        raise RpcError(4002, _surrogate())
    b.local_participant.register_rpc_method("stat", stat)
    for payload in ("x", "y" * 20000):   # a v1-sized answer path and a streamed request
        e = await raises_rpc(4002, a.local_participant.perform_rpc(
            destination_identity="b", method="stat", payload=payload, response_timeout=3))
        assert "error message not sent" in e.message and "not valid UTF-8" in e.message, e.message
    assert b.connection_state == "connected" and a.connection_state == "connected"
    await close(a, b)


async def test_an_answer_that_is_not_utf8_is_an_application_error_to_v1_and_v2_callers():
    mem, a, b = await pair()
    b.local_participant.register_rpc_method("bad", lambda d: _surrogate())
    await raises_rpc(1500, a.local_participant.perform_rpc(
        destination_identity="b", method="bad", payload="", response_timeout=3))
    peer = await raw(mem, "old", client_protocol=0)
    await settle(lambda: "old" in b.remote_participants)
    resp = await request_v1(peer, "b", "r1", "bad")
    assert resp["rpc_response"]["error"]["code"] == 1500, resp
    assert b.connection_state == "connected"
    await close(a, b, peer)


async def test_sending_text_that_is_not_utf8_is_refused_at_the_call():
    mem, a, b = await pair()
    lp = a.local_participant
    for aw in (lp.send_text(_surrogate(), topic="t"),
               lp.perform_rpc(destination_identity="b", method="m", payload=_surrogate()),
               lp.send_text("ok", topic=_surrogate())):
        try:
            await aw
        except ValueError as e:
            assert "UTF-8" in str(e) or "surrogate" in str(e), e
        else:
            raise AssertionError("text that is not UTF-8 was sent")
    w = await lp.stream_text(topic="t")
    try:
        await w.write(_surrogate())
    except ValueError as e:
        assert "surrogate" in str(e), e
    else:
        raise AssertionError("a stream writer took text that is not UTF-8")
    assert a.connection_state == "connected"
    await close(a, b)


async def test_a_payload_that_is_not_a_str_is_refused_before_anything_is_sent():
    mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=2)
    lp = a.local_participant
    for bad in (5, [104, 105], None, b"\xff", {"a": 1}):
        await raises(TypeError, lp.perform_rpc(destination_identity="p", method="m", payload=bad),
                      "payload must be a str")
    await asyncio.sleep(0.05)
    assert not [p for p in peer.packets if "rpc_request" in p or "stream_header" in p], peer.packets
    assert not a._calls
    await close(a, peer)


async def test_response_timeout_must_be_a_positive_number_of_seconds():
    mem, a, b = await pair()
    b.local_participant.register_rpc_method("echo", lambda d: d.payload)
    lp = a.local_participant
    for bad in ("5", True, [1]):
        await raises(TypeError, lp.perform_rpc(destination_identity="b", method="echo", response_timeout=bad),
                      "response_timeout must be a number of seconds")
    for bad in (0, -1, float("inf"), float("nan"), 1e10):
        await raises(ValueError, lp.perform_rpc(destination_identity="b", method="echo", response_timeout=bad),
                      "response_timeout must be over 0 and at most 4294967 seconds")
    assert await lp.perform_rpc(destination_identity="b", method="echo", payload="x", response_timeout=0.5) == "x"
    await close(a, b)


async def test_invocation_data_carries_the_method_name():
    mem, a, b = await pair()
    seen = []
    b.local_participant.register_rpc_method("m.one", lambda d: seen.append(d.method) or "ok")
    b.local_participant.register_rpc_method("m.two", lambda d: seen.append((d.method, d.payload)) or "ok",
                                             streaming=True)
    await a.local_participant.perform_rpc(destination_identity="b", method="m.one", payload="p")
    await a.local_participant.perform_rpc(destination_identity="b", method="m.two", payload="p")
    assert seen == ["m.one", ("m.two", None)], seen
    await close(a, b)


async def test_a_handler_that_raises_cancelled_error_is_answered_1500_at_once():
    mem, a, b = await pair()

    async def gives_up(d):
        raise asyncio.CancelledError()
    b.local_participant.register_rpc_method("gives_up", gives_up)
    t0 = now_ms()
    await raises_rpc(1500, a.local_participant.perform_rpc(
        destination_identity="b", method="gives_up", response_timeout=5))
    assert now_ms() - t0 < 2000, "answered at once, not at the caller's timeout"
    assert not b._invoking, "its slot is free"
    await close(a, b)


async def test_a_buffered_handler_still_running_past_the_callers_timeout_is_cancelled_and_frees_its_slot():
    # The handler's timeout is the one on the wire (a raw v1 caller may ask for 300 ms);
    # the room's timer checks at least every ping interval.
    mem, a, peer = await room_and_peer(peer_identity="old", client_protocol=0, max_rpc_handlers=1,
                                       ping_interval_ms=100)
    ended = []

    async def hangs(d):
        await noting_cancel(ended, asyncio.sleep(3600))
    a.local_participant.register_rpc_method("hangs", hangs)
    a.local_participant.register_rpc_method("ok", lambda d: "fine")
    await send_request_v1(peer, "a", "h1", "hangs", timeout_ms=300)
    r = await peer.wait_for(lambda p: "rpc_response" in p)
    assert r["rpc_response"]["request_id"] == "h1" and r["rpc_response"]["error"]["code"] == 1502, r
    assert ended == ["cancelled"] and not a._invoking
    # the one handler slot is free again: the next call is answered, not refused
    r = await request_v1(peer, "a", "o1", "ok")
    assert r["rpc_response"].get("payload") == "fine", r
    await close(a, peer)


async def test_a_handler_answering_neither_str_nor_async_iterable_gets_1500_naming_it_to_a_v1_caller():
    mem, a, peer = await room_and_peer(peer_identity="old", client_protocol=0)
    a.local_participant.register_rpc_method("num", lambda d: 5)
    a.local_participant.register_rpc_method("blob", lambda d: b"bytes", streaming=True)
    r = await request_v1(peer, "a", "q1", "num")
    err = r["rpc_response"]["error"]
    assert err["code"] == 1500 and "answered int: a handler answers a str" in err["data"], err
    r = await request_v1(peer, "a", "q2", "blob")
    err = r["rpc_response"]["error"]
    assert "answered bytes: a handler answers a str, or with streaming=True an async iterable" in err["data"], err
    await close(a, peer)


async def test_a_burst_of_quick_v1_calls_is_answered_not_refused_by_handlers_waiting_to_end():
    mem, a, peer = await room_and_peer(peer_identity="old", client_protocol=0, max_rpc_handlers=4)
    a.local_participant.register_rpc_method("quick", lambda d: "ok " + d.payload)
    n = 16
    for i in range(n):
        await peer.send({"destination_identities": ["a"], "rpc_request": {
            "id": "q%d" % i, "method": "quick", "payload": str(i), "response_timeout_ms": 8000, "version": 1}})
    await peer.wait_for(lambda p: len([x for x in peer.packets if "rpc_response" in x]) == n)
    answers = dict((p["rpc_response"]["request_id"], p["rpc_response"]) for p in peer.packets if "rpc_response" in p)
    assert all(answers["q%d" % i].get("payload") == "ok %d" % i for i in range(n)), answers
    await close(a, peer)


async def test_a_response_stream_that_breaks_while_its_sender_stays_is_1500():
    # livekit-client: "Error reading RPC response payload" (1503 is for a destination that left)
    mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=2)
    task = asyncio.create_task(a.local_participant.perform_rpc(
        destination_identity="p", method="m", payload="x", response_timeout=5))
    await _ack_and_open_response(peer, "resp1")
    await peer.send({"destination_identities": ["a"], "stream_trailer": {"stream_id": "resp1", "reason": "boom"}})
    e = await raises_rpc(1500, task)
    assert "Error reading RPC response payload" in e.data and "boom" in e.data, e.data
    await close(a, peer)


async def test_a_call_while_not_connected_or_to_oneself_says_so():
    mem, a, b = await pair()
    e = await raises_rpc(RpcError.RECIPIENT_NOT_FOUND, a.local_participant.perform_rpc(destination_identity="a", method="m"))
    assert "'a' is this participant: it cannot call itself" in e.data, e.data
    for bad in (None, "", 5):
        await raises(TypeError, a.local_participant.perform_rpc(destination_identity=bad, method="m"),
                      "destination_identity must be a participant's identity (a non-empty str)")
    await close(a)
    e = await raises_rpc(RpcError.SEND_FAILED, a.local_participant.perform_rpc(destination_identity="b", method="m"))
    assert e.data == "not connected to a room (disconnected): connect() first", e.data
    await close(b)


async def test_an_async_def_with_yield_as_a_streaming_handler_answers_or_says_why_it_cannot():
    # CPython: an async generator is an async iterable, streamed as the answer.
    # MicroPython has no async generators: the same code is a plain generator, and
    # awaited as a coroutine its first piece would leave the handler waiting for ever.
    import sys
    mem, a, peer = await room_and_peer(peer_identity="old", client_protocol=0, ping_interval_ms=100)

    async def pieces(d):
        yield "a"
        yield "b"
    a.local_participant.register_rpc_method("pieces", pieces, streaming=True)
    r = await request_v1(peer, "a", "g1", "pieces")
    if sys.implementation.name == "micropython":
        err = r["rpc_response"]["error"]
        assert err["code"] == 1500 and "MicroPython has no async generators" in err["data"], err
        assert not a._invoking, "its slot is free"
    else:
        assert r["rpc_response"].get("payload") == "ab", r
    await close(a, peer)


async def _answer_slowly(peer, rid, pieces, gap_s, stall_s=0):
    await peer.send({"destination_identities": ["a"], "rpc_ack": {"request_id": rid}})
    await peer.send({"destination_identities": ["a"], "stream_header": {
        "stream_id": "slow-" + rid, "timestamp": 1, "topic": "lk.rpc_response", "mime_type": "text/plain",
        "text_header": {"operation_type": 0}, "attributes": {"lk.rpc_request_id": rid}}})
    for i in range(pieces):
        await asyncio.sleep(gap_s if i != pieces // 2 else stall_s or gap_s)
        await peer.send({"destination_identities": ["a"], "stream_chunk": {
            "stream_id": "slow-" + rid, "chunk_index": i, "content": b"p%d" % i}})
    await peer.send({"destination_identities": ["a"], "stream_trailer": {"stream_id": "slow-" + rid, "reason": ""}})


async def _request_id(peer, n):
    await peer.wait_for(lambda p: len([x for x in peer.packets if "stream_header" in x]) >= n)
    return [x for x in peer.packets if "stream_header" in x][n - 1]["stream_header"]["attributes"]["lk.rpc_request_id"]


async def test_a_streamed_answer_may_outlast_response_timeout_while_its_pieces_keep_coming():
    # perform_rpc_stream: response_timeout bounds the wait for the answer to start and
    # each silence in it; perform_rpc (as livekit-client) bounds the whole answer.
    mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=2)
    lp = a.local_participant
    task = asyncio.create_task(lp.perform_rpc_stream(destination_identity="p", method="m", response_timeout=0.5))
    answering = asyncio.create_task(_answer_slowly(peer, await _request_id(peer, 1), 8, 0.15))
    reader = await task
    assert await reader.read_all() == "".join("p%d" % i for i in range(8))   # ~1.2 s in all
    await answering
    task = asyncio.create_task(lp.perform_rpc(destination_identity="p", method="m", response_timeout=0.5))
    answering = asyncio.create_task(_answer_slowly(peer, await _request_id(peer, 2), 8, 0.15))
    await raises_rpc(RpcError.RESPONSE_TIMEOUT, task)
    await answering
    await close(a, peer)


async def test_a_streamed_answer_that_goes_silent_for_response_timeout_fails_1502():
    mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=2)
    task = asyncio.create_task(a.local_participant.perform_rpc_stream(
        destination_identity="p", method="m", response_timeout=0.4))
    answering = asyncio.create_task(_answer_slowly(peer, await _request_id(peer, 1), 4, 0.05, stall_s=0.8))
    reader = await task
    got = []
    try:
        async for s in reader:
            got.append(s)
        raise AssertionError("the reader ended normally")
    except RpcError as e:
        assert e.code == RpcError.RESPONSE_TIMEOUT, e
    assert got == ["p0", "p1"], got
    await answering
    await close(a, peer)


async def test_a_trickled_request_to_a_buffered_handler_is_answered_1502_at_its_timeout():
    # The caller's response_timeout counts from the request, payload reading included:
    # a request trickled in (no trailer) must not hold a handler slot for longer.
    mem = MemRoom()
    a = await join(mem, "a", max_rpc_handlers=1, ping_interval_ms=50, evict_idle_ms=60000)
    a.local_participant.register_rpc_method("echo", lambda d: d.payload)
    p = await raw(mem, "p", client_protocol=2)
    await settle(lambda: "p" in a.remote_participants)
    await _v2_request(p, "a", "r1", "echo", "he", attrs=_rpc_attrs("r1", "echo", timeout="300"),
                      trailer=False)
    r = await p.wait_for(lambda x: "rpc_response" in x, timeout=5)
    assert r["rpc_response"]["error"]["code"] == 1502, r
    await settle(lambda: not a._invoking)
    q = await raw(mem, "q", client_protocol=1)
    r = await request_v1(q, "a", "next", "echo", "hi")
    assert r["rpc_response"].get("payload") == "hi", r
    await close(a, p, q)


async def _handler_past_its_deadline_while_sending(how):
    """A buffered handler sends to a receiver whose queue is full ("slow" reads nothing
    until its gate opens), in `how`: its own send_bytes or a stream writer. Its caller's 300 ms pass meanwhile; the timer runs every
    2 s. -> (what the handler saw, the caller's answer, the packets slow got, the Room)."""
    mem = MemRoom(queue_bytes=4096)
    # the timer checks deadlines every PING interval; its PING cannot go out behind the
    # held frame, so a link silent for two intervals would end as dead (not this test)
    a = await join(mem, "a", ping_interval_ms=2000, evict_idle_ms=60000)
    seen = []

    async def send():
        lp = a.local_participant
        if how == "writer":
            w = await lp.stream_bytes(name="s", destination_identities=["slow"])
            for _ in range(20):
                await w.write(b"y" * 3000)
            await w.aclose()
        else:
            await lp.send_bytes(b"x" * 60000, name="big", destination_identities=["slow"])

    async def shout(data):
        await noting_cancel(seen, send())
        return "sent"
    a.local_participant.register_rpc_method("shout", shout)
    a.local_participant.register_rpc_method("echo", lambda d: d.payload)
    slow = await raw(mem, "slow")
    gate = asyncio.Event()
    read_into = slow.t.read_into

    async def held(buf):   # reads nothing more until the gate opens: its queue fills
        await gate.wait()
        return await read_into(buf)
    slow.t.read_into = held
    q = await raw(mem, "q", client_protocol=1)
    await settle(lambda: "slow" in a.remote_participants and "q" in a.remote_participants)
    await send_request_v1(q, "a", "r1", "shout", timeout_ms=300)
    await asyncio.sleep(2.4)           # past the deadline (checked at 2 s), a frame held up
    assert not seen and a.connection_state == "connected", (seen, a.connection_state)
    gate.set()
    r = await q.wait_for(lambda x: "rpc_response" in x and x["rpc_response"]["request_id"] == "r1",
                         timeout=20)
    return seen, r["rpc_response"], slow.packets, a, q, slow


def _ids(packets, kind):
    return [p[kind]["stream_id"] for p in packets if kind in p]


async def _check_stopped_between_frames(how):
    # Half a frame on the link ends it for every call and stream of the board: the
    # deadline's cancel waits until no frame is being written. The handler stops at its
    # next frame, the caller
    # hears 1502, the stream it had started gets a trailer, the link stays up.
    seen, resp, packets, a, q, slow = await _handler_past_its_deadline_while_sending(how)
    assert seen == ["cancelled"], seen
    assert resp.get("error", {}).get("code") == 1502, resp
    assert a.connection_state == "connected", a.last_error
    # (slow reads what is queued for it after the answer: its stream's end may follow)
    await settle(lambda: _ids(packets, "stream_trailer") == _ids(packets, "stream_header"), timeout=10)
    trailers = [p["stream_trailer"] for p in packets if "stream_trailer" in p]
    assert len(trailers) <= 1, trailers   # none if stopped before its header went out
    assert all("sender stopped" in t.get("reason", "") for t in trailers), trailers
    r = await request_v1(q, "a", "r2", "echo", "still here")
    assert r["rpc_response"].get("payload") == "still here", r
    await close(a, slow, q)


async def test_a_handler_past_its_deadline_inside_its_own_frame_stops_at_its_next_frame():
    await _check_stopped_between_frames("own")


async def test_a_handler_past_its_deadline_inside_a_stream_writers_frame_stops_and_ends_that_stream():
    await _check_stopped_between_frames("writer")


async def test_a_handler_past_its_deadline_whose_frame_then_fails_is_still_stopped():
    # The frame held up fails (the relay dropped the link); a handler that carries on
    # after the OSError must still be stopped by its deadline, not run unbounded.
    mem = MemRoom()
    a = await join(mem, "a", ping_interval_ms=1000, evict_idle_ms=60000)
    log = []
    gate = asyncio.Event()
    real = a._sender.transport
    armed = []

    class Stalls:
        async def write(self, d):
            if armed:
                await gate.wait()
                raise OSError(104, "ECONNRESET")
            return await real.write(d)

        def __getattr__(self, k):
            return getattr(real, k)
    a._sender.transport = Stalls()

    async def work(data):
        armed.append(1)
        try:
            await a.local_participant.send_text("x" * 100, destination_identities=["q"])
        except OSError:
            log.append("OSError")          # a best-effort send: carry on
        await noting_cancel(log, asyncio.sleep(5), "ran to the end")   # work that hangs
        return "late"
    a.local_participant.register_rpc_method("work", work)
    q = await raw(mem, "q", client_protocol=1)
    await settle(lambda: "q" in a.remote_participants)
    await send_request_v1(q, "a", "r1", "work", timeout_ms=300)
    await asyncio.sleep(1.4)               # the deadline passed inside the frame
    gate.set()
    await settle(lambda: "cancelled" in log, timeout=3)
    assert log == ["OSError", "cancelled"], log
    await settle(lambda: not a._invoking and not a._timed_out)
    a._sender.transport = real
    await close(a, q)


class _Endless:
    """Pieces of n characters for ever, one per 5 ms, each counted in `log`."""

    def __init__(self, log, n):
        self.log, self.n = log, n

    def __aiter__(self):
        return self

    async def __anext__(self):
        await asyncio.sleep(0.005)
        self.log.append(1)
        return "x" * self.n


async def test_a_callers_leaving_stops_its_handlers_and_frees_their_slots():
    # Their answers can reach nobody: a long streamed answer would hold a handler slot,
    # and the board's link, for nothing (with 4 slots, 4 callers that left locked a
    # board out of all calls).
    mem = MemRoom()
    a = await join(mem, "a", max_rpc_handlers=1)
    produced = []
    a.local_participant.register_rpc_method("feed", lambda d: _Endless(produced, 100), streaming=True)
    a.local_participant.register_rpc_method("quick", lambda d: "ok")
    host = await join(mem, "host")
    await settle(lambda: "a" in host.remote_participants)
    call = asyncio.create_task(host.local_participant.perform_rpc(
        destination_identity="a", method="feed", payload="", response_timeout=60))
    await settle(lambda: len(produced) > 3)
    await host.disconnect()
    try:
        await call
    except Exception:
        pass
    await settle(lambda: not a._invoking)
    n = len(produced)
    await asyncio.sleep(0.1)
    assert len(produced) <= n + 1, "the answer goes on after its caller left"
    other = await join(mem, "other")
    await settle(lambda: "a" in other.remote_participants)
    assert await other.local_participant.perform_rpc(destination_identity="a", method="quick",
                                                     payload="") == "ok"
    await close(a, other)


async def test_a_streamed_request_stops_when_its_destination_leaves():
    # RPC.md: the destination leaving fails the call (1503) promptly; the rest of the
    # request is not produced and sent to nobody (a 2 MB upload went on for 24 s).
    mem, a, b = await pair()
    pulled = []

    async def sink(data):
        async for _ in data.reader:
            pass
        return "done"
    b.local_participant.register_rpc_method("sink", sink, streaming=True)
    call = asyncio.create_task(a.local_participant.perform_rpc_stream(
        destination_identity="b", method="sink", payload=_Endless(pulled, 200), response_timeout=30))
    await settle(lambda: len(pulled) > 5)
    await b.disconnect()

    async def answer():
        reader = await asyncio.wait_for(call, 5)   # returns once the request stopped
        async for _ in reader:
            pass
    await raises_rpc(RpcError.RECIPIENT_DISCONNECTED, answer())
    n = len(pulled)
    await asyncio.sleep(0.1)
    assert len(pulled) <= n + 1, "the request source is still pulled after the call ended"
    await close(a)


async def test_a_caller_leaving_while_its_answer_waits_on_a_full_link_leaves_the_link_up():
    # Stopping a departed caller's handler must not cut a frame in half: that would end
    # the board's link, failing every other participant's calls with it.
    mem = MemRoom(queue_bytes=1000)
    a = await join(mem, "a")
    a.local_participant.register_rpc_method("big", lambda d: _Endless([], 2000), streaming=True)
    q = await raw(mem, "q", client_protocol=2)
    await settle(lambda: "q" in a.remote_participants)
    q._task.cancel()   # q stops reading: the answer's writes wait for room
    await _v2_request(q, "a", "r0", "big")
    await asyncio.sleep(0.2)
    await q.t.close()  # q leaves
    await settle(lambda: not a._invoking)
    assert a.connection_state == "connected", (a.connection_state, a.last_error)
    await close(a)


async def test_a_compressed_request_stream_without_total_length_is_answered():
    # livekit-client takes one (its senders' comments expect compressed incremental
    # streams); under RoomOptions' default max_inflated, so do we
    mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=2)
    a.local_participant.register_rpc_method("echo", lambda d: d.payload.upper())
    await peer.send({"destination_identities": ["a"], "stream_header": {
        "stream_id": "req-z", "topic": "lk.rpc_request", "mime_type": "text/plain", "text_header": {},
        "compression": 1,
        "attributes": {"lk.rpc_request_id": "r-z", "lk.rpc_request_method": "echo",
                       "lk.rpc_request_response_timeout_ms": "8000", "lk.rpc_request_version": "2"}}})
    await peer.send({"destination_identities": ["a"], "stream_chunk": {
        "stream_id": "req-z", "content": bytes.fromhex("cb48cdc9c90700")}})   # "hello", raw DEFLATE
    await peer.send({"destination_identities": ["a"], "stream_trailer": {"stream_id": "req-z"}})
    hdr = await peer.wait_for(lambda p: "stream_header" in p and p["stream_header"]["topic"] == "lk.rpc_response")
    body = await peer.wait_for(lambda p: "stream_chunk" in p or "inline_content" in p.get("stream_header", {}))
    content = body["stream_header"]["inline_content"] if "stream_header" in body else body["stream_chunk"]["content"]
    assert bytes(content) == b"HELLO", (hdr, body)
    assert not [p for p in peer.packets if "rpc_response" in p], peer.packets
    await close(a, peer)


async def test_a_request_stream_cut_short_is_answered_as_livekit_client_does_not_as_a_handler_failure():
    # livekit-client answers a request whose payload it cannot read 1500 with data
    # "Error reading RPC request payload"; the handler did nothing wrong, so this is
    # not the handler-failure answer (which has no data for a v2 caller, and reports
    # "RPC handler ... failed"), for buffered and streaming handlers alike
    mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=2)
    a.local_participant.register_rpc_method("whole", lambda d: "never")

    async def pieces(data):
        async for _ in data.reader:
            pass
        return "never"
    a.local_participant.register_rpc_method("pieces", pieces, streaming=True)
    for rid, method in (("cut-w", "whole"), ("cut-p", "pieces")):
        await _v2_request(peer, "a", rid, method, "part of it", trailer=False)
        await peer.send({"destination_identities": ["a"], "stream_trailer": {
            "stream_id": "req-" + rid, "reason": "sender stopped: cancelled"}})
        r = await peer.wait_for(_is_response_to(rid))
        err = r["rpc_response"]["error"]
        assert err["code"] == 1500 and err["message"] == "Application error in method handler", err
        assert err["data"].startswith("Error reading RPC request payload: abnormal end"), err
    for rid, method in (("bad-w", "whole"), ("bad-p", "pieces")):   # and text that is not UTF-8
        await peer.send({"destination_identities": ["a"], "stream_header": {
            "stream_id": "req-" + rid, "timestamp": 1, "topic": "lk.rpc_request", "mime_type": "text/plain",
            "text_header": {"operation_type": 0}, "attributes": _rpc_attrs(rid, method)}})
        await peer.send({"destination_identities": ["a"], "stream_chunk": {
            "stream_id": "req-" + rid, "chunk_index": 0, "content": b"ok\xff\xfeok"}})
        await peer.send({"destination_identities": ["a"], "stream_trailer": {"stream_id": "req-" + rid}})
        r = await peer.wait_for(_is_response_to(rid))
        err = r["rpc_response"]["error"]
        assert err["code"] == 1500 and err.get("data", "").startswith(
            "Error reading RPC request payload: invalid UTF-8"), (rid, err)
    r = await request_v1(peer, "a", "after", "whole", "x")   # the link goes on
    assert r["rpc_response"]["payload"] == "never", r
    await close(a, peer)


async def test_one_callers_trickled_request_streams_give_way_to_another_caller():
    # Two lk.rpc_request streams that never end, a byte now and then (never idle), took
    # both of a board's stream slots, with a 49-day timeout: every other caller's
    # chunked request was refused for as long as the attacker stayed. A sender holding
    # more than half the slots gives its stalest one up, RPC requests too.
    mem = MemRoom()
    a = await join(mem, "a", max_streams=2, evict_idle_ms=60000)

    async def sink(data):
        async for _ in data.reader:
            pass
        return "read"
    a.local_participant.register_rpc_method("sink", sink, streaming=True)
    a.local_participant.register_rpc_method("echo", lambda d: d.payload)
    hog = await raw(mem, "hog", client_protocol=2)
    good = await join(mem, "good", compress=False)   # a chunked request: it needs a slot
    await settle(lambda: "hog" in a.remote_participants and "good" in a.remote_participants)
    for i in range(2):
        await _v2_request(hog, "a", "h%d" % i, "sink", "x", trailer=False,
                          attrs=_rpc_attrs("h%d" % i, "sink", timeout="4294967295"))
    await settle(lambda: len(a._incoming.open) == 2)
    reply = await good.local_participant.perform_rpc(destination_identity="a", method="echo",
                                                     payload="z" * 20000, response_timeout=10)
    assert reply == "z" * 20000
    r = await hog.wait_for(lambda p: "rpc_response" in p)
    err = r["rpc_response"]["error"]
    assert err["code"] == 1500 and "held 2 of the 2 slots; another sender's stream took this one" in err["data"], err
    await close(a, hog, good)


async def test_an_rpc_method_name_that_is_no_str_is_a_type_error_wherever_it_is_given():
    # register_rpc_method(5, h) and perform_rpc(method=5) were ValueErrors
    mem, a, b = await pair()
    lp = a.local_participant
    for call in (lambda: lp.register_rpc_method(5, lambda d: ""), lambda: lp.register_rpc_method(b"m")(print),
                 lambda: lp.unregister_rpc_method(None)):
        try:
            call()
            raise AssertionError("accepted")
        except TypeError as e:
            assert "an RPC method name is a str, got " in str(e), str(e)
    await raises(TypeError, lp.perform_rpc(destination_identity="b", method=5), "an RPC method name is a str, got int")
    await raises(TypeError, lp.perform_rpc_stream(destination_identity="b", method=None),
                 "an RPC method name is a str, got NoneType")
    try:
        lp.register_rpc_method("", print)   # a str, but no name: still the ValueError it was
        raise AssertionError("accepted")
    except ValueError as e:
        assert "RPC method name must be a non-empty str, got ''" in str(e)
    assert not a._calls and len(a._rpc_client) == 0
    await close(a, b)


class _Seq:
    """The pieces `items`, then the end."""

    def __init__(self, items):
        self.items = list(items)

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self.items:
            raise StopAsyncIteration
        return self.items.pop(0)


async def test_a_streamed_payload_takes_str_pieces_only_refused_before_that_piece_is_sent():
    # bytes pieces went out as they were (b"\xff" came back as 1500 from the handler's
    # side); an int failed inside memoryview once the stream had started
    mem, a, p, old = await _a_and_peers_v2_v1()
    lp = a.local_participant
    for dest in ("p", "old"):
        for pieces, words in ((["ab", b"\xff"], "a text stream takes str, not bytes"),
                              (["ab", 5], "a text stream takes str, not int")):
            await raises(TypeError, lp.perform_rpc_stream(destination_identity=dest, method="m",
                                                          payload=_Seq(pieces)), words)
    await asyncio.sleep(0.05)
    assert not [q for q in old.packets if "rpc_request" in q], "a v1 request gathered from a bad piece went out"
    headers = [q["stream_header"] for q in p.packets if "stream_header" in q]
    assert len(headers) == 2 and all(h["topic"] == "lk.rpc_request" for h in headers), headers
    for h in headers:   # "ab" only, then the stream ended abnormally
        assert _stream_text(p.packets, h["stream_id"]) == "ab"
        t = [q["stream_trailer"] for q in p.packets if q.get("stream_trailer", {}).get("stream_id") == h["stream_id"]]
        assert len(t) == 1 and "a text stream takes str" in t[0]["reason"], t
    assert not a._calls and len(a._rpc_client) == 0
    await close(a, p, old)


async def test_a_streaming_handler_answering_bytes_pieces_fails_its_call_with_1500():
    # its bytes went out as text (the caller's read met invalid UTF-8, a buffered call
    # 1501 after its timeout): now the piece is refused before it is sent
    mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=2)
    a.local_participant.register_rpc_method("s", lambda d: _Seq(["ok", b"\xff"]), streaming=True)
    await _v2_request(peer, "a", "r1", "s")
    err = await peer.wait_for(lambda q: "rpc_response" in q and "error" in q["rpc_response"])
    assert err["rpc_response"]["error"]["code"] == RpcError.APPLICATION_ERROR
    h = (await peer.wait_for(_response_stream_header("r1")))["stream_header"]
    t = (await peer.wait_for(lambda q: q.get("stream_trailer", {}).get("stream_id") == h["stream_id"]))
    assert "a text stream takes str, not bytes" in t["stream_trailer"]["reason"], t
    assert _stream_text(peer.packets, h["stream_id"]) == "ok"   # never the b"\xff"
    await close(a, peer)


async def test_reading_a_response_you_cancelled_says_so_rather_than_blame_the_handler():
    # it raised RpcError 1500 "Application error in method handler" (the cause only in
    # .data); read before the answer started, it waited for ever
    from lkedge.streams import StreamError
    mem, a, b = await pair()

    async def many(data):
        return _Pieces(50, "y" * 100)

    async def late(data):
        await asyncio.sleep(10)
        return "too late"
    async def slow(data):
        return _SlowPieces(100, "z" * 100)   # the first piece at once, then one each 0.2 s
    b.local_participant.register_rpc_method("many", many, streaming=True)
    b.local_participant.register_rpc_method("slow", slow, streaming=True)
    b.local_participant.register_rpc_method("late", late)
    b.local_participant.register_rpc_method("echo", lambda d: d.payload)
    lp = a.local_participant
    reader = await lp.perform_rpc_stream(destination_identity="b", method="many", response_timeout=20)
    for _ in range(3):
        assert await reader.__anext__() == "y" * 100
    reader.cancel()
    for _ in range(2):   # and again: the same clear local error
        e = await raises(StreamError, reader.read_all(), "abandoned", "cancel()", reader.request_id)
        assert not isinstance(e, RpcError)
    reader.cancel()   # again: nothing more
    await reader.aclose()
    assert not a._calls and len(a._rpc_client) == 0
    # aclose() before the answer started: a read says so at once
    reader = await lp.perform_rpc_stream(destination_identity="b", method="late", response_timeout=20)
    await reader.aclose()
    await reader.aclose()   # idempotent
    await raises(StreamError, asyncio.wait_for(reader.__anext__(), 2), "abandoned")
    assert not a._calls and len(a._rpc_client) == 0
    # a reader waiting for the next piece when another task cancels the call
    reader = await lp.perform_rpc_stream(destination_identity="b", method="slow", response_timeout=20)
    got = []

    async def read(r):
        try:
            async for s in r:
                got.append(s)
        except Exception as e:
            got.append(e)
    task = asyncio.create_task(read(reader))
    await settle(lambda: got)
    await asyncio.sleep(0.05)   # it waits for the second piece
    assert got == ["z" * 100], got
    reader.close()   # the stream readers' name for it too
    await asyncio.wait_for(task, 2)
    assert isinstance(got[-1], StreamError) and "abandoned" in str(got[-1]), got[-1]
    assert await asyncio.wait_for(lp.perform_rpc(destination_identity="b", method="echo", payload="on"), 5) == "on"
    await close(a, b)
