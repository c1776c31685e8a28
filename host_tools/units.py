"""argparse types for sizes, durations and counts, shared by the relay and the benchmarks.

    size("64K") -> 65536        bytes, or a whole number with K/KiB or M/MiB (binary, any case)
    seconds("30s") -> 30.0      seconds, or a number with ms, s, m, h or d; at least 1 ms, finite
    whole(2)("10") -> 10        a whole number of at least 2 (a factory: whole(minimum))

Each raises argparse.ArgumentTypeError, which argparse reports with the option's name.
"""
import argparse
import math

_SIZE_UNITS = {"": 1, "K": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MIB": 1 << 20}
_TIME_UNITS = {"": 1.0, "S": 1.0, "MS": 0.001, "M": 60.0, "H": 3600.0, "D": 86400.0}


def _split(text, letters):
    """'64K' -> ('64', 'K'): the number and its (upper-cased) unit."""
    t = str(text).strip()
    num = t.rstrip(letters)
    return num, t[len(num):].upper()


def size(text):
    num, unit = _split(text, "KkMmIiBb")
    if not (num.isascii() and num.isdigit()) or unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(
            "%r is not a size: give bytes, or a whole number with K or M "
            "(binary: 64K = 65536, 1M = 1048576)" % text)
    return int(num) * _SIZE_UNITS[unit]


def seconds(text):
    num, unit = _split(text, "MmSsHhDd")
    try:
        value = float(num) * _TIME_UNITS[unit]
    except (KeyError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value >= 0.001):
        raise argparse.ArgumentTypeError(
            "%r is not a duration of 1ms or more: give seconds, or a number with ms, s, m, h or d "
            "(e.g. 500ms, 30s, 2m)" % text)
    return value


def whole(minimum):
    def parse(text):
        try:
            n = int(text)
        except ValueError:
            n = None
        if n is None or n < minimum:
            raise argparse.ArgumentTypeError("%r is not a whole number of at least %d" % (text, minimum))
        return n
    parse.__name__ = "whole number >= %d" % minimum
    return parse
