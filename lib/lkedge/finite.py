"""Whole-payload (finite) data streams, STREAMS.md "Sending a finite payload": negotiation
per recipient, raw-DEFLATE compression, one inline packet or header + chunks + trailer.

Sans-I/O like lkedge.streams; imported by lkedge.sending on a participant's first
send_text/send_bytes (or a str RPC answer to a v2 caller), so a board that only
receives, or answers with incremental streams, does not load it.

Negotiation
    negotiate(recipients, can_compress, compress=True) -> (inline_ok, compress_ok)
        recipients: [(client_protocol, capabilities)] of the destination identities,
        or of everyone else for a broadcast; an empty list is eligible.
    can_compress() -> bool    this interpreter can produce raw DEFLATE
    Deflater()                 .compress(data) -> bytes, .flush() -> bytes

    finite_packets(kind, payload, topic, destination_identities, inline_ok, compress_ok,
                   stream_id=None, max_frame=None, **header options) -> generator of packets
        send_text/send_bytes: one inline packet, or header + chunks + trailer. With
        compress_ok the payload is deflated 64 KiB at a time as chunks are pulled (one
        raw-deflate stream); the inline check stops as soon as the output passes
        15000 bytes and the chunked path continues the same deflater.
        A chunked header over 15000 bytes raises StreamError before anything is sent;
        chunks carry at most streams.chunk_room(..., max_frame) bytes each.
"""
from . import utf8
from .consts import (CAP_COMPRESSION_DEFLATE_RAW, CLIENT_PROTOCOL_DATA_STREAM_V2,
                     COMPRESSION_DEFLATE_RAW, COMPRESSION_NONE, STREAM_CHUNK_SIZE_BYTES)
from .ids import uuid4
from .streams import (StreamError, _check_header, chunk_packet, chunk_room, header_packet, packet_size,
                      trailer_packet)

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

_COMPRESS_STEP = const(65536)    # payload bytes handed to the deflater at a time


def negotiate(recipients, can_compress, compress=True):
    """(inline_ok, compress_ok) for recipients = [(client_protocol, capabilities)]."""
    inline_ok = True
    all_inflate = True
    for proto_v, caps in recipients:
        if (proto_v or 0) < CLIENT_PROTOCOL_DATA_STREAM_V2:
            inline_ok = False
            all_inflate = False
        elif CAP_COMPRESSION_DEFLATE_RAW not in (caps or ()):
            all_inflate = False
    return inline_ok, bool(inline_ok and all_inflate and can_compress and compress)


def _deflate_module():
    try:
        import zlib
        if hasattr(zlib, "compressobj"):
            return zlib, None
    except ImportError:
        pass
    try:
        import deflate
        # Builds without MICROPY_PY_DEFLATE_COMPRESS have a read-only DeflateIO.
        if hasattr(deflate.DeflateIO, "write"):
            return None, deflate
    except ImportError:
        pass
    return None, None


def can_compress():
    """True when this interpreter can produce raw DEFLATE (CPython zlib, or a
    MicroPython build whose DeflateIO can write)."""
    z, d = _deflate_module()
    return z is not None or d is not None


class Deflater:
    """Incremental raw-DEFLATE compressor: compress(data) -> bytes, flush() -> bytes."""

    def __init__(self):
        z, d = _deflate_module()
        if z is not None:
            self._z = z.compressobj(6, z.DEFLATED, -15)
            self._io = None
        elif d is not None:
            import io
            self._z = None
            self._sink = _new_sink(io)
            # A 1 KiB window keeps a board's heap small; any window is valid DEFLATE.
            self._io = d.DeflateIO(self._sink, d.RAW, 10)
        else:
            raise StreamError("this interpreter cannot compress (no zlib, DeflateIO is read-only)")

    def compress(self, data):
        if self._z is not None:
            return self._z.compress(data)
        self._io.write(data)
        return self._sink.take()

    def flush(self):
        if self._z is not None:
            return self._z.flush()
        self._io.close()
        return self._sink.take()


def _new_sink(io):
    class Sink(io.IOBase):
        """Collects what DeflateIO writes (it must be an io.IOBase stream)."""

        def __init__(self):
            self.buf = bytearray()

        def write(self, b):
            self.buf.extend(b)
            return len(b)

        def take(self):
            out = bytes(self.buf)
            self.buf = bytearray()
            return out
    return Sink()


def finite_packets(kind, payload, topic, destination_identities, inline_ok, compress_ok,
                   stream_id=None, max_frame=None, **options):
    """The packets of a finite stream (STREAMS.md "Sending a finite payload").

    payload: the UTF-8 bytes of a text, or the bytes. options: header_packet's keyword
    arguments except total_length/inline_content/compression. Chunk contents are
    memoryview slices of `payload` (plain) or bytes (compressed), of at most
    chunk_room(stream_id, destination_identities, max_frame) bytes.
    """
    sid = stream_id or uuid4()
    dests = destination_identities
    data = memoryview(payload)
    total = len(data)
    comp = _Compression(data) if compress_ok else None
    if inline_ok:
        pkt = _inline_packet(sid, kind, topic, dests, data, comp, options)
        if pkt is not None:
            yield pkt
            return
    hdr = header_packet(sid, kind, topic, dests, total_length=total,
                        compression=COMPRESSION_DEFLATE_RAW if comp else COMPRESSION_NONE, **options)
    _check_header(hdr)
    room = chunk_room(sid, dests, max_frame)
    yield hdr
    if comp is not None:
        yield from comp.chunks(sid, dests, room)
    else:
        yield from _plain_chunks(sid, dests, data, kind == "text", room)
    yield trailer_packet(sid, dests)


def _inline_packet(sid, kind, topic, dests, data, comp, options):
    """The one inline packet when it fits in 15000 bytes, else None."""
    content, how = data, COMPRESSION_NONE
    if comp is not None:
        small = comp.whole_if_at_most(STREAM_CHUNK_SIZE_BYTES)
        if small is not None and len(small) < len(data):
            content, how = small, COMPRESSION_DEFLATE_RAW
    if len(content) > STREAM_CHUNK_SIZE_BYTES:
        return None
    pkt = header_packet(sid, kind, topic, dests, total_length=len(data),
                        inline_content=content, compression=how, **options)
    return pkt if packet_size(pkt) <= STREAM_CHUNK_SIZE_BYTES else None


def _plain_chunks(sid, dests, data, is_text, room):
    index = 0
    off = 0
    total = len(data)
    while off < total:
        end = off + room
        if is_text and end < total:
            end = off + utf8.cut(data[off:], room)
            if end == off:
                raise StreamError("text is not valid UTF-8 near byte %d" % off)
        yield chunk_packet(sid, index, dests, data[off:end])
        index += 1
        off = end


class _Compression:
    """ONE raw-deflate stream over the payload, produced step by step.

    The inline check compresses only until the output passes the inline budget; the
    chunked path then continues the same deflater, so the payload is compressed once
    and a 64 MiB payload never sits compressed in memory whole.
    """

    def __init__(self, data):
        self._data = data
        self._pos = 0
        self._d = Deflater()
        self._out = bytearray()
        self._done = False

    def _step(self):
        if self._pos < len(self._data):
            end = min(self._pos + _COMPRESS_STEP, len(self._data))
            self._out.extend(self._d.compress(self._data[self._pos:end]))
            self._pos = end
        else:
            self._out.extend(self._d.flush())
            self._done = True

    def whole_if_at_most(self, limit):
        while not self._done and len(self._out) <= limit:
            self._step()
        return self._out if self._done and len(self._out) <= limit else None

    def chunks(self, sid, dests, n):
        index = 0
        while True:
            while len(self._out) >= n:
                yield chunk_packet(sid, index, dests, bytes(self._out[:n]))
                self._out = self._out[n:]
                index += 1
            if self._done:
                break
            self._step()
        if self._out:
            yield chunk_packet(sid, index, dests, bytes(self._out))
