"""The Node interop peer checked without the project's relay.

- test_node_selftest: the bundle's in-process self-test (real livekit-client managers,
  our LINK client, wired through a stand-in relay over loopback TCP).
- test_driver_*: nodepeer.NodePeer driving two peer PROCESSES through that stand-in relay
  (tests/interop/node/src/testrelay.ts: routes like LINK.md, does NOT verify tokens), so
  the driver and the command interface are covered even when `lkedge relay` is absent.
  test_node_smoke.py repeats the essentials through the real relay.
"""
import base64
import hashlib
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nodepeer  # noqa: E402
from nodepeer import CommandFailed, NodePeer  # noqa: E402


def test_node_selftest():
    argv = [nodepeer.node_executable(), nodepeer.require_bundle(nodepeer.SELFTEST)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert ", 0 failed" in out.stderr, out.stderr


def _unsigned_token(identity, room="standin"):
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return "%s.%s." % (part({"alg": "none"}), part({"sub": identity,
                                                     "video": {"room": room, "roomJoin": True}}))


def _stand_in_relay():
    bundle = nodepeer.require_bundle(os.path.join(nodepeer.NODE_DIR, "build", "testrelay.cjs"))
    proc = subprocess.Popen([nodepeer.node_executable(), bundle], stdout=subprocess.PIPE)
    line = proc.stdout.readline().decode()
    assert line.startswith("ready tcp://127.0.0.1:"), line
    return proc, int(line.rsplit(":", 1)[1])


def _pair(port, **bob_kw):
    alice = NodePeer("127.0.0.1", port, _unsigned_token("alice"), name="alice")
    alice.start()
    bob = NodePeer("127.0.0.1", port, _unsigned_token("bob"), name="bob", **bob_kw)
    bob.start()
    alice.wait_event("participant_joined")
    return alice, bob


def test_driver_rpc_and_stream_between_two_processes(tmp_path):
    proc, port = _stand_in_relay()
    alice, bob = _pair(port)
    try:
        assert bob.joined["participants"][0]["identity"] == "alice"
        alice.call("register_rpc", method="echo", behaviour="echo")
        payload = ("é€😀x" * 70000)  # 770000 UTF-8 bytes, multi-byte throughout
        src = tmp_path / "req.txt"
        src.write_text(payload, encoding="utf-8")
        dst = tmp_path / "resp.txt"
        reply = bob.call("perform_rpc", destination="alice", method="echo",
                         payload_file=str(src), response_file=str(dst))
        digest = hashlib.sha256(payload.encode()).hexdigest()
        assert reply["payload_sha256"] == digest
        assert dst.read_bytes() == payload.encode()
        invoked = alice.wait_event("rpc_invoked", method="echo")
        assert invoked["caller"] == "bob" and invoked["payload_sha256"] == digest

        alice.call("register_stream_handler", kind="text", topic="chat")
        bob.call("send_text", topic="chat", payload="hello", attributes={"k": "v"})
        event = alice.wait_event("stream", topic="chat")
        assert (event["sender"], event["text"], event["attributes"]) == ("bob", "hello",
                                                                          {"k": "v"})
    finally:
        bob.close()
        alice.close()
        proc.kill()
        proc.wait()


def test_driver_reports_rpc_errors_and_departures():
    proc, port = _stand_in_relay()
    alice, bob = _pair(port)
    try:
        alice.call("register_rpc", method="fail", behaviour="fail", code=4242, message="m",
                   data="d")
        try:
            bob.call("perform_rpc", destination="alice", method="fail", payload="")
            raise AssertionError("perform_rpc of a failing method returned ok")
        except CommandFailed as e:
            assert (e.code, e.error["message"], e.error["data"]) == (4242, "m", "d")
        reply = bob.request("no_such_command")
        assert not reply["ok"] and "unknown command" in reply["error"]["message"]
        alice.close()
        left = bob.wait_event("participant_left")
        assert left["identity"] == "alice"
        assert bob.call("participants")["participants"] == []
    finally:
        bob.close()
        alice.close()
        proc.kill()
        proc.wait()
