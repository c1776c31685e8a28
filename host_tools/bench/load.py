"""Load: N CPython participants on one relay, each making one RPC per second.

    .venv/bin/python -m lkedge_host.bench.load [--participants 1000] [--seconds 60] [--workers 4]

Starts `lkedge relay` (loopback, development keys), then --workers processes that each
join their share of the participants (real Rooms over TCP). Participant i calls
participant i+1 (ring) once per second with a small payload; every participant
answers "echo". Prints the round-trip p50/p90/p99/max, calls completed and failed,
and the relay's CPU time and peak RSS (from /proc) over the run. Exits 1 with the
worker's error if a worker fails, or does not join or report in time.
"""
import argparse
import asyncio
import multiprocessing
import os
import queue
import random
import sys
import time
import traceback

from lkedge_host import units
from lkedge_host.relay.process import RelayProcess

# Seconds the workers have to join and see their callees (or participants / 10 if more).
JOIN_TIMEOUT_S = 60
# Seconds after the run the workers have to report (a last call may take 10 s).
REPORT_TIMEOUT_S = 120


def _proc_stats(pid):
    """(cpu seconds, rss bytes) of a process, from /proc (Linux)."""
    with open("/proc/%d/stat" % pid) as f:
        parts = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(parts[11]) + int(parts[12])) / ticks
    with open("/proc/%d/status" % pid) as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    return cpu, rss


async def _worker_main(w, url, tokens, ids, total, seconds, go, q):
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
    q.put((w, "ready", len(rooms)))
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
    q.put((w, "result", (lat, failed[0])))
    for _, r in rooms:
        await r.disconnect()


def _worker(w, url, tokens, ids, total, seconds, go, q):
    """Runs in worker process w; any failure is reported to the parent as (w, "error", text)."""
    try:
        asyncio.run(_worker_main(w, url, tokens, ids, total, seconds, go, q))
    except BaseException as e:
        q.put((w, "error", "".join(traceback.format_exception_only(type(e), e)).strip()))


class WorkerFailed(Exception):
    pass


def _collect(q, procs, kind, timeout):
    """The `kind` payload of every worker, in worker order. WorkerFailed as soon as one
    reports an error or has exited without sending it, or when timeout passes."""
    got = {}
    t_end = time.monotonic() + timeout
    while len(got) < len(procs):
        # seen dead before the get: whatever such a worker sent is in the pipe already
        dead = [w for w, p in enumerate(procs) if p.exitcode is not None]
        try:
            w, k, payload = q.get(timeout=0.2)
        except queue.Empty:
            gone = [w for w in dead if w not in got]
            if gone:
                raise WorkerFailed("worker %d exited (code %s) before it was %s"
                                   % (gone[0], procs[gone[0]].exitcode, kind))
            if time.monotonic() > t_end:
                raise WorkerFailed("%d of %d workers not %s within %.0f s"
                                   % (len(procs) - len(got), len(procs), kind, timeout))
            continue
        if k == "error":
            raise WorkerFailed("worker %d failed: %s" % (w, payload))
        got[w] = payload
    return [got[w] for w in sorted(got)]


def _start_workers(relay, n, seconds, nworkers, go, q):
    ids = ["p%d" % i for i in range(n)]
    tokens = [relay.token(i) for i in ids]
    procs = []
    for w in range(nworkers):
        sl = slice(w, None, nworkers)
        p = multiprocessing.Process(target=_worker, daemon=True,
                                    args=(w, relay.url, tokens[sl], ids[sl], n, seconds, go, q))
        p.start()
        procs.append(p)
    return procs


def _stop_workers(procs, grace):
    t_end = time.monotonic() + grace
    for p in procs:
        p.join(max(0, t_end - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join(5)


def _watch_relay(pid, seconds, procs):
    """Relay (cpu seconds, wall seconds, rss, peak rss) over the run; stops early if a
    worker exits (it failed: _collect then says why)."""
    cpu0, _ = _proc_stats(pid)
    peak_rss = 0
    t0 = time.time()
    while time.time() < t0 + seconds and all(p.exitcode is None for p in procs):
        time.sleep(min(1.0, max(0.0, t0 + seconds - time.time())))
        peak_rss = max(peak_rss, _proc_stats(pid)[1])
    cpu1, rss = _proc_stats(pid)
    return cpu1 - cpu0, max(time.time() - t0, 1e-9), rss, max(peak_rss, rss)


def _run(n, seconds, nworkers):
    """-> (latencies, failed calls, relay stats); WorkerFailed."""
    with RelayProcess(extra_args=["--idle-timeout", "120"]) as relay:
        q = multiprocessing.Queue()
        go = multiprocessing.Event()
        procs = _start_workers(relay, n, seconds, nworkers, go, q)
        ok = False
        try:
            t_join = time.time()
            joined = sum(_collect(q, procs, "ready", max(JOIN_TIMEOUT_S, n // 10)))
            print("%d participants joined and see their callee after %.1f s" % (joined, time.time() - t_join))
            go.set()
            stats = _watch_relay(relay.proc.pid, seconds, procs)
            results = _collect(q, procs, "result", REPORT_TIMEOUT_S)
            ok = True
        finally:
            _stop_workers(procs, 30 if ok else 0)
    lat = sorted(x for r in results for x in r[0])
    return lat, sum(r[1] for r in results), stats


def _pct(sorted_vals, p):
    return sorted_vals[min(len(sorted_vals) - 1, int(p / 100.0 * len(sorted_vals)))]


def _report(a, nworkers, lat, failed, stats):
    cpu, wall, rss, peak_rss = stats
    ms = [x * 1000 for x in lat]
    print("participants %d, %g s, %d worker processes" % (a.participants, a.seconds, nworkers))
    print("calls ok %d (%.0f/s), failed %d" % (len(lat), len(lat) / wall, failed))
    if ms:
        print("round trip ms: p50 %.1f  p90 %.1f  p99 %.1f  max %.1f" % (
            _pct(ms, 50), _pct(ms, 90), _pct(ms, 99), ms[-1]))
    else:
        print("round trip ms: no call completed")
    print("relay: CPU %.1f s over %.0f s (%.0f%% of one core), RSS %.1f MiB (peak %.1f MiB)" % (
        cpu, wall, 100 * cpu / wall, rss / 2**20, peak_rss / 2**20))


def parser():
    ap = argparse.ArgumentParser(prog="python -m lkedge_host.bench.load",
                                 description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--participants", type=units.whole(2), default=1000,
                    help="participants in the room, at least 2: each calls the next one, in a ring")
    ap.add_argument("--seconds", type=units.seconds, default=60,
                    help="how long the calls go on once all have joined: seconds, or with ms, s, m or h "
                         "(90s, 2m)")
    ap.add_argument("--workers", type=units.whole(1), default=4,
                    help="processes that run the participants (no more than --participants are started)")
    return ap


def main(argv=None):
    a = parser().parse_args(argv)
    nworkers = min(a.workers, a.participants)
    try:
        lat, failed, stats = _run(a.participants, a.seconds, nworkers)
    except WorkerFailed as e:
        print("load: %s" % e, file=sys.stderr, flush=True)
        return 1
    _report(a, nworkers, lat, failed, stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
