"""An on-flash log with a size bound: log.txt, rotated to log.old at LOG_MAX bytes.

Lines are "<time> <LEVEL> <message>", ASCII only (other characters are escaped), so
any byte offset of the log can be streamed as text, and at most LINE_MAX characters
(longer messages end in "..."), so the two files never hold more than 2 * LOG_MAX. Writing never raises: a full
flash or an exhausted heap must not take the app down through its own log.
"""
import sys
import time

LOG = "log.txt"
OLD = "log.old"
LOG_MAX = 32768
LINE_MAX = 1024  # a longer message is cut: one line never outgrows the log's bound


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


def write(level, msg):
    try:
        if len(msg) > LINE_MAX:
            msg = msg[:LINE_MAX - 3] + "..."
        line = "%d %s %s" % (time.time(), level, _ascii(msg))
        if len(line) > LINE_MAX:  # escapes made it longer
            line = line[:LINE_MAX - 3] + "..."
        line += "\n"
        print(line, end="")
        if _size(LOG) + len(line) > LOG_MAX:
            import os
            try:
                os.remove(OLD)
            except OSError:
                pass
            os.rename(LOG, OLD)
        with open(LOG, "a") as f:
            f.write(line)
    except (OSError, MemoryError):
        pass


def info(msg):
    write("INFO", msg)


def error(msg):
    write("ERROR", msg)


def exception(what, e):
    """Log an exception with its traceback on one line (falls back to its repr when
    the heap is too short for the traceback text)."""
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
    write("ERROR", "%s: %s" % (what, text))


class TailSource:
    """The last `n` bytes of the log as an async iterable of str pieces (from the start
    of a line)."""

    def __init__(self, n, path=LOG, piece=256):
        self.f = None
        self.buf = bytearray(piece)
        self.mv = memoryview(self.buf)
        size = _size(path)
        if not size:
            return
        self.f = open(path, "rb")
        if size > n:
            self.f.seek(size - n)
            self.f.readline()  # skip the partial first line

    def __aiter__(self):
        return self

    async def __anext__(self):
        n = self.f.readinto(self.buf) if self.f is not None else 0
        if not n:
            if self.f is not None:
                self.f.close()
                self.f = None
            raise StopAsyncIteration
        return bytes(self.mv[:n]).decode()
