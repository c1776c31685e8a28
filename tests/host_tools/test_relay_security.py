"""The relay against a hostile participant (holding a valid token, or none): what one
connection sends must not grow the relay without bound, break another participant's
link, let it pose as someone else, or leave the relay with a half-removed connection.
Real loopback sockets where the attack is about sockets; the sans-I/O Router otherwise.
"""
import asyncio
import time

import jwt
from livekit.protocol import models

from linkpeer import LinkPeer, RelayUnderTest
from lkedge import link, ws
from lkedge_host.relay import auth
from lkedge_host.relay import router as rt
from test_relay_router import Sim
from test_relay_server import expect_leave, no_frame, parse

BOARD_MAX_CONTROL = 16384     # an esp32 profile: control frames are held whole in this


async def _board(r, identity):
    """A joined participant whose frame reader is a small board's (max 16384)."""
    p = LinkPeer(max_frame=BOARD_MAX_CONTROL)
    p._r, p._w = await asyncio.open_connection(*r.tcp)
    p._kind = "tcp"
    p._task = asyncio.ensure_future(p._pump())
    r.peers.append(p)
    p.joined = await p.join(r.token(identity))
    return p


async def _skip_to(peer, t, timeout=3.0):
    while True:
        got, body = await peer.next_frame(timeout)
        if got == t:
            return body


async def test_ping_flood_from_a_peer_that_never_reads_is_bounded_and_dropped():
    queue = 128 * 1024
    async with RelayUnderTest(queue_bytes=queue, stuck_ms=500) as r:
        watcher = await r.peer("watcher")
        eve = await r.peer("eve")
        await watcher.expect(link.PARTICIPANT)
        eve._task.cancel()                  # never reads its PONGs
        pings = link.encode_frame(link.PING, b"p" * 64) * 1000
        peak = 0
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline and "eve" in r.router.rooms().get("lab", []):
            try:
                await asyncio.wait_for(eve.send_raw(pings), 0.2)
            except (asyncio.TimeoutError, OSError):
                pass                        # the relay stopped reading it: good
            for cid in list(r.srv.links):
                peak = max(peak, r.router.queued(cid))
        assert "eve" not in r.router.rooms()["lab"], \
            "a PING flooder that never reads was not dropped (queue at %d bytes)" % peak
        # the queue limit plus at most one read's worth of PONGs
        assert peak <= queue + 2 * 65536, peak
        left = await _skip_to(watcher, link.PARTICIPANT_LEFT)
        assert left["identity"] == "eve" and "stuck" in left["reason"], left
        await watcher.send_raw(link.encode_frame(link.PING, b"ok"))
        assert await _skip_to(watcher, link.PONG) == b"ok"


async def test_websocket_ping_flood_from_a_peer_that_never_reads_is_dropped():
    # websockets answers each ping with a pong by itself: a peer that pings and never
    # reads must not grow the relay's write buffer without bound.
    async with RelayUnderTest() as r:
        watcher = await r.peer("watcher")
        host, port = r.srv.addresses["ws"]
        rd, wr = await asyncio.open_connection(host, port)
        key = ws.new_key()
        wr.write(ws.handshake_request("%s:%d" % (host, port), "/", key))
        assert b" 101 " in await rd.readuntil(b"\r\n\r\n")
        mask = b"mask"
        join = link.encode_control(link.JOIN, {"v": 1, "token": r.token("eve")})
        wr.write(ws.encode_frame(2, join, mask))
        await _skip_to(watcher, link.PARTICIPANT)
        pings = ws.encode_frame(9, b"x" * 125, mask) * 500
        peak = 0
        deadline = time.monotonic() + 4
        try:
            while time.monotonic() < deadline and "eve" in r.router.rooms().get("lab", []):
                wr.write(pings)
                try:
                    await asyncio.wait_for(wr.drain(), 0.2)
                except asyncio.TimeoutError:
                    pass
                for ln in list(r.srv.links.values()):
                    if ln.kind == "ws":
                        peak = max(peak, ln.ws.transport.get_write_buffer_size())
        except OSError:
            pass                            # the relay aborted it
        finally:
            wr.close()
        assert "eve" not in r.router.rooms()["lab"], "write buffer at %d bytes" % peak
        assert peak <= 4 << 20, peak
        left = await _skip_to(watcher, link.PARTICIPANT_LEFT)
        assert left["identity"] == "eve" and "does not read" in left["reason"], left
        assert "idle timeout" in left["reason"]        # LEAVE 6


async def test_join_claims_are_bounded_so_announcements_fit_a_board():
    async with RelayUnderTest() as r:
        board = await _board(r, "board")
        # (each JOIN under the 16384-byte control frame limit, so the claim checks decide)
        for extra, words in (({"capabilities": [1] * 2000}, '"capabilities" has 2000 items'),
                             ({"client_protocol": 1 << 40}, '"client_protocol" holds'),
                             ({"capabilities": [1 << 40]}, '"capabilities" holds'),
                             ({"capabilities": [2, -(1 << 40)]}, 'non-negative integers'),
                             ({"client_protocol": -(1 << 40)}, '"client_protocol"'),
                             ({"sdk": "s" * 3000}, '"sdk" is 3000 characters')):
            eve = await r.connect()
            join = {"v": 1, "token": r.token("eve"), "client_protocol": 2, "capabilities": [],
                    "sdk": "x", "sdk_version": "1"}
            join.update(extra)
            await eve.send_control(link.JOIN, join)
            reason = (await expect_leave(eve, link.LEAVE_PROTOCOL))["reason"]
            assert "bad JOIN" in reason and words in reason, reason
        await no_frame(board, 0.2)          # nothing was announced, the link is intact
        ok = await r.peer("ok", capabilities=[2])
        ann = await _skip_to(board, link.PARTICIPANT)
        assert ann["identity"] == "ok" and ann["capabilities"] == [2]
        assert ok.joined["identity"] == "ok"


async def test_a_huge_leave_reason_is_clipped_before_it_reaches_others():
    async with RelayUnderTest() as r:
        board = await _board(r, "board")
        eve = await r.peer("eve")
        await board.expect(link.PARTICIPANT)
        await eve.send_control(link.LEAVE, {"code": 1, "reason": "r" * 10000})
        left = await _skip_to(board, link.PARTICIPANT_LEFT)
        assert left["identity"] == "eve" and "more characters" in left["reason"], left
        assert len(left["reason"]) < 1024, len(left["reason"])
        assert len(r.logbuf.getvalue()) < 4096     # nor flood the log
        await board.send_raw(link.encode_frame(link.PING, b"alive"))
        assert await _skip_to(board, link.PONG) == b"alive"


async def test_user_packet_sender_fields_written_by_the_sender_are_removed():
    async with RelayUnderTest() as r:
        alice = await r.peer("alice")
        bob = await r.peer("bob")
        carol = await r.peer("carol")
        pkt = models.DataPacket(user=models.UserPacket(
            payload=b"p" * 2000, topic="t", participant_identity="carol",
            participant_sid=carol.joined["sid"]))
        pkt.destination_identities.append("bob")
        await alice.send_data(pkt.SerializeToString())
        body = await _skip_to(bob, link.DATA)
        got = parse(body)
        assert got.participant_identity == "alice" and got.participant_sid == alice.joined["sid"]
        assert got.user.participant_identity == "" and got.user.participant_sid == "", got.user
        assert got.user.payload == b"p" * 2000 and got.user.topic == "t"


async def test_malformed_claims_in_a_signed_token_get_leave_3_and_leave_no_trace():
    def signed(**over):
        c = {"iss": auth.DEV_API_KEY, "sub": "eve", "exp": int(time.time()) + 600,
             "video": {"roomJoin": True, "room": "lab"}}
        c.update(over)
        return jwt.encode(c, auth.DEV_API_SECRET, algorithm="HS256")
    async with RelayUnderTest() as r:      # no room restriction: any room a token names
        for token, words in ((signed(video={"roomJoin": True, "room": ["lab"]}), "must be strings"),
                             (signed(attributes=["a"]), "attributes must be a JSON object"),
                             (signed(video="lab"), 'claim "video" must be a JSON object, got a string'),
                             (signed(roomConfig={"maxParticipants": "zz"}),
                              'claim "roomConfig" is malformed'),
                             (signed(sub="\u00e9" * 129), "token (sub): identity is 258 bytes of UTF-8, over 256"),
                             # lone surrogates (a \\udcff escape): the relay failed on them internally
                             (signed(video={"roomJoin": True, "room": "lab\udcff"}),
                              "token room (video.room) 'lab\\udcff' is not UTF-8 text"),
                             (signed(attributes={"k": "v\udcff"}), "token attribute 'k'"),
                             (signed(name="\ud800"), "token name")):
            p = await r.connect()
            await p.join(token, expect=False)
            reason = (await expect_leave(p, link.LEAVE_UNAUTHORIZED))["reason"]
            assert words in reason, reason
        assert r.router.connection_count() == 0 and r.router.rooms() == {}


async def test_a_refused_join_is_logged_with_what_its_token_claims_marked_unverified():
    # A field board whose token expired logged only "reason=token expired": which of
    # the boards it was, nobody could tell from the relay
    async with RelayUnderTest() as r:
        expired = jwt.encode({"iss": auth.DEV_API_KEY, "sub": "field-7", "exp": int(time.time()) - 3600,
                              "video": {"roomJoin": True, "room": "lab"}}, auth.DEV_API_SECRET, algorithm="HS256")
        forged = jwt.encode({"iss": auth.DEV_API_KEY, "sub": "admin", "exp": int(time.time()) + 600,
                             "video": {"roomJoin": True, "room": "lab"}}, "not-the-secret" * 3, algorithm="HS256")
        for token in (expired, forged, "not a token"):
            p = await r.connect()
            await p.join(token, expect=False)
            await expect_leave(p, link.LEAVE_UNAUTHORIZED)
        lines = [ln for ln in r.logbuf.getvalue().splitlines() if "event=leave" in ln]
        assert "unverified_identity=field-7 unverified_room=lab" in lines[0], lines
        assert "unverified_identity=admin" in lines[1] and " identity=" not in lines[1], lines
        assert "unverified" not in lines[2], lines
        assert r.router.rooms() == {}


async def test_a_data_frame_of_max_frame_from_the_longest_identity_is_forwarded():
    # LINK.md: only frames over max_frame are refused; the sender stamp the relay adds
    # fits STAMP_ROOM for every identity a token may carry.
    async with RelayUnderTest() as r:
        longest = "i" * auth.MAX_IDENTITY_BYTES
        alice = await r.peer(longest)
        bob = await r.peer("bob")
        mf = alice.joined["max_frame"]
        pkt = models.DataPacket(user=models.UserPacket(payload=b"", topic="t"))
        pkt.destination_identities.append("bob")
        pad = mf - 1 - len(pkt.SerializeToString())
        pkt.user.payload = b"p" * pad
        pad -= 1 + len(pkt.SerializeToString()) - mf     # the length prefixes grew with it
        pkt.user.payload = b"p" * pad
        body = pkt.SerializeToString()
        assert 1 + len(body) == mf, (1 + len(body), mf)
        await alice.send_data(body)
        got = parse(await _skip_to(bob, link.DATA))
        assert got.participant_identity == longest and len(got.user.payload) == pad


async def test_a_join_over_16_kib_within_max_frame_is_taken():
    # LINK.md bounds frames by max_frame alone: a token with large claims that are not
    # announced (metadata) makes a large JOIN, and it is still a JOIN.
    token = jwt.encode({"iss": auth.DEV_API_KEY, "sub": "meta", "exp": int(time.time()) + 600,
                        "metadata": "m" * 20000, "video": {"roomJoin": True, "room": "lab"}},
                       auth.DEV_API_SECRET, algorithm="HS256")
    async with RelayUnderTest() as r:
        p = await r.connect()
        joined = await p.join(token)
        assert joined["identity"] == "meta" and joined["max_frame"] > 20000 + 100


def test_a_relay_fault_on_one_input_drops_only_that_connection():
    # An authenticate that hands back a room the Router cannot use (unhashable): the
    # fault must end that connection with a LEAVE and a log line, not escape receive().
    def auth_fn(token):
        room = ["lab"] if token == "odd" else "lab"
        return {"identity": token, "room": room, "can_publish_data": True, "attributes": {}}
    r = rt.Router(auth_fn)
    r.open(1, 0)
    r.open(2, 0)
    r.receive(2, link.encode_control(link.JOIN, {"v": 1, "token": "good"}), 0)
    r.pop_actions()
    r.receive(1, link.encode_control(link.JOIN, {"v": 1, "token": "odd"}), 0)
    acts = r.pop_actions()
    sends = [a for a in acts if a[0] == rt.SEND and a[1] == 1]
    assert sends and sends[-1][2][1] == link.LEAVE, acts
    leave = link.decode_control(sends[-1][2][2:])
    assert leave["code"] == link.LEAVE_PROTOCOL and "TypeError" in leave["reason"], leave
    assert (rt.CLOSE, 1) in acts
    assert any(a[0] == rt.LOG and a[1] == "error" for a in acts), acts
    assert r.connection_count() == 1 and r.rooms() == {"lab": ["good"]}


def test_a_receiver_flooded_with_control_frames_is_dropped_when_stuck():
    # A token holder rejoining in a loop sends every member PARTICIPANT_LEFT and
    # PARTICIPANT; a member that reads nothing must not queue them without bound.
    s = Sim(queue_bytes=2000, stuck_ms=500)
    s.join(1, "watcher@lab")
    s.pump()

    def pump_not_draining_watcher():
        for a in s.r.pop_actions():
            if a[0] == rt.SEND and a[1] != 1:
                s.r.drained(a[1], len(a[2]), s.now)
    cid = 10
    for i in range(200):
        cid += 1
        s.r.open(cid, s.now)
        s.r.receive(cid, link.encode_control(link.JOIN, {"v": 1, "token": "eve@lab"}), s.now)
        pump_not_draining_watcher()
        s.now += 5
        s.r.tick(s.now)
        pump_not_draining_watcher()
        if "watcher" not in s.r.rooms().get("lab", []):
            break
    assert "watcher" not in s.r.rooms()["lab"], "queued %d bytes" % s.r.queued(1)
    assert s.r.metrics.get("lkedge_relay_leaves_total", code=link.LEAVE_IDLE) == 1


async def test_the_http_port_stays_on_loopback_whatever_the_link_listens_on():
    """/healthz names rooms and identities without a token: it is not exposed with the
    link's address (127.0.0.2 stands for a public one here) unless asked for."""
    import io
    from lkedge_host.relay import auth
    from lkedge_host.relay.router import Router
    from lkedge_host.relay.server import RelayServer
    v = auth.Verifier(auth.DEV_API_KEY, auth.DEV_API_SECRET)
    srv = RelayServer(Router(v.verify), host="127.0.0.2", port=0, ws_port=None, http_port=0,
                      log=io.StringIO())
    await srv.start()
    try:
        assert srv.addresses["tcp"][0] == "127.0.0.2"
        assert srv.addresses["http"][0] == "127.0.0.1"
    finally:
        await srv.stop()
    srv = RelayServer(Router(v.verify), host="127.0.0.2", port=0, ws_port=None, http_port=0,
                      http_host="127.0.0.3", log=io.StringIO())
    await srv.start()
    try:
        assert srv.addresses["http"][0] == "127.0.0.3"
    finally:
        await srv.stop()
