"""Sending whole payloads as data streams: send_text / send_bytes / send_file, and
gathering an incremental payload for a v1 peer; and gathering a v2 request whole for a
buffered handler (whose answer, a str, goes out as such a payload: the same call
loads this module either way).

Imported on first use, with lkedge.finite (negotiation, inline/compressed/chunked
packets): a board that only streams incrementally or answers RPCs with an async
iterable never loads either.
"""
from . import finite, load, streams
from .consts import MIME_BYTES, STREAM_CHUNK_SIZE_BYTES
from .ids import uuid4
from .participant import _now_epoch_ms, _unreadable, is_awaitable
from .rpc import RpcError
from .utf8 import encoded_text


class ReadBlob:
    """A big field of `size` bytes pulled from `readinto(buf) -> n` (file or reader).

    `readinto` may be a plain function (a file) or a coroutine function (a stream
    reader); it is called until `size` bytes were written. A source that ends early is
    an error: the frame length is already on the wire, so the link must be dropped.
    """

    def __init__(self, readinto, size):
        self.readinto = readinto
        self.size = size

    async def write_to(self, write, buf):
        left = self.size
        while left:
            mv = buf[:min(left, len(buf))]
            n = self.readinto(mv)
            if is_awaitable(n):
                n = await n
            if not n:
                raise OSError("source ended %d bytes early" % left)
            await write(mv[:n])
            left -= n


async def send_finite(room, kind, data, topic, dests, attributes, stream_id=None, compress=None,
                      name=None, mime_type=None, text_options=None):
    """Send a whole payload as one stream: inline, compressed or chunked as negotiated."""
    dests = _checked((topic, stream_id, name, mime_type, (text_options or {}).get("reply_to_stream_id")),
                     dests, attributes)
    want = room.options.compress if compress is None else compress
    inline_ok, compress_ok = finite.negotiate(room.recipients(dests), finite.can_compress(), want)
    sid = stream_id or uuid4()
    kw = {}
    if name is not None:
        kw["name"] = name
    if mime_type is not None:
        kw["mime_type"] = mime_type
    if text_options:
        kw.update(text_options)
    sent = pkt = None
    try:
        for pkt in finite.finite_packets(kind, data, topic, dests, inline_ok, compress_ok,
                                          stream_id=sid, max_frame=room.max_frame,
                                          attributes=attributes, timestamp_ms=_now_epoch_ms(), **kw):
            await room._send(pkt)
            if sent is None:
                sent = _info(room, pkt, kind)
    except BaseException as e:
        if room._sender._went_out(e):   # cancelled once pkt was out whole
            if _last_of_stream(pkt):
                raise   # the stream is whole at its receivers
            sent = True
        if sent is not None:  # the header is out (never an inline one: it is the only packet)
            await end_abnormally(room, sid, dests, e)
        raise
    return sent


def _checked(strs, dests, attributes):
    """destination_identities as a list, once a send's arguments are checked: the
    application's mistakes are TypeErrors in its words (misuse._stream_args), before
    anything is negotiated or sent (proto would name wire fields). strs: topic,
    stream_id, name, mime_type, reply_to_id (None: the default)."""
    dests = dests or []
    if not _plain(strs, dests, attributes):
        raise load("misuse")._stream_args(None, strs, dests, attributes)
    return dests


def _plain(strs, dests, attributes):
    """True when strs are str or None, dests a list of str, attributes None or a dict
    of str to str."""
    if isinstance(dests, str) or not (attributes is None or isinstance(attributes, dict)):
        return False
    try:
        return (all(v is None or isinstance(v, str) for v in strs) and all(isinstance(v, str) for v in dests)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in (attributes or {}).items()))
    except TypeError:   # dests is no list
        return False


def _last_of_stream(pkt):
    return "stream_trailer" in pkt or "inline_content" in pkt.get("stream_header", ())


def _info(room, header_packet, kind):
    """What send_text/send_bytes/send_file return, as LiveKit's TextStreamInfo /
    ByteStreamInfo: the stream's id, topic, timestamp, mime type, size, attributes."""
    h = header_packet["stream_header"]
    info = streams.StreamInfo(room.local_participant.identity, h, kind)
    info.total_length = info.size = h.get("total_length")   # ours: 0 is 0, not "unknown"
    return info


async def end_abnormally(room, sid, dests, e):
    """A trailer with a reason for a stream cut short (cancelled, failed source): its
    receivers end with "abnormal end" instead of waiting until we leave."""
    try:
        await room._send(streams.trailer_packet(sid, dests, ("sender stopped: %r" % (e,))[:200]))
    except Exception:
        pass  # no link: its loss ends the stream for the receivers


async def send_file(lp, file_path, topic, name, mime_type, destination_identities, attributes, stream_id,
                    compress=None):
    """Send a file as a byte stream, read through one small buffer.

    Up to half a chunk the file is read whole and sent like send_bytes (inline and
    compressed where negotiated). A larger one goes inline where negotiated and its
    packet fits 15000 bytes, its content read from the file into the frame; else it
    is chunked straight from the file. Neither is compressed: that would need it in
    memory. mime_type None: guessed from the name where the runtime can (CPython's
    mimetypes, as the LiveKit SDK does), else application/octet-stream.
    """
    import os
    if not isinstance(file_path, str):   # os.stat(5) would stat file descriptor 5
        raise load("misuse")._wrong_type("send_file takes a file's path (a str)", file_path)
    size = os.stat(file_path)[6]
    if name is None:
        name = file_path.split("/")[-1]
    if mime_type is None:
        mime_type = _guess_type(file_path)
    dests = _checked((topic, stream_id, name, mime_type), destination_identities, attributes)
    if size <= STREAM_CHUNK_SIZE_BYTES // 2:
        with open(file_path, "rb") as f:
            return await lp.send_bytes(f.read(), name=name, mime_type=mime_type,
                                       destination_identities=dests, topic=topic,
                                       attributes=attributes, stream_id=stream_id, compress=compress)
    sid = stream_id or uuid4()
    room = lp._room
    inline_ok = finite.negotiate(room.recipients(dests), False)[0]
    opts = {"total_length": size, "attributes": attributes, "mime_type": mime_type, "name": name,
            "timestamp_ms": _now_epoch_ms()}
    with open(file_path, "rb") as f:
        if inline_ok and size <= STREAM_CHUNK_SIZE_BYTES:
            pkt = streams.header_packet(sid, "bytes", topic, dests, inline_content=ReadBlob(f.readinto, size), **opts)
            if streams.packet_size(pkt) <= STREAM_CHUNK_SIZE_BYTES:
                await room._send(pkt)
                return _info(room, pkt, "bytes")
        hdr = streams.header_packet(sid, "bytes", topic, dests, **opts)
        streams._check_header(hdr)
        room_n = streams.chunk_room(sid, dests, room.max_frame)
        index = 0
        left = size
        try:
            await room._send(hdr)
        except BaseException as e:
            if room._sender._went_out(e):   # cancelled once the header was out
                await end_abnormally(room, sid, dests, e)
            raise
        try:
            while left:
                n = min(left, room_n)
                await room._send(streams.chunk_packet(sid, index, dests, ReadBlob(f.readinto, n)))
                index += 1
                left -= n
        except BaseException as e:
            await end_abnormally(room, sid, dests, e)
            raise
    await room._send(streams.trailer_packet(sid, dests))
    return _info(room, hdr, "bytes")


def _guess_type(path):
    try:
        import mimetypes   # not on MicroPython
    except ImportError:
        return MIME_BYTES
    return mimetypes.guess_type(path)[0] or MIME_BYTES


async def gather_text(source, cap, error):
    """Join an async iterable of str pieces into their UTF-8 bytes, at most `cap` bytes
    (a piece of another type is refused as a text stream's write is)."""
    parts = []
    total = 0
    async for piece in source:
        if not isinstance(piece, str):
            raise load("misuse")._stream_takes(True, piece)
        b = bytes(encoded_text(piece))
        total += len(b)
        if total > cap:
            raise error
        parts.append(b)
    return b"".join(parts)


async def _whole_request(reader, limit, method):
    """A request stream read whole, as a buffered handler gets it (also lkedge serve's
    file methods); RpcError 1402 past `limit` UTF-8 bytes (at once when the stream's
    header says it has more)."""
    try:
        return await reader.read_all(limit=limit)
    except ValueError as e:
        if type(e) is not ValueError:  # a stream error (cut short, invalid UTF-8), not the limit
            raise _unreadable(e)
        raise RpcError(RpcError.REQUEST_PAYLOAD_TOO_LARGE, None,
                       "%s: method %r takes its request whole, up to max_rpc_payload" % (e, method))
