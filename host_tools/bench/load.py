"""Load: N CPython participants on one relay, each making one RPC per second.

    .venv/bin/python -m lkedge_host.bench.load [--participants 1000] [--seconds 60] [--workers 4]

Starts `lkedge relay` (loopback, development keys), then --workers processes that each
join their share of the participants (real Rooms over TCP). Participant i calls
participant i+1 (ring) once per second with a small payload; every participant
answers "echo". Prints the round-trip p50/p90/p99/max, calls completed and failed,
and the relay's CPU time and peak RSS (from /proc) over the run.
"""
import argparse
import asyncio
import multiprocessing
import os
import random
import sys
import time

from lkedge_host.relay.process import RelayProcess


def _proc_stats(pid):
    """(cpu seconds, rss bytes) of a process, from /proc (Linux)."""
    with open("/proc/%d/stat" % pid) as f:
        parts = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(parts[11]) + int(parts[12])) / ticks
    with open("/proc/%d/status" % pid) as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    return cpu, rss


async def _worker_main(url, tokens, ids, total, seconds, ready, go, out):
    from lkedge.config import RoomOptions
    from lkedge.room import Room
    from lkedge.rpc import RpcError
    rooms = []
    for ident, tok in zip(ids, tokens):
        r = Room(RoomOptions(auto_reconnect=False, ping_interval_ms=15000))
        r.local_participant.register_rpc_method("echo", lambda d: d.payload)
        await r.connect(url, tok)
        rooms.append((ident, r))
    # Calls start once every participant is in the room and known to its caller:
    # before that a call would fail with 1401 for a reason that is not load.
    while any(("p%d" % ((int(ident[1:]) + 1) % total)) not in r.remote_participants for ident, r in rooms):
        await asyncio.sleep(0.05)
    ready.put(len(rooms))
    while not go.is_set():
        await asyncio.sleep(0.02)
    start_at = time.time()
    lat = []
    failed = [0]

    async def caller(i, room):
        dest = "p%d" % ((i + 1) % total)
        await asyncio.sleep(random.random())
        t_end = start_at + seconds
        nxt = time.monotonic()
        while time.time() < t_end:
            t0 = time.monotonic()
            try:
                await room.local_participant.perform_rpc(destination_identity=dest, method="echo",
                                                         payload="load %d" % i, response_timeout=10)
                lat.append(time.monotonic() - t0)
            except RpcError:
                failed[0] += 1
            nxt += 1.0
            await asyncio.sleep(max(0, nxt - time.monotonic()))
    await asyncio.gather(*[caller(int(ident[1:]), r) for ident, r in rooms])
    out.put((lat, failed[0]))
    for _, r in rooms:
        await r.disconnect()


def _worker(url, tokens, ids, total, seconds, ready, go, out):
    asyncio.run(_worker_main(url, tokens, ids, total, seconds, ready, go, out))


def _pct(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    return sorted_vals[min(len(sorted_vals) - 1, int(p / 100.0 * len(sorted_vals)))]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--participants", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--workers", type=int, default=4)
    a = ap.parse_args(argv)
    with RelayProcess(extra_args=["--idle-timeout", "120"]) as relay:
        ids = ["p%d" % i for i in range(a.participants)]
        tokens = [relay.token(i) for i in ids]
        out = multiprocessing.Queue()
        ready = multiprocessing.Queue()
        go = multiprocessing.Event()
        procs = []
        for w in range(a.workers):
            sl = slice(w, None, a.workers)
            p = multiprocessing.Process(target=_worker, args=(relay.url, tokens[sl], ids[sl], a.participants,
                                                              a.seconds, ready, go, out))
            p.start()
            procs.append(p)
        t_join = time.time()
        joined = sum(ready.get(timeout=max(60, a.participants // 10)) for _ in procs)
        print("%d participants joined and see their callee after %.1f s" % (joined, time.time() - t_join))
        go.set()
        start_at = time.time()
        cpu0, _ = _proc_stats(relay.proc.pid)
        peak_rss = 0
        t0 = time.time()
        while time.time() < start_at + a.seconds:
            time.sleep(1)
            peak_rss = max(peak_rss, _proc_stats(relay.proc.pid)[1])
        cpu1, rss = _proc_stats(relay.proc.pid)
        wall = time.time() - t0
        lat, failed = [], 0
        for _ in procs:
            l, f = out.get(timeout=120)
            lat.extend(l)
            failed += f
        for p in procs:
            p.join(30)
    lat.sort()
    ms = [x * 1000 for x in lat]
    print("participants %d, %d s, %d worker processes" % (a.participants, a.seconds, a.workers))
    print("calls ok %d (%.0f/s), failed %d" % (len(lat), len(lat) / max(wall, 1e-9), failed))
    print("round trip ms: p50 %.1f  p90 %.1f  p99 %.1f  max %.1f" % (
        _pct(ms, 50), _pct(ms, 90), _pct(ms, 99), ms[-1] if ms else float("nan")))
    print("relay: CPU %.1f s over %.0f s (%.0f%% of one core), RSS %.1f MiB (peak %.1f MiB)" % (
        cpu1 - cpu0, wall, 100 * (cpu1 - cpu0) / wall, rss / 2**20, peak_rss / 2**20))
    return 0


if __name__ == "__main__":
    sys.exit(main())
