"""The relay's routing core (spec/LINK.md "Relay rules"), sans-I/O.

No sockets, no clock: the adapter (server.py) feeds events in and carries actions out.

    r = Router(authenticate, max_frame=65536, join_timeout_ms=5000, idle_timeout_ms=30000,
               queue_bytes=1 << 20, stuck_ms=10000, server_version=..., metrics=None,
               new_sid=None, max_connections=10000)
    r.open(cid, now_ms, transport="tcp", peer="", pending=0)
                                                      a connection arrived (one over
                                                      max_connections, with `pending` held
                                                      elsewhere: LEAVE 5, closed)
    r.receive(cid, data, now_ms)                      bytes from it (any split)
    r.drained(cid, nbytes, now_ms)                    nbytes of its SENDs were written
    r.progress(cid, nbytes, now_ms)                   its transport took nbytes of a frame
                                                      still being written (stuck clocks)
    r.untaken() -> [cid, ...]                         connections with queued bytes none of
                                                      which were taken yet (whose progress to look at)
    r.closed(cid, now_ms, reason="transport closed")  the transport ended (no LEAVE)
    r.fail(cid, code, reason, now_ms)                 the adapter saw a bad peer: LEAVE code
    r.tick(now_ms)                                    timers: JOIN, idle, stuck receivers
    r.next_deadline() -> ms or None                   when tick() is next due
    r.shutdown(now_ms)                                LEAVE 5 to everyone
    r.pop_actions() -> [action, ...]                  in order; the list is handed over

Actions are tuples: (SEND, cid, bytes, key) queue bytes for cid, `key` naming whose
turn they take: the identity a DATA frame is from or a PARTICIPANT / PARTICIPANT_LEFT
frame is about, "" for the relay's own frames (JOINED, PONG), None for a LEAVE (after
everything else); the adapter writes a receiver's frames of one key in order and takes
the keys in turn, so one sender flooding a receiver does not hold another's frames
behind its backlog, while LINK.md's orders (PARTICIPANT before a newcomer's DATA,
PARTICIPANT_LEFT after its last DATA, each sender's DATA in order) hold. (DISCARD, cid,
key) drop the DATA frames queued for cid under key and report them `discarded`: a
participant that leaves while a receiver's queue is half full or more loses its DATA
still queued there (its PARTICIPANT and PARTICIPANT_LEFT still go, in order), or
participants joining, sending and leaving over and over would grow that queue without
bound (1 GB in a minute, each leaving its first read behind: once the queue is full
they are paused, and a paused connection is not read, so its leaving is not seen
either). (CLOSE, cid) close cid after
its queued bytes (the router forgot it already; later bytes from it are ignored);
(PAUSE, cid) stop reading from cid; (RESUME, cid) read again; (LOG, event, fields) one
structured log line (fields is a dict).

`authenticate(token) -> {"identity", "room", "can_publish_data", "attributes"}` raising
any exception whose str() is the reason (LEAVE 3). `queued(cid)` and `paused(cid)` are
for the adapter and tests; `rooms()` -> {room: [identity, ...]}.

Backpressure: every SEND is counted in the receiver's queue until the adapter reports
it `drained`. A DATA frame is always delivered (the sender's earlier frames must not be
reordered), but when a destination's queue is then at or over `queue_bytes`, the sender
is PAUSEd until every destination that blocks it drops below `queue_bytes` again. A
queue staying full longer than `stuck_ms` disconnects that receiver (LEAVE 6) and
announces it as left. So a queue holds at most queue_bytes plus what paused senders had
already read. Idle timeout does not run while a connection is paused by us. Whatever
fills a queue (DATA, PONGs, PARTICIPANT churn) starts the stuck_ms clock; a connection
we paused gets 3 times stuck_ms (it may stop reading while it cannot send), and a fresh
stuck_ms when it resumes (once per full episode); a full receiver that drains a
sixteenth of queue_bytes gets a fresh stuck_ms too (slow, not stuck). A receiver with
any bytes queued that takes none of them for stuck_ms (3 times that while paused) is
stuck too, full or not. A PING from a
connection whose own queue is full gets no PONG (the queued bytes show the link lives),
so PINGs cannot grow a queue.

Forwarding: fields 4 (participant_identity) and 17 (participant_sid) written by the
sender are removed and the verified identity and sid are written as the first fields.
participant_sid (1) and participant_identity (5) inside a UserPacket (2) are removed
too (LINK.md is silent on them; LiveKit's server overwrites them and some SDKs read
them, so a sender's own values must not get through; writing the verified ones there
as well would need twice the stamp room).
A DATA frame up to max_frame (what JOINED announces) is taken and forwarded, with the
stamp in front, as a frame of at most max_frame + link.STAMP_ROOM bytes, which
participants accept; one whose stamp would need more (an identity of hundreds of bytes)
is refused with LEAVE 4 naming both sizes. DATA from a participant without
canPublishData: LEAVE 7. destination_identities are read by the official parser (a
UserPacket's own destination_identities when the packet's are empty, and its
destination_sids too, as LiveKit's server reads them); the
work of finding them in the room is bounded by the room's size, not the packet's, and
the ones skipped (unknown, the sender) are counted once per packet (drops_total).

Hostile input: a participant's own control frames (JOIN, LEAVE, PING) are held whole
up to max_frame, like any frame LINK.md allows (a JOIN carries a token, which may hold
large claims such as metadata); their buffers grow as their bytes arrive, so a
connection that has not joined holds what it sent, at most max_frame, for at most
join_timeout (DATA before JOIN is refused at its header); at most max_connections
connections are open at once. Reasons the relay repeats (LEAVE, PARTICIPANT_LEFT, logs) are cut to
MAX_REASON characters; an exception while handling a connection's bytes (a relay
fault) ends that connection only, with LEAVE 4 and an `error` log line.
"""
import base64
import json
import os

from google.protobuf.message import DecodeError as _DecodeError
from livekit.protocol.models import DataPacket as _OfficialDataPacket

from lkedge import cbor, link, proto, relayside

from .metrics import Metrics

SEND = "send"
DISCARD = "discard"
CLOSE = "close"
PAUSE = "pause"
PAUSE_LOG_MS = 1000   # a sender paused this long is logged when it resumes ("paused")
FULL_LOG_MS = 60000   # connections turned away as full: one "full" line a minute, counted
RESUME = "resume"
LOG = "log"

SERVER_VERSION = "1.9.0"
RELAY_PING_BODY = b"relay"   # what the relay's own PINGs carry (a PONG echoes it)
_RELAY_PING = relayside.encode_frame(link.PING, RELAY_PING_BODY)
# The identity of a JOINED/PARTICIPANT sid: "PA_" and 12 characters, as LiveKit's.
_SID_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

_REASONS = {link.LEAVE_CLIENT: "client initiated", link.LEAVE_DUPLICATE: "duplicate identity",
            link.LEAVE_UNAUTHORIZED: "unauthorized", link.LEAVE_PROTOCOL: "protocol error",
            link.LEAVE_SHUTDOWN: "server shutdown", link.LEAVE_IDLE: "idle timeout",
            link.LEAVE_FORBIDDEN: "forbidden"}
_RELAY_ONLY = (link.JOINED, link.PARTICIPANT, link.PARTICIPANT_LEFT)
_STRIP = (4, 17)
_F_USER = 2
_USER_STRIP = (1, 5)    # UserPacket participant_sid, participant_identity
# Any reason the relay repeats (LEAVE, PARTICIPANT_LEFT, logs) is cut to this many
# characters: a peer's text (its LEAVE reason, a bad JOIN key) must not make frames
# larger than a board's control buffer nor flood the log.
MAX_REASON = 512
# The largest control frame a board holds whole (its profile's max_frame): the relay
# announces a participant's identity and attributes to everyone in PARTICIPANT frames,
# so a token whose announcement would pass this is refused (LEAVE 3).
BOARD_CONTROL = 16384


def random_sid():
    raw = os.urandom(12)
    return "PA_" + "".join(_SID_CHARS[b % len(_SID_CHARS)] for b in raw)


class _Conn:
    def __init__(self, cid, now, max_frame, transport, peer):
        self.cid = cid
        self.transport = transport
        self.peer = peer
        # LINK.md: any frame up to max_frame; a control body grows as it arrives, so a
        # connection that has not joined holds only the bytes it actually sent
        self.reader = link.FrameReader(max_frame, grow=True)
        self.opened = now
        self.last_rx = now
        self.info = None          # participant map once joined
        self.claimed = None       # a refused token's unverified identity and room (for the log)
        self.stamp = None         # its identity and sid as DataPacket fields (forwarding)
        self.room = None
        self.can_publish = False
        self.body = None          # DATA body being gathered
        self.queued = 0
        self.full_since = None    # when the send queue reached queue_bytes (or got a fresh period)
        self.moved = 0            # bytes drained since full_since
        self.refreshed = False    # this full episode already got its fresh period (_release)
        self.untaken_since = None  # since when bytes are queued with none of them taken
        self.blocked = set()      # senders paused because of this queue
        self.paused_by = set()    # destinations this sender waits for
        self.paused_at = 0        # when its current pause began
        self.pinged_at = None     # when the relay last PINGed it (a quiet spell's one PING)

    @property
    def identity(self):
        return self.info["identity"] if self.info else None


class Router:
    def __init__(self, authenticate, max_frame=65536, join_timeout_ms=5000,
                 idle_timeout_ms=30000, queue_bytes=1 << 20, stuck_ms=10000,
                 server_version=SERVER_VERSION, metrics=None, new_sid=None, max_connections=10000):
        if max_frame < 16 * 1024:
            raise ValueError("max_frame %d cannot carry a 15000-byte chunk plus headers "
                             "(use at least 16384)" % max_frame)
        self.authenticate = authenticate
        self.max_frame = max_frame
        self.join_timeout_ms = join_timeout_ms
        self.idle_timeout_ms = idle_timeout_ms
        self.queue_bytes = queue_bytes
        self.stuck_ms = stuck_ms
        self.max_connections = max_connections
        self.server_version = server_version
        self.metrics = metrics if metrics is not None else Metrics()
        self.new_sid = new_sid or random_sid
        self._conns = {}
        self._rooms = {}          # room -> {identity: _Conn}
        self._actions = []
        self._now = 0             # the time of the input being handled
        self._refused = 0         # connections turned away as full since the last "full" line
        self._refused_logged = None
        self.metrics.set_gauge("lkedge_relay_connections", 0)
        self.metrics.set_gauge("lkedge_relay_paused_senders", 0)
        # Counters without labels are shown from the start (0), so a first scrape has them.
        for name in ("lkedge_relay_joins_total", "lkedge_relay_bytes_in_total", "lkedge_relay_bytes_out_total"):
            self.metrics.inc(name, 0)

    # ------------------------------------------------------------ inspection
    def pop_actions(self):
        out = self._actions
        self._actions = []
        return out

    def queued(self, cid):
        c = self._conns.get(cid)
        return c.queued if c else 0

    def paused(self, cid):
        c = self._conns.get(cid)
        return bool(c and c.paused_by)

    def rooms(self):
        return {name: sorted(members) for name, members in self._rooms.items()}

    def connection_count(self):
        return len(self._conns)

    # ------------------------------------------------------------ inputs
    def open(self, cid, now, transport="tcp", peer="", pending=0):
        """A new link connection; `pending`: connections the adapter holds that count in
        max_connections too (WebSocket upgrade requests still being read, TLS handshakes)."""
        self._now = now
        if cid in self._conns:
            raise ValueError("connection id %r is already open" % (cid,))
        c = _Conn(cid, now, self.max_frame, transport, peer)
        if len(self._conns) + 1 + pending > self.max_connections:
            # full: LEAVE 5 (not final: a participant tries again with backoff). Counted,
            # and logged once a minute with the count: a flood of connections to a full
            # relay wrote a line each (2000 in 2.6 s), and shutdowns' code 5 mixed in.
            self._send_leave(c, link.LEAVE_SHUTDOWN, self.full_reason())
            self._actions.append((CLOSE, cid))
            self.metrics.inc("lkedge_relay_refused_total", reason="full")
            self._refused += 1
            if self._refused_logged is None or now - self._refused_logged >= FULL_LOG_MS:
                self._refused_logged = now
                self._log("full", c, refused=self._refused, reason=self.full_reason())
                self._refused = 0
            return
        self._conns[cid] = c
        self.metrics.inc("lkedge_relay_connections_total", transport=transport)

    def full_reason(self):
        """Why a connection past max_connections is turned away (LEAVE 5, HTTP 503)."""
        return "relay full: %d connections open, the limit; try again later" % self.max_connections

    def receive(self, cid, data, now):
        c = self._conns.get(cid)
        if c is None or not data:
            return
        self._now = now
        c.last_rx = now
        self.metrics.inc("lkedge_relay_bytes_in_total", len(data))
        try:
            c.reader.receive(memoryview(data))
            while self._conns.get(cid) is c:
                ev = c.reader.next_event()
                if ev == link.NEED_DATA:
                    return
                self._event(c, ev, now)
        except link.LinkError as e:
            self._drop(c, link.LEAVE_PROTOCOL, str(e), now)
        except Exception as e:   # a relay fault on this input: only this connection pays
            if self._conns.get(cid) is c:
                what = "%s: %s" % (e.__class__.__name__, e)
                self._log("error", c, error=_clip(what))
                self._drop(c, link.LEAVE_PROTOCOL, "the relay could not process this "
                           "connection's input (%s)" % what, now)

    def drained(self, cid, nbytes, now):
        c = self._conns.get(cid)
        if c is None:
            return
        self._now = now
        self._dequeued(c, nbytes, now)
        self._took(c, nbytes, now)

    def progress(self, cid, nbytes, now):
        """cid's transport took nbytes of a frame still being written (drained() comes
        per whole frame, and one big frame to a slow reader takes long): counted for
        its stuck clocks as drained bytes are."""
        c = self._conns.get(cid)
        if c is not None:
            self._now = now
            self._took(c, nbytes, now)

    def _took(self, c, nbytes, now):
        if not nbytes:
            return
        if c.untaken_since is not None:   # it reads: its clock starts again from now
            c.untaken_since = now
        if c.full_since is not None:
            # Full, but reading: a slow receiver (a board working through a backlog
            # of requests) is not a stuck one. Each 1/16 of the queue it takes buys it
            # a fresh stuck_ms; one that reads a trickle is still dropped.
            c.moved += nbytes
            if c.moved >= self.queue_bytes // 16:
                self._fresh(c, now, True)

    def discarded(self, cid, nbytes, nframes, source, now):
        """A DISCARD dropped nframes (nbytes) queued for cid from `source`, who left."""
        c = self._conns.get(cid)
        if c is None or not nframes:
            return
        self._now = now
        self.metrics.inc("lkedge_relay_drops_total", nframes, reason="sender_left_queue_full")
        self._log("discard", c, left=source, frames=nframes, bytes=nbytes)
        self._dequeued(c, nbytes, now)

    def _dequeued(self, c, nbytes, now):
        """nbytes left c's queue (written or discarded); -> True while it is still full."""
        c.queued = max(0, c.queued - nbytes)
        if not c.queued:
            c.untaken_since = None
        if c.queued >= self.queue_bytes:
            return True
        c.full_since = None
        c.refreshed = False
        self._release(c, now)
        return False

    def untaken(self):
        """The connections with bytes queued and none of them taken yet (stuck clocks
        running): the adapter looks at their transports' progress (progress())."""
        return [c.cid for c in self._conns.values() if c.untaken_since is not None]

    def closed(self, cid, now, reason="transport closed"):
        self._now = now
        c = self._conns.get(cid)
        if c is not None:
            self._remove(c, 0, reason, now, announce=True)

    def fail(self, cid, code, reason, now):
        """The adapter found the peer misbehaving below the link (e.g. a text WebSocket
        message): LEAVE code, close, announce."""
        self._now = now
        c = self._conns.get(cid)
        if c is not None:
            self._drop(c, code, reason, now)

    def tick(self, now):
        self._now = now
        if self._refused and now - self._refused_logged >= FULL_LOG_MS:
            # the refusals since the last "full" line: said within a minute of it
            self._actions.append((LOG, "full", {"refused": self._refused, "reason": self.full_reason()}))
            self._refused_logged = now
            self._refused = 0
        for c in list(self._conns.values()):
            if self._conns.get(c.cid) is not c:
                continue        # removed by an earlier step of this tick
            if c.info is None and now - c.opened >= self.join_timeout_ms:
                self._drop(c, link.LEAVE_PROTOCOL,
                           "no JOIN within %d ms of connecting" % self.join_timeout_ms, now)
            elif c.full_since is not None and now - c.full_since >= self._stuck_limit(c):
                self._drop(c, link.LEAVE_IDLE, "receiver stuck: %d bytes queued for %d ms"
                           % (c.queued, now - c.full_since), now)
            elif c.untaken_since is not None and now - c.untaken_since >= self._stuck_limit(c):
                # LINK.md: stuck past a deadline, full queue or not (one that stopped
                # reading with less queued held it for ever, and calls to it hung)
                self._drop(c, link.LEAVE_IDLE, "receiver stuck: %d bytes queued, none of them taken "
                           "for %d ms" % (c.queued, now - c.untaken_since), now)
            elif not c.paused_by and now - c.last_rx >= self.idle_timeout_ms:
                unanswered = "" if not self._pinged(c) else ", nor a PONG to the relay's PING of %d ms ago" % (
                    now - c.pinged_at)
                self._drop(c, link.LEAVE_IDLE, "nothing received for %d ms (idle timeout %d ms)%s"
                           % (now - c.last_rx, self.idle_timeout_ms, unanswered), now)
            else:
                due = self._ping_due(c)
                if due is not None and now >= due:
                    self._ping(c, now)

    def _ping(self, c, now):
        c.pinged_at = now
        was_empty = not c.queued
        self._send(c, _RELAY_PING, link.PING)
        if was_empty:
            # Our PING must not make a participant that neither reads nor sends stuck
            # sooner than it was idle: its untaken clock ends just after the idle
            # timeout (which says why better), unless it starts sending meanwhile
            # without reading, which is being stuck.
            c.untaken_since = max(now, c.last_rx + self.idle_timeout_ms - self._stuck_limit(c) + 1)

    @staticmethod
    def _pinged(c):
        """The relay PINGed c since it last heard from it (a PONG within the same ms
        counts as heard after: a PING goes out at least 1 ms after last_rx)."""
        return c.pinged_at is not None and c.pinged_at > c.last_rx

    def _ping_due(self, c):
        """When the relay PINGs c: a joined participant quiet for half the idle timeout
        gets one PING, so that one whose own PINGs run late (a hidden browser tab's
        throttled timers, a board busy past its interval) but who still reads and answers
        (LINK.md: PING goes both ways, a PONG echoes it) is not closed as idle. None: not
        to be PINGed (not joined; already PINGed this quiet spell; its queue full: queued
        bytes it does not take are the stuck clocks' business; or paused by us: we do not
        read it, so its PONG could not go out, and a participant that answers from its
        reader, as ours do, would stop reading meanwhile and be dropped as stuck)."""
        if c.info is None or c.paused_by or self._pinged(c) or c.queued >= self.queue_bytes:
            return None
        return c.last_rx + max(1, self.idle_timeout_ms // 2)

    def next_deadline(self):
        best = None
        for c in self._conns.values():
            if c.info is None:
                d = c.opened + self.join_timeout_ms
            elif c.paused_by:
                d = None
            else:
                d = c.last_rx + self.idle_timeout_ms
                p = self._ping_due(c)
                if p is not None:
                    d = min(d, p)
            for since in (c.full_since, c.untaken_since):
                if since is not None:
                    s = since + self._stuck_limit(c)
                    d = s if d is None else min(d, s)
            if d is not None and (best is None or d < best):
                best = d
        return best

    @staticmethod
    def _fresh(c, now, again=False):
        """c's queue is full: its stuck clock starts now (again: restarts)."""
        if again or c.full_since is None:
            c.full_since = now
            c.moved = 0

    def _stuck_limit(self, c):
        """A connection we paused (one of its destinations is full) cannot send, and a
        participant that waits to send may stop reading: its own full queue is then
        another's doing. Its clock runs 3 times as long, so the one that does not read
        goes first; then it resumes with a fresh stuck_ms, once per full episode (_release)."""
        return self.stuck_ms * 3 if c.paused_by else self.stuck_ms

    def shutdown(self, now):
        self._now = now
        for c in list(self._conns.values()):
            self._send_leave(c, link.LEAVE_SHUTDOWN, "relay shutting down")
            self._remove(c, link.LEAVE_SHUTDOWN, "relay shutting down", now, announce=False)
            self._actions.append((CLOSE, c.cid))

    # ------------------------------------------------------------ frames
    def _event(self, c, ev, now):
        kind = ev[0]
        if kind == link.DATA_PIECE:
            c.body += ev[1]
        elif kind == link.DATA_START:
            self._count_in(link.DATA)
            if c.info is None:
                self._drop(c, link.LEAVE_PROTOCOL, "DATA before JOIN", now)
                return
            c.body = bytearray()
        elif kind == link.DATA_END:
            body, c.body = c.body, None
            self._data(c, body, now)
        else:
            self._control(c, ev[1], ev[2], now)

    def _control(self, c, t, body, now):
        self._count_in(t)
        if c.info is None:
            if t != link.JOIN:
                self._drop(c, link.LEAVE_PROTOCOL, "first frame must be JOIN, got %s"
                           % relayside.type_name(t), now)
            else:
                self._join(c, body, now)
        elif t == link.PING:
            if c.queued < self.queue_bytes:
                self._send(c, relayside.encode_frame(link.PONG, body), link.PONG)
            else:
                # Its queue is full: the bytes in it tell it the link lives, so no PONG
                # (one that never reads cannot grow its queue with PINGs, and is dropped
                # with LEAVE 6 once stuck_ms passes). Not reading it instead would stop
                # its answers too: a board flooded with requests could no longer send
                # their acks, stop reading, and be dropped in its flooder's place.
                self.metrics.inc("lkedge_relay_drops_total", reason="pong_queue_full")
        elif t == link.LEAVE:
            reason = _leave_reason(body)
            self._remove(c, link.LEAVE_CLIENT, reason, now, announce=True)
            self._actions.append((CLOSE, c.cid))
        elif t == link.JOIN:
            self._drop(c, link.LEAVE_PROTOCOL, "second JOIN on a joined connection", now)
        elif t in _RELAY_ONLY:
            self._drop(c, link.LEAVE_PROTOCOL, "%s is sent by the relay, not to it"
                       % relayside.type_name(t), now)
        # PONG: liveness only (last_rx already moved)

    def _join(self, c, body, now):
        try:
            j = relayside.check_join(link.decode_control(body))
        except link.LinkError as e:
            self._drop(c, link.LEAVE_PROTOCOL, "bad JOIN: %s" % e, now)
            return
        try:
            grant = self.authenticate(j["token"])
        except Exception as e:    # the verifier's reason goes back in LEAVE 3
            # "token expired" alone does not say which board's token it was: the log
            # names what the token claims, marked unverified
            c.claimed = _claimed(j["token"])
            self._drop(c, link.LEAVE_UNAUTHORIZED, str(e) or e.__class__.__name__, now)
            return
        room, identity = grant["room"], grant["identity"]
        info = {"identity": identity, "sid": self.new_sid(),
                "client_protocol": j["client_protocol"],
                "capabilities": j["capabilities"],
                "attributes": dict(grant.get("attributes") or {})}
        body = cbor.dumps(info)
        if 1 + len(body) > BOARD_CONTROL:  # type + body, as a board's FrameReader counts
            # Everyone gets this frame (and JOINED lists it): over a board's control
            # buffer it would end every board's link, again at each rejoin.
            self._drop(c, link.LEAVE_UNAUTHORIZED, "the token's identity and attributes make "
                       "an announcement of %d bytes; boards take at most %d"
                       % (1 + len(body), BOARD_CONTROL), now)
            return
        members = self._rooms.setdefault(room, {})
        old = members.get(identity)
        if old is not None:
            self._drop(old, link.LEAVE_DUPLICATE, "identity %r joined again on another "
                       "connection" % identity, now)
            members = self._rooms.setdefault(room, {})
        c.info = info
        # the same two fields go in front of every DATA it sends: encoded once
        c.stamp = relayside.encode(proto.DATA_PACKET, {"participant_identity": identity,
                                                       "participant_sid": info["sid"]})
        c.room = room
        c.can_publish = bool(grant.get("can_publish_data", True))
        others = list(members.values())
        members[identity] = c
        listed, rest = _split_for_joined(others)
        self._send(c, relayside.encode_control(link.JOINED, {
            "v": link.LINK_VERSION, "room": room, "identity": identity,
            "sid": c.info["sid"], "server_version": self.server_version,
            "max_frame": self.max_frame, "participants": [o.info for o in listed]}),
            link.JOINED)
        for o in rest:  # a big room: the rest follow at once, before anything else
            self._send(c, relayside.encode_control(link.PARTICIPANT, o.info), link.PARTICIPANT,
                       o.info["identity"])
        announce = relayside.encode_frame(link.PARTICIPANT, body)
        for o in others:
            self._send(o, announce, link.PARTICIPANT, identity)
        self.metrics.inc("lkedge_relay_joins_total")
        self._log("join", c, sid=c.info["sid"], client_protocol=j["client_protocol"],
                  sdk=j["sdk"], sdk_version=j["sdk_version"])

    # ------------------------------------------------------------ DATA
    def _data(self, c, body, now):
        if not c.can_publish:
            self._drop(c, link.LEAVE_FORBIDDEN, "DATA without the canPublishData grant", now)
            return
        mv = memoryview(body)
        try:
            dests = self._destinations(c, _check_whole(body))
            fields = relayside.scan_fields(body)
            parts = [c.stamp]
            for num, wt, start, vs, end in fields:
                if num == _F_USER and wt == 2:
                    parts.append(_strip_user(mv, start, vs, end))
                elif num not in _STRIP:
                    parts.append(mv[start:end])
        except ValueError as e:
            self._drop(c, link.LEAVE_PROTOCOL, "malformed DataPacket: %s" % e, now)
            return
        packet = b"".join(parts)
        if 1 + len(packet) > self.max_frame + link.STAMP_ROOM:
            self._drop(c, link.LEAVE_PROTOCOL, "DATA of %d bytes is %d with the sender "
                       "stamped, over max_frame %d + %d" % (1 + len(body), 1 + len(packet),
                                                            self.max_frame, link.STAMP_ROOM), now)
            return
        frame = relayside.encode_frame(link.DATA, packet)
        key = c.info["identity"]
        for r in (self._recipients(c, dests) if dests is not None else ()):
            self._send(r, frame, link.DATA, key)
            if r.queued >= self.queue_bytes:
                self._block(c, r, now)

    def _destinations(self, c, pkt):
        """Whom a DataPacket names, as LiveKit's server reads it: destination_identities
        (5); when that is empty, a UserPacket's own (deprecated) destination_identities
        (6), which some SDK versions write instead; and the UserPacket's
        destination_sids (3), the members with those sids, in addition. Without them a
        packet meant for one participant went to the whole room."""
        dests = pkt.destination_identities
        if not pkt.HasField("user"):
            return dests
        user = pkt.user
        if not dests:
            dests = user.destination_identities
        if not user.destination_sids:
            return dests
        wanted = set(user.destination_sids)
        by_sid = [m.info["identity"] for m in self._rooms.get(c.room, {}).values() if m.info["sid"] in wanted]
        if len(by_sid) < len(wanted):
            self.metrics.inc("lkedge_relay_drops_total", len(wanted) - len(by_sid), reason="unknown_destination")
        return list(dests) + by_sid or None   # only unknown sids: nobody (not everyone)

    def _recipients(self, c, dests):
        """The members `dests` names (all others when empty). A DataPacket of max_frame
        bytes can name tens of thousands of identities (three bytes each), so the work
        here is bounded by the room, not by the packet: duplicates are folded at C speed
        (dict.fromkeys keeps the list's order), and a list naming more distinct
        identities than the room has members cannot all be members, so the room is
        walked instead of the list. Skipped destinations are counted once per packet."""
        members = self._rooms.get(c.room, {})
        me = c.info["identity"]
        if not dests:
            out = [m for ident, m in members.items() if ident != me]
            if not out:
                self.metrics.inc("lkedge_relay_drops_total", reason="no_recipients")
            return out
        wanted = dict.fromkeys(dests)
        if len(wanted) > len(members):
            out = [m for ident, m in members.items() if ident in wanted and ident != me]
        else:
            out = [members[ident] for ident in wanted if ident != me and ident in members]
        to_self = me in wanted
        unknown = len(wanted) - len(out) - to_self
        if to_self:
            self.metrics.inc("lkedge_relay_drops_total", reason="destination_is_sender")
        if unknown:
            self.metrics.inc("lkedge_relay_drops_total", unknown, reason="unknown_destination")
        return out

    # ------------------------------------------------------------ backpressure
    def _block(self, sender, dest, now):
        self._fresh(dest, now)
        dest.blocked.add(sender.cid)
        if not sender.paused_by:
            self._actions.append((PAUSE, sender.cid))
            self.metrics.inc("lkedge_relay_pauses_total")
            sender.paused_at = now
        sender.paused_by.add(dest.cid)

    def _release(self, dest, now):
        for scid in dest.blocked:
            s = self._conns.get(scid)
            if s is None:
                continue
            s.paused_by.discard(dest.cid)
            if not s.paused_by:
                s.last_rx = now     # it was quiet because we stopped reading it
                if now - s.paused_at >= PAUSE_LOG_MS:
                    # logged at its end, with how long: a healthy bulk transfer pauses
                    # its sender hundreds of times a second, each too short to matter
                    self._log("paused", s, ms=now - s.paused_at, waited_for=dest.identity)
                if not s.refreshed and (s.full_since is not None or s.untaken_since is not None):
                    # its queue filled (or went unread) while it could not send: once
                    # per episode (pausing itself again and again must not keep a
                    # non-reader in)
                    if s.full_since is not None:
                        self._fresh(s, now, True)
                    if s.untaken_since is not None:
                        s.untaken_since = now
                    s.refreshed = True
                self._actions.append((RESUME, scid))
        dest.blocked = set()

    # ------------------------------------------------------------ leaving
    def _drop(self, c, code, reason, now):
        """Send LEAVE code to c, close it and announce it as left."""
        self._send_leave(c, code, reason)
        self._remove(c, code, reason, now, announce=True)
        self._actions.append((CLOSE, c.cid))

    def _send_leave(self, c, code, reason):
        self._send(c, relayside.encode_control(link.LEAVE, {"code": code, "reason": _clip(reason)}),
                   link.LEAVE, None)

    def _remove(self, c, code, reason, now, announce):
        if self._conns.pop(c.cid, None) is None:
            return
        reason = _clip(reason)
        self.metrics.inc("lkedge_relay_leaves_total", code=code)
        if c.info is not None:
            members = self._rooms.get(c.room, {})
            if members.get(c.info["identity"]) is c:
                del members[c.info["identity"]]
                if not members:
                    del self._rooms[c.room]
                elif announce:
                    ident = c.info["identity"]
                    left = relayside.encode_control(link.PARTICIPANT_LEFT, {
                        "identity": ident,
                        "reason": _REASONS.get(code, "disconnected") + ": " + reason})
                    for m in list(members.values()):
                        if m.queued * 2 >= self.queue_bytes:   # behind: half full or more
                            self._actions.append((DISCARD, m.cid, ident))
                        self._send(m, left, link.PARTICIPANT_LEFT, ident)
        for dcid in c.paused_by:
            d = self._conns.get(dcid)
            if d is not None:
                d.blocked.discard(c.cid)
        c.paused_by = set()
        self._release(c, now)
        self._log("leave", c, code=code, reason=reason)

    # ------------------------------------------------------------ helpers
    def _send(self, c, frame, t, key=""):
        if not c.queued:
            c.untaken_since = self._now
        c.queued += len(frame)
        if c.queued >= self.queue_bytes:
            self._fresh(c, self._now)    # whatever fills it (PONGs, PARTICIPANT churn)
        self.metrics.inc("lkedge_relay_frames_out_total", type=relayside.type_name(t))
        self.metrics.inc("lkedge_relay_bytes_out_total", len(frame))
        self._actions.append((SEND, c.cid, frame, key))

    def _count_in(self, t):
        self.metrics.inc("lkedge_relay_frames_in_total", type=relayside.type_name(t))

    def _log(self, event, c, **fields):
        out = {"conn": c.cid, "transport": c.transport}
        if c.peer:
            out["peer"] = c.peer
        if c.info is not None:
            out["room"] = c.room
            out["identity"] = c.info["identity"]
        elif c.claimed:
            out.update(c.claimed)
        out.update(fields)
        self._actions.append((LOG, event, out))

    def _gauges(self):
        # Walks every connection and room: run when /metrics is read (queue_gauges), not
        # on every frame drained (that made each forwarded frame cost time in proportion
        # to the connections open, unauthenticated ones included).
        m = self.metrics
        m.set_gauge("lkedge_relay_connections", len(self._conns))
        m.set_gauge("lkedge_relay_paused_senders",
                    sum(1 for c in self._conns.values() if c.paused_by))
        m.clear_gauge("lkedge_relay_participants")
        for name, members in self._rooms.items():
            m.set_gauge("lkedge_relay_participants", len(members), room=name)

    def queue_gauges(self):
        """Refresh the gauges: connections, paused senders, participants per room and
        the per-identity queue depth (called when /metrics is read)."""
        self._gauges()
        m = self.metrics
        m.clear_gauge("lkedge_relay_queue_bytes")
        for c in self._conns.values():
            if c.info is not None:
                m.set_gauge("lkedge_relay_queue_bytes", c.queued, room=c.room,
                            identity=c.info["identity"])


# JOINED lists at most this many bytes of participants (CBOR); the others are sent as
# PARTICIPANT frames right after it. A room of a thousand would otherwise make JOINED
# larger than any board's frame buffer (and than max_frame itself).
JOINED_LIST_BUDGET = 8192


def _split_for_joined(others):
    used = 0
    for i, o in enumerate(others):
        used += len(cbor.dumps(o.info))
        if used > JOINED_LIST_BUDGET:
            return others[:i], others[i:]
    return others, []


def _check_whole(body):
    """The DataPacket as LiveKit's server parses it, or ValueError (LINK.md: a malformed
    DataPacket is LEAVE 4, not forwarded). The official parser decides, sub-messages
    and UTF-8 included (destination_identities too), also in the oneof cases lkedge.proto
    skips (chat, transcription, metrics, ...); it is also 15 times faster than ours,
    which is asked only for a message naming the fault."""
    try:
        return _OfficialDataPacket.FromString(bytes(body))
    except _DecodeError as e:
        relayside.decode_packet(body)   # raises with the field and the cause, if it can tell
        raise ValueError("refused by the protobuf parser (%s), in a part lkedge does not decode" % e)


def _clip(text):
    if len(text) <= MAX_REASON:
        return text
    return "%s... (%d more characters)" % (text[:MAX_REASON], len(text) - MAX_REASON)


def _varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return out


def _strip_user(mv, start, vs, end):
    """Field 2 (user) without the participant_sid (1) and participant_identity (5) the
    sender wrote in its UserPacket (LiveKit's server overwrites them; SDKs read them)."""
    sub = relayside.scan_fields(mv[vs:end])
    if not any(f[0] in _USER_STRIP for f in sub):
        return mv[start:end]
    inner = b"".join(mv[vs + s:vs + e] for num, _wt, s, _v, e in sub if num not in _USER_STRIP)
    return b"\x12" + _varint(len(inner)) + inner


def _claimed(token):
    """The identity and room an unverified token claims, {} if it claims none: for the
    log of a refused join only, clipped, never trusted for anything else."""
    try:
        part = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        video = claims.get("video") if isinstance(claims.get("video"), dict) else {}
        out = {}
        if isinstance(claims.get("sub"), str):
            out["unverified_identity"] = _clip(claims["sub"])
        if isinstance(video.get("room"), str):
            out["unverified_room"] = _clip(video["room"])
        return out
    except Exception:   # not a JWT at all: nothing to name
        return {}


def _leave_reason(body):
    try:
        d = relayside.check_leave(link.decode_control(body))
    except link.LinkError as e:
        return "client LEAVE (unreadable: %s)" % e
    return "client LEAVE code %d%s" % (d["code"], ": " + d["reason"] if d["reason"] else "")
