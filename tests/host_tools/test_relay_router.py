"""The sans-I/O Router alone: frames in, actions out, time passed in (no sockets)."""
from livekit.protocol import models

from lkedge import link
from lkedge_host.relay import router as rt


class Denied(Exception):
    pass


def fake_auth(token):
    """Tokens here are "identity@room[!]" ("!" = no canPublishData); "bad" is refused.
    The real verifier is tested in test_relay_server.py / test_relay_auth.py."""
    if token == "bad":
        raise Denied("token signature does not verify")
    ident, room = token.rstrip("!").split("@")
    return {"identity": ident, "room": room, "can_publish_data": not token.endswith("!"),
            "attributes": {}}


class Sim:
    def __init__(self, **kw):
        n = [0]

        def sid():
            n[0] += 1
            return "PA_%d" % n[0]
        self.r = rt.Router(fake_auth, new_sid=sid, **kw)
        self.now = 0
        self.out = {}          # cid -> list of (type, body)
        self.closed = set()
        self.paused = set()
        self.readers = {}

    def open(self, cid):
        self.r.open(cid, self.now)
        self.out[cid] = []
        self.readers[cid] = link.FrameReader(1 << 24)
        self.pump()

    def feed(self, cid, data):
        self.r.receive(cid, data, self.now)
        self.pump()

    def join(self, cid, token, **kw):
        self.open(cid)
        m = {"v": 1, "token": token}
        m.update(kw)
        self.feed(cid, link.encode_control(link.JOIN, m))

    def pump(self, drain=True):
        """Carry out the actions; drain=True plays receivers that read at once."""
        while True:
            actions = self.r.pop_actions()
            if not actions:
                return
            for a in actions:
                if a[0] == rt.SEND:
                    self._decode(a[1], a[2])
                    if drain:
                        self.r.drained(a[1], len(a[2]), self.now)
                elif a[0] == rt.CLOSE:
                    self.closed.add(a[1])
                elif a[0] == rt.PAUSE:
                    self.paused.add(a[1])
                elif a[0] == rt.RESUME:
                    self.paused.discard(a[1])

    def _decode(self, cid, frame):
        rd = self.readers[cid]
        rd.receive(memoryview(frame))
        body = None
        while True:
            ev = rd.next_event()
            if ev == link.NEED_DATA:
                return
            if ev[0] == link.DATA_START:
                body = bytearray()
            elif ev[0] == link.DATA_PIECE:
                body += ev[1]
            elif ev[0] == link.DATA_END:
                self.out[cid].append((link.DATA, bytes(body)))
            elif ev[1] in (link.PING, link.PONG):   # bodies that are bytes, not CBOR
                self.out[cid].append((ev[1], bytes(ev[2])))
            else:
                self.out[cid].append((ev[1], link.decode_control(ev[2])))

    def types(self, cid):
        return [t for t, _ in self.out[cid]]

    def take(self, cid):
        got, self.out[cid] = self.out[cid], []
        return got


def data(payload, dest=()):
    p = models.DataPacket(user=models.UserPacket(payload=payload))
    p.destination_identities.extend(dest)
    return link.encode_frame(link.DATA, p.SerializeToString())


def test_join_replies_joined_and_announces_in_order():
    s = Sim()
    s.join(1, "alice@lab")
    s.join(2, "bob@lab", client_protocol=2, capabilities=[2])
    (t, joined), = s.take(2)
    assert t == link.JOINED and joined["sid"] == "PA_2"
    assert [p["identity"] for p in joined["participants"]] == ["alice"]
    assert s.types(1) == [link.JOINED, link.PARTICIPANT]
    assert s.out[1][1][1] == {"identity": "bob", "sid": "PA_2", "client_protocol": 2,
                              "capabilities": [2], "attributes": {}}


def test_newcomer_data_in_same_bytes_as_join_follows_its_announcement():
    s = Sim()
    s.join(1, "alice@lab")
    s.take(1)
    s.open(2)
    s.feed(2, link.encode_control(link.JOIN, {"v": 1, "token": "bob@lab"}) + data(b"hi"))
    assert s.types(1) == [link.PARTICIPANT, link.DATA]


def test_routing_and_unknown_destinations():
    s = Sim()
    for cid, who in ((1, "a@r"), (2, "b@r"), (3, "c@r"), (4, "a@other")):
        s.join(cid, who)
    for cid in s.out:
        s.take(cid)
    s.feed(1, data(b"x", dest=["c", "a", "ghost"]))
    assert s.types(3) == [link.DATA] and s.types(2) == [] and s.types(1) == [] and s.types(4) == []
    m = s.r.metrics
    assert m.get("lkedge_relay_drops_total", reason="unknown_destination") == 1
    assert m.get("lkedge_relay_drops_total", reason="destination_is_sender") == 1


def test_a_user_packets_own_destination_fields_are_honoured_as_livekits_server_does():
    # Some LiveKit SDK versions address a UserPacket in its own (deprecated) fields:
    # such a packet meant for c went to the whole room.
    s = Sim()
    for cid, who in ((1, "a@r"), (2, "b@r"), (3, "c@r"), (4, "d@r")):
        s.join(cid, who)
    sid = {cid: s.out[cid][0][1]["sid"] for cid in (1, 2, 3, 4)}
    for cid in s.out:
        s.take(cid)

    def user(**kw):
        return link.encode_frame(link.DATA, models.DataPacket(user=models.UserPacket(payload=b"x", **kw))
                                 .SerializeToString())
    got = {}
    for name, frame in (("identities", user(destination_identities=["c"])),
                        ("sids", user(destination_sids=[sid[3]])),
                        ("both", user(destination_identities=["b"], destination_sids=[sid[3]])),
                        ("unknown sid", user(destination_sids=["PA_nobody"]))):
        s.feed(1, frame)
        got[name] = sorted(cid for cid in (2, 3, 4) if s.take(cid))
    assert got == {"identities": [3], "sids": [3], "both": [2, 3], "unknown sid": []}, got
    # the packet's own destination_identities (5) win over the UserPacket's
    s.feed(1, link.encode_frame(link.DATA, models.DataPacket(
        destination_identities=["d"], user=models.UserPacket(payload=b"x", destination_identities=["c"]))
        .SerializeToString()))
    assert [cid for cid in (2, 3, 4) if s.take(cid)] == [4]
    assert s.r.metrics.get("lkedge_relay_drops_total", reason="unknown_destination") == 1


def test_data_split_byte_by_byte_is_reassembled():
    s = Sim()
    s.join(1, "a@r")
    s.join(2, "b@r")
    s.take(2)
    for b in data(b"piecewise" * 100):
        s.feed(1, bytes([b]))
    (t, body), = s.take(2)
    p = models.DataPacket()
    p.ParseFromString(body)
    assert p.user.payload == b"piecewise" * 100 and p.participant_identity == "a"


def test_refused_token_and_second_join_and_relay_only_frames():
    s = Sim()
    s.join(1, "bad")
    assert s.out[1][-1] == (link.LEAVE, {"code": 3, "reason": "token signature does not verify"})
    assert 1 in s.closed
    s.join(2, "a@r")
    s.feed(2, link.encode_control(link.JOIN, {"v": 1, "token": "a@r"}))
    assert s.out[2][-1][1]["code"] == link.LEAVE_PROTOCOL and 2 in s.closed
    s.join(3, "b@r")
    s.feed(3, link.encode_control(link.PARTICIPANT_LEFT, {"identity": "x"}))
    assert s.out[3][-1][1]["code"] == link.LEAVE_PROTOCOL
    s.open(4)
    s.feed(4, link.encode_frame(link.PING, b""))
    assert "first frame must be JOIN" in s.out[4][-1][1]["reason"]


def test_unknown_frame_types_are_skipped():
    s = Sim()
    s.join(1, "a@r")
    s.join(2, "b@r")
    s.take(2)
    s.feed(1, link.encode_frame(0x55, b"future") + data(b"ok"))
    assert s.types(2) == [link.DATA] and 1 not in s.closed


def test_timers_join_idle_and_deadline():
    s = Sim(join_timeout_ms=100, idle_timeout_ms=1000)
    s.open(1)
    assert s.r.next_deadline() == 100
    s.now = 99
    s.r.tick(s.now)
    s.pump()
    assert 1 not in s.closed
    s.now = 100
    s.r.tick(s.now)
    s.pump()
    assert 1 in s.closed and s.out[1][-1][1]["code"] == link.LEAVE_PROTOCOL
    s.join(2, "a@r")
    s.join(3, "b@r")
    s.now = 900
    s.feed(3, link.encode_frame(link.PONG, b""))
    s.now = 1100
    s.r.tick(s.now)
    s.pump()
    assert 2 in s.closed and s.out[2][-1][1]["code"] == link.LEAVE_IDLE
    assert s.out[3][-1] == (link.PARTICIPANT_LEFT, {"identity": "a", "reason": s.out[3][-1][1]["reason"]})
    assert 3 not in s.closed


def test_the_relay_pings_a_participant_quiet_for_half_the_idle_timeout_once():
    # LINK.md: PING goes both ways. A participant whose own PINGs run late (a hidden
    # tab's throttled timers) but who answers is not closed as idle; one that does not
    # answer is, at the idle timeout, as before.
    s = Sim(idle_timeout_ms=1000)
    s.join(1, "a@r")
    s.join(2, "b@r")
    assert s.r.next_deadline() == 500
    s.now = 499
    s.r.tick(s.now)
    s.pump()
    assert link.PING not in s.types(1)
    s.now = 500
    s.r.tick(s.now)
    s.pump()
    for cid in (1, 2):
        assert s.out[cid][-1] == (link.PING, rt.RELAY_PING_BODY)
    assert s.r.next_deadline() == 1000, "one PING per quiet spell, then the idle timeout"
    s.now = 700
    s.feed(2, link.encode_frame(link.PONG, rt.RELAY_PING_BODY))      # b answers, a does not
    s.now = 1000
    s.r.tick(s.now)
    s.pump()
    assert 1 in s.closed and 2 not in s.closed
    reason = s.out[1][-1][1]["reason"]
    assert s.out[1][-1][1]["code"] == link.LEAVE_IDLE and "nor a PONG to the relay's PING of 500 ms ago" in reason
    assert s.r.next_deadline() == 700 + 500, "b's next quiet spell gets its own PING"
    for s.now in range(1200, 3001, 500):    # b answers every PING (at once: the same ms)
        pings = s.types(2).count(link.PING)
        s.r.tick(s.now)
        s.pump()
        assert s.types(2).count(link.PING) == pings + 1, "a PING each quiet spell, however late b's own"
        s.feed(2, link.encode_frame(link.PONG, rt.RELAY_PING_BODY))
    assert 2 not in s.closed


def test_the_relays_ping_does_not_make_a_silent_participant_stuck_before_it_is_idle():
    # one that neither reads nor sends was closed at the idle timeout, for being idle;
    # the PING it does not take must not have it dropped as stuck sooner
    s = Sim(idle_timeout_ms=1000, stuck_ms=400)
    s.join(1, "a@r")
    s.now = 500
    s.r.tick(s.now)
    s.pump(drain=False)
    assert s.out[1][-1] == (link.PING, rt.RELAY_PING_BODY)
    _dropped_at(s, 1000, 1)
    assert "nothing received for 1000 ms" in s.out[1][-1][1]["reason"]


def test_a_participant_that_sends_but_does_not_take_the_relays_ping_is_stuck():
    s = Sim(idle_timeout_ms=1000, stuck_ms=400)
    s.join(1, "a@r")
    s.join(2, "b@r")
    s.take(1)
    s.now = 500
    s.r.tick(s.now)
    s.pump(drain=False)                   # a's PING (and b's) queued, not taken
    for s.now in range(600, 1001, 100):   # a sends on (not idle) but reads nothing
        s.r.receive(1, data(b"k", dest=["b"]), s.now)
        s.r.tick(s.now)
        s.pump(drain=False)
    _dropped_at(s, 1001, 1)
    assert "receiver stuck" in s.out[1][-1][1]["reason"]


def test_the_relay_does_not_ping_a_participant_whose_queue_is_full():
    # the bytes queued for it show it the link lives; whether it takes them is the stuck
    # clocks' business, and PINGs must not add to a queue that does not drain
    s = _joined(10 ** 6, "a", "b")
    s.r.idle_timeout_ms = 1000
    frame = data(b"y" * 8000, dest=["b"])
    for _ in range(3):
        s.r.receive(1, frame, s.now)
        s.pump(drain=False)
    assert s.r.queued(2) >= 20000
    before = len(s.out[2])
    s.now = 600
    s.r.tick(s.now)
    s.pump(drain=False)
    assert s.out[2][before:] == []


def _joined(stuck_ms, *names):
    """A Sim (queue_bytes 20000) with participants 1, 2, ... named `names` in room r."""
    s = Sim(queue_bytes=20000, stuck_ms=stuck_ms)
    for cid, name in enumerate(names, 1):
        s.join(cid, name + "@r")
    return s


def _dropped_at(s, ms, cid):
    """cid is kept at ms - 1 and dropped as stuck (LEAVE 6) at ms."""
    s.now = ms - 1
    s.r.tick(s.now)
    s.pump(drain=False)
    assert cid not in s.closed
    s.now = ms
    s.r.tick(s.now)
    s.pump(drain=False)
    assert cid in s.closed and s.out[cid][-1][1]["code"] == link.LEAVE_IDLE


def test_full_queue_pauses_sender_then_resumes_or_drops_receiver():
    s = _joined(500, "a", "b", "c")
    frame = data(b"y" * 8000, dest=["b"])
    s.feed(1, frame)
    s.feed(1, frame)
    s.pump()
    for _ in range(3):           # b never drains from here on
        s.r.receive(1, frame, s.now)
        s.pump(drain=False)
    assert 1 in s.paused and s.r.paused(1)
    assert s.r.queued(2) >= 20000
    queued = s.r.queued(2)
    s.r.drained(2, queued, s.now)      # b catches up: a resumes
    s.pump()
    assert 1 not in s.paused
    s.r.receive(1, frame, s.now)
    s.r.receive(1, frame, s.now)
    s.r.receive(1, frame, s.now)
    s.pump(drain=False)
    assert 1 in s.paused
    _dropped_at(s, 500, 2)
    assert 1 not in s.paused, "dropping the stuck receiver must resume its senders"
    assert s.out[3][-1][0] == link.PARTICIPANT_LEFT


def _a_paused_by_b():
    """A Sim (idle timeout 300 ms) where a (1) is paused by b (2), which reads nothing."""
    s = Sim(queue_bytes=20000, stuck_ms=10000, idle_timeout_ms=300)
    s.join(1, "a@r")
    s.join(2, "b@r")
    for _ in range(3):
        s.r.receive(1, data(b"y" * 8000, dest=["b"]), s.now)
        s.pump(drain=False)
    assert 1 in s.paused
    return s


def test_paused_sender_is_not_idled_out():
    s = _a_paused_by_b()
    s.now = 1000
    s.r.tick(s.now)
    s.pump(drain=False)
    assert 1 not in s.closed and 2 in s.closed      # b silent: idle; a paused: kept


def test_a_resumed_sender_gets_a_whole_idle_timeout_from_its_resume():
    # It was quiet because the relay stopped reading it: silence while paused is not
    # idleness, so the idle clock starts again at the resume, not at its last frame.
    s = _a_paused_by_b()
    for s.now in range(200, 1001, 200):         # b stays alive (it sends) but reads nothing
        s.r.receive(2, data(b"k", dest=["a"]), s.now)
        s.r.tick(s.now)
        s.pump(drain=False)
    s.r.drained(2, s.r.queued(2), s.now)        # b reads at 1000 ms: a resumes
    s.pump(drain=False)
    assert 1 not in s.paused
    assert s.r.next_deadline() == 1150      # the relay's PING to a, quiet for half the idle timeout
    s.now = 1299
    s.r.receive(2, data(b"k", dest=["a"]), s.now)
    s.r.tick(s.now)
    s.pump()
    assert 1 not in s.closed, "a resumed sender must not be idled out for the pause"
    s.now = 1300
    s.r.tick(s.now)
    s.pump()
    assert 1 in s.closed and s.out[1][-1][1]["code"] == link.LEAVE_IDLE

def test_data_up_to_max_frame_is_forwarded_with_the_stamp_beyond_it():
    s = Sim(max_frame=16384)
    s.join(1, "a-long-identity@r")
    s.join(2, "b@r")
    s.take(2)
    payload = b"p" * 16377
    body = models.DataPacket(user=models.UserPacket(payload=payload)).SerializeToString()
    frame = link.encode_frame(link.DATA, body)
    assert 1 + len(body) == 16384   # n: exactly max_frame
    s.feed(1, frame)
    got = s.take(2)
    assert [t for t, _ in got] == [link.DATA] and 1 not in s.closed
    p = models.DataPacket()
    p.ParseFromString(got[0][1])
    assert p.participant_identity == "a-long-identity" and p.user.payload == payload
    assert 16384 < 1 + len(got[0][1]) <= 16384 + link.STAMP_ROOM


def test_data_whose_stamp_would_not_fit_the_stamp_room_is_refused():
    s = Sim(max_frame=16384)
    s.join(1, "a" * 600 + "@r")
    s.join(2, "b@r")
    body = models.DataPacket(user=models.UserPacket(payload=b"p" * 16300)).SerializeToString()
    s.feed(1, link.encode_frame(link.DATA, body))
    (t, leave) = s.out[1][-1]
    assert leave["code"] == link.LEAVE_PROTOCOL and "max_frame 16384 + 512" in leave["reason"], leave


def test_shutdown_leaves_5_without_announcements():
    s = Sim()
    s.join(1, "a@r")
    s.join(2, "b@r")
    s.take(1)
    s.take(2)
    s.r.shutdown(s.now)
    s.pump()
    for cid in (1, 2):
        assert s.take(cid) == [(link.LEAVE, {"code": 5, "reason": "relay shutting down"})]
    assert s.closed == {1, 2} and s.r.rooms() == {}


def test_max_frame_below_a_chunk_is_refused():
    try:
        rt.Router(fake_auth, max_frame=15000)
    except ValueError as e:
        assert "15000-byte chunk" in str(e)
    else:
        raise AssertionError("max_frame 15000 accepted")


def test_big_room_joined_stays_small_and_the_rest_follow_as_participant_frames():
    """A room of 300: JOINED lists what fits its budget, PARTICIPANT frames bring the
    rest before anything else, so a board's small frame buffer never sees a huge JOINED."""
    from lkedge import link as _link
    from lkedge_host.relay import router as _router
    from lkedge_host.relay.auth import Verifier, mint_token
    key, secret = "k" * 8, "s" * 40
    r = _router.Router(Verifier(key, secret).verify)
    for i in range(301):
        r.open(i, 0)
        tok = mint_token(key, secret, identity="p%03d" % i, room="big")
        r.receive(i, _link.encode_control(_link.JOIN, {"v": 1, "token": tok, "client_protocol": 2,
                                                       "capabilities": [], "sdk": "t", "sdk_version": "0"}), 0)
        if i < 300:
            r.pop_actions()
    frames = []
    for act in r.pop_actions():
        if act[0] == _router.SEND and act[1] == 300:
            rd = _link.FrameReader(1 << 20)
            rd.receive(memoryview(act[2]))
            ev = rd.next_event()
            frames.append((ev[1], len(act[2]), _link.decode_control(ev[2])))
    assert frames[0][0] == _link.JOINED and frames[0][1] <= _router.JOINED_LIST_BUDGET + 512
    listed = [p["identity"] for p in frames[0][2]["participants"]]
    announced = [f[2]["identity"] for f in frames[1:] if f[0] == _link.PARTICIPANT]
    assert len(listed) < 300 and sorted(listed + announced) == ["p%03d" % i for i in range(300)]


def test_counters_without_labels_are_exposed_from_the_start():
    text = Sim().r.metrics.render()
    for name in ("lkedge_relay_joins_total", "lkedge_relay_bytes_in_total", "lkedge_relay_bytes_out_total"):
        assert "\n%s 0\n" % name in text, name


def test_a_control_frame_over_max_frame_is_refused_at_its_header_before_join():
    """LINK.md bounds every frame by max_frame alone: a connection that has not joined
    makes the relay set aside at most max_frame; a header announcing more gets LEAVE 4
    at once, before any of its body arrives."""
    s = Sim()
    mf = s.r.max_frame
    s.open(1)
    s.feed(1, link.frame_header(link.JOIN, mf))   # n = type byte + body = mf + 1
    assert 1 in s.closed
    (t, leave), = s.take(1)
    assert t == link.LEAVE and leave["code"] == link.LEAVE_PROTOCOL and str(mf) in leave["reason"], leave
    # a JOIN of ordinary size still works, and DATA up to max_frame after it
    s.join(2, "alice@lab")
    assert s.types(2) == [link.JOINED]


def test_a_large_join_on_its_way_holds_only_the_bytes_that_arrived():
    # an unauthenticated peer announcing a JOIN of max_frame bytes and sending 10 of
    # them must not make the relay set aside max_frame
    s = Sim()
    s.open(1)
    s.feed(1, link.frame_header(link.JOIN, s.r.max_frame - 1) + b"\xa1" * 10)
    assert 1 not in s.closed and len(s.r._conns[1].reader._buf) == 10


def test_one_connection_over_max_connections_gets_leave_5_and_the_others_go_on():
    s = Sim(max_connections=2)
    s.join(1, "alice@lab")
    s.join(2, "bob@lab")
    s.open(3)
    assert 3 in s.closed
    (t, leave), = s.take(3)
    assert t == link.LEAVE and leave["code"] == link.LEAVE_SHUTDOWN and "relay full" in leave["reason"], leave
    assert s.r.connection_count() == 2 and 1 not in s.closed and 2 not in s.closed
    s.feed(1, link.encode_control(link.LEAVE, {"code": 1, "reason": "bye"}))
    s.join(4, "carol@lab")      # room again once one has gone
    assert link.JOINED in s.types(4)


def _logs(s):
    """Carry out the actions, returning the LOG ones as (event, fields)."""
    out = []
    while True:
        actions = s.r.pop_actions()
        if not actions:
            return out
        for a in actions:
            if a[0] == rt.LOG:
                out.append((a[1], a[2]))
            elif a[0] == rt.SEND:
                s._decode(a[1], a[2])
                s.r.drained(a[1], len(a[2]), s.now)
            elif a[0] == rt.CLOSE:
                s.closed.add(a[1])


def test_connections_turned_away_as_full_are_counted_and_logged_once_a_minute():
    # 2000 connections to a full relay wrote 2000 log lines in 2.6 s, counted as leaves
    # of code 5 (shutdown's) and as connections "accepted"
    s = Sim(max_connections=1, idle_timeout_ms=10 ** 9)
    s.join(1, "alice@lab")
    _logs(s)
    events = []
    for cid in range(2, 52):
        s.r.open(cid, s.now)
        s.out[cid] = []
        s.readers[cid] = link.FrameReader(1 << 24)
        events += _logs(s)
        assert cid in s.closed and s.take(cid)[0][1]["code"] == link.LEAVE_SHUTDOWN
    assert [e for e, _ in events] == ["full"] and events[0][1]["refused"] == 1, events
    m = s.r.metrics
    assert m.get("lkedge_relay_refused_total", reason="full") == 50
    assert m.get("lkedge_relay_leaves_total", code=5) == 0
    assert m.get("lkedge_relay_connections_total", transport="tcp") == 1
    s.now = rt.FULL_LOG_MS
    s.r.tick(s.now)      # the 49 since the first line, said a minute after it without a 51st
    (event, fields), = _logs(s)
    assert event == "full" and fields["refused"] == 49, fields
    s.now += 1000
    s.r.tick(s.now)
    assert _logs(s) == []


def test_a_pause_is_logged_at_its_end_and_only_when_it_lasted():
    s = _joined(60000, "a", "b")
    _logs(s)
    frame = data(b"y" * 8000, dest=["b"])
    for pause_ms in (5, rt.PAUSE_LOG_MS + 200):
        for _ in range(3):
            s.r.receive(1, frame, s.now)
        assert s.r.paused(1)
        s.now += pause_ms
        s.r.drained(2, s.r.queued(2), s.now)
        logs = [x for x in _logs(s) if x[0] in ("pause", "paused")]
        if pause_ms < rt.PAUSE_LOG_MS:
            assert logs == [], logs    # a bulk transfer does this hundreds of times a second
        else:
            assert logs == [("paused", logs[0][1])] and logs[0][1]["ms"] == pause_ms, logs
            assert logs[0][1]["waited_for"] == "b"
    assert s.r.metrics.get("lkedge_relay_pauses_total") == 2



def test_a_token_whose_announcement_would_not_fit_a_board_is_refused_and_the_room_keeps_its_member():
    """Every member gets a newcomer's PARTICIPANT frame (and JOINED lists it): one over a
    board's 16384-byte control buffer would end each board's link at every rejoin."""
    s = Sim()
    s.join(1, "board@lab")

    def big_attributes(token):
        g = fake_auth(token.split("+")[0])
        g["attributes"] = {"a%d" % i: "v" * 100 for i in range(int(token.split("+")[1]))}
        return g
    s.r.authenticate = big_attributes
    s.join(2, "board@lab+200")              # ~21 KB of attributes, same identity even
    (t, leave), = s.take(2)
    assert t == link.LEAVE and leave["code"] == link.LEAVE_UNAUTHORIZED and "16384" in leave["reason"], leave
    assert 2 in s.closed and 1 not in s.closed, "the refused join must not push the member out"
    assert s.types(1) == [link.JOINED]      # nothing was announced to it
    s.join(3, "host@lab+100")               # ~11 KB: fits, announced
    assert s.types(1)[-1] == link.PARTICIPANT


def test_a_ping_on_a_full_queue_gets_no_pong_and_its_sender_is_still_read():
    # Not reading a connection whose queue is full would stop its answers too: a board
    # flooded with requests could no longer send their acks and was dropped (LEAVE 6)
    # in its flooder's place. Its PING gets no PONG instead: the queue cannot grow.
    s = _joined(10000, "a", "b", "c")
    for _ in range(3):                       # b does not drain: its queue fills
        s.r.receive(1, data(b"y" * 8000, dest=["b"]), s.now)
        s.pump(drain=False)
    queued = s.r.queued(2)
    assert queued >= 20000
    s.take(3)
    s.feed(2, link.encode_frame(link.PING, b"k"))
    s.pump(drain=False)
    assert s.r.queued(2) == queued and not s.r.paused(2), "a PONG was queued or b paused"
    s.r.receive(2, data(b"ack", dest=["c"]), s.now)
    s.pump()
    assert link.DATA in s.types(3), "b's answer was not forwarded"


def test_a_sender_paused_by_a_receiver_that_never_reads_outlasts_it():
    # f never reads; b answers f (paused: f is full) and, waiting to send, stops reading
    # its own queue. f is dropped at stuck_ms; b, full only because we paused it, is
    # kept, resumed, and gets a fresh stuck_ms to catch up.
    s = _joined(500, "f", "b", "c")
    for _ in range(3):
        s.r.receive(2, data(b"a" * 8000, dest=["f"]), s.now)      # b's answers fill f
        s.r.receive(3, data(b"r" * 8000, dest=["b"]), s.now)      # c's requests fill b
        s.pump(drain=False)
    assert s.r.paused(2) and s.r.queued(2) >= 20000
    s.now = 500
    s.r.tick(s.now)
    s.pump(drain=False)
    assert 1 in s.closed and 2 not in s.closed, (s.closed,)
    assert not s.r.paused(2), "dropping f must resume b"
    s.now = 999
    s.r.tick(s.now)
    s.pump(drain=False)
    assert 2 not in s.closed, "b did not get a fresh stuck_ms once resumed"
    s.r.drained(2, s.r.queued(2), s.now)
    s.now = 2000
    s.r.tick(s.now)
    s.pump(drain=False)
    assert 2 not in s.closed


def test_a_receiver_that_stops_reading_is_dropped_at_stuck_ms_though_its_queue_is_not_full():
    # LINK.md: "a receiver stuck past a deadline is disconnected (LEAVE 6)". Only a full
    # queue started the clock: one that stopped reading with 586 KB of 1 MiB queued
    # was held for good, and calls to it hung until their own timeouts.
    s = _joined(500, "a", "b", "c")
    s.take(3)
    s.r.receive(1, data(b"x" * 8000, dest=["b"]), s.now)
    s.pump(drain=False)                       # b takes none of it
    assert 0 < s.r.queued(2) < 20000 and not s.r.paused(1)
    assert s.r.next_deadline() == 500
    _dropped_at(s, 500, 2)
    assert "none of them taken for 500 ms" in s.out[2][-1][1]["reason"], s.out[2][-1]
    assert s.out[3][-1][0] == link.PARTICIPANT_LEFT


def test_a_receiver_that_takes_what_is_queued_now_and_then_is_not_stuck():
    s = _joined(500, "a", "b")
    for step in range(1, 6):                 # 400 ms apart: each read restarts its clock
        s.r.receive(1, data(b"x" * 3000, dest=["b"]), s.now)
        s.pump(drain=False)
        s.now = step * 400
        s.r.drained(2, 1000, s.now)          # a part of it, not all
        s.r.tick(s.now)
        s.pump(drain=False)
        assert 2 not in s.closed, step
    s.r.drained(2, s.r.queued(2), s.now)     # all of it: no clock at all
    s.now += 10000
    s.r.tick(s.now)
    s.pump(drain=False)
    assert 2 not in s.closed


def test_progress_within_a_frame_keeps_a_full_receiver_that_reads_as_drained_bytes_do():
    # The adapter reports what a transport took of a frame still being written; it
    # restarted only the clock of a queue not full, so a full one reading one big
    # frame steadily was dropped at stuck_ms all the same.
    for reads in (True, False):
        s = Sim(queue_bytes=20000, stuck_ms=1000)
        s.join(1, "a@r")
        s.join(2, "b@r")
        for n in (15000, 6000):
            s.r.receive(1, data(b"x" * n, dest=["b"]), s.now)
            s.pump(drain=False)
        assert s.r.queued(2) >= 20000 and 2 in s.r.untaken()
        for t in range(100, 3001, 100):
            s.now = t
            if reads:
                s.r.progress(2, 1300, t)   # > 1/16 of the queue a second
            s.r.tick(t)
            s.pump(drain=False)
        assert (2 in s.closed) is (not reads), (reads, s.out[2][-1])


def test_a_full_receiver_that_keeps_reading_is_slow_not_stuck():
    # Each 1/16 of the queue drained buys a fresh stuck_ms (a board working through a
    # backlog); a receiver that drains less than that is still dropped.
    s = Sim(queue_bytes=32000, stuck_ms=500)
    s.join(1, "a@r")
    s.join(2, "b@r")
    for _ in range(5):
        s.r.receive(1, data(b"y" * 8000, dest=["b"]), s.now)
        s.pump(drain=False)
    assert s.r.queued(2) >= 32000
    for step in range(1, 5):          # 400 ms apart, 2000 bytes each: slow, not stuck
        s.now = step * 400
        s.r.drained(2, 2000, s.now)
        s.r.receive(1, data(b"y" * 1900, dest=["b"]), s.now)   # its sender refills it
        s.r.tick(s.now)
        s.pump(drain=False)
        assert 2 not in s.closed, step
    s.now += 400
    s.r.drained(2, 100, s.now)        # a trickle: no fresh stuck_ms
    s.now += 200
    s.r.tick(s.now)
    s.pump(drain=False)
    assert 2 in s.closed


def test_a_receiver_that_never_reads_cannot_stay_by_getting_itself_paused_again_and_again():
    # x never reads its full queue but keeps sending to a slow reader y: each pause and
    # resume must not buy x a fresh period, or x stays for good and its senders with it.
    s = _joined(500, "x", "y", "v")
    for _ in range(3):
        s.r.receive(3, data(b"v" * 8000), s.now)    # v broadcasts: x's queue fills
        s.pump(drain=False)
    s.r.drained(2, s.r.queued(2), s.now)
    s.pump(drain=False)
    assert s.r.queued(1) >= 20000
    for step in range(1, 21):
        s.now = step * 450
        for _ in range(3):
            if not s.r.paused(1):
                s.r.receive(1, data(b"x" * 8000, dest=["y"]), s.now)
                s.pump(drain=False)
        s.r.drained(2, s.r.queued(2), s.now)   # y catches up: x resumes
        s.pump(drain=False)
        s.r.tick(s.now)
        s.pump(drain=False)
        if 1 in s.closed:
            break
    assert 1 in s.closed and s.now <= 3 * 500 + 500 + 450, s.now


def test_sends_are_keyed_by_sender_or_subject_so_the_adapter_can_take_senders_in_turn():
    # SEND's key: the identity a DATA frame is from or a PARTICIPANT(_LEFT) is about,
    # "" for the relay's own frames, None for the LEAVE that goes after everything.
    s = Sim()
    s.join(1, "alice@lab")
    s.join(2, "bob@lab")
    s.r.open(3, s.now)
    s.r.receive(3, link.encode_control(link.JOIN, {"v": 1, "token": "carol@lab"}), s.now)
    keys = {(a[1], a[3]) for a in s.r.pop_actions() if a[0] == rt.SEND}
    assert keys == {(3, ""), (1, "carol"), (2, "carol")}, keys   # JOINED; announcements
    s.r.receive(2, data(b"hi", dest=["alice"]) + link.encode_frame(link.PING, b"k"), s.now)
    sends = [(a[1], a[3]) for a in s.r.pop_actions() if a[0] == rt.SEND]
    assert sends == [(1, "bob"), (2, "")], sends                    # DATA; PONG
    s.r.fail(2, link.LEAVE_PROTOCOL, "bad", s.now)
    sends = [(a[1], a[3]) for a in s.r.pop_actions() if a[0] == rt.SEND]
    assert sends == [(2, None), (1, "bob"), (3, "bob")], sends      # LEAVE; PARTICIPANT_LEFT


def test_a_sender_that_leaves_behind_a_full_queue_has_its_frames_there_discarded():
    # Participants that join, send and leave over and over must not grow a slow
    # receiver's queue without bound (each left its first read behind: 1 GB in a
    # minute): what a leaver still has queued at a receiver at least half full is
    # dropped, its PARTICIPANT_LEFT follows; a receiver keeping up loses nothing.
    s = Sim(queue_bytes=40000, stuck_ms=60000)
    s.join(1, "slow@lab")
    s.join(2, "fast@lab")
    s.join(3, "x@lab")
    s.pump()
    s.r.receive(3, data(b"z" * 30000, dest=["slow", "fast"]), s.now)
    acts = s.r.pop_actions()
    for a in acts:                       # fast reads it; slow does not
        if a[0] == rt.SEND and a[1] == 2:
            s.r.drained(2, len(a[2]), s.now)
    assert s.r.queued(1) > 20000 and s.r.queued(2) == 0
    s.r.closed(3, s.now)
    acts = s.r.pop_actions()
    kinds = [(a[0], a[1]) + ((a[2],) if a[0] == rt.DISCARD else (a[3],) if a[0] == rt.SEND else ())
             for a in acts if a[0] in (rt.DISCARD, rt.SEND)]
    assert kinds == [(rt.DISCARD, 1, "x"), (rt.SEND, 1, "x"), (rt.SEND, 2, "x")], kinds
    left = [a for a in acts if a[0] == rt.SEND and a[1] == 1][0][2]
    s.r.discarded(1, s.r.queued(1) - len(left), 1, "x", s.now)   # what the adapter dropped
    assert s.r.queued(1) == len(left)
    assert s.r.metrics.get("lkedge_relay_drops_total", reason="sender_left_queue_full") == 1
    logs = [a for a in s.r.pop_actions() if a[0] == rt.LOG and a[1] == "discard"]
    assert logs and logs[0][2]["left"] == "x" and logs[0][2]["frames"] == 1, logs


def test_a_queue_at_exactly_queue_bytes_is_full_and_one_byte_below_it_is_not():
    # LINK.md: a destination "at or over" queue_bytes pauses its sender until it drops
    # "below" it again; the boundary itself counts as full on the way up and down.
    frame = data(b"y" * 1000, dest=["b"])
    probe = Sim(queue_bytes=1 << 20)
    probe.join(1, "a@r")
    probe.join(2, "b@r")
    probe.r.receive(1, frame, probe.now)
    probe.pump(drain=False)
    size = probe.r.queued(2)                    # one DATA frame as queued, stamped
    s = Sim(queue_bytes=2 * size, stuck_ms=10000)
    s.join(1, "a@r")
    s.join(2, "b@r")
    s.r.receive(1, frame, s.now)
    s.pump(drain=False)
    assert 1 not in s.paused
    s.r.receive(1, frame, s.now)                # queued == queue_bytes: full
    s.pump(drain=False)
    assert s.r.queued(2) == 2 * size and 1 in s.paused
    s.r.receive(1, frame, s.now)                # what was in flight is still routed
    s.pump(drain=False)
    s.r.drained(2, size, s.now)                 # back to exactly queue_bytes: still full
    s.pump(drain=False)
    assert s.r.queued(2) == 2 * size and 1 in s.paused
    s.r.drained(2, 1, s.now)                    # one byte below: a resumes
    s.pump(drain=False)
    assert 1 not in s.paused


def _stamped_size(identity, n):
    """(incoming frame size, forwarded frame size) of a DATA frame with an n-byte payload
    from `identity`, through a relay whose max_frame does not bind."""
    s = Sim(max_frame=1 << 20)
    s.join(1, identity + "@r")
    s.join(2, "b@r")
    s.take(2)
    body = models.DataPacket(user=models.UserPacket(payload=b"p" * n)).SerializeToString()
    s.feed(1, link.encode_frame(link.DATA, body))
    (t, got), = s.take(2)
    return 1 + len(body), 1 + len(got)


def test_data_stamped_to_exactly_max_frame_plus_the_stamp_room_is_forwarded_one_byte_more_is_not():
    ident = "a" * 600                           # a stamp of more than STAMP_ROOM bytes
    limit = 16384 + link.STAMP_ROOM
    n = next(n for n in range(15000, 16384) if _stamped_size(ident, n)[1] == limit)
    for payload, forwarded in ((n, True), (n + 1, False)):
        s = Sim(max_frame=16384)
        s.join(1, ident + "@r")
        s.join(2, "b@r")
        s.take(2)
        body = models.DataPacket(user=models.UserPacket(payload=b"p" * payload)).SerializeToString()
        assert 1 + len(body) <= 16384            # the frame itself is within max_frame
        s.feed(1, link.encode_frame(link.DATA, body))
        assert (s.types(2) == [link.DATA]) is forwarded and (1 in s.closed) is not forwarded, payload


def test_an_announcement_of_exactly_a_boards_control_buffer_is_accepted_one_byte_more_is_not():
    from lkedge import cbor
    s = Sim()
    s.join(1, "board@lab")

    def attributes(token):
        name, n = token.split("+")
        g = fake_auth(name)
        g["attributes"] = {"k": "v" * int(n)}
        return g
    s.r.authenticate = attributes
    s.join(2, "host2@lab+16000")
    announced = s.out[1][-1][1]
    size = 1 + len(cbor.dumps(announced))       # type byte + body, as a board counts
    exact = 16000 + rt.BOARD_CONTROL - size
    for cid, n, accepted in ((3, exact + 1, False), (4, exact, True)):
        s.join(cid, "host%d@lab+%d" % (cid, n))  # identities of one length: same size
        assert (s.types(1)[-1] == link.PARTICIPANT and s.out[1][-1][1]["identity"] == "host%d" % cid) \
            is accepted, n
        assert (cid in s.closed) is not accepted
    assert 1 + len(cbor.dumps(s.out[1][-1][1])) == rt.BOARD_CONTROL
