"""Participant attributes on the link (PARTICIPANT frames, JOINED's list) are budgeted
as DataPackets are: RoomOptions.max_values per participant map, bytes plus 32 per value,
enforced while the CBOR is decoded. A participant over it is kept without attributes,
flagged (RemoteParticipant.attributes_dropped) and warned about; calls to it still work.
(test_room_attributes_heap.py: the same in a board-sized heap.)

Runs on CPython and under MicroPython.
"""
from attribute_helpers import Warnings, join_with, participant_frame, relay_says
from room_helpers import close, raw, settle

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
    # a board's buffers with a host's max_values (1 MiB)
    host = await join_with(mem, "host", RoomOptions.for_board(max_values=RoomOptions().max_values))
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
