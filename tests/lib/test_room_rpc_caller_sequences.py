"""A Room's calls answered in arbitrary interleavings (hypothesis): by a v1 or a v2
callee, with an ack then a response packet, an error, or a response stream (inline or
chunked), or a response without an ack; amid duplicates of those answers, late acks,
answers to ids nobody asked, and answers with the right ids from another participant.
RPC.md's caller rules hold whatever the order:

- each call resolves exactly once, with the first answer its callee sent (a second is
  ignored; but a response packet that comes while a response stream is still being
  read may end the call first, as in livekit-client, which settles a call when a
  stream's content is all read), never with another participant's (ignored: the call
  stays pending);
- nothing escapes to the event loop, and the Room goes on calling.
"""
import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from room_helpers import close, raw, room_and_peer, settle, watch_escapes

from lkedge.consts import ATTR_RPC_METHOD, ATTR_RPC_REQUEST_ID
from lkedge.rpc import RpcError

OUTCOMES = ("packet", "error", "inline stream", "chunked stream", "no ack")
NOISE = ("duplicate", "late ack", "unknown id", "foreign packet", "foreign stream", "foreign error")

calls = st.lists(st.tuples(st.sampled_from(OUTCOMES), st.lists(st.sampled_from(NOISE), max_size=2)),
                 min_size=1, max_size=4)
scripts = st.tuples(st.sampled_from([0, 2]), calls, st.randoms(use_true_random=False))


def _answer(i, outcome):
    return ("error", 2000 + i) if outcome == "error" else ("ok", "answer %d by %s" % (i, outcome))


def _packets(to, rid, i, outcome):
    """The callee's packets answering call i (request id rid) as `outcome`, in order."""
    ack = {"destination_identities": [to], "rpc_ack": {"request_id": rid}}
    kind, value = _answer(i, outcome)
    if kind == "error":
        return [ack, {"destination_identities": [to], "rpc_response": {
            "request_id": rid, "error": {"code": value, "message": "no", "data": "d%d" % i}}}]
    if outcome in ("packet", "no ack"):
        resp = {"destination_identities": [to], "rpc_response": {"request_id": rid, "payload": value}}
        return [resp] if outcome == "no ack" else [ack, resp]
    data = value.encode()
    h = {"stream_id": "resp-" + rid, "topic": "lk.rpc_response", "total_length": len(data), "text_header": {},
         "attributes": {ATTR_RPC_REQUEST_ID: rid}}
    if outcome == "inline stream":
        h["inline_content"] = data
        return [ack, {"destination_identities": [to], "stream_header": h}]
    half = len(data) // 2
    return [ack, {"destination_identities": [to], "stream_header": h},
            {"destination_identities": [to], "stream_chunk": {"stream_id": "resp-" + rid, "chunk_index": 0,
                                                              "content": data[:half]}},
            {"destination_identities": [to], "stream_chunk": {"stream_id": "resp-" + rid, "chunk_index": 1,
                                                              "content": data[half:]}},
            {"destination_identities": [to], "stream_trailer": {"stream_id": "resp-" + rid}}]


def _noise(to, rid, i, kind):
    """(sender, packets): "p" for the callee, "q" for another participant."""
    if kind == "duplicate":
        return "p", [{"destination_identities": [to], "rpc_response": {"request_id": rid, "payload": "second"}}]
    if kind == "late ack":
        return "p", [{"destination_identities": [to], "rpc_ack": {"request_id": rid}}]
    if kind == "unknown id":
        return "p", [{"destination_identities": [to], "rpc_response": {"request_id": "nobody", "payload": "x"}}]
    if kind == "foreign packet":
        return "q", [{"destination_identities": [to], "rpc_ack": {"request_id": rid}},
                     {"destination_identities": [to], "rpc_response": {"request_id": rid, "payload": "forged"}}]
    if kind == "foreign error":
        return "q", [{"destination_identities": [to], "rpc_response": {
            "request_id": rid, "error": {"code": 1500, "message": "forged"}}}]
    return "q", [{"destination_identities": [to], "stream_header": {
        "stream_id": "forged-" + rid, "topic": "lk.rpc_response", "total_length": 6, "text_header": {},
        "attributes": {ATTR_RPC_REQUEST_ID: rid}, "inline_content": b"forged"}}]


async def _request_ids(p, n):
    """{call index: request id} from what the callee received (method "m<i>")."""
    def ids():
        out = {}
        for pkt in p.packets:
            if "rpc_request" in pkt:
                out[int(pkt["rpc_request"]["method"][1:])] = pkt["rpc_request"]["id"]
            elif "stream_header" in pkt and pkt["stream_header"].get("topic") == "lk.rpc_request":
                a = pkt["stream_header"]["attributes"]
                out[int(a[ATTR_RPC_METHOD][1:])] = a[ATTR_RPC_REQUEST_ID]
        return out
    await settle(lambda: len(ids()) == n)
    return ids()


async def _play(callee_protocol, script, rnd):
    mem, a, p = await room_and_peer(peer_identity="p", client_protocol=callee_protocol)
    q = await raw(mem, "q", client_protocol=2)
    await settle(lambda: "q" in a.remote_participants)
    escaped = watch_escapes()

    async def call(i):
        try:
            return ("ok", await a.local_participant.perform_rpc(
                destination_identity="p", method="m%d" % i, payload="q%d" % i, response_timeout=5))
        except RpcError as e:
            return ("error", e.code)
    try:
        tasks = [asyncio.ensure_future(call(i)) for i in range(len(script))]
        ids = await _request_ids(p, len(script))
        # each call's answer (its packets in order) and its noise, in a random order but
        # for a callee's duplicate, after all the answers (before, it would be the first)
        runs = []
        for i, (outcome, noise) in enumerate(script):
            runs.append(("p", _packets("a", ids[i], i, outcome)))
            runs += [_noise("a", ids[i], i, kind) for kind in noise]
        rnd.shuffle(runs)
        for who, pkts in sorted(runs, key=lambda r: r[1][-1].get("rpc_response", {}).get("payload") == "second"):
            for pkt in pkts:
                await (p if who == "p" else q).send(pkt)
        done = await asyncio.wait_for(asyncio.gather(*tasks), 5)
        for i, (outcome, noise) in enumerate(script):
            want = [_answer(i, outcome)]
            if outcome.endswith("stream") and "duplicate" in noise:
                want.append(("ok", "second"))   # came while the stream was being read: first to end
            assert done[i] in want, (i, outcome, done[i], script)
        assert not escaped, escaped
        # the Room goes on: another call is answered
        t = asyncio.ensure_future(call(99))
        rid = (await _request_ids(p, len(script) + 1))[99]
        for pkt in _packets("a", rid, 99, "packet"):
            await p.send(pkt)
        assert await t == _answer(99, "packet")
    finally:
        asyncio.get_event_loop().set_exception_handler(None)
        await close(a, p, q)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=scripts)
def test_each_call_resolves_once_with_its_callees_first_answer_whatever_comes_meanwhile(script):
    asyncio.run(_play(*script))
