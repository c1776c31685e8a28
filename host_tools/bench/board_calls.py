"""Round trips of small RPC calls from a CPython host to a MicroPython board, over a real
relay on loopback (TCP), one call after the other.

    .venv/bin/python -m lkedge_host.bench.board_calls [--calls 200] [--heap 512K]

The board is the unix port (-X heapsize, the library as a board build) answering
"echo" as a board profile configures it; the host calls it --calls times and prints
calls per second and the median and 99th percentile round trip. What it shows is the
link's latency per call (each call is a request, an ack and an answer), not the
board's speed: a board that sends its ack and its answer as two writes with Nagle's
algorithm on waited ~40 ms for the host's delayed ACK on every call (22 calls/s).
"""
import argparse
import asyncio
import os
import subprocess
import sys
import time

from lkedge_host import units
from lkedge_host.bench import until_in_room
from lkedge_host.bench.board_heap import _bin

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_BOARD = """
import asyncio, os, sys
from lkedge.config import RoomOptions
from lkedge.room import Room
async def main():
    room = Room(RoomOptions.for_board(None))
    room.local_participant.register_rpc_method("echo", lambda d: d.payload)
    await room.connect(sys.argv[1], os.getenv("LKEDGE_TOKEN"))
    print("READY")
    while True:
        await asyncio.sleep(1)
asyncio.run(main())
"""


async def measure(relay, lib_dir, calls, heap):
    from lkedge.config import RoomOptions
    from lkedge.room import Room
    env = dict(os.environ, MICROPYPATH=lib_dir + ":.frozen", LKEDGE_TOKEN=relay.token("board"))
    proc = subprocess.Popen([_bin("micropython"), "-X", "heapsize=%d" % heap, "-c", _BOARD, relay.url],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    room = Room(RoomOptions(auto_reconnect=False))
    try:
        line = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
        if line.strip() != "READY":
            raise RuntimeError("the board did not join: %s" % (line.strip() or "it exited"))
        await room.connect(relay.url, relay.token("host"))
        await until_in_room(room, "board", 10, "the board is not in the room")
        lp = room.local_participant
        await lp.perform_rpc(destination_identity="board", method="echo", payload="warm")
        rtts = []
        t0 = time.monotonic()
        for i in range(calls):
            t = time.monotonic()
            await lp.perform_rpc(destination_identity="board", method="echo", payload="x")
            rtts.append(time.monotonic() - t)
        return calls / (time.monotonic() - t0), sorted(rtts)
    finally:
        await room.disconnect()
        proc.terminate()
        proc.wait()


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m lkedge_host.bench.board_calls",
                                description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--calls", type=units.whole(1), default=200,
                   help="calls to make one after the other (default %(default)s)")
    p.add_argument("--heap", type=units.size, default=512 * 1024,
                   help="the board's -X heapsize, bytes or K/M (default 512K)")
    a = p.parse_args(argv)
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from mpybuild import compiled_lib
    from lkedge_host.relay.process import RelayProcess
    with RelayProcess() as relay:
        rate, rtts = asyncio.run(measure(relay, compiled_lib(), a.calls, a.heap))
    print("board calls: %d one after the other, %.0f calls/s, round trip p50 %.1f ms, p99 %.1f ms"
          % (a.calls, rate, rtts[len(rtts) // 2] * 1000, rtts[min(len(rtts) - 1, len(rtts) * 99 // 100)] * 1000))


if __name__ == "__main__":
    main()
