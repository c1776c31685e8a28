"""Two real livekit-client peers (Node, tests/interop/node) through the project's relay
(`lkedge relay`, development keys, loopback): RPC v2<->v2 small and 1 MiB, a text stream,
and an RPC error, all over LINK.md with tokens minted by `lkedge token`.

Needs the Node bundle: npm ci --prefix tests/interop/node && npm run --prefix
tests/interop/node build
"""
import hashlib
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nodepeer import CommandFailed, NodePeer  # noqa: E402

from lkedge_host.relay.process import RelayProcess  # noqa: E402

MIB = 1 << 20


@pytest.fixture(scope="module")
def relay():
    r = RelayProcess(room="node-smoke").start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def peers(relay):
    alice = NodePeer(relay.host, relay.port, relay.token("alice"), name="alice")
    bob = NodePeer(relay.host, relay.port, relay.token("bob"), name="bob")
    try:
        alice.start()
        bob.start()
        alice.wait_event("participant_joined")
        alice.call("register_rpc", method="echo", behaviour="echo")
        alice.call("register_rpc", method="fail", behaviour="fail", code=3001,
                   message="refused", data="why")
        yield alice, bob
    finally:
        bob.close()
        alice.close()


def _multibyte_text(n_bytes):
    """n_bytes of UTF-8 with 1-4 byte characters, not too repetitive for deflate."""
    chars, size, i = [], 0, 0
    alphabet = "aé€😀bç中𝄞"
    while size < n_bytes:
        ch = alphabet[(i * 7 + i // 13) % len(alphabet)] if size + 4 <= n_bytes else "."
        chars.append(ch)
        size += len(ch.encode())
        i += 1
    return "".join(chars)


def test_relay_announces_each_peer_with_protocol_2_and_capability_2(peers):
    alice, bob = peers
    seen = {p["identity"]: p for p in bob.call("participants")["participants"]}
    assert seen["alice"]["client_protocol"] == 2
    assert seen["alice"]["capabilities"] == [2]
    assert bob.joined["identity"] == "bob"


def test_relay_server_version_passes_livekit_client_rpc_gate(peers):
    # RpcClientManager.performRpc throws UNSUPPORTED_SERVER (1403) when the join's
    # server_version is non-empty and compareVersions(server_version, "1.8.0") < 0; that
    # compare parseInt()s each dot-separated part, so any non-numeric text fails it.
    alice, bob = peers
    version = bob.joined["server_version"]
    m = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?$", version)
    assert version == "" or (m and tuple(int(x or 0) for x in m.groups()) >= (1, 8, 0)), (
        "JOINED server_version %r makes livekit-client refuse every RPC with 1403; "
        "announce a LiveKit-style version >= 1.8.0 (or an empty string)" % version)


def test_small_rpc_v2_to_v2_roundtrip(peers):
    alice, bob = peers
    reply = bob.call("perform_rpc", destination="alice", method="echo", payload="héllo 😀")
    assert reply["payload"] == "héllo 😀"
    invoked = alice.wait_event("rpc_invoked", request_id=reply["request_id"])
    assert invoked["caller"] == "bob"
    assert invoked["response_timeout"] == 15000


def test_one_mib_rpc_v2_to_v2_roundtrip(peers, tmp_path):
    alice, bob = peers
    payload = _multibyte_text(MIB).encode()
    src, dst = tmp_path / "req.txt", tmp_path / "resp.txt"
    src.write_bytes(payload)
    reply = bob.call("perform_rpc", destination="alice", method="echo",
                     payload_file=str(src), response_file=str(dst), timeout=60)
    assert reply["payload_len"] == MIB
    assert reply["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert dst.read_bytes() == payload


def test_rpc_error_crosses_the_relay_unchanged(peers):
    alice, bob = peers
    try:
        bob.call("perform_rpc", destination="alice", method="fail", payload="")
        raise AssertionError("a failing method returned ok")
    except CommandFailed as e:
        assert (e.code, e.error["message"], e.error["data"]) == (3001, "refused", "why")


def test_text_stream_with_attributes_reaches_handler(peers):
    alice, bob = peers
    alice.call("register_stream_handler", kind="text", topic="smoke-chat")
    text = _multibyte_text(40000)
    sent = bob.call("send_text", topic="smoke-chat", payload=text, destination="alice",
                    attributes={"kind": "smoke"})
    event = alice.wait_event("stream", topic="smoke-chat", timeout=15)
    assert event["sender"] == "bob"
    assert event["attributes"] == {"kind": "smoke"}
    assert event["len"] == len(text.encode())
    assert event["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert event["wire"]["compression"] == sent["wire"]["compression"] == 1
