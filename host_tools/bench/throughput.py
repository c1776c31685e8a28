"""CPython throughput through the in-memory room (real codecs, no sockets).

    .venv/bin/python -m lkedge_host.bench.throughput [--mib 64] [--calls 10000]

Prints MB/s of one v2 byte stream of --mib MiB (incremental writer, 60000-byte writes,
received by a handler that counts) and round trips per second of --calls small v2 RPCs
done one after the other.
"""
import argparse
import asyncio
import time

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
    total = mib * 1024 * 1024
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--calls", type=int, default=10000)
    a = ap.parse_args(argv)
    mbps, dt = asyncio.run(stream_bench(a.mib))
    print("v2 byte stream: %d MiB in %.2f s = %.1f MB/s" % (a.mib, dt, mbps))
    rps, dt = asyncio.run(rpc_bench(a.calls))
    print("small v2 RPC round trips: %d in %.2f s = %.0f calls/s (%.3f ms each)" % (a.calls, dt, rps, 1000 * dt / a.calls))


if __name__ == "__main__":
    main()
