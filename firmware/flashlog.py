"""An on-flash log with a size bound: log.txt, rotated to log.old at LOG_MAX bytes.

Lines are "<time> <LEVEL> <message>", ASCII only (other characters are escaped), so
any byte offset of the log can be streamed as text, and at most LINE_MAX characters
(longer messages end in "..."), so the two files never hold more than 2 * LOG_MAX (2.5 * LOG_MAX
while a log.tail is being read: see TailSource). Writing never raises: a full flash or an
exhausted heap must not take the app down through its own log.
"""
import sys
import time

from lkedge.clock import now_ms

LOG = "log.txt"
OLD = "log.old"
LOG_MAX = 32768
LINE_MAX = 1024  # a longer message is cut: one line never outgrows the log's bound
HOLD_S = 10      # a tail that read a piece this recently holds rotation off (to 1.5 * LOG_MAX)

# Rotation renames and removes the files a tail may have open (on FAT, a removed
# file's clusters are reused while still open), so a tail being read holds it off by
# a lease it renews per piece: one whose caller stalls lets it go by itself. A rotation
# that happens all the same (a stalled tail, log.txt at 1.5 * LOG_MAX) is counted, and a
# tail that sees the count move says so and stops instead of mixing the two files.
_rotation_hold = [0]       # now_ms() until which rotation waits (monotonic: NTP moves time())
_rotations = [0]


def _size(path):
    import os
    try:
        return os.stat(path)[6]
    except OSError:
        return 0


def _ascii(msg):
    for ch in msg:
        if not 32 <= ord(ch) <= 126:  # also line breaks: one message, one line
            return "".join(c if 32 <= ord(c) <= 126 else "\\u%04x" % ord(c) for c in msg)
    return msg


def _held_off(size):
    """Whether a tail being read holds this rotation off: up to 1.5 * LOG_MAX of log.txt,
    and not when log.old is such a held one (the two files stay within 2.5 * LOG_MAX,
    what files.reserve counts)."""
    return now_ms() < _rotation_hold[0] and size < LOG_MAX * 3 // 2 and _size(OLD) <= LOG_MAX


def write(level, msg):
    """Log one line (also printed); True when the flash took it."""
    try:
        if len(msg) > LINE_MAX:
            msg = msg[:LINE_MAX - 3] + "..."
        line = "%d %s %s" % (time.time(), level, _ascii(msg))
        if len(line) > LINE_MAX:  # escapes made it longer
            line = line[:LINE_MAX - 3] + "..."
        line += "\n"
        print(line, end="")
        size = _size(LOG)
        if size + len(line) > LOG_MAX and not _held_off(size):
            import os
            try:
                os.remove(OLD)
            except OSError:
                pass
            os.rename(LOG, OLD)
            _rotations[0] += 1
        with open(LOG, "a") as f:
            f.write(line)
        return True
    except (OSError, MemoryError):
        return False


def info(msg):
    write("INFO", msg)


def error(msg):
    write("ERROR", msg)


def exception(what, e):
    """Log an exception with its traceback on one line (falls back to its repr when
    the heap is too short for the traceback text); True when the flash took it."""
    try:
        import io
        buf = io.StringIO()
        pe = getattr(sys, "print_exception", None)
        if pe is not None:
            pe(e, buf)
        else:  # CPython (host tests)
            import traceback
            traceback.print_exception(type(e), e, e.__traceback__, file=buf)
        text = buf.getvalue().replace("\n", " | ")
    except MemoryError:
        import gc
        gc.collect()
        text = "%s: %s" % (type(e).__name__, e)
    return write("ERROR", "%s: %s" % (what, text))


ROTATED = "\n(the log rotated while this tail was read, its reader stalled: lines may be missing; " \
          "call log.tail again)\n"


class TailSource:
    """The last `n` bytes of the log, log.old then log.txt (the half rotated out, then
    the current one: right after a rotation log.txt holds a line or two), from the start
    of a line, as an async iterable of str pieces. One buffer; the second file is opened
    when the first is done. Rotation waits while it is read (HOLD_S per piece); if one
    happens all the same, the tail ends with ROTATED."""

    def __init__(self, n, path=LOG, old=OLD, piece=256):
        self.rotations = _rotations[0]
        _rotation_hold[0] = now_ms() + HOLD_S * 1000
        self.f = None
        self.then = None  # log.txt, when the tail starts in log.old
        self.buf = bytearray(piece)
        self.mv = memoryview(self.buf)
        size = _size(path)
        if size < n:  # the rest from the end of log.old
            self.then = path if size else None
            path, n, size = old, n - size, _size(old)
        if size:
            self._open(path, size - n)

    def _open(self, path, at):
        self.f = open(path, "rb")
        if at > 0:
            self.f.seek(at)
            self.f.readline()  # skip the partial first line

    def __aiter__(self):
        return self

    async def __anext__(self):
        if _rotations[0] != self.rotations and (self.f is not None or self.then is not None):
            if self.f is not None:
                self.f.close()
            self.f = self.then = None
            return ROTATED
        _rotation_hold[0] = max(_rotation_hold[0], now_ms() + HOLD_S * 1000)
        while True:
            if self.f is None:  # the next file: log.txt after log.old, or none
                if self.then is None:
                    raise StopAsyncIteration
                self._open(self.then, 0)
                self.then = None
            n = self.f.readinto(self.buf)
            if n:
                return bytes(self.mv[:n]).decode()
            self.f.close()
            self.f = None
