"""A host Room against a relay that lists everyone in JOINED, as LINK.md says.

The relay here is a FAKE (a loopback TCP server speaking LINK.md frames written with
cbor2, the CBOR oracle): our relay spreads a large room over JOINED and PARTICIPANT
frames, another implementation need not.
"""
import asyncio

import cbor2

from lkedge import link, relayside
from lkedge.config import RoomOptions
from lkedge.room import Room


async def _relay_with_a_big_room(n, attributes):
    async def serve(reader, writer):
        await reader.read(4096)   # the JOIN (not checked: this is no relay under test)
        people = [{"identity": "p%04d" % i, "sid": "PA_%012d" % i, "client_protocol": 2,
                   "capabilities": [2], "attributes": attributes} for i in range(n)]
        body = cbor2.dumps({"v": 1, "room": "big", "identity": "host", "sid": "PA_host",
                            "server_version": "fake", "max_frame": 65536, "participants": people})
        writer.write(relayside.encode_frame(link.JOINED, body))
        await writer.drain()
        serve.size = 1 + len(body)
        await reader.read(1)      # until the Room leaves
        writer.close()
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, serve


async def test_a_host_joins_a_room_whose_joined_frame_is_over_64_kib():
    server, serve = await _relay_with_a_big_room(600, {"model": "esp32-s3", "site": "north-field"})
    port = server.sockets[0].getsockname()[1]
    room = Room(RoomOptions(auto_reconnect=False))
    try:
        await room.connect("tcp://127.0.0.1:%d" % port, "token")
        assert serve.size > 65536, serve.size
        assert len(room.remote_participants) == 600
        assert room.remote_participants["p0599"].attributes["site"] == "north-field"
    finally:
        await room.disconnect()
        server.close()
