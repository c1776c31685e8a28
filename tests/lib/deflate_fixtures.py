"""Writes the raw-DEFLATE fixtures of tests/device/fixtures/ with CPython's zlib.

The device tests (which also run under MicroPython, where nothing can compress) inflate
these files and compare against the constants in tests/device/stream_fixtures.py;
tests/lib/test_streams.py checks that the files still decode to the payloads made
here. Regenerate with:  .venv/bin/python tests/lib/deflate_fixtures.py
"""
import hashlib
import os
import random
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "device"))

import stream_fixtures as sf  # noqa: E402


def mixed_payload(n=sf.MIXED_LEN, seed=1):
    """1 MiB of LZ77-friendly data: copies from up to 32 KiB back, short literal runs.

    Matches reach back the whole 32 KiB window, so a decoder with a smaller window
    produces wrong output (the hash check catches it).
    """
    rng = random.Random(seed)
    out = bytearray(rng.randbytes(4096))
    while len(out) < n:
        if rng.random() < 0.1:
            out += rng.randbytes(rng.randint(1, 16))
            continue
        length = rng.randint(3, 516)
        dist = rng.randint(1, min(32768, len(out)))
        start = len(out) - dist
        if dist >= length:
            out += out[start:start + length]
        else:
            out += (bytes(out[start:]) * (length // dist + 1))[:length]
    return bytes(out[:n])


def random_payload():
    """The LCG bytes the device tests regenerate themselves (incompressible)."""
    return sf.lcg_bytes(sf.RANDOM_LEN)


def bomb_payload():
    return bytes(sf.BOMB_LEN)


def raw_deflate(data, level=9):
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def payloads():
    return {sf.MIXED: mixed_payload(), sf.RANDOM: random_payload(), sf.BOMB: bomb_payload()}


def main():
    for name, data in payloads().items():
        comp = raw_deflate(data)
        with open(sf.path(name), "wb") as f:
            f.write(comp)
        print(name, len(data), "->", len(comp), hashlib.sha256(data).hexdigest())


if __name__ == "__main__":
    main()
