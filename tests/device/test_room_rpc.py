"""RPC.md rules through the whole stack: Room ⇄ memroom (real LINK frames) ⇄ Room/RawPeer.

Runs on CPython and under MicroPython. RawPeer plays a LiveKit peer of any
client_protocol byte by byte, so the wire form of each rule is checked too.
"""
import asyncio

from room_helpers import close, join, pair, raises_rpc, raw, request_v1, room_and_peer, settle

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


async def test_call_failing_while_its_response_stream_is_read_raises_not_hangs():
    mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=2)
    task = asyncio.create_task(a.local_participant.perform_rpc_stream(
        destination_identity="p", method="m", payload="x", response_timeout=0.4))
    hdr = await peer.wait_for(lambda p: "stream_header" in p)
    rid = hdr["stream_header"]["attributes"]["lk.rpc_request_id"]
    await peer.send({"destination_identities": ["a"], "rpc_ack": {"request_id": rid}})
    await peer.send({"destination_identities": ["a"], "stream_header": {
        "stream_id": "resp1", "timestamp": 1, "topic": "lk.rpc_response", "mime_type": "text/plain",
        "text_header": {"operation_type": 0}, "attributes": {"lk.rpc_request_id": rid}}})
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
    assert err["code"] == 1500 and err["message"] == "RPC request stream refused", err
    assert "too many open streams (limit 1)" in err["data"], err
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
    assert not [p for p in peer.packets if "rpc_response" in p and p["rpc_response"]["request_id"] == "huge"]
    await close(a, peer)
