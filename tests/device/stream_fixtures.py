"""Raw-DEFLATE fixtures made by CPython's zlib (tests/lib/deflate_fixtures.py) and
helpers to feed them in pieces, on MicroPython and CPython alike."""
MIXED = "mixed"      # 1 MiB, matches across the whole 32 KiB window
MIXED_LEN = 1 << 20
MIXED_SHA256 = "7603ac95b8caf61bd7092b2d17f9d1b8986b966fbe1c4200ea2d1c837b8f7ada"
RANDOM = "random"    # incompressible: stored blocks
RANDOM_LEN = 20000
BOMB = "bomb"        # 16 MiB of zeros in about 16 KiB
BOMB_LEN = 16 << 20


def path(name):
    """The fixture's file, beside this module (whatever the working directory)."""
    f = __file__
    return (f[:f.rfind("/")] if "/" in f else ".") + "/fixtures/" + name + ".deflate"


class Lcg:
    """Deterministic pseudo-random numbers (same sequence on both runtimes)."""

    def __init__(self, seed=12345):
        self.x = seed

    def next(self):
        self.x = (self.x * 1103515245 + 12345) & 0x7FFFFFFF
        return self.x >> 8

    def between(self, lo, hi):
        return lo + self.next() % (hi - lo + 1)


def lcg_bytes(n, seed=777):
    r = Lcg(seed)
    return bytes(r.next() & 0xFF for _ in range(n))


def file_pieces(name, rng, lo=1, hi=600, buf=None):
    """Yield the fixture's bytes in random-size pieces through one buffer."""
    buf = buf or memoryview(bytearray(hi))
    with open(path(name), "rb") as f:
        while True:
            n = f.readinto(buf[:rng.between(lo, hi)])
            if not n:
                return
            yield buf[:n]
