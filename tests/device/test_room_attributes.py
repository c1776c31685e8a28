"""Participant attributes on the link (PARTICIPANT frames, JOINED's list) are budgeted
as DataPackets are: RoomOptions.max_values per participant map, bytes plus 32 per value,
enforced while the CBOR is decoded. A participant over it is kept without attributes,
flagged (RemoteParticipant.attributes_dropped) and warned about; calls to it still work.
(test_room_attributes_heap.py: the same in a board-sized heap.)

Runs on CPython and under MicroPython.
"""
from attribute_helpers import Warnings, join_with, participant_frame, relay_says
from room_helpers import close, raw, settle

from lkedge import cbor, link, relayside
from lkedge.config import RoomOptions
from lkedge.memroom import MemRoom

MP_HEAPSIZE = "512K"


async def test_a_participant_whose_attributes_exceed_max_values_is_kept_without_them_flagged_and_warned():
    mem = MemRoom()
    b = await join_with(mem, "b", RoomOptions.for_board())
    p = await join_with(mem, "p", RoomOptions.for_board())
    p.local_participant.register_rpc_method("echo", lambda d: d.payload)
    await settle(lambda: "p" in b.remote_participants)
    connected = []
    b.on("participant_connected", connected.append)
    with Warnings() as warns:
        # a newcomer, and a change of p, each over the board's 8 KiB of values
        await relay_says(mem, "b", participant_frame("op", "PA_op", 1500))
        await relay_says(mem, "b", participant_frame("p", mem.conns["p"].sid, 1500))
        await settle(lambda: len(warns) == 2)
    op = b.remote_participants["op"]
    assert [x.identity for x in connected] == ["op"]
    assert (op.identity, op.sid, op.client_protocol, op.capabilities) == ("op", "PA_op", 2, [2])
    assert op.attributes == {} and op.attributes_dropped is True
    q = b.remote_participants["p"]
    assert q.attributes == {} and q.attributes_dropped is True and q.client_protocol == 2
    for w, who in zip(warns, ("'op'", "'p'")):
        assert who in w and "8192" in w and "max_values" in w and "attributes" in w and "dropped" in w, w
    assert b.connection_state == "connected"
    # calls to a participant whose attributes were dropped work as before
    assert await b.local_participant.perform_rpc(destination_identity="p", method="echo", payload="hi") == "hi"
    # an announcement that fits brings its attributes back and clears the flag
    await relay_says(mem, "b", participant_frame("p", mem.conns["p"].sid, attributes={"room": "kitchen"}))
    await settle(lambda: b.remote_participants["p"].attributes == {"room": "kitchen"})
    assert b.remote_participants["p"].attributes_dropped is False
    await close(b, p)


async def test_a_participant_whose_attributes_fit_max_values_is_kept_whole():
    mem = MemRoom()
    b = await join_with(mem, "b", RoomOptions.for_board())
    # a board's buffers with a host's max_values (1 MiB) and max_attributes (none)
    host = await join_with(mem, "host", RoomOptions.for_board(max_values=RoomOptions().max_values,
                                                               max_attributes=None))
    # ~7 KB of values (bytes plus 32 per value): inside the board's 8192
    attrs = dict(("attribute-%02d" % i, "v" * 24) for i in range(60))
    with Warnings() as warns:
        for to in ("b", "host"):
            await relay_says(mem, to, participant_frame("op", "PA_op", attributes=attrs))
        # and 200 tiny ones (~13 KB of values) are well inside a host's 1 MiB
        await relay_says(mem, "host", participant_frame("many", "PA_many", 200))
        await settle(lambda: "op" in b.remote_participants and "many" in host.remote_participants)
    for r in (b, host):
        op = r.remote_participants["op"]
        assert op.attributes == attrs and op.attributes_dropped is False
    assert len(host.remote_participants["many"].attributes) == 200
    assert warns == [], warns
    await close(b, host)


async def test_joined_with_one_participant_over_max_values_keeps_the_others_whole():
    mem = MemRoom()
    big = await join_with(mem, "big", RoomOptions())
    big.local_participant.register_rpc_method("echo", lambda d: d.payload)
    small = await raw(mem, "small", client_protocol=0)
    plain = await raw(mem, "plain", client_protocol=2, capabilities=(2,))
    # what the relay would announce from their tokens: big's ~20 KB of values
    mem.conns["big"].info["attributes"] = dict(("%d" % i, "") for i in range(300))
    mem.conns["small"].info["attributes"] = {"room": "kitchen", "floor": "2"}
    with Warnings() as warns:
        b = await join_with(mem, "b", RoomOptions.for_board())   # its JOINED lists all three
    mem.conns["big"].info["attributes"] = {}
    ps = b.remote_participants
    assert sorted(ps) == ["big", "plain", "small"], sorted(ps)
    assert ps["big"].attributes == {} and ps["big"].attributes_dropped is True
    assert ps["big"].sid == mem.conns["big"].sid and ps["big"].client_protocol == 2
    assert ps["small"].attributes == {"room": "kitchen", "floor": "2"} and not ps["small"].attributes_dropped
    assert ps["small"].client_protocol == 0
    assert ps["plain"].capabilities == [2] and not ps["plain"].attributes_dropped
    assert len(warns) == 1 and "'big'" in warns[0], warns
    assert await b.local_participant.perform_rpc(destination_identity="big", method="echo", payload="x") == "x"
    await close(b, big, small, plain)


async def test_attributes_of_all_participants_together_stay_within_max_attributes():
    # each participant under max_values, but many of them add up: past the room-wide
    # cap newcomers are kept without attributes; room is made again as others leave
    mem = MemRoom()
    b = await join_with(mem, "b", RoomOptions.for_board(max_attributes=3000))
    await settle(lambda: b.connection_state == "connected")
    attrs = {"k%02d" % i: "v" * 20 for i in range(10)}   # 10 * (3 + 20 + 64) = 870 counted
    with Warnings() as warns:
        for i in range(5):
            await relay_says(mem, "b", participant_frame("op%d" % i, "PA_op%d" % i, attributes=attrs))
        await settle(lambda: len(b.remote_participants) == 5)
        kept = [b.remote_participants["op%d" % i].attributes == attrs for i in range(5)]
        assert kept == [True, True, True, False, False], kept
        assert [b.remote_participants["op%d" % i].attributes_dropped for i in range(5)] == [
            False, False, False, True, True]
        assert len(warns) == 2 and "'op3'" in warns[0] and "max_attributes" in warns[0], warns
        assert b._attributes_held == 3 * 870
        # one leaves: a later announcement of a participant without its attributes fits now
        await relay_says(mem, "b", [relayside.encode_control(link.PARTICIPANT_LEFT, {"identity": "op0"})])
        await settle(lambda: "op0" not in b.remote_participants)
        await relay_says(mem, "b", participant_frame("op3", "PA_op3", attributes=attrs))
        await settle(lambda: b.remote_participants["op3"].attributes == attrs)
        assert not b.remote_participants["op3"].attributes_dropped and b._attributes_held == 3 * 870
        # a participant whose attributes change is counted once, with the new ones
        smaller = {"k": "v"}
        await relay_says(mem, "b", participant_frame("op1", "PA_op1", attributes=smaller))
        await settle(lambda: b.remote_participants["op1"].attributes == smaller)
        assert b._attributes_held == 2 * 870 + 66
    await close(b)


# ------------------------------------------------------ decoding (link), both budgets
def _tiny_attributes(n):
    """n tiny attributes, over the board default of max_values (8192) from about 120."""
    return dict(("%d" % i, "") for i in range(n))


def test_joined_participants_past_max_attributes_together_are_read_without_theirs():
    # each participant's ~3 KB is under max_values, but together they would pass the
    # frame's max_attributes: later ones are dropped, a smaller one after them still fits
    attrs = dict(("k%03d" % i, "v" * 20) for i in range(30))   # 30 * (4 + 20 + 64) + 32 = 2672
    ps = [{"identity": "p%d" % i, "sid": "PA_%d" % i, "attributes": attrs} for i in range(4)]
    ps.append({"identity": "small", "sid": "PA_s", "attributes": {"k": "v"}})
    ps.append({"identity": "none", "sid": "PA_n", "attributes": {}})   # nothing to drop
    body = cbor.dumps({"v": 1, "room": "r", "identity": "me", "sid": "PA_me", "max_frame": 65536,
                       "participants": ps})
    ps = None
    got = link.check_joined(link.decode_control(body, 8192, 6000))["participants"]
    assert [p["attributes"] == attrs for p in got[:4]] == [True, True, False, False]
    assert [p.get("attributes_dropped", False) for p in got] == [False, False, True, True, False, False]
    assert got[4]["attributes"] == {"k": "v"} and got[5]["attributes"] == {}
    whole = link.check_joined(link.decode_control(body, 8192))["participants"]   # no total: all
    assert all(p["attributes"] == attrs for p in whole[:4])


def test_a_joined_frame_of_many_participants_just_under_max_values_stays_within_max_attributes():
    # 10 participants of 115 tiny attributes each (a ~5 KB frame), each just under the
    # board's 8192: without a total they made ~97 KB of objects on this port, more than a
    # board's whole heap; the board profile's max_attributes keeps 16 KiB of them
    import gc
    attrs = cbor.dumps(_tiny_attributes(115))   # the frame made as bytes: the test holds no
    body = bytearray(cbor.dumps({"v": 1, "room": "r", "identity": "me", "sid": "PA_me",   # maps
                                 "max_frame": 65536}))
    body[0] += 1   # one more key: "participants", an array of 10 maps
    body += cbor.dumps("participants") + b"\x8a"
    for i in range(10):
        body += b"\xa3" + cbor.dumps("identity") + cbor.dumps("p%d" % i) + cbor.dumps("sid")
        body += cbor.dumps("PA_%d" % i) + cbor.dumps("attributes") + attrs
    attrs = None
    gc.collect()
    before = gc.mem_alloc() if hasattr(gc, "mem_alloc") else 0
    got = link.check_joined(link.decode_control(body, 8192, 16384))["participants"]
    gc.collect()
    kept = (gc.mem_alloc() - before) if hasattr(gc, "mem_alloc") else 0
    assert [len(p["attributes"]) for p in got] == [115, 115] + [0] * 8, [len(p["attributes"]) for p in got]
    assert kept < 40000, kept


def _held_truth(room):
    """What the room's remote participants' attributes count (bytes plus 32 per item)."""
    return sum(len(k.encode()) + len(v.encode()) + 64 for p in room.remote_participants.values()
               for k, v in p.attributes.items())


async def test_the_attributes_budget_does_not_drift_when_a_participant_is_dropped_and_kept_in_turn():
    mem = MemRoom()
    b = await join_with(mem, "b", RoomOptions.for_board(max_attributes=3000))
    attrs = {"k%02d" % i: "v" * 20 for i in range(10)}   # 870 counted
    with Warnings():
        for _ in range(3):   # kept, then over max_values (dropped while decoding), in turn
            await relay_says(mem, "b", participant_frame("op", "PA_op", attributes=attrs))
            await settle(lambda: "op" in b.remote_participants and b.remote_participants["op"].attributes == attrs)
            await relay_says(mem, "b", participant_frame("op", "PA_op", n_attributes=2000))
            await settle(lambda: b.remote_participants["op"].attributes_dropped)
            assert b._attributes_held == _held_truth(b) == 0, b._attributes_held
        await relay_says(mem, "b", participant_frame("op", "PA_op", attributes=attrs))
        await settle(lambda: b.remote_participants["op"].attributes == attrs)
        assert b._attributes_held == _held_truth(b) == 870
        await relay_says(mem, "b", [relayside.encode_control(link.PARTICIPANT_LEFT, {"identity": "op"})])
        await settle(lambda: "op" not in b.remote_participants)
    assert b._attributes_held == 0
    await close(b)


async def test_the_attributes_budget_counts_utf8_bytes_not_characters():
    mem = MemRoom()
    b = await join_with(mem, "b", RoomOptions.for_board(max_attributes=3000))
    attrs = {"k": "\U0001F600" * 700}   # 700 characters, 2800 bytes
    with Warnings():
        for i in range(4):
            await relay_says(mem, "b", participant_frame("op%d" % i, "PA_%d" % i, attributes=attrs))
        await settle(lambda: len(b.remote_participants) == 4)
    assert [b.remote_participants["op%d" % i].attributes == attrs for i in range(4)] == [True] + [False] * 3
    assert b._attributes_held == _held_truth(b) <= 3000
    await close(b)


async def test_a_participant_left_whose_identity_is_no_text_string_ends_the_link_saying_so():
    # As a malformed PARTICIPANT does (LinkError naming the frame and the key): a list
    # identity was an unhashable TypeError, a number was taken for nobody.
    for identity, kind in (([1], "list"), ({"a": "b"}, "dict"), (5, "int"), (None, "NoneType")):
        mem = MemRoom()
        b = await join_with(mem, "b", RoomOptions.for_board())
        p = await join_with(mem, "p", RoomOptions.for_board())
        await settle(lambda: "p" in b.remote_participants)
        lost = []
        b.on("disconnected", lost.append)
        await relay_says(mem, "b", [relayside.encode_control(link.PARTICIPANT_LEFT, {"identity": identity})])
        await settle(lambda: lost)
        want = 'PARTICIPANT_LEFT: key "identity" must be a text string, got %s' % kind
        assert want in lost[0] and want in str(b.last_error), (lost, b.last_error)
        await close(b, p)
    # a well-formed one with a reason that is no text is taken (the reason is not used)
    mem = MemRoom()
    b = await join_with(mem, "b", RoomOptions.for_board())
    p = await join_with(mem, "p", RoomOptions.for_board())
    await settle(lambda: "p" in b.remote_participants)
    await relay_says(mem, "b", [relayside.encode_control(link.PARTICIPANT_LEFT, {"identity": "p", "reason": 7})])
    await settle(lambda: "p" not in b.remote_participants)
    assert b.connection_state == "connected"
    await close(b, p)


async def test_a_relay_that_announces_the_participant_itself_is_ignored_and_warned_about():
    # LINK.md: JOINED lists everyone else, PARTICIPANT announces the others. A relay
    # that lists the joiner too made it a remote participant of its own, with a
    # participant_connected event for itself.
    mem = MemRoom()
    p = await join_with(mem, "p", RoomOptions.for_board())
    mem.conns["p"].info["identity"] = "b"   # JOINED's list then holds "b" itself
    with Warnings() as warns:
        b = await join_with(mem, "b", RoomOptions.for_board())
        events = []
        b.on("participant_connected", events.append)
        b.on("participant_updated", events.append)
        await relay_says(mem, "b", participant_frame("b", "PA_b"))
        await settle(lambda: len(warns) == 2)
    assert list(b.remote_participants) == [] and events == [], (list(b.remote_participants), events)
    assert all("'b'" in w and "ignored" in w for w in warns), warns
    assert b.connection_state == "connected"
    await close(b, p)
