"""Mixes of RPC requests sent to a Room by one caller, and the answers RPC.md gives them
(tests/device/test_room_rpc_sequences.py on both interpreters, with its own seeded
generator; tests/lib/test_room_rpc_sequences.py with hypothesis).

A request is ("v1", method, n, version) or ("v2", method, n, version, "inline" |
"chunked", attrs), attrs "ok", "no method", "bad timeout" or "bad utf-8"; its payload
is payload(n). play(caller_protocol, reqs) sends them and checks that every request
gets exactly one answer, the one RPC.md gives it (expected(); or, once slow calls may
hold every handler slot, 1500 "Too many concurrent RPC requests" for a call that would
run), at most one ack (exactly one where the request is well formed), that nothing
escapes to the event loop, and that the Room answers a call made afterwards.
"""
import asyncio
import json

from room_helpers import close, room_and_peer, settle, watch_escapes

from lkedge.consts import ATTR_RPC_METHOD, ATTR_RPC_REQUEST_ID, ATTR_RPC_TIMEOUT, ATTR_RPC_VERSION
from lkedge.rpc import RpcError

METHODS = ("echo", "fail", "boom", "slow", "missing")
PARTS = 3


def payload(n):
    return ("p%d;" % n) * n


def expected(req):
    """What RPC.md answers to `req`: ("ok", payload), ("error", code) or None (no id
    the Room can read... here every request carries one, so never None)."""
    kind, method = req[0], req[1]
    if kind == "v2":
        _, _, n, version, _, attrs = req
        if attrs in ("no method", "bad timeout") or version == "x":
            return ("error", RpcError.APPLICATION_ERROR)   # RPC data stream malformed
        if version != "2":
            return ("error", RpcError.UNSUPPORTED_VERSION)
    else:
        _, _, n, version = req
        if version != 1:
            return ("error", RpcError.UNSUPPORTED_VERSION)
    if method == "missing":
        return ("error", RpcError.UNSUPPORTED_METHOD)
    if kind == "v2" and req[5] == "bad utf-8":
        return ("error", RpcError.APPLICATION_ERROR)   # Error reading RPC request payload
    if method == "fail":
        return ("error", 2000)
    if method == "boom":
        return ("error", RpcError.APPLICATION_ERROR)
    if method == "slow":
        return ("ok", "slow")
    return ("ok", payload(n))


async def _send(peer, rid, req):
    if req[0] == "v1":
        _, method, n, version = req
        await peer.send({"destination_identities": ["a"], "rpc_request": {
            "id": rid, "method": method, "payload": payload(n), "response_timeout_ms": 10000,
            "version": version}})
        return
    _, method, n, version, mode, attrs = req
    data = payload(n).encode() + (b"\xff" if attrs == "bad utf-8" else b"")
    a = {ATTR_RPC_REQUEST_ID: rid, ATTR_RPC_METHOD: method, ATTR_RPC_TIMEOUT: "10000", ATTR_RPC_VERSION: version}
    if attrs == "no method":
        del a[ATTR_RPC_METHOD]
    elif attrs == "bad timeout":
        a[ATTR_RPC_TIMEOUT] = "soon"
    h = {"stream_id": "st-" + rid, "topic": "lk.rpc_request", "total_length": len(data), "text_header": {},
         "attributes": a}
    if mode == "inline":
        h["inline_content"] = data
        await peer.send({"destination_identities": ["a"], "stream_header": h})
        return
    await peer.send({"destination_identities": ["a"], "stream_header": h})
    step = len(data) // PARTS + 1
    for i in range(PARTS):
        await peer.send({"destination_identities": ["a"], "stream_chunk": {
            "stream_id": "st-" + rid, "chunk_index": i, "content": data[i * step:(i + 1) * step]}})
    await peer.send({"destination_identities": ["a"], "stream_trailer": {"stream_id": "st-" + rid}})


def _answers(packets):
    """{request id: [answers]} and {request id: acks} from the packets the caller got;
    an answer is ("ok", payload) or ("error", code, message)."""
    answers, acks, streams, texts = {}, {}, {}, {}
    for p in packets:
        if "rpc_ack" in p:
            rid = p["rpc_ack"]["request_id"]
            acks[rid] = acks.get(rid, 0) + 1
        elif "rpc_response" in p:
            r = p["rpc_response"]
            if "error" in r:
                e = r["error"]
                answers.setdefault(r["request_id"], []).append(("error", e.get("code", 0), e.get("message", "")))
            else:
                answers.setdefault(r["request_id"], []).append(("ok", r.get("payload", "")))
        elif "stream_header" in p and p["stream_header"].get("topic") == "lk.rpc_response":
            h = p["stream_header"]
            rid = h["attributes"][ATTR_RPC_REQUEST_ID]
            if "inline_content" in h:
                answers.setdefault(rid, []).append(("ok", bytes(h["inline_content"]).decode()))
            else:
                streams[h["stream_id"]] = rid
                texts[h["stream_id"]] = b""
        elif "stream_chunk" in p and p["stream_chunk"]["stream_id"] in streams:
            texts[p["stream_chunk"]["stream_id"]] += bytes(p["stream_chunk"].get("content", b""))
        elif "stream_trailer" in p and p["stream_trailer"]["stream_id"] in streams:
            sid = p["stream_trailer"]["stream_id"]
            answers.setdefault(streams[sid], []).append(("ok", texts[sid].decode()))
    return answers, acks


def _answer_matches(got, want, slow_before):
    """Whether `got` is the answer `want`, or (after at least max_rpc_handlers slow calls,
    which may still hold every handler slot) the refusal of a call that would run."""
    if got[:2] == want:
        return True
    runs = want[0] == "ok" or want[1] in (2000, RpcError.APPLICATION_ERROR)
    return (slow_before >= 2 and runs and got[:2] == ("error", RpcError.APPLICATION_ERROR)
            and got[2] == "Too many concurrent RPC requests")


async def play(caller_protocol, reqs):
    mem, a, peer = await room_and_peer(peer_identity="p", client_protocol=caller_protocol, max_rpc_handlers=2)
    escaped = watch_escapes()

    async def slow(data):
        await asyncio.sleep(0.1)
        return "slow"

    def fail(data):
        raise RpcError(2000, "refused on purpose", json.dumps({"id": data.request_id}))

    def boom(data):
        raise ValueError("boom")
    a.local_participant.register_rpc_method("echo", lambda data: data.payload)
    a.local_participant.register_rpc_method("fail", fail)
    a.local_participant.register_rpc_method("boom", boom)
    a.local_participant.register_rpc_method("slow", slow)
    try:
        ids = ["r%d" % i for i in range(len(reqs))]
        for rid, req in zip(ids, reqs):
            await _send(peer, rid, req)
        await settle(lambda: all(rid in _answers(peer.packets)[0] for rid in ids), 5.0)
        await asyncio.sleep(0.2)   # a second answer to any of them would be here by now
        answers, acks = _answers(peer.packets)
        slow_before = 0
        for rid, req in zip(ids, reqs):
            got = answers[rid]
            want = expected(req)
            assert len(got) == 1 and _answer_matches(got[0], want, slow_before), (rid, req, got)
            slow_before += want == ("ok", "slow")
            assert acks.get(rid, 0) <= 1, (rid, req, acks.get(rid))
            if req[0] == "v1" or req[5] in ("ok", "bad utf-8") and req[3] != "x":
                assert acks.get(rid) == 1, (rid, req)   # acked before anything else is checked
        assert not escaped, escaped
        # the Room goes on answering
        await _send(peer, "after", ("v1", "echo", 3, 1))
        await settle(lambda: "after" in _answers(peer.packets)[0])
        assert _answers(peer.packets)[0]["after"] == [("ok", payload(3))]
    finally:
        asyncio.get_event_loop().set_exception_handler(None)
        await close(a, peer)


def random_reqs(rng):
    """1 to 10 requests (the hypothesis strategies' choices, drawn by a room_helpers.Rng)."""
    out = []
    for _ in range(1 + rng.below(10)):
        method, n = rng.pick(METHODS), rng.below(41)
        if rng.below(2):
            out.append(("v1", method, n, rng.pick((1, 1, 1, 2))))
        else:
            out.append(("v2", method, n, rng.pick(("2", "2", "2", "1", "x")), rng.pick(("inline", "chunked")),
                        rng.pick(("ok", "ok", "ok", "no method", "bad timeout", "bad utf-8"))))
    return out
