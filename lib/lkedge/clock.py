"""A monotonic millisecond clock for the asyncio adapter (never used by the cores), and
the asyncio adapter's wait_for.

MicroPython's ticks_ms() wraps around (2**30 ms on most ports), so the elapsed time is
accumulated with ticks_diff into an ever-growing integer that the state machines can
compare directly.

wait_for is asyncio's, but on CPython before 3.12, whose wait_for can lose a
cancellation (hostwait.py says when): there it is hostwait.wait_for.
"""
try:
    from time import ticks_diff, ticks_ms

    _last = ticks_ms()
    _acc = 0

    def now_ms():
        global _last, _acc
        t = ticks_ms()
        _acc += ticks_diff(t, _last)
        _last = t
        return _acc

    from asyncio import wait_for

except ImportError:  # CPython (and other Pythons without ticks_ms)
    import sys
    import time

    def now_ms():
        return int(time.monotonic() * 1000)

    if sys.version_info < (3, 12):
        from .hostwait import wait_for
    else:
        from asyncio import wait_for  # noqa: F401 (clock.wait_for)
