"""CPython throughput through the in-memory room (real codecs, no sockets).

    .venv/bin/python -m lkedge_host.bench.throughput [--mib 64] [--calls 10000]

Prints MB/s of one v2 byte stream of --mib MiB (incremental writer, 60000-byte writes,
received by a handler that counts) and round trips per second of --calls small v2 RPCs
done one after the other. --mib 0 or --calls 0 skips that part.
"""
import argparse
import asyncio
import math
import time

from lkedge_host import units

from lkedge.config import RoomOptions
from lkedge.memroom import MemRoom
from lkedge.room import Room


async def _pair(opts):
    mem = MemRoom(queue_bytes=1 << 20)
    a = Room(RoomOptions(**opts))
    b = Room(RoomOptions(**opts))
    await a.connect(mem.transport(), "a")
    await b.connect(mem.transport(), "b")
    while "b" not in a.remote_participants:
        await asyncio.sleep(0.001)
    return a, b


async def stream_bench(mib):
    a, b = await _pair(dict(read_buffer=65536, piece_size=65536, auto_reconnect=False))
    done = asyncio.Event()
    got = [0]

    async def handler(reader, sender):
        buf = bytearray(65536)
        while True:
            n = await reader.readinto(buf)
            if not n:
                break
            got[0] += n
        done.set()
    b.register_byte_stream_handler("bench", handler)
    block = b"\xa5" * 60000
    total = round(mib * 1024 * 1024)
    t0 = time.perf_counter()
    w = await a.local_participant.stream_bytes("bench.bin", topic="bench", destination_identities=["b"])
    left = total
    while left:
        n = min(left, len(block))
        await w.write(block[:n])
        left -= n
    await w.aclose()
    await done.wait()
    dt = time.perf_counter() - t0
    assert got[0] == total, (got[0], total)
    await a.disconnect()
    await b.disconnect()
    return total / dt / 1e6, dt


async def rpc_bench(calls):
    a, b = await _pair(dict(auto_reconnect=False))
    b.local_participant.register_rpc_method("echo", lambda d: d.payload)
    lp = a.local_participant
    t0 = time.perf_counter()
    for i in range(calls):
        r = await lp.perform_rpc(destination_identity="b", method="echo", payload="ping %d" % i)
        assert r == "ping %d" % i
    dt = time.perf_counter() - t0
    await a.disconnect()
    await b.disconnect()
    return calls / dt, dt


def mebibytes(text):
    """--mib: 0 (skip), or MiB, fractions allowed, of at least one byte."""
    try:
        mib = float(text)
    except ValueError:
        mib = math.nan
    if not (mib == 0 or (math.isfinite(mib) and mib * 1024 * 1024 >= 1)):
        raise argparse.ArgumentTypeError(
            "%r is not a size in MiB: give a positive number, fractions allowed (0.5 = 512 KiB), "
            "or 0 to skip the byte stream" % text)
    return mib


def parser():
    ap = argparse.ArgumentParser(prog="python -m lkedge_host.bench.throughput",
                                 description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--mib", type=mebibytes, default=64,
                    help="MiB sent as one v2 byte stream, fractions allowed (0.5); 0 skips the stream")
    ap.add_argument("--calls", type=units.whole(0), default=10000,
                    help="small v2 RPCs made one after the other; 0 skips them")
    return ap


def main(argv=None):
    ap = parser()
    a = ap.parse_args(argv)
    if not a.mib and not a.calls:
        ap.error("--mib 0 and --calls 0 leave nothing to measure")
    if a.mib:
        mbps, dt = asyncio.run(stream_bench(a.mib))
        print("v2 byte stream: %g MiB in %.2f s = %.1f MB/s" % (a.mib, dt, mbps))
    if a.calls:
        rps, dt = asyncio.run(rpc_bench(a.calls))
        print("small v2 RPC round trips: %d in %.2f s = %.0f calls/s (%.3f ms each)"
              % (a.calls, dt, rps, 1000 * dt / a.calls))


if __name__ == "__main__":
    main()
