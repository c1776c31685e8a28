"""Bounded memory on the real MicroPython interpreter (issue: protocol core).

A MicroPython "board" (-X heapsize, the library as mpy-cross bytecode, which on the
unix port lives in the heap: ~90 KiB of it on this 64-bit interpreter) joins a real
relay; a CPython host makes a v2 call whose request is consumed by the board's
streaming handler answering as many bytes, then sends it a byte stream. Every byte is
checked by SHA-256 (tests/scenarios/board_memory.py, lkedge_host.bench.board_heap).

The heaps here are the measured minimums (the bisection benchmark prints them) plus a
margin of 4-5 KiB: where garbage happens to lie when a collection runs moves the
minimum by 1-2 KiB between runs. An allocation over the heap fails, so a change that
makes the board need more than that shows here; the benchmark says by how much.
"""
import pytest

from lkedge_host.bench.board_heap import run_scenario
from lkedge_host.relay.process import RelayProcess

KIB = 1024
MIB = 1024 * 1024
HEAP_PLAIN = 136 * KIB        # measured minimum 135 KiB for 1 MiB at fixed heaps (2026-12-07; 132 on 2026-12-06);
# 64 B later (inline content streams with a `sequence` after the header) 135 passed 3
# runs of 5 and 136 passed 8 of 8, 6 of them beside a busy-loop hogging a core; after
# session 27's input checks and out-of-memory answers (2026-12-07, ~400 B more at the
# peak): the bisection says 136, and at fixed heaps 135 passed 2 of 5, 136 and 137 5 of 5
# measured minimum 168-174 KiB for 1 MiB (a reserved 32 KiB window and decoder state;
# 170-172 while the reservation had 2 KiB to spare; which of these a build gets depends
# on where its garbage happens to lie): 4 KiB of margin, as the scenario's timing under
# a loaded machine moves it by 1-2 KiB more
# (2026-12-07: 174 once the inflater's stage stopped making 2 KiB of garbage, then 176 for
# 64 KiB and 1 MiB alike once compressed inline content went to its stream as it came,
# no longer gathered whole: 64 KiB needed ~189 before)
HEAP_COMPRESSED = 178 * KIB
QSTR_POOL_EDGE = 620
# The issue's targets, met with the library in a ROMFS partition (`lkedge deploy --romfs`,
# the picow-romfs profile), where its bytecode runs from flash and only its objects take
# heap. Measured minimums at fixed heaps (2026-12-07): 87.8 KiB for 64 KiB and 1 MiB
# without compression, ~126-128 KiB for 64 KiB and 1 MiB arriving compressed (127.7 and
# up pass; 1 MiB passed at 125.7, failed at 126.7); with three CPU hogs on the two cores
# the runs at 128 passed 6 of 6 (1 MiB) and 4 of 4 (64 KiB). The unix port has no
# partition: each run reads the image into its heap first and gets that much more heap.
TARGET_PLAIN = 96 * KIB
TARGET_COMPRESSED = 128 * KIB


@pytest.fixture(scope="module")
def relay():
    with RelayProcess() as r:
        yield r


@pytest.fixture(scope="module")
def romfs(tmp_path_factory):
    """(the environment that runs the scenario from the board build's ROMFS image, the
    image's size)"""
    import os
    from lkedge_host.bench.board_heap import romfs_image
    image = romfs_image(str(tmp_path_factory.mktemp("romfs")))
    return {"LKEDGE_ROMFS": image, "LKEDGE_ROMFS_AT": "/rom"}, os.path.getsize(image)


def _ok(r):
    assert r["ok"], "board failed at heap %d: %s" % (r["heap"], r["error"])
    print("heap %d KiB: after import %s B, after Room() %s B" % (r["heap"] // KIB, r.get("import"), r.get("room")))


@pytest.mark.parametrize("nbytes", [64 * KIB, MIB])
def test_v2_call_and_byte_stream_fit_the_same_heap_whatever_the_size(relay, nbytes):
    r = run_scenario(relay, HEAP_PLAIN, nbytes, compress=False, timeout=60)
    _ok(r)
    assert r["caps"] == [], "without compression the board must not advertise it"


@pytest.mark.parametrize("nbytes", [64 * KIB, MIB])
def test_compressed_streams_inflate_within_the_same_bounded_heap_whatever_the_size(relay, nbytes):
    # 64 KiB goes as one compressed inline packet, 1 MiB in compressed chunks
    r = run_scenario(relay, HEAP_COMPRESSED, nbytes, compress=True, timeout=60)
    _ok(r)
    assert r["caps"] == [2]
    # MicroPython adds a pool for interned names at the 621st: ~7 KB at once, the
    # heap above grew 9 KiB with three new names. Deterministic, so said here by name:
    # respell private names, give parameters names already interned.
    assert int(r["qstrs"]) <= QSTR_POOL_EDGE, \
        "%s interned names: over %d, MicroPython added a ~7 KB pool" % (r["qstrs"], QSTR_POOL_EDGE)


@pytest.mark.parametrize("nbytes", [64 * KIB, MIB])
def test_from_romfs_a_v2_call_and_byte_stream_fit_the_issues_96_kib(relay, romfs, nbytes):
    env, image = romfs
    r = run_scenario(relay, TARGET_PLAIN + image, nbytes, compress=False, timeout=60, env=env)
    _ok(r)
    assert r["caps"] == [] and "romfs" in r, r   # (romfs: the board imported from the image)


@pytest.mark.parametrize("nbytes", [64 * KIB, MIB])
def test_from_romfs_compressed_streams_fit_the_issues_128_kib(relay, romfs, nbytes):
    env, image = romfs
    r = run_scenario(relay, TARGET_COMPRESSED + image, nbytes, compress=True, timeout=60, env=env)
    _ok(r)
    assert r["caps"] == [2] and "romfs" in r, r


def test_the_board_makes_little_garbage_per_kib_moved(relay):
    """What makes a board collect: bytes allocated per KiB moved, counted on the board
    with collections off (deterministic for the same pieces). Measured 1,808 B for a
    byte stream read with readinto, 4,484 B per KiB of a streamed answer, 2,952 B per
    KiB of a streamed request (the handler's str pieces included); 3,815 / 8,452 /
    6,772 before the hot paths lost their per-piece coroutines, copies and texts."""
    r = run_scenario(relay, 512 * KIB, 64 * KIB, compress=False, timeout=60, garbage=True)
    _ok(r)
    g = dict((k, int(v)) for k, v in r["garbage"].items())
    print("garbage per KiB: %s" % g)
    assert 0 < g["stream"] < 2400 and 0 < g["answer"] < 6000 and 0 < g["request"] < 4000, g


def test_a_heap_too_small_fails_cleanly_not_silently(relay):
    """The bound is real: well below the minimum the board cannot even start."""
    r = run_scenario(relay, 100 * KIB, 64 * KIB, compress=False, timeout=10)
    assert not r["ok"] and "MemoryError" in (r["error"] or ""), r


def test_importing_the_library_sets_a_gc_threshold_unless_the_application_chose_one():
    """Collections every heap/16 bytes allocated (4 KiB at least) keep a board's heap
    unfragmented (129 -> 117 KiB for the scenario above); an application's own
    threshold is left alone."""
    import os
    import subprocess
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    from mpybuild import compiled_lib
    from lkedge_host.bench.board_heap import _bin
    env = dict(os.environ, MICROPYPATH=compiled_lib() + ":.frozen")
    # (heap, the application's own setting, expected range; 1/16 of the usable heap,
    # 4 KiB at least)
    for heap, before, lo, hi in (("48K", "", 4096, 4096), ("116K", "", 7 * KIB, 7.5 * KIB),
                                 ("1M", "", 63 * KIB, 64 * KIB),
                                 ("116K", "gc.threshold(65536)\n", 65536, 65536)):
        code = "import gc\n%simport lkedge\nprint(gc.threshold())\n" % before
        out = subprocess.run([_bin("micropython"), "-X", "heapsize=" + heap, "-c", code], capture_output=True,
                             text=True, timeout=30, env=env).stdout.strip()
        assert lo <= int(out) <= hi, (heap, before, out)


def test_a_board_keeps_inflating_compressed_requests_one_after_another(relay):
    """The inflate window's reservation is taken again as each compressed stream ends,
    before anything else can take its hole: on a 192K board it was lost after the
    first compressed request (taken while that request's decoder was still referenced,
    the second block did not fit), the hole went to other allocations, and every later
    compressed request failed "not enough memory to inflate (32 KiB window)"."""
    import asyncio
    import os
    import random
    import subprocess
    import sys
    import threading
    import time
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from mpybuild import compiled_lib
    from lkedge_host.bench.board_heap import _bin
    from lkedge.config import RoomOptions
    from lkedge.room import Room
    scenario = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "scenarios", "board_compressed_echo.py")
    env = dict(os.environ, MICROPYPATH=compiled_lib() + ":.frozen", LKEDGE_TOKEN=relay.token("board"))
    board = subprocess.Popen([_bin("micropython"), "-X", "heapsize=192K", scenario, relay.url],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    threading.Thread(target=lambda: lines.extend(iter(board.stdout.readline, "")), daemon=True).start()

    async def calls():
        host = Room(RoomOptions(auto_reconnect=False))
        await host.connect(relay.url, relay.token("host"))
        try:
            t_end = time.monotonic() + 20
            while "board" not in host.remote_participants and time.monotonic() < t_end:
                await asyncio.sleep(0.05)
            assert host.remote_participants["board"].capabilities == [2]
            rng = random.Random(7)
            out = []
            for _ in range(6):   # letters at random: compressed about 2:1
                payload = "".join(rng.choice("abcdefgh") for _ in range(4000))
                try:
                    got = await host.local_participant.perform_rpc(
                        destination_identity="board", method="echo", payload=payload, response_timeout=10)
                    out.append("ok" if got == payload else "wrong answer")
                except Exception as e:
                    out.append(repr(e))
            return out
        finally:
            await host.disconnect()
    try:
        out = asyncio.run(calls())
    finally:
        board.kill()
        board.wait()
    echoes = [ln.split()[2] for ln in lines if ln.startswith("ECHO ")]
    assert out == ["ok"] * 6, (out, "".join(lines)[-1500:])
    assert echoes == ["reserved=1"] * 6, echoes
