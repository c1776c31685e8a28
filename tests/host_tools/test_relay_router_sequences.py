"""The sans-I/O Router under arbitrary sequences (hypothesis) of joins (duplicate
identities, two rooms, a participant without canPublishData), DATA (named destinations,
ghosts, forged participant_identity and participant_sid, split across reads), garbage,
PINGs, transports closing, time passing, and receivers that read at once or hold their
queues (small queue_bytes: pauses, discards, stuck receivers). Between the Router and
the readers are server.py's own per-connection queues (_Link: a queue per key taken in
turn, DATA of a sender who left dropped on DISCARD, the LEAVE last). Whatever the
sequence, LINK.md's relay rules hold for what every participant reads:

- JOINED (or a refusing LEAVE) first, nothing after a LEAVE;
- DATA only from a participant announced to it (JOINED's list or PARTICIPANT) and not
  announced as left since, in its room, never its own;
- the sender's verified identity and sid as the first fields, never a forged one;
- each sender's DATA in the order it was sent;
- and the Router never raises.
"""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from livekit.protocol import models

from lkedge import link
from lkedge_host.relay import router as rt
from lkedge_host.relay import server
from test_relay_router import Sim

TOKENS = ("a@r", "b@r", "c@r", "a@r", "d@o", "e@r!")   # "a" twice: the later one wins
CIDS = range(1, 7)

_data = st.tuples(st.just("data"), st.sampled_from(CIDS),
                  st.lists(st.sampled_from(["a", "b", "c", "d", "e", "ghost"]), max_size=3),
                  st.sampled_from([None, "b", "mallory"]), st.integers(0, 40))
_OTHER = {
    "join": st.tuples(st.just("join"), st.sampled_from(CIDS), st.sampled_from(TOKENS)),
    "garbage": st.tuples(st.just("garbage"), st.sampled_from(CIDS), st.binary(min_size=1, max_size=12)),
    "ping": st.tuples(st.just("ping"), st.sampled_from(CIDS)),
    "close": st.tuples(st.just("close"), st.sampled_from(CIDS)),
    "hold": st.tuples(st.just("hold"), st.sampled_from(CIDS), st.booleans()),
    "write": st.tuples(st.just("write"), st.sampled_from(CIDS), st.integers(1, 8)),
    "time": st.tuples(st.just("time"), st.sampled_from([10, 1000, 6000, 31000])),
}
# what ends a connection (garbage, close, long times) rarer than what moves data
_other = st.sampled_from(["hold"] * 3 + ["write"] * 3 + ["time"] * 2 + ["ping", "join", "garbage", "close"]).flatmap(
    lambda k: _OTHER[k])
# DATA comes in runs (one op in eight would rarely fill a queue)
ops = st.lists(st.one_of(st.lists(_data, min_size=1, max_size=8), _other.map(lambda o: [o])),
               max_size=16).map(lambda runs: [o for run in runs for o in run])
# most sequences start with a room of a few participants (ops alone rarely join first)
joins = st.lists(st.tuples(st.sampled_from(TOKENS[:3] + TOKENS[4:]), st.booleans()), min_size=2, max_size=5,
                 unique_by=lambda j: j[0]).map(
    lambda js: [o for i, (t, hold) in enumerate(js) for o in (("join", i + 1, t), ("hold", i + 1, hold))])
sequences = st.tuples(joins, ops).map(lambda t: t[0] + t[1])


class Link(server._Link):
    """server.py's own queues of one connection (a queue per key, taken in turn; DATA of
    a sender who left dropped on DISCARD; the LEAVE last), without a transport: this
    test writes what next_out() gives, or holds it."""
    hold = False

    def __init__(self, cid):
        server._Link.__init__(self, None, cid, "test")


class Play(Sim):
    """Sim's Router and frame decoding (its `out`: cid -> [(type, decoded)] in the order
    read), with server.py's queues in between."""

    def __init__(self):
        Sim.__init__(self, queue_bytes=600, stuck_ms=5000, max_frame=16384)
        self.links = {}
        self.who = {}          # cid -> identity it joined as
        self.seq = {}          # cid -> DATA frames sent

    def apply(self):
        self.apply_only()
        for cid, ln in list(self.links.items()):
            if not ln.hold:
                self.write(cid, 1 << 30)

    def write(self, cid, n):
        ln = self.links.get(cid)
        while ln is not None and n > 0:
            data = ln.next_out()
            if data is None:
                break
            n -= 1
            self._decode(cid, data)
            self.r.drained(cid, len(data), self.now)
            self.apply_only()

    def apply_only(self):
        """Actions the Router made meanwhile, queued without writing (write() goes on)."""
        actions = self.r.pop_actions()
        while actions:
            for a in actions:
                ln = self.links.get(a[1]) if a[0] != rt.LOG else None
                if ln is None:
                    continue
                if a[0] == rt.SEND:
                    ln.enqueue(a[2], a[3])
                elif a[0] == rt.DISCARD:
                    nbytes, nframes = ln.discard(a[2])
                    self.r.discarded(a[1], nbytes, nframes, a[2], self.now)
                elif a[0] == rt.CLOSE:
                    ln.closing = True
            actions = self.r.pop_actions()

    def op(self, o):
        kind, cid = o[0], o[1] if len(o) > 1 else None
        live = sorted(c for c, ln in self.links.items() if not ln.closing)
        if kind in ("data", "hold", "write", "ping") and cid not in live and live:
            cid = live[cid % len(live)]   # drawn for a connection that is gone: one that is not
        if kind == "join":
            if cid in self.links:
                return
            self.links[cid] = Link(cid)
            self.readers[cid] = link.FrameReader(1 << 20)
            self.out[cid] = []
            self.r.open(cid, self.now)
            self.who[cid] = o[2].rstrip("!").split("@")[0]
            self.r.receive(cid, link.encode_control(link.JOIN, {"v": 1, "token": o[2]}), self.now)
        elif kind == "data" and cid in self.links:
            n = self.seq[cid] = self.seq.get(cid, 0) + 1
            # 120 bytes or so: a held reader's 600-byte queue fills in a few
            p = models.DataPacket(user=models.UserPacket(payload=b"%d:%d:" % (cid, n) + b"x" * 100))
            p.destination_identities.extend(o[2])
            if o[3] is not None:
                p.participant_identity = o[3]
                p.participant_sid = "PA_forged"
            frame = link.encode_frame(link.DATA, p.SerializeToString())
            cut = min(o[4], len(frame))
            self.r.receive(cid, frame[:cut], self.now)
            self.apply()
            self.r.receive(cid, frame[cut:], self.now)
        elif kind == "garbage" and cid in self.links:
            self.r.receive(cid, o[2], self.now)
        elif kind == "ping" and cid in self.links:
            self.r.receive(cid, link.encode_control(link.PING, {}), self.now)
        elif kind == "close" and cid in self.links:
            self.r.closed(cid, self.now)
            self.links[cid].closing = True
        elif kind == "hold" and cid in self.links:
            self.links[cid].hold = o[2]
        elif kind == "write":
            self.write(cid, o[2])
        elif kind == "time":
            self.now += o[1]
            self.r.tick(self.now)
        self.apply()


def _check(play):
    for cid, frames in play.out.items():
        me = play.who[cid]
        known = set()       # identities announced to this reader and not left since
        last = {}           # sender cid -> last DATA seq read
        for i, (t, m) in enumerate(frames):
            if i == 0:
                assert t in (link.JOINED, link.LEAVE), (cid, frames)
            if t == link.LEAVE:
                assert i == len(frames) - 1, ("frames after a LEAVE", cid, frames)
            elif t == link.JOINED:
                assert i == 0, (cid, frames)
                known = set(p["identity"] for p in m["participants"])
            elif t == link.PARTICIPANT:
                assert m["identity"] != me, (cid, m)
                known.add(m["identity"])
            elif t == link.PARTICIPANT_LEFT:
                known.discard(m["identity"])
            elif t == link.DATA:
                p = models.DataPacket()
                p.ParseFromString(m)
                # the stamp first: field 4 (identity) then 17 (sid), never forged ones
                assert m[0] == 0x22 and m[2 + m[1]] == 0x8a, m[:40]
                assert p.participant_sid.startswith("PA_") and p.participant_sid != "PA_forged", p
                assert p.participant_identity != me, ("own DATA", cid, p)
                assert p.participant_identity in known, ("DATA from a participant not announced", cid, p, frames)
                tag = p.user.payload.split(b":")
                if len(tag) < 3 or not (tag[0].isdigit() and tag[1].isdigit()):
                    continue   # what garbage before it made of a sender's bytes: no tag to follow
                src, n = int(tag[0]), int(tag[1])
                assert p.participant_identity == play.who[src], ("identity not the verified one", cid, p)
                assert n > last.get(src, 0), ("out of order", cid, src, frames)
                last[src] = n


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seq=sequences)
def test_any_sequence_keeps_link_md_relay_rules_for_every_reader(seq):
    play = Play()
    for o in seq:
        play.op(o)
    for cid in list(play.links):   # everyone reads what is left
        play.links[cid].hold = False
    play.apply()
    _check(play)
