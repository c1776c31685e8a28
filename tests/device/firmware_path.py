"""Importing this puts firmware/ on sys.path (both interpreters), so device tests can
import the board application's modules by name, as the board does. rm(*names) removes
the files the tests made (missing ones are fine); exists(path) says whether one is there
(MicroPython has no os.path)."""
import os
import sys


def rm(*names):
    for n in names:
        try:
            os.remove(n)
        except OSError:
            pass


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _firmware_dir():
    f = __file__
    here = f[:f.rfind("/")] if "/" in f else "."
    return here + "/../../firmware"


if _firmware_dir() not in sys.path:
    sys.path.append(_firmware_dir())
