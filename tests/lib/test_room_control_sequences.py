"""The relay's control frames in arbitrary sequences (hypothesis): PARTICIPANT and
PARTICIPANT_LEFT maps with well-formed and malformed values (identities of every CBOR
type, the room's own identity among them), PINGs, PONGs, frames of unknown types, a
second JOINED. What LINK.md and the Room's contract say comes of any sequence:

- up to the first malformed frame, remote_participants is exactly the others announced
  and not gone since (the room's own identity never among them), with one
  participant_connected per newcomer, participant_updated per change of one held and
  participant_disconnected per leaver held;
- a malformed frame ends the link with a LinkError that names it (auto_reconnect is
  off: the room is gone, holding nobody and announcing nobody leaving), and nothing
  escapes to the event loop;
- PINGs, PONGs and frames of unknown types change nothing.

(Found a list identity in PARTICIPANT_LEFT ending the link as a bare TypeError, a second
JOINED changing the room's identity, and the room announced as its own participant.)
"""
import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from room_helpers import close, join, settle, watch_escapes

from lkedge import cbor, link, relayside
from lkedge.memroom import MemRoom

IDENTITIES = ("p1", "p2", "p3", "me")   # "me" is the room's own identity
ODD = st.one_of(st.integers(-3, 3), st.none(), st.booleans(), st.binary(max_size=3),
                st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.text(max_size=2), st.text(max_size=2),
                                                                     max_size=1))
IDENT = st.one_of(st.sampled_from(IDENTITIES), ODD)


def _value(good):
    """A well-formed value, or one of another CBOR type."""
    return st.one_of(good, ODD)


participant = st.fixed_dictionaries(
    {"identity": IDENT, "sid": _value(st.sampled_from(["PA_1", "PA_2"]))},
    optional={"client_protocol": _value(st.sampled_from([0, 1, 2])),
              "capabilities": _value(st.lists(st.sampled_from([0, 2]), max_size=2)),
              "attributes": _value(st.dictionaries(st.sampled_from(["k", "room"]), st.sampled_from(["", "v"]),
                                                   max_size=2))})
frames = st.one_of(
    st.tuples(st.just(link.PARTICIPANT), participant),
    st.tuples(st.just(link.PARTICIPANT_LEFT), st.fixed_dictionaries(
        {"identity": IDENT}, optional={"reason": _value(st.just("gone"))})),
    st.tuples(st.just(link.PING), st.binary(max_size=8)),
    st.tuples(st.just(link.PONG), st.binary(max_size=8)),
    st.tuples(st.just(0x33), st.binary(max_size=8)),
    st.tuples(st.just(link.JOINED), st.just({"v": 1, "room": "x", "identity": "other", "sid": "PA_x",
                                             "max_frame": 100, "participants": []})))


def _well_formed(ftype, d):
    """LINK.md's keys and types (link.participant_info's checks), or None."""
    def text(v):
        return isinstance(v, str)

    def count(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0
    if ftype == link.PARTICIPANT_LEFT:
        return text(d["identity"])
    if ftype == link.JOINED:
        return False   # a second JOINED on one link
    if ftype != link.PARTICIPANT:
        return True
    return (text(d["identity"]) and text(d["sid"]) and count(d.get("client_protocol", 0))
            and isinstance(d.get("capabilities", []), list) and all(count(c) for c in d.get("capabilities", []))
            and isinstance(d.get("attributes", {}), dict)
            and all(text(k) and text(v) for k, v in d.get("attributes", {}).items()))


def _expected(script):
    """(participants {identity: (sid, client_protocol, capabilities, attributes)}, events,
    whether the link ends) after the script, up to its first malformed frame."""
    held, events = {}, []
    for ftype, d in script:
        if not _well_formed(ftype, d):
            return {}, events, True   # a room gone holds nobody, announcing nobody
        ident = d.get("identity") if isinstance(d, dict) else None
        if ident == "me":
            continue
        if ftype == link.PARTICIPANT:
            events.append(("participant_updated" if ident in held else "participant_connected", ident))
            held[ident] = (d["sid"], d.get("client_protocol", 0), d.get("capabilities", []), d.get("attributes", {}))
        elif ftype == link.PARTICIPANT_LEFT and ident in held:
            del held[ident]
            events.append(("participant_disconnected", ident))
    return held, events, False


async def _play(script):
    mem = MemRoom()
    me = await join(mem, "me")
    escaped = watch_escapes()
    events, lost = [], []
    for name in ("participant_connected", "participant_updated", "participant_disconnected"):
        me.on(name, (lambda n: lambda p: events.append((n, p.identity)))(name))
    me.on("disconnected", lost.append)
    try:
        t = mem.conns["me"].t
        for ftype, body in script:
            await t._deliver(relayside.encode_frame(ftype, body if isinstance(body, bytes) else cbor.dumps(body)))
        held, want_events, ends = _expected(script)
        if ends:
            await settle(lambda: lost)
            assert "LinkError" in lost[0], lost
        else:
            # a last newcomer announced: every frame before it was handled
            await t._deliver(relayside.encode_control(link.PARTICIPANT, {"identity": "last", "sid": "PA_last"}))
            await settle(lambda: "last" in me.remote_participants)
            assert me.connection_state == "connected" and not lost, lost
            held["last"] = ("PA_last", 0, [], {})
            want_events.append(("participant_connected", "last"))
        got = dict((i, (p.sid, p.client_protocol, list(p.capabilities), dict(p.attributes)))
                   for i, p in me.remote_participants.items())
        assert got == held, (got, held)
        assert events == want_events, (events, want_events)
        assert not escaped, escaped
    finally:
        asyncio.get_event_loop().set_exception_handler(None)
        await close(me)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=st.lists(frames, max_size=8))
def test_any_sequence_of_control_frames_keeps_the_participants_link_md_announces(script):
    asyncio.run(_play(script))
