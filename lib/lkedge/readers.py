"""Stream readers and writers handed to applications (asyncio side of streams.py).

Readers receive pieces by rendezvous: the link reader task offers a memoryview slice
of its one network buffer (or of the inflater's output buffer) and waits until the
application has consumed it. So a board never queues stream data: memory stays at one
buffer however large the stream is, and TCP carries the backpressure to the sender.
Consequence (documented for users): while a handler is not reading its stream, no
other packet on the link is processed; read your stream promptly and to the end (or
return, which abandons the rest).
"""
import asyncio

from . import utf8


class _Reader:
    """Common rendezvous machinery of text and byte readers."""

    def __init__(self, info):
        self.info = info
        self._data = None        # memoryview offered by the producer, or None
        self._off = 0
        self._ready = asyncio.Event()
        self._taken = asyncio.Event()
        self._ended = False
        self._error = None
        self._abandoned = False

    # ---- producer side (the room's link reader task) ----
    async def _offer(self, data):
        if self._abandoned or self._ended or not len(data):
            return
        self._data = data
        self._off = 0
        self._taken.clear()
        self._ready.set()
        await self._taken.wait()

    def _end(self, error=None):
        if not self._ended:
            self._ended = True
            self._error = error
        self._ready.set()

    def _abandon(self):
        """The consumer is gone: drop what it did not read, never block the producer."""
        self._abandoned = True
        self._data = None
        self._taken.set()

    # ---- consumer side ----
    async def _wait_data(self):
        """Return the current unread memoryview, or None at the end of the stream."""
        while self._data is None:
            if self._ended:
                if self._error is not None:
                    raise self._error
                return None
            await self._ready.wait()
            self._ready.clear()
        return self._data

    def _release(self, n):
        self._off += n
        if self._off >= len(self._data):
            self._data = None
            self._taken.set()

    async def readinto(self, buf):
        """Copy the next bytes into `buf` (no allocation); 0 at the end of the stream."""
        data = self._data
        if data is None:  # only then wait: a coroutine per piece is garbage on a board
            data = await self._wait_data()
            if data is None:
                return 0
        n = min(len(buf), len(data) - self._off)
        buf[:n] = data[self._off:self._off + n]
        self._release(n)
        return n

    def __aiter__(self):
        return self


class ByteStreamReader(_Reader):
    """Iterate `bytes` pieces as they arrive, `readinto(buf)`, or `read_all()`."""

    async def __anext__(self):
        data = await self._wait_data()
        if data is None:
            raise StopAsyncIteration
        out = bytes(data[self._off:])
        self._release(len(data) - self._off)
        return out

    async def read_all(self, limit=None):
        parts = []
        total = 0
        async for b in self:
            total += len(b)
            if limit is not None and total > limit:
                self._abandon()
                raise ValueError("stream larger than the %d-byte read_all limit" % limit)
            parts.append(b)
        return b"".join(parts)


class TextStreamReader(_Reader):
    """Iterate `str` pieces (cut on character boundaries) or `read_all()`."""

    def __init__(self, info):
        _Reader.__init__(self, info)
        self._dec = utf8.Utf8Decoder()

    async def __anext__(self):
        while True:
            data = await self._wait_data()
            if data is None:
                self._dec.finish()
                raise StopAsyncIteration
            s = self._dec.decode(data[self._off:])
            self._release(len(data) - self._off)
            if s:
                return s

    async def read_all(self, limit=None):
        parts = []
        total = 0
        async for s in self:
            total += len(s)
            if limit is not None and total > limit:
                self._abandon()
                raise ValueError("stream larger than the %d-character read_all limit" % limit)
            parts.append(s)
        return "".join(parts)


class PayloadReader(TextStreamReader):
    """A text reader over a payload already in memory (v1 requests to streaming handlers)."""

    def __init__(self, info, payload):
        TextStreamReader.__init__(self, info)
        self._data = memoryview(payload) if len(payload) else None
        self._ended = True
