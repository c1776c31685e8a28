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
from .streams import StreamError

_WAIT = object()  # _poll(): nothing offered yet


class _Reader:
    """Common rendezvous machinery of text and byte readers."""

    _inv = None   # the RPC request this reader feeds (Room._invoke), if any
    _rid = None   # the streaming call whose answer this is (its timer restarts per piece)
    _claimed = None   # the task that polled it first (Room: a sync handler handed it on)
    _done = None      # an Event set when it ends or is abandoned, made on demand (Room)
    _drop_warn = None  # the sender, once its handler returned part-read (Room warns at a drop)

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
    def _put(self, data):
        """Offer `data` to the consumer. True when the producer must now wait on
        `_taken` until it is read; False when it is dropped (abandoned, ended, empty).
        Synchronous, like the consumer's `_poll`: a coroutine per piece would be
        garbage a board has to collect, and the only wait left is the Event's own."""
        if self._abandoned or self._ended or not len(data):
            return False
        self._data = data
        self._off = 0
        self._taken.clear()
        self._ready.set()
        return True

    def _end(self, error=None):
        if not self._ended:
            self._ended = True
            self._error = error
        self._ready.set()
        if self._done is not None:
            self._done.set()

    def _abandon(self):
        """The consumer is gone: drop what it did not read, never block the producer."""
        self._abandoned = True
        self._data = None
        self._taken.set()
        self._ready.set()  # a read waiting meanwhile learns it (_poll)
        if self._done is not None:
            self._done.set()

    cancel = _abandon  # public: stop reading, drop the rest (and free the link)
    close = _abandon   # the LiveKit SDK's names for it

    async def aclose(self):
        self._abandon()

    # ---- consumer side ----
    def _poll(self):
        """The unread memoryview; None at the end of the stream (its error raised);
        _WAIT while nothing is offered: then wait for `_ready` and poll again."""
        if self._claimed is None:
            self._claimed = asyncio.current_task()
        data = self._data
        if data is not None:
            return data
        if self._ended and self._error is not None:
            raise self._error
        if self._abandoned:  # never a clean end: what it dropped was never read
            raise StreamError("stream abandoned (its handler returned, or cancel() was called) "
                              "before this read: the rest was dropped")
        if self._ended:
            return None
        self._ready.clear()
        return _WAIT

    def _unread(self, data):
        return data[self._off:] if self._off else data

    def _release(self, n):
        self._off += n
        if self._off >= len(self._data):
            self._data = None
            self._taken.set()

    async def readinto(self, buf):
        """Copy the next bytes into `buf` (no allocation); 0 at the end of the stream."""
        data = self._poll()
        while data is _WAIT:  # here, not in a helper coroutine: one less per piece
            await self._ready.wait()
            data = self._poll()
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
        data = self._poll()
        while data is _WAIT:  # here, not in a helper coroutine: one less per piece
            await self._ready.wait()
            data = self._poll()
        if data is None:
            raise StopAsyncIteration
        out = bytes(self._unread(data))
        self._release(len(data) - self._off)
        return out

    async def read_all(self, limit=None):
        """The rest of the stream as one bytes; ValueError past `limit` bytes, told from
        the header's total_length before anything is read when it has one (text:
        TextStreamReader.read_all, these bytes decoded once). Each piece is copied as it
        comes (small blocks, which a fragmented heap has room for) by a coroutine gone
        once it returns: a frame that goes on keeps what it held in a stale slot, and an
        inline request's content, a view of which this one held, lived on to the join."""
        total = self.info.total_length if self.info is not None else None
        parts = []
        n = 0
        while True:
            if limit is not None and (n > limit or total is not None and total > limit):
                self._abandon()
                raise ValueError("stream larger than the %d-byte read_all limit" % limit)
            try:
                parts.append(await ByteStreamReader.__anext__(self))
            except StopAsyncIteration:
                break
            n += len(parts[-1])
        return parts[0] if len(parts) == 1 else b"".join(parts)


class TextStreamReader(_Reader):
    """Iterate `str` pieces (cut on character boundaries) or `read_all()`."""

    def __init__(self, info):
        _Reader.__init__(self, info)
        self._dec = utf8.Utf8Decoder()

    async def __anext__(self):
        while True:
            data = self._poll()
            while data is _WAIT:
                await self._ready.wait()
                data = self._poll()
            if data is None:
                self._dec.finish()
                raise StopAsyncIteration
            s = self._dec.decode(self._unread(data))
            self._release(len(data) - self._off)
            if s:
                return s

    async def read_all(self, limit=None):
        # The bytes gathered whole, then decoded once (utf8.text checks them): on a
        # board the str shares the joined bytes' data, so the text costs one block of
        # its length beside the pieces, not decoded pieces and their joined copy.
        b = await ByteStreamReader.read_all(self, limit)
        d = self._dec
        if d._npend:   # a character the last piece iterated ended inside
            b = bytes(d._pend[:d._npend]) + b
            d._npend = 0
        return utf8._decode(b, d.offset)


class PayloadReader(TextStreamReader):
    """A text reader over a payload already in memory (v1 requests to streaming handlers)."""

    def __init__(self, info, payload):
        TextStreamReader.__init__(self, info)
        self._data = memoryview(payload) if len(payload) else None
        self._ended = True
