"""The smallest MicroPython heap that carries the bounded-memory scenario, by bisection.

    .venv/bin/python -m lkedge_host.bench.board_heap [--sizes 64K,1M,8M] [--compression off|on|both]
    .venv/bin/python -m lkedge_host.bench.board_heap --garbage

The scenario (tests/scenarios/board_memory.py runs on the board side): a real relay on
loopback, a MicroPython "board" (the unix port with -X heapsize, the library as
mpy-cross bytecode as deployed), and a CPython host that (1) makes a v2 call whose
request of N bytes is consumed by the board's streaming handler, which answers N
bytes, then (2) sends the board an N-byte byte stream, compressed when the board
advertises CAP_COMPRESSION_DEFLATE_RAW. Every byte is checked by SHA-256.

Prints, per payload size and compression setting, the smallest heap that passes and
the board's breakdown (heap in use after a collection): after importing the library
(its bytecode), after Room() (fixed buffers), once joined (transport, link state, the
two tasks), halfway through the call's request (per-call state) and halfway through
the byte stream; and the interned names (qstrs) at the end with the heap their pools
and text take. The difference between the smallest heap and the largest of these is
what the allocator needs beyond live data (garbage between collections, fragmentation).

With --garbage, one run at a generous heap instead: the bytes the board allocates per
KiB of the call's request it receives, of the answer it sends and of the byte stream it
receives (collections off over 16 KiB of each): what makes a board collect, and so
what a transfer costs it in CPU beyond the network.
"""
import argparse
import asyncio
import hashlib
import os
import subprocess
import sys
import time

from lkedge_host import units
from lkedge_host.bench import until_in_room

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCENARIO = os.path.join(ROOT, "tests", "scenarios", "board_memory.py")


def _bin(name):
    exe = os.path.join(os.path.dirname(sys.executable), name)
    return exe if os.path.exists(exe) else name


def _payload(n):
    """N bytes of text that compress moderately (like telemetry or logs), deterministic."""
    unit = b"".join(b"%08d sample value %05d;" % (i, (i * 7919) % 100000) for i in range(2048))
    reps = n // len(unit) + 1
    return (unit * reps)[:n]


class _Pieces:
    def __init__(self, data, piece=16384):
        self.mv = memoryview(data)
        self.pos = 0
        self.piece = piece

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.pos >= len(self.mv):
            raise StopAsyncIteration
        s = bytes(self.mv[self.pos:self.pos + self.piece]).decode()
        self.pos += self.piece
        return s


async def _host_side(relay, board_proc, nbytes, lines, timeout):
    from lkedge.config import RoomOptions
    from lkedge.room import Room
    room = Room(RoomOptions(read_buffer=65536, piece_size=65536, auto_reconnect=False))
    await room.connect(relay.url, relay.token("host"))
    try:
        await until_in_room(room, "board", 10, "board not in the room")
        data = _payload(nbytes)
        want = hashlib.sha256(data).hexdigest()
        reader = await room.local_participant.perform_rpc_stream(
            destination_identity="board", method="sink", payload=_Pieces(data), response_timeout=timeout)
        got = 0
        async for s in reader:
            got += len(s.encode())
        if got != nbytes:
            raise RuntimeError("response was %d bytes, expected %d" % (got, nbytes))
        sink = await _wait_line(lines, "SINK ", timeout)
        if sink.split()[1:] != [str(nbytes), want]:
            raise RuntimeError("board received a different request: %s" % sink)
        await room.local_participant.send_bytes(
            data, name="blob.bin", topic="blob", destination_identities=["board"])
        blob = await _wait_line(lines, "BLOB ", timeout)
        if blob.split()[1:] != [str(nbytes), want]:
            raise RuntimeError("board received a different byte stream: %s" % blob)
        return room.remote_participants["board"].capabilities
    finally:
        await room.disconnect()


# Board lines that mean the run has failed: a handler failed, the link was lost, or the
# library warned that it dropped something (e.g. "stream ... ignored: cannot inflate").
_GAVE_UP = ("FAIL ", "LOST ", "lkedge: ")


async def _unless_board_gave_up(coro, lines):
    """Run coro, but stop as soon as the board reports FAIL/LOST (a board whose link
    reader died no longer reads, so a send to it would block until the timeout)."""
    task = asyncio.ensure_future(coro)
    try:
        while not task.done():
            bad = [ln for ln in lines if ln.startswith(_GAVE_UP)]
            if bad:
                raise RuntimeError("board: %s" % bad[0])
            await asyncio.sleep(0.05)
        return task.result()
    finally:
        task.cancel()  # also when this wait itself is cancelled (the run's time limit)
        # what it fails with once cancelled is no news (the board gave up): asked for,
        # so asyncio prints no "Task exception was never retrieved" in the bisection
        task.add_done_callback(lambda t: t.cancelled() or t.exception())


async def _wait_line(lines, prefix, timeout):
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        for line in lines:
            if line.startswith(prefix):
                lines.remove(line)
                return line
            if line.startswith(_GAVE_UP):  # the board gave up: no need to wait
                raise RuntimeError("board: %s" % line)
        await asyncio.sleep(0.02)
    raise RuntimeError("no %r line from the board within %d s" % (prefix.strip(), timeout))


async def _pump(stream, lines):
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, stream.readline)
        if not line:
            return
        lines.append(line.strip())


def run_scenario(relay, heap, nbytes, compress, timeout=120, garbage=False, lib_dir=None, env=None):
    """Run once; returns dict(ok, error, mem lines…). Never raises for a failed run.
    garbage: the board also measures the bytes it allocates per KiB moved
    (result["garbage"]: {"request": B, "answer": B, "stream": B}).
    lib_dir: the board build to import (default: the suite's, tests/mpybuild.py);
    env: more environment for the board. A board that passed is given a few seconds to
    finish on its own (its atexit handlers run) before it is stopped."""
    if lib_dir is None:
        lib_dir = _suite_build()
    env = dict(os.environ, MICROPYPATH=lib_dir + ":.frozen", LKEDGE_TOKEN=relay.token("board"), **(env or {}))
    proc = subprocess.Popen([_bin("micropython"), "-X", "heapsize=%d" % heap, SCENARIO, relay.url,
                             "1" if compress else "0", str(nbytes)] + (["garbage"] if garbage else []),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    result = {"heap": heap, "ok": False, "error": None}

    async def go():
        pump = asyncio.ensure_future(_pump(proc.stdout, lines))
        try:
            await _wait_line_keep(lines, "READY", 20, proc)
            # The whole exchange is bounded: a board that stops answering without a
            # FAIL/LOST line (e.g. a task of its own died) must not hang the bisection.
            caps = await asyncio.wait_for(
                _unless_board_gave_up(_host_side(relay, proc, nbytes, lines, timeout), lines), timeout)
            result["caps"] = caps
            if compress and caps != [2]:
                # a board without the heap to hold the window does not advertise, and
                # its exchange passes uncompressed: no measure of inflating
                raise RuntimeError("the board did not advertise compression (no heap for the window)")
            peak = await _wait_line(lines, "PEAK ", 10)
            result["peak"] = int(peak.split()[1])
            result["ok"] = True
        except asyncio.TimeoutError:
            result["error"] = "the exchange did not finish within %d s" % timeout
        except Exception as e:
            result["error"] = str(e) or type(e).__name__
        finally:
            t_end = time.monotonic() + (5 if result["ok"] else 0)
            while proc.poll() is None and time.monotonic() < t_end:
                await asyncio.sleep(0.02)
            if proc.poll() is None:
                proc.terminate()
            await asyncio.get_running_loop().run_in_executor(None, proc.wait)
            await pump
    asyncio.run(go())
    for line in lines:
        if line.startswith(("MEM ", "LIVE ")):
            result.update(dict(kv.split("=") for kv in line.split()[1:]))
        elif line.startswith("ROMFS "):
            result["romfs"] = dict(kv.split("=") for kv in line.split()[1:])
        elif line.startswith("GARBAGE "):
            result["garbage"] = dict(kv.split("=") for kv in line.split()[1:])
        elif line.startswith("qstr pool:"):
            kv = dict(x.strip().split("=") for x in line.split(":", 1)[1].split(","))
            result["qstrs"], result["qstr_bytes"] = kv["n_qstr"], kv["n_total_bytes"]
    if not result["ok"]:
        tail = [ln for ln in lines if "Error" in ln or "error" in ln][-2:]
        if tail:
            result["error"] = "%s (board: %s)" % (result["error"], " | ".join(tail))
    return result


async def _wait_line_keep(lines, prefix, timeout, proc):
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if any(ln.startswith(prefix) for ln in lines):
            return
        if proc.poll() is not None:
            raise RuntimeError("board exited before %s: %s" % (prefix, " | ".join(lines[-3:])))
        await asyncio.sleep(0.02)
    raise RuntimeError("board not %s within %d s" % (prefix, timeout))


def smallest_heap(relay, nbytes, compress, lo=32 * 1024, hi=512 * 1024, step=1024, env=None):
    """Bisection on the heap size (KiB granularity); returns (heap, result of that run)."""
    best = run_scenario(relay, hi, nbytes, compress, env=env)
    if not best["ok"]:
        return None, best
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        r = run_scenario(relay, mid, nbytes, compress, env=env)
        if r["ok"]:
            hi, best = mid, r
        else:
            lo = mid
    return hi, best


def payload_sizes(text):
    """'64K,1M,8388608' -> [65536, 1048576, 8388608] (K and M are binary units)."""
    sizes = []
    for item in text.split(","):
        try:
            n = units.size(item)
        except argparse.ArgumentTypeError:
            n = 0
        if n == 0:
            raise argparse.ArgumentTypeError(
                "%r is not a payload size: give bytes, or a number with K or M (e.g. 64K, 1M)" % item.strip())
        sizes.append(n)
    return sizes


COMPRESSION_MODES = {"off": [False], "on": [True], "both": [False, True]}


def _suite_build():
    """The folder of the suite's board build of lib/lkedge (tests/mpybuild.py)."""
    tests = os.path.join(ROOT, "tests")
    if tests not in sys.path:   # (once: a bisection asks for every run)
        sys.path.insert(0, tests)
    from mpybuild import compiled_lib
    return compiled_lib()


def romfs_image(out_dir):
    """The suite's board build of lkedge as a ROMFS image, built by the real mpremote
    (`mpremote romfs build`, as `mpremote romfs deploy` writes one to a board's ROMFS
    partition); returns its path."""
    import shutil
    tree = os.path.join(out_dir, "tree")
    shutil.copytree(os.path.join(_suite_build(), "lkedge"), os.path.join(tree, "lkedge"),
                    ignore=shutil.ignore_patterns("*.stamp"))
    image = os.path.join(out_dir, "lkedge.romfs")
    subprocess.run([_bin("mpremote"), "romfs", "--no-mpy", "--output", image, "build", tree],
                   check=True, stdout=subprocess.DEVNULL)
    return image


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m lkedge_host.bench.board_heap", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=payload_sizes, default=[65536, 1048576, 8388608],
                    help="payload sizes, comma separated: bytes, or with K or M (default 64K,1M,8M)")
    ap.add_argument("--compression", choices=sorted(COMPRESSION_MODES), default="both",
                    help="whether the board advertises compression (default: both, off first)")
    ap.add_argument("--garbage", action="store_true",
                    help="instead: bytes the board allocates per KiB moved (1 MiB, no compression)")
    ap.add_argument("--romfs", action="store_true",
                    help="the library from a ROMFS image, its bytecode executed in place (the image "
                         "is read into the heap here; the heap without it is printed too)")
    a = ap.parse_args(argv)
    sizes = a.sizes
    modes = COMPRESSION_MODES[a.compression]
    from lkedge_host.relay.process import RelayProcess
    with RelayProcess() as relay:
        if a.garbage:
            r = run_scenario(relay, 512 * 1024, 1 << 20, False, garbage=True)
            if not r["ok"]:
                print("garbage run FAILED: %s" % r["error"])
                return
            g = r["garbage"]
            print("garbage per KiB moved (1 MiB, no compression, collections off over 16 KiB): "
                  "call request received %s B (the handler's str pieces and their encoding "
                  "included), answer sent %s B, byte stream received with readinto %s B"
                  % (g["request"], g["answer"], g["stream"]))
            return
        env = image = None
        if a.romfs:
            import tempfile
            tmp = tempfile.TemporaryDirectory(prefix="lkedge-romfs-")  # removed when main() returns
            image = romfs_image(tmp.name)
            env = {"LKEDGE_ROMFS": image, "LKEDGE_ROMFS_AT": "/rom"}
        for compress in modes:
            for n in sizes:
                t0 = time.monotonic()
                heap, r = smallest_heap(relay, n, compress, env=env)
                if heap is None:
                    print("payload %8d B compression %-3s: FAILED even at 512 KiB: %s" % (
                        n, "on" if compress else "off", r["error"]))
                    continue
                print("payload %8d B compression %-3s: smallest heap %3d KiB | in use: after import %s B, "
                      "after Room() %s B, joined %s B, mid-call %s B, mid-stream %s B | %s qstrs in %s B "
                      "| bisection %.0f s" % (
                          n, "on" if compress else "off", heap // 1024, r.get("import"), r.get("room"),
                          r.get("joined"), r.get("call"), r.get("stream"), r.get("qstrs"), r.get("qstr_bytes"),
                          time.monotonic() - t0), flush=True)
                if image:
                    size = os.path.getsize(image)
                    print("    the ROMFS image took %d B of that heap (%s B in use once mounted): with it "
                          "in a board's flash, ~%d KiB" % (size, r.get("romfs", {}).get("heap"),
                                                           (heap - size) // 1024), flush=True)


if __name__ == "__main__":
    main()
