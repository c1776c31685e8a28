"""The browser client (clients/browser) against the real relay's WebSocket port and a
MicroPython participant standing in for a board.

The client runs under Node, whose WebSocket is the same standard API a browser's is
(Node 20: --experimental-websocket), inside the interop peer started with --ws-url: its
Room.connect, Room.registerRpcMethod and localParticipant.performRpc / sendText are the
code a web page calls (the room_* commands of tests/interop/node/src/roomcommands.ts).
No browser runs here (test_browser_page.py runs the example page in Chromium); the
bundle a page loads (dist/lkedge.mjs) is built from the same sources and checked to load
and export the API below.
"""
import hashlib
import json
import os
import subprocess
import sys
import threading

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "interop"))
from nodepeer import CommandFailed, NodePeer, NodePeerError, node_executable, websocket_flags  # noqa: E402
from py_peer import MpPeer  # noqa: E402

from lkedge_host.relay.process import RelayProcess, _free_port  # noqa: E402

BUNDLE = os.path.join(ROOT, "clients", "browser", "dist", "lkedge.mjs")


def _relay(room):
    # A fixed WebSocket port, so that a restarted relay is where the browser left it; one
    # taken meanwhile by a test running in parallel makes the relay exit: pick again.
    for attempt in range(3):
        try:
            return RelayProcess(room=room, extra_args=["--ws-port", str(_free_port())]).start()
        except RuntimeError:
            if attempt == 2:
                raise


def _browser(relay, identity="browser", token=None):
    peer = NodePeer(relay.host, relay.port, token or relay.token(identity), name=identity,
                    ws_url=relay.ws_url)
    peer.start()
    return peer


def _board(relay, identity="board"):
    board = MpPeer(relay.host, relay.port, relay.token(identity), name=identity, heapsize="256K")
    board.start()
    return board


@pytest.fixture(scope="module")
def room():
    relay = _relay("browser")
    board = _board(relay)
    board.call("register_rpc", method="echo", behaviour="echo")
    board.call("register_stream_handler", topic="chat", kind="text")
    browser = _browser(relay)
    yield relay, board, browser
    browser.close()
    board.close()
    relay.stop()


def test_browser_calls_a_board_method_with_a_payload_over_the_v1_limit(room):
    _, board, browser = room
    payload = "é" * 60000  # 120,000 UTF-8 bytes: a v2 call, sent as a data stream
    reply = browser.call("room_perform_rpc", destination="board", method="echo", payload=payload)
    assert reply["payload_len"] == 120000
    assert reply["payload_sha256"] == hashlib.sha256(payload.encode()).hexdigest()
    invoked = board.wait_event("rpc_invoked", method="echo")
    assert invoked["caller"] == "browser"  # stamped by the relay from the token


def test_board_calls_a_method_the_browser_registered(room):
    _, board, browser = room
    browser.call("room_register_rpc", method="browser.greet", prefix="hello, ")
    reply = board.call("perform_rpc", destination="browser", method="browser.greet", payload="board")
    assert reply["payload"] == "hello, board"


def test_a_browser_method_that_throws_rpc_error_reaches_the_board_with_its_code(room):
    _, board, browser = room
    browser.call("room_register_rpc", method="browser.refuse", fail=2001)
    with pytest.raises(CommandFailed) as e:
        board.call("perform_rpc", destination="browser", method="browser.refuse", payload="x")
    assert e.value.code == 2001
    assert "refused by browser" in e.value.error["message"]


def test_calling_a_method_the_board_lacks_rejects_with_unsupported_method(room):
    _, _, browser = room
    with pytest.raises(CommandFailed) as e:
        browser.call("room_perform_rpc", destination="board", method="no.such.method", payload="")
    assert e.value.code == 1400  # UNSUPPORTED_METHOD, answered by the board


def test_browser_text_stream_reaches_the_board_with_its_sender_verified(room):
    _, board, browser = room
    browser.call("room_send_text", topic="chat", destination="board", payload="hi from a page")
    got = board.wait_event("stream", topic="chat")
    assert got["text"] == "hi from a page"
    assert got["sender"] == "browser"  # stamped by the relay from the token


def test_a_file_the_board_streams_to_the_browser_arrives_whole(room, tmp_path):
    _, board, browser = room
    browser.call("register_stream_handler", topic="file", kind="bytes")
    data = bytes((i * 7 + (i >> 8)) & 255 for i in range(200000))
    path = tmp_path / "reading.bin"
    path.write_bytes(data)
    board.call("stream_bytes", topic="file", destination="browser", payload_file=str(path),
               name="reading.bin", piece_bytes=4096)
    got = browser.wait_event("stream", topic="file", timeout=20)
    assert got["sender"] == "board"
    assert (got["len"], got["sha256"]) == (200000, hashlib.sha256(data).hexdigest())
    assert got["info"]["name"] == "reading.bin"


def test_room_state_lists_the_board_and_names_the_room(room):
    _, _, browser = room
    state = browser.call("room_state")
    assert state["state"] == "connected"
    assert state["name"] == "browser"
    assert state["identity"] == "browser"
    assert state["remote"] == ["board"]


def test_expired_token_is_refused_with_the_relays_leave_code():
    relay = _relay("browser-auth")
    try:
        with pytest.raises(NodePeerError) as e:
            _browser(relay, token=relay.token("late", ttl_s=-60))
        assert "LEAVE 3" in str(e.value)
    finally:
        relay.stop()


def test_a_lost_link_fails_pending_calls_then_the_browser_rejoins_with_its_methods():
    relay = _relay("browser-rejoin")
    board = browser = None
    try:
        board = _board(relay)
        board.call("register_rpc", method="slow", behaviour="echo", sleep_ms=20000)
        browser = _browser(relay)
        browser.call("room_register_rpc", method="browser.greet", prefix="again, ")
        pending = browser.send("room_perform_rpc", destination="board", method="slow", payload="x",
                               timeout_ms=30000)
        # and one to an identity nobody announced (it would wait for its 7 s ack timeout)
        unheard = browser.send("room_perform_rpc", destination="ghost", method="any", payload="x",
                               timeout_ms=30000)
        board.wait_event("rpc_invoked", method="slow")
        relay.restart()
        for cid in (pending, unheard):
            failed = browser.wait_reply(cid, timeout=3)
            assert not failed["ok"] and failed["error"]["code"] == 1503  # RECIPIENT_DISCONNECTED
        browser.wait_event("reconnecting")
        browser.wait_event("reconnected", timeout=15)
        # the interop board does not rejoin: the rejoin's JOINED says it left meanwhile
        gone = browser.wait_event("room_participant_disconnected", identity="board")
        assert gone["reason"] == "left while the link was down"
        assert browser.call("room_state")["remote"] == []
        # a fresh board calls the method the browser registered before the loss
        board.close()
        board = _board(relay, identity="board-2")
        reply = board.call("perform_rpc", destination="browser", method="browser.greet", payload="board")
        assert reply["payload"] == "again, board"
    finally:
        for p in (browser, board):
            if p is not None:
                p.close()
        relay.stop()


def test_a_token_function_is_called_again_at_each_rejoin(tmp_path):
    relay = _relay("browser-token")
    browser = None
    try:
        token_file = tmp_path / "token"
        token_file.write_text(relay.token("kiosk"))
        browser = NodePeer(relay.host, relay.port, "", name="kiosk", ws_url=relay.ws_url,
                           token_file=str(token_file))
        browser.start()
        # what the rejoin reads now is refused: so it was read again, not kept
        token_file.write_text(relay.token("kiosk", ttl_s=-60))
        relay.restart()
        ended = browser.wait_event("disconnected", timeout=15)
        assert ended["reason"].startswith("relay refused JOIN: LEAVE 3"), ended
    finally:
        if browser is not None:
            browser.close()
        relay.stop()


def test_a_newer_tab_with_the_same_identity_ends_the_older_one_without_a_rejoin(room):
    relay, _, _ = room
    older = _browser(relay, identity="tab")
    newer = _browser(relay, identity="tab")
    try:
        ended = older.wait_event("disconnected", timeout=10)
        assert ended["reason"].startswith("LEAVE 2")  # duplicate identity: final
        assert not [e for e in older.events() if e["event"] == "reconnecting"]
        assert older.call("room_state")["state"] == "disconnected"
        assert newer.call("room_state")["state"] == "connected"
    finally:
        newer.close()
        older.close()


def test_disconnect_leaves_the_room_and_the_board_sees_it_go(room):
    relay, board, _ = room
    other = _browser(relay, identity="tab-2")
    board.wait_event("participant_joined", timeout=10, identity="tab-2")
    reply = other.call("room_disconnect")
    assert reply["state"] == "disconnected"
    board.wait_event("participant_left", timeout=10, identity="tab-2")
    # a call with no link fails at once, as an RpcError like any other failed call
    with pytest.raises(CommandFailed) as e:
        other.call("room_perform_rpc", destination="board", method="echo", payload="x", timeout=5)
    assert e.value.code == 1505 and "not connected" in e.value.error["data"], e.value.error
    other.close()


def test_the_page_bundle_loads_as_an_es_module_and_exports_the_api():
    assert os.path.exists(BUNDLE), "clients/browser/dist/lkedge.mjs is missing: make setup builds it"
    script = ("const m = await import(%s); console.log(JSON.stringify({room: typeof m.Room.connect, "
              "rpcError: new m.RpcError(1400, 'x').code}))" % json.dumps("file://" + BUNDLE))
    out = subprocess.run([node_executable(), "--input-type=module", "-e", script],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"room": "function", "rpcError": 1400}


def test_a_join_refused_with_a_leave_that_may_pass_leaves_no_rejoin_loop_behind():
    # Room.connect rejects; nothing may go on trying for a room the page never got (a
    # close handler on every link, not only on joined ones, started a loop here)
    from websockets.sync.server import serve

    from lkedge import cbor, link, relayside
    joins = []

    def relay_full(ws):
        joins.append(ws.recv())
        ws.send(relayside.encode_frame(link.LEAVE, cbor.dumps({"code": 5, "reason": "relay full"})))
        ws.close()
    script = ("const m = await import(%s); try { await m.Room.connect(process.argv[1], 't', "
              "{reconnectMinMs: 50, reconnectMaxMs: 100, logSink: () => {}}); console.log('joined'); } "
              "catch (e) { console.log(e.message); } setTimeout(() => process.exit(0), 1500);"
              % json.dumps("file://" + BUNDLE))
    with serve(relay_full, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = "ws://127.0.0.1:%d" % server.socket.getsockname()[1]
        out = subprocess.run([node_executable()] + list(websocket_flags()) + ["--input-type=module", "-e", script, url],
                             capture_output=True, text=True, timeout=30)
        server.shutdown()
    assert out.stdout.startswith("relay refused JOIN: LEAVE 5"), out.stdout + out.stderr
    assert len(joins) == 1, "%d JOINs after connect() was refused" % len(joins)
