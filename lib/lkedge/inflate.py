"""Raw DEFLATE decompression (RFC 1951, 32 KiB window) fed piece by piece.

    inf = Inflater(piece_size=512, max_output=None, max_inflate_ratio=None)
    for out in inf.feed(piece): ...    # bytes-like pieces of at most piece_size bytes
    for out in inf.finish(): ...       # all input given: drain, check the stream ended
    available() -> bool                # can this interpreter inflate at all?

Each output piece is valid only until the next one is pulled (MicroPython: a view of
one preallocated buffer). Errors raise InflateError (a ValueError) naming the cause:
corrupt data, truncated input, data after the end, output over `max_output`, output
past its first _RATIO_FREE bytes over `max_inflate_ratio` times the input given so far
(a decompression bomb: bounds the work one input byte can cause); after an error the
Inflater is dead and every further call raises the same error. MicroPython's decoder
does not see every corruption zlib sees: a distance reaching back before the stream's
first byte gives wrong bytes, not an error (a fuzz found 9 such inputs in 2,400); the
stream's total_length, and the receiver's own checks, are what catch those.

CPython uses zlib.decompressobj(-15) with max_length, so output stays bounded.

MicroPython uses deflate.DeflateIO(src, RAW, 15). Its decoder (uzlib) pulls the source
ONE byte at a time from inside the decoder, and cannot resume after the source runs
dry: the bit counter is decremented before the byte read, so an EAGAIN/EOF raised from
the source leaves the state corrupt (a "resumed" decoder then reads garbage bits and
appears to hang). So the input is staged in a small io.BytesIO (a C stream: about 15x
faster than a Python IOBase source, which costs one Python call per input byte) and
output is pulled only while the staged input covers the worst case for the request:
at most 6 input bytes per output byte (a 15-bit length code, 5 extra bits, a 15-bit
distance code and 13 extra bits) plus _MARGIN bytes for up to two block headers. Only
at finish() does the decoder run to the end of the staged input. Input that needs
more than that (a valid but absurd encoding, or an attack) is detected from the
source position after the read and refused: output is never handed out from a read
that went past the staged data.
"""
try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

try:
    import zlib as _zlib
except ImportError:
    _zlib = None

_deflate = None
if _zlib is None or not hasattr(_zlib, "decompressobj"):
    _zlib = None
    try:
        import deflate as _deflate
    except ImportError:
        pass

WINDOW_BITS = const(15)
_WORST_IN_PER_OUT = const(6)    # input bytes one output byte may need (see above)
_MARGIN = const(600)            # two dynamic block headers (~290 bytes each) and more
_STAGE = const(2048)            # staged compressed bytes (MicroPython)
_RATIO_FREE = const(65536)      # output free of max_inflate_ratio (small, very compressible data)


class InflateError(ValueError):
    """The compressed data cannot be inflated (the message says why)."""


def available():
    """True when raw DEFLATE with a 32 KiB window can be inflated here."""
    return _zlib is not None or _deflate is not None


# A board that advertises CAP_COMPRESSION_DEFLATE_RAW must find one contiguous block
# for the 32 KiB window whenever a compressed stream arrives, however fragmented its
# heap has become meanwhile. reserve() holds such a block; the next inflater frees it
# just before DeflateIO allocates its decoder state (~1.4 KiB) and window, which then
# land in that hole. The block is their size and little more, and an inflater takes
# it again as soon as it is done with (close(): its stream ended, was cut short or
# evicted), before anything else can take the hole: taken later (when the stream's
# end reached the Room, the decoder still referenced), the second block did not fit
# beside the first on a board's heap, the reservation was lost, the hole went to other
# allocations, and every later compressed stream failed for want of a window.
_reserved = None
_wanted = False   # a reservation is to be held (reserve() succeeded, no _release())
_STATE = const(1536)
# The reservation's size: the window and a state of _STATE at first, then what the
# decoder took at its first read (measured: 1,376 B of state on the 64-bit unix port).
# A hole larger than the decoder left it a tail of a few blocks that a small object of
# the stream took, and the next reservation no longer fitted in the hole (a board that
# took a compressed stream as it came lost its window after the first).
_size = (1 << WINDOW_BITS) + _STATE


def reserve(piece_size=512):
    """Hold a window-sized block for the next inflater. True when this interpreter can
    inflate with the memory it has: the block is held (MicroPython), or zlib allocates
    as it goes (CPython); False when the heap has no such block."""
    global _reserved, _wanted
    if _deflate is None:
        return _zlib is not None
    if _reserved is None:
        try:
            _reserved = bytearray(_size)
        except MemoryError:
            return False
    _wanted = True
    return True


def _release():
    """Give the reservation up for good (a Room that will not advertise inflating)."""
    global _wanted
    _wanted = False
    _lend()


def _lend():
    """Free the reserved block (for good, or for the window about to be allocated)."""
    global _reserved
    _reserved = None
    import gc
    gc.collect()


def Inflater(piece_size=512, max_output=None, max_inflate_ratio=None):
    """A raw-DEFLATE decoder for this interpreter (see the module docstring)."""
    if _zlib is not None:
        return _ZlibInflater(piece_size, max_output, max_inflate_ratio)
    if _deflate is not None:
        return _UzlibInflater(piece_size, max_output, max_inflate_ratio)
    raise InflateError("no raw-DEFLATE decoder on this interpreter (no zlib, no deflate module)")


class _Base:
    def __init__(self, piece_size, max_output, max_inflate_ratio):
        if piece_size < 1:
            raise ValueError("piece_size must be at least 1, got %r" % (piece_size,))
        self.piece_size = piece_size
        self.max_output = max_output
        self.max_inflate_ratio = max_inflate_ratio
        self.total_in = 0
        self.total_out = 0
        self.eof = False
        self.error = None

    def _fail(self, msg):
        self.error = InflateError(msg)
        raise self.error

    def _check_alive(self):
        if self.error is not None:
            raise self.error

    def _count(self, n):
        self.total_out += n
        if self.max_output is not None and self.total_out > self.max_output:
            self._fail("decompression output exceeds %d bytes" % self.max_output)
        r = self.max_inflate_ratio
        # out - FREE > r * in, said without the product: past 2**30 (r * 10 MB in) it is a
        # long int on a 32-bit board, a heap allocation per output piece
        if r is not None and (self.total_out - _RATIO_FREE - 1) // r >= self.total_in:
            self._fail("decompression bomb: %d bytes inflated from %d, more than %d times as many "
                       "(RoomOptions.max_inflate_ratio)" % (self.total_out, self.total_in, r))

    def _after_end(self, extra):
        self._fail("%d bytes of data after the end of the deflate stream" % extra)

    def close(self):
        """Done with it (its stream ended, was cut short or evicted)."""


# Defined only where zlib exists (CPython): on a board the class would be bytecode in
# the heap that never runs (~1 KiB on the unix port).
if _zlib is not None:
    class _ZlibInflater(_Base):
        """CPython: zlib's pieces are handed out as they come (no decompress-into API)."""

        def __init__(self, piece_size, max_output, max_inflate_ratio):
            _Base.__init__(self, piece_size, max_output, max_inflate_ratio)
            self._d = _zlib.decompressobj(-WINDOW_BITS)

        def feed(self, piece):
            self._check_alive()
            if not len(piece):
                return
            if self.eof:
                self._after_end(len(piece))
            self.total_in += len(piece)
            yield from self._run(piece)

        def _run(self, data):
            n = self.piece_size
            while True:
                try:
                    out = self._d.decompress(data, n)
                except _zlib.error as e:
                    self._fail("corrupt deflate data after %d input bytes: %s" % (self.total_in, e))
                data = self._d.unconsumed_tail
                if out:
                    self._count(len(out))
                    yield out
                if self._d.eof:
                    self.eof = True
                    if self._d.unused_data:
                        self._after_end(len(self._d.unused_data))
                    return
                if not data and len(out) < n:
                    return

        def finish(self):
            self._check_alive()
            yield from self._run(b"")
            if not self.eof:
                self._fail("truncated deflate data: the stream did not end after %d input bytes"
                           % self.total_in)


class _UzlibInflater(_Base):
    """MicroPython: DeflateIO over a staged io.BytesIO; output from one buffer."""

    def __init__(self, piece_size, max_output, max_inflate_ratio):
        _Base.__init__(self, piece_size, max_output, max_inflate_ratio)
        import gc
        import io
        gc.collect()
        need = (1 << WINDOW_BITS) + _STAGE + piece_size + 1024
        if gc.mem_free() + (len(_reserved) if _reserved is not None else 0) < need:
            raise MemoryError("inflating needs about %d bytes of heap, %d free" % (need, gc.mem_free()))
        self._src = io.BytesIO(_STAGE)
        self._src.seek(_STAGE - 1)   # the staging area's size, once: the byte at its end,
        self._src.write(b"\0")       # (zeros before it, without a 2 KiB bytes(_STAGE) of garbage)
        self._src.seek(0)
        self._rpos = 0                   # decoder's read position in the stage
        self._wend = 0                   # end of the staged (valid) input
        self._out = memoryview(bytearray(piece_size))
        self._dec = _deflate.DeflateIO(self._src, _deflate.RAW, WINDOW_BITS)

    def feed(self, piece):
        self._check_alive()
        mv = memoryview(piece)
        if not len(mv):
            return
        if self.eof:
            self._after_end(len(mv))
        self.total_in += len(mv)
        while len(mv):
            if self._wend == _STAGE:
                self._compact()
            n = min(len(mv), _STAGE - self._wend)
            self._src.seek(self._wend)
            self._src.write(mv[:n])
            self._wend += n
            mv = mv[n:]
            yield from self._pull(False)

    def finish(self):
        self._check_alive()
        yield from self._pull(True)

    def _pull(self, final):
        # Reads are small (the staged input bounds each, see above); they fill the
        # output buffer and a piece is handed out when it is full or the staged input
        # is spent, so a reader gets pieces of up to piece_size, not ~240 bytes each
        # (an echo of a compressed 1 MiB request sent 4,300 response chunks).
        out = self._out
        filled = 0
        while not self.eof:
            if filled == len(out):
                yield out
                filled = 0
            avail = self._wend - self._rpos
            want = len(out) - filled
            if not final:
                want = min(want, (avail - _MARGIN) // _WORST_IN_PER_OUT)
                if want < 1:
                    break
            n = self._read(out[filled:filled + want], final)
            if n < want:
                self.eof = True  # the decoder met the end of the final block
            self._count(n)
            filled += n
        if self.eof:
            self.close()
        if filled:
            yield out[:filled]
        if self.eof and self._wend > self._rpos:
            self._after_end(self._wend - self._rpos)

    def _read(self, buf, final):
        global _size
        self._src.seek(self._rpos)
        n = None
        corrupt = None
        lent = 0
        if _reserved is not None and not self.total_out:
            # DeflateIO allocates its window at the first read: free the reserved
            # block right before, so the window takes that hole (given back: close())
            _lend()
            import gc
            lent = gc.mem_free()
        try:
            n = self._dec.readinto(buf)
            if lent:
                took = lent - gc.mem_free()
                if (1 << WINDOW_BITS) < took < _size:
                    _size = took
        except MemoryError:
            self._fail("not enough memory to inflate (32 KiB window)")
        except EOFError:
            pass  # the decoder read past the end of the stage buffer
        except OSError as e:  # uzlib reports bad data as EINVAL
            corrupt = e
        pos = self._src.tell()
        if pos > self._wend or (n is None and corrupt is None):
            if final:
                self._fail("truncated deflate data: the stream did not end after %d input bytes"
                           % self.total_in)
            self._fail("deflate data needs more than %d input bytes for %d output bytes "
                       "(corrupt, or an encoding this decoder refuses)"
                       % (self._wend - self._rpos, len(buf)))
        if corrupt is not None:
            self._fail("corrupt deflate data after %d input bytes: %r" % (self.total_in, corrupt))
        self._rpos = pos
        return n

    def close(self):
        # its window back to the reservation before anything else can take the hole
        # (a fragmented heap may have no other for the next stream)
        if self._dec is not None:
            self._dec = None
            if _wanted and _reserved is None:
                import gc
                gc.collect()
                reserve()

    def _compact(self):
        """Move the unread staged bytes to the front, through the output buffer."""
        src = self._src
        rd = self._rpos
        wr = 0
        while rd < self._wend:
            n = min(len(self._out), self._wend - rd)
            src.seek(rd)
            src.readinto(self._out[:n])
            src.seek(wr)
            src.write(self._out[:n])
            rd += n
            wr += n
        self._wend = wr
        self._rpos = 0
