"""A monotonic millisecond clock for the asyncio adapter (never used by the cores).

MicroPython's ticks_ms() wraps around (2**30 ms on most ports), so the elapsed time is
accumulated with ticks_diff into an ever-growing integer that the state machines can
compare directly.
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

except ImportError:  # CPython
    import time

    def now_ms():
        return int(time.monotonic() * 1000)
