"""The lib's link client end to end: real `lkedge relay` process, real sockets, Rooms.

Covers what only a real relay and real transports show: tcp:// and ws:// joins, every
client_protocol on either side, 1 MiB each way, a participant killed mid-call and
mid-stream, duplicate identity, refused tokens, and reconnect after a relay restart.
"""
import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from lkedge.config import RoomOptions
from lkedge.room import ConnectError, Room
from lkedge.rpc import RpcError
from lkedge_host.relay.process import RelayProcess

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def relay():
    with RelayProcess(http=True) as r:
        yield r


async def _join(relay, identity, url=None, **opts):
    opts.setdefault("auto_reconnect", False)
    room = Room(RoomOptions(**opts))
    await room.connect(url or relay.url, relay.token(identity))
    return room


async def _until(pred, timeout=10.0):
    t_end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > t_end:
            raise AssertionError("condition not reached within %.1f s" % timeout)
        await asyncio.sleep(0.02)


def _sha(s):
    return hashlib.sha256(s.encode() if isinstance(s, str) else s).hexdigest()


@pytest.mark.parametrize("caller_protocol,handler_protocol", [(2, 2), (2, 1), (2, 0), (0, 2), (1, 2), (1, 1)])
def test_rpc_both_ways_every_protocol_pair_over_tcp(relay, caller_protocol, handler_protocol):
    async def go():
        a = await _join(relay, "a%d%d" % (caller_protocol, handler_protocol), client_protocol=caller_protocol)
        b = await _join(relay, "b%d%d" % (caller_protocol, handler_protocol), client_protocol=handler_protocol)
        b.local_participant.register_rpc_method("sha", lambda d: _sha(d.payload))
        b.local_participant.register_rpc_method("echo", lambda d: d.payload)
        await _until(lambda: b.local_participant.identity in a.remote_participants)
        lp = a.local_participant
        dest = b.local_participant.identity
        assert await lp.perform_rpc(destination_identity=dest, method="echo", payload="small ✓") == "small ✓"
        v2 = caller_protocol >= 1 and handler_protocol >= 1
        big = "ü" * (MIB // 2)  # 1 MiB of UTF-8
        if v2:
            assert await lp.perform_rpc(destination_identity=dest, method="sha", payload=big) == _sha(big)
        else:
            try:
                await lp.perform_rpc(destination_identity=dest, method="sha", payload=big)
            except RpcError as e:
                assert e.code == RpcError.REQUEST_PAYLOAD_TOO_LARGE
            else:
                raise AssertionError("1 MiB to a v1 peer must fail with 1402")
        await a.disconnect()
        await b.disconnect()
    asyncio.run(go())


def test_websocket_transport_carries_1mib_streams_both_ways(relay):
    async def go():
        assert relay.ws_url and relay.ws_url.startswith("ws://")
        a = await _join(relay, "ws-a", url=relay.ws_url)
        b = await _join(relay, "ws-b")
        got = []

        async def keep(reader, sender):
            got.append((sender, await reader.read_all()))
        a.register_byte_stream_handler("blob", keep)
        b.register_byte_stream_handler("blob", keep)
        await _until(lambda: "ws-b" in a.remote_participants)
        data = os.urandom(MIB)
        await a.local_participant.send_bytes(data, topic="blob", destination_identities=["ws-b"])
        await b.local_participant.send_bytes(data[::-1], topic="blob", destination_identities=["ws-a"])
        await _until(lambda: len(got) == 2)
        assert sorted(got) == sorted([("ws-a", data), ("ws-b", data[::-1])])
        await a.disconnect()
        await b.disconnect()
    asyncio.run(go())


PEER = textwrap.dedent("""
    import asyncio, sys
    from lkedge.config import RoomOptions
    from lkedge.room import Room

    async def main():
        room = Room(RoomOptions(auto_reconnect=False))
        async def hang(data):
            await asyncio.sleep(3600)
        room.local_participant.register_rpc_method("hang", hang)
        await room.connect(sys.argv[1], sys.argv[2])
        await room.local_participant.send_text("x", topic="ready")
        w = await room.local_participant.stream_bytes("endless", topic="endless", destination_identities=[sys.argv[3]])
        await w.write(b"partial" * 1000)
        print("STREAMING", flush=True)
        await asyncio.sleep(3600)
    asyncio.run(main())
""")


def test_peer_killed_mid_call_and_mid_stream(relay, tmp_path):
    script = tmp_path / "peer.py"
    script.write_text(PEER)

    async def go():
        a = await _join(relay, "survivor")
        errors = []

        async def endless(reader, sender):
            try:
                await reader.read_all()
            except Exception as e:
                errors.append(str(e))
        a.register_byte_stream_handler("endless", endless)
        base_conns = relay.health()["connections"]
        base_rss = relay.rss()
        proc = subprocess.Popen([sys.executable, str(script), relay.url, relay.token("victim"), "survivor"],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "STREAMING"
            await _until(lambda: "victim" in a.remote_participants)
            call = asyncio.ensure_future(a.local_participant.perform_rpc(
                destination_identity="victim", method="hang", payload="?", response_timeout=30))
            await asyncio.sleep(0.3)
            proc.send_signal(signal.SIGKILL)
            try:
                await asyncio.wait_for(call, 10)
            except RpcError as e:
                assert e.code == RpcError.RECIPIENT_DISCONNECTED, e
            else:
                raise AssertionError("the call to a killed peer must fail with 1503")
            await _until(lambda: errors)
            assert "abnormal" in errors[0]
            assert "victim" not in a.remote_participants
            # the relay forgets the victim: connections and room back to the baseline
            await _until(lambda: "victim" not in relay.health()["rooms"]["lkedge"]["identities"])
            assert relay.health()["connections"] == base_conns
            assert relay.rss() < base_rss + 8 * 1024 * 1024, (relay.rss(), base_rss)
            # the survivor is unaffected
            b = await _join(relay, "after")
            b.local_participant.register_rpc_method("ok", lambda d: "ok")
            await _until(lambda: "after" in a.remote_participants)
            assert await a.local_participant.perform_rpc(destination_identity="after", method="ok") == "ok"
            await b.disconnect()
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()
        await a.disconnect()
    asyncio.run(go())


def test_duplicate_identity_replaces_the_old_connection(relay):
    async def go():
        old = await _join(relay, "twin", auto_reconnect=True)
        left = []
        old.on("disconnected", lambda why: left.append(why))
        new = await _join(relay, "twin")
        await _until(lambda: left)
        assert old.leave_code == 2, old.leave_code
        await asyncio.sleep(0.5)
        assert old.connection_state == "disconnected", "a replaced connection must not fight back"
        await new.disconnect()
        await old.disconnect()
    asyncio.run(go())


def test_expired_and_forged_tokens_are_refused_with_leave_3(relay):
    from lkedge_host.relay import auth

    async def go():
        room = Room(RoomOptions(auto_reconnect=False))
        expired = auth.mint_token(relay.key, relay.secret, identity="late", room="lkedge", ttl_s=-60)
        forged = auth.mint_token(relay.key, "x" * 48, identity="forger", room="lkedge")
        for token in (expired, forged, "not-a-jwt"):
            try:
                await room.connect(relay.url, token)
            except ConnectError as e:
                assert e.leave_code == 3, e
            else:
                raise AssertionError("token must be refused")
    asyncio.run(go())


def test_reconnect_after_relay_restart_keeps_methods(tmp_path):
    async def go(relay):
        board = Room(RoomOptions(reconnect_min_ms=100, reconnect_max_ms=500))
        board.local_participant.register_rpc_method("ping", lambda d: "pong")
        events = []
        board.on("reconnected", lambda: events.append("reconnected"))
        await board.connect(relay.url, relay.token("board"))
        relay.restart()
        await _until(lambda: "reconnected" in events, timeout=15)
        host = await _join(relay, "host")
        await _until(lambda: "board" in host.remote_participants)
        assert await host.local_participant.perform_rpc(destination_identity="board", method="ping") == "pong"
        await host.disconnect()
        await board.disconnect()
    with RelayProcess() as relay:
        asyncio.run(go(relay))


def test_pending_call_fails_when_the_link_is_lost():
    async def go(relay):
        a = await _join(relay, "a")
        b = await _join(relay, "b")

        async def hang(d):
            await asyncio.sleep(3600)
        b.local_participant.register_rpc_method("hang", hang)
        await _until(lambda: "b" in a.remote_participants)
        call = asyncio.ensure_future(a.local_participant.perform_rpc(destination_identity="b", method="hang",
                                                                     response_timeout=30))
        await asyncio.sleep(0.3)
        relay.kill()
        try:
            await asyncio.wait_for(call, 10)
        except RpcError as e:
            assert e.code == RpcError.RECIPIENT_DISCONNECTED and "link lost" in (e.data or ""), e
        else:
            raise AssertionError("a pending call must fail when the link is lost")
        await a.disconnect()
        await b.disconnect()
    relay = RelayProcess().start()
    try:
        asyncio.run(go(relay))
    finally:
        relay.stop()
