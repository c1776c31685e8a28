"""Node (livekit-client's real RPC and data-stream managers) <-> our CPython library,
through our relay (`lkedge relay`, loopback, development keys).

The matrix: client_protocol 0/1/2 on each side, with and without
CAP_COMPRESSION_DEFLATE_RAW, both directions; payloads 0 B, 1 B, 15360 B, 15361 B,
20 KB, 1 MiB (main diagonal plus one mixed pair) of multi-byte UTF-8 whose characters
straddle the 15000-byte chunk edges. Expectations come from RPC.md / STREAMS.md (see
conftest.expected_rpc / expected_compressed); the test bodies are shared with
test_interop_micropython.py, which imports them and sets OURS = "mp".

Needs the Node bundle (make setup).
"""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from py_peer import (ALL_CONFIGS, ATTRS, FAIL, MAX_V1, MIB, PATTERN,  # noqa: E402
                      PROTO_CONFIGS, cfg_id, expected_compressed, expected_rpc,
                      pattern_text, sha)

OURS = "py"
DIRECTIONS = ("node->ours", "ours->node")
RPC_SIZES = (0, 1, MAX_V1, MAX_V1 + 1, 20 * 1024)
STREAM_SIZES = (0, 1, 14000, 20 * 1024)
MIXED = ((2, True), (1, False))   # the one off-diagonal pair that also gets 1 MiB


def _rpc_params(pairs, sizes):
    out = []
    for direction in DIRECTIONS:
        for c, h in pairs:
            for n in sizes:
                out.append(pytest.param(direction, c, h, n,
                                        id="%s-%s-%s-%d" % (direction, cfg_id(c), cfg_id(h), n)))
    return out


ALL_PAIRS = [(c, h) for c in ALL_CONFIGS for h in ALL_CONFIGS]
PROTO_PAIRS = [(c, h) for c in PROTO_CONFIGS for h in PROTO_CONFIGS]
BIG_PAIRS = [(c, c) for c in ALL_CONFIGS] + [MIXED]


def _check_rpc_reply(reply, expect, data):
    if expect is None:
        assert reply["ok"], "expected success, got %r" % (reply.get("error"),)
        assert reply["payload_len"] == len(data)
        assert reply["payload_sha256"] == sha(data)
    else:
        assert not reply["ok"], "expected RpcError %d, got success" % expect
        assert reply["error"]["code"] == expect, reply["error"]


# ------------------------------------------------------------------ RPC
@pytest.mark.parametrize("direction,caller_cfg,handler_cfg,size",
                         _rpc_params(ALL_PAIRS, RPC_SIZES) + _rpc_params(BIG_PAIRS, (MIB,)))
def test_rpc_echo_returns_the_request_unchanged_or_the_v1_size_error(
        pool, direction, caller_cfg, handler_cfg, size):
    caller, handler, _, _ = pool.ends(direction, caller_cfg, handler_cfg)
    fields, data = pool.payloads.fields(size)
    reply = caller.request("perform_rpc", timeout=90, destination=handler.name, method="echo",
                           timeout_ms=60000, **fields)
    _check_rpc_reply(reply, expected_rpc(caller_cfg[0], handler_cfg[0], size, size), data)


@pytest.mark.parametrize("direction,caller_cfg,handler_cfg,size",
                         _rpc_params(PROTO_PAIRS + [((2, False), (2, False))],
                                     (0, MAX_V1, MAX_V1 + 1)))
def test_rpc_response_size_limit_applies_to_v1_callers_only(
        pool, direction, caller_cfg, handler_cfg, size):
    caller, handler, _, _ = pool.ends(direction, caller_cfg, handler_cfg)
    reply = caller.request("perform_rpc", timeout=60, destination=handler.name,
                           method="pattern_%d" % size, payload="x")
    _check_rpc_reply(reply, expected_rpc(caller_cfg[0], handler_cfg[0], 1, size),
                     pattern_text(PATTERN, size).encode())


@pytest.mark.parametrize("direction,caller_cfg,handler_cfg,size",
                         _rpc_params([((2, True), (2, True)), ((0, True), (0, True))], (20 * 1024,)))
def test_rpc_handler_sees_the_whole_request(pool, direction, caller_cfg, handler_cfg, size):
    caller, handler, _, _ = pool.ends(direction, caller_cfg, handler_cfg)
    fields, data = pool.payloads.fields(size)
    reply = caller.request("perform_rpc", timeout=60, destination=handler.name, method="sha",
                           **fields)
    if expected_rpc(caller_cfg[0], handler_cfg[0], size, 80) is not None:
        assert reply["error"]["code"] == 1402
        return
    assert reply["ok"], reply
    assert json.loads(reply["payload"]) == {"len": size, "sha256": sha(data)}


ERROR_CASES = {
    "rpc_error_passthrough": ("fail", FAIL["code"]),
    "unknown_method": ("no_such_method", 1400),
    "handler_exception": ("throw", 1500),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
@pytest.mark.parametrize("direction,caller_cfg,handler_cfg",
                         [pytest.param(d, c, h, id="%s-%s-%s" % (d, cfg_id(c), cfg_id(h)))
                          for d in DIRECTIONS for c, h in PROTO_PAIRS])
def test_rpc_errors_cross_with_code_message_and_data(pool, direction, caller_cfg, handler_cfg, case):
    caller, handler, _, _ = pool.ends(direction, caller_cfg, handler_cfg)
    method, code = ERROR_CASES[case]
    reply = caller.request("perform_rpc", destination=handler.name, method=method, payload="x")
    assert not reply["ok"], reply
    err = reply["error"]
    assert err["code"] == code, err
    if case == "rpc_error_passthrough":
        assert (err["message"], err["data"]) == (FAIL["message"], FAIL["data"])


@pytest.mark.parametrize("direction,caller_cfg,handler_cfg",
                         [pytest.param(d, c, h, id="%s-%s-%s" % (d, cfg_id(c), cfg_id(h)))
                          for d in DIRECTIONS for c, h in PROTO_PAIRS])
def test_rpc_short_timeout_against_a_sleeping_handler_is_1502(pool, direction, caller_cfg, handler_cfg):
    caller, handler, _, _ = pool.ends(direction, caller_cfg, handler_cfg)
    reply = caller.request("perform_rpc", destination=handler.name, method="slow", payload="zz",
                           timeout_ms=300)
    assert not reply["ok"], reply
    assert reply["error"]["code"] == 1502, reply["error"]


def _crash(peer):
    if hasattr(peer, "crash"):
        peer.crash()
    else:
        peer.proc.kill()
        peer.proc.wait()


@pytest.mark.parametrize("handler_cfg", [(0, True), (2, True)], ids=cfg_id)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_rpc_to_a_handler_that_dies_mid_call_is_1503(pool, direction, handler_cfg):
    if direction == "node->ours":
        caller, handler = pool.peer("node", (2, True)), pool.fresh("ours", handler_cfg, "dies")
    else:
        caller, handler = pool.peer("ours", (2, True)), pool.fresh("node", handler_cfg, "dies")
    handler.call("register_rpc", method="hang", behaviour="echo", sleep_ms=30000)
    pool.pair(caller, handler)
    cid = caller.send("perform_rpc", destination=handler.name, method="hang", payload="x",
                      timeout_ms=30000)
    handler.wait_event("rpc_invoked", method="hang")
    _crash(handler)
    reply = caller.wait_reply(cid, timeout=15)
    assert not reply["ok"], reply
    assert reply["error"]["code"] == 1503, reply["error"]


# ------------------------------------------------------------------ streams
def _stream_params(pairs, sizes):
    return [pytest.param(d, k, s, r, n, id="%s-%s-%s-%s-%d" % (d, k, cfg_id(s), cfg_id(r), n))
            for d in DIRECTIONS for k in ("text", "bytes") for s, r in pairs for n in sizes]


# The sender's own capability changes nothing it sends: 3 sender x 6 receiver configs.
STREAM_PAIRS = [(s, r) for s in PROTO_CONFIGS for r in ALL_CONFIGS]
BIG_STREAM_PAIRS = [(c, c) for c in PROTO_CONFIGS] + [((2, True), (2, False))]


def _received_compression(kind, event):
    return (event["wire"] if kind == "node" else event["info"])["compression"]


def _check_stream(pool, direction, kind, sender_cfg, recv_cfg, size, cmd, **extra):
    sender, receiver, skind, rkind = pool.ends(direction, sender_cfg, recv_cfg)
    fields, data = pool.payloads.fields(size)
    attrs = dict(ATTRS, case="%s-%s-%d" % (cmd, kind, size))
    reply = sender.call(cmd, timeout=90, topic="t" if kind == "text" else "b",
                        destination=receiver.name, attributes=attrs, **dict(fields, **extra))
    sid = reply["info"]["id"]
    ev = receiver.wait_event(lambda e: e.get("stream_id") == sid
                             and e["event"] in ("stream", "stream_error"), timeout=60)
    assert ev["event"] == "stream", "the receiver's reader failed after %d bytes: %r" % (
        ev["len"], ev.get("error"))
    assert (ev["kind"], ev["sender"], ev["attributes"]) == (kind, sender.name, attrs)
    assert (ev["len"], ev["sha256"]) == (size, sha(data))
    return reply, ev, skind, rkind


@pytest.mark.parametrize("direction,kind,sender_cfg,recv_cfg,size",
                         _stream_params(STREAM_PAIRS, STREAM_SIZES)
                         + _stream_params(BIG_STREAM_PAIRS, (MIB,)))
def test_finite_stream_arrives_whole_with_attributes_and_negotiated_compression(
        pool, direction, kind, sender_cfg, recv_cfg, size):
    reply, ev, skind, rkind = _check_stream(pool, direction, kind, sender_cfg, recv_cfg, size,
                                            "send_text" if kind == "text" else "send_bytes",
                                            piece_bytes=8192)
    want = expected_compressed(skind, sender_cfg[0], recv_cfg, size, reply.get("via"))
    assert (_received_compression(rkind, ev) == 1) == want


@pytest.mark.parametrize("direction,kind,sender_cfg,recv_cfg,size",
                         _stream_params([(c, c) for c in PROTO_CONFIGS], (0, 20 * 1024)))
def test_incremental_stream_arrives_whole_uncompressed(pool, direction, kind, sender_cfg,
                                                       recv_cfg, size):
    reply, ev, skind, rkind = _check_stream(pool, direction, kind, sender_cfg, recv_cfg, size,
                                            "stream_text" if kind == "text" else "stream_bytes",
                                            piece_bytes=5000)
    assert _received_compression(rkind, ev) == 0
