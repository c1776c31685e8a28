"""A board that advertises compression and echoes what it is sent (runs under MicroPython).

    LKEDGE_TOKEN=<jwt> micropython -X heapsize=192K board_compressed_echo.py URL

Joins as a board (RoomOptions.for_board, CAP_COMPRESSION_DEFLATE_RAW advertised) and
answers "echo" with the request's payload, printing after each request
`ECHO <chars> reserved=<0|1>`: whether the inflate window's reservation is held again
by the time the handler runs (the window of the request's stream just freed). Prints
READY once joined; `LOST <why>` if the link goes.
"""
import asyncio
import gc
import os
import sys

from lkedge import inflate
from lkedge.config import RoomOptions
from lkedge.room import Room


async def main(url, token):
    room = Room(RoomOptions.for_board(None, advertise_compression=True, auto_reconnect=False))
    room.on("disconnected", lambda why: print("LOST %s" % why))

    def echo(data):
        print("ECHO %d reserved=%d" % (len(data.payload), inflate._reserved is not None))
        return data.payload
    room.local_participant.register_rpc_method("echo", echo)
    await room.connect(url, token)
    gc.collect()
    print("READY free=%d" % gc.mem_free())
    while True:
        await asyncio.sleep(1)


asyncio.run(main(sys.argv[1], os.getenv("LKEDGE_TOKEN")))
