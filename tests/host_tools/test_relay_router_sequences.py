"""The sans-I/O Router under arbitrary sequences (hypothesis) of joins (duplicate
identities, two rooms, a participant without canPublishData), DATA (named destinations,
ghosts, forged participant_identity and participant_sid, split across reads), garbage,
PINGs, transports closing, time passing, and receivers that read at once or hold their
queues (small queue_bytes: pauses, discards, stuck receivers). The adapter is played as
server.py's Link plays it (a queue per key taken in turn, DATA of a sender who left
dropped on DISCARD, the LEAVE last). Whatever the sequence, LINK.md's relay rules hold
for what every participant reads:

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
from test_relay_router import fake_auth

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


class Link:
    """One connection as server.py's Link holds it: a queue per key, taken in turn."""

    def __init__(self):
        self.out = {}
        self.last = None
        self.hold = False
        self.closing = False

    def enqueue(self, data, key):
        if key is None:
            self.last = data
        else:
            self.out.setdefault(key, []).append(data)

    def discard(self, key):
        q = self.out.get(key) or []
        kept = [d for d in q if d[0] != link.DATA]
        n = sum(len(d) for d in q if d[0] == link.DATA)
        if kept:
            self.out[key] = kept
        else:
            self.out.pop(key, None)
        return n, len(q) - len(kept)

    def next_out(self):
        for key in list(self.out):
            q = self.out.pop(key)
            data = q.pop(0)
            if q:
                self.out[key] = q
            return data
        data, self.last = self.last, None
        return data


class Play:
    def __init__(self):
        n = [0]

        def sid():
            n[0] += 1
            return "PA_%d" % n[0]
        self.r = rt.Router(fake_auth, new_sid=sid, queue_bytes=600, stuck_ms=5000, max_frame=16384)
        self.now = 0
        self.links = {}
        self.readers = {}
        self.log = {}          # cid -> [(type, decoded)] in the order read
        self.who = {}          # cid -> identity it joined as
        self.seq = {}          # cid -> DATA frames sent

    def apply(self):
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
            self.read(cid, data)
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

    def read(self, cid, frame):
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
                self.log[cid].append((link.DATA, bytes(body)))
            else:
                self.log[cid].append((ev[1], link.decode_control(ev[2]) if ev[1] not in (link.PING, link.PONG)
                                      else None))

    def op(self, o):
        kind, cid = o[0], o[1] if len(o) > 1 else None
        live = sorted(c for c, ln in self.links.items() if not ln.closing)
        if kind in ("data", "hold", "write", "ping") and cid not in live and live:
            cid = live[cid % len(live)]   # drawn for a connection that is gone: one that is not
        if kind == "join":
            if cid in self.links:
                return
            self.links[cid] = Link()
            self.readers[cid] = link.FrameReader(1 << 20)
            self.log[cid] = []
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
    for cid, frames in play.log.items():
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
                src, n = (int(x) for x in p.user.payload.decode().split(":")[:2])
                sender = play.who[src]
                assert p.participant_identity == sender, ("identity not the verified one", cid, p)
                assert p.participant_sid.startswith("PA_") and p.participant_sid != "PA_forged", p
                # the stamp first: field 4 (identity) then 17 (sid)
                assert m[0] == 0x22 and m[2 + m[1]] == 0x8a, m[:40]
                assert sender != me or src != cid, ("own DATA", cid)
                assert sender in known, ("DATA from a participant not announced", cid, sender, frames)
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
