"""Buffered RPC requests of N bytes to this repository's firmware on an emulated board,
as deployed with telemetry on and its receiver taking it: what a profile's
max_rpc_payload promises.

    .venv/bin/python -m lkedge_host.bench.board_payload [--profile esp32] [--sizes 6144,6145] [--calls 10]

A real relay on loopback, an emulated board of the profile (`lkedge board`) with the
firmware deployed by `lkedge deploy --telemetry-to collector --telemetry-interval 10`
(`--romfs` for a profile with a ROMFS partition), a CPython participant "collector"
that takes the telemetry and confirms it, and a CPython caller. Once the board has
sent telemetry (--settle), the caller calls the buffered method sensors.read with a
request of N bytes of text ("xxx...", as `lkedge call BOARD sensors.read @p.txt`
sends it), --calls times per size, --gap seconds apart, and prints how each was
answered. The default sizes are the profile's max_rpc_payload and one byte more:
every call of the first should be answered, every one of the second refused with 1402.
Exit status 0 when that holds (or, with --sizes, always once the run is through).
"""
import argparse
import asyncio
import os
import sys
import tempfile

from lkedge_host import ROOT, profiles, units
from lkedge_host.bench import until_in_room


async def _calls(relay, sizes, calls, gap, settle, timeout):
    from lkedge.config import RoomOptions
    from lkedge.room import Room
    from lkedge.rpc import RpcError
    collector = Room(RoomOptions(auto_reconnect=False))

    async def on_telemetry(reader, sender):
        await reader.read_all()
    collector.register_byte_stream_handler("telemetry", on_telemetry)
    collector.local_participant.register_rpc_method("telemetry.sync", lambda data: data.payload)
    caller = Room(RoomOptions(auto_reconnect=False))
    results = {}
    try:
        await collector.connect(relay.url, relay.token("collector"))
        await caller.connect(relay.url, relay.token("caller"))
        await until_in_room(caller, "board", 60, "the board did not join within 60 s")
        await asyncio.sleep(settle)
        for n in sizes:
            got = results[n] = {}
            for _ in range(calls):
                try:
                    await caller.local_participant.perform_rpc(
                        destination_identity="board", method="sensors.read", payload="x" * n,
                        response_timeout=timeout)
                    k = "ok"
                except RpcError as e:
                    k = "%d %s" % (e.code, e.data or e.message)
                got[k] = got.get(k, 0) + 1
                await asyncio.sleep(gap)
            print("%6d B: %s" % (n, "; ".join("%d x %s" % (c, k) for k, c in sorted(got.items()))), flush=True)
        return results
    finally:
        await caller.disconnect()
        await collector.disconnect()


def run(profile, sizes=None, calls=10, gap=1.0, settle=12.0, timeout=10.0):
    """One board, deployed, called; returns ({size: {answer: count}}, the sizes)."""
    from lkedge_host import board
    from lkedge_host.relay.process import RelayProcess
    p = profiles.load(profile)
    if sizes is None:
        m = p["link"].get("max_rpc_payload", 16384)
        sizes = [m, m + 1]
    more = {"telemetry_to": "collector", "telemetry_interval": 10}
    if p.get("romfs_bytes"):
        more["romfs"] = True
    flash = os.path.join(tempfile.mkdtemp(prefix="board_payload-"), "flash")
    with RelayProcess() as relay, board.EmulatedBoard(profile, flash) as b:
        b.deploy(os.path.join(ROOT, "firmware"), relay, identity="board", **more)
        return asyncio.run(_calls(relay, sizes, calls, gap, settle, timeout)), sizes


def main(argv=None):
    from lkedge_host.bench.board_heap import payload_sizes
    ap = argparse.ArgumentParser(prog="python -m lkedge_host.bench.board_payload",
                                 description=__doc__.split("\n\n")[0].replace("\n", " ") + " "
                                 + " ".join(__doc__.split("\n\n")[2].split()))
    ap.add_argument("--profile", default="esp32", help="board profile (default esp32)")
    ap.add_argument("--sizes", type=payload_sizes, default=None,
                    help="request sizes in bytes, or with K (e.g. 5120,6K; default: the profile's "
                         "max_rpc_payload and one byte more)")
    ap.add_argument("--calls", type=units.whole(1), default=10, help="calls per size (default 10)")
    ap.add_argument("--gap", type=units.seconds, default=1.0,
                    help="time between calls: seconds, or with ms, s, m (default 1)")
    ap.add_argument("--settle", type=units.seconds, default=12.0,
                    help="time between the board joining and the first call, for its telemetry to "
                         "flow (default 12: one sample and its flush)")
    args = ap.parse_args(argv)
    try:
        profiles.load(args.profile)
    except profiles.ProfileError as e:
        ap.error(str(e))
    results, sizes = run(args.profile, args.sizes, args.calls, args.gap, args.settle)
    if args.sizes is None:
        ok = results[sizes[0]] == {"ok": args.calls} and all(k.startswith("1402 ") for k in results[sizes[1]])
        print("max_rpc_payload %d of %s: %s" % (sizes[0], args.profile, "kept" if ok else "NOT kept"))
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
