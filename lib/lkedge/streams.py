"""Data streams v1/v2 (STREAMS.md) as sans-I/O state machines: no asyncio, no sockets.

Packets are DataPacket dicts keyed by the official field names (docs/internals.md),
e.g. {"destination_identities": [...], "stream_header": {...}}; a big field may hold a
bytes-like slice or a Blob (an object with `.size`) that the writer streams itself.

Negotiation, compression and whole-payload (finite) streams: lkedge.finite, loaded
only by participants that send whole payloads.

Outgoing
    header_packet(stream_id, kind, topic, destination_identities, total_length=None,
                  attributes=None, mime_type=None, name=None, timestamp_ms=0,
                  inline_content=None, compression=0, operation_type=0, version=0,
                  reply_to_stream_id="", attached_stream_ids=None, generated=False)
    chunk_packet(stream_id, index, destination_identities, content)
    trailer_packet(stream_id, destination_identities, reason="", attributes=None)
    packet_size(pkt) -> int    serialized DataPacket size (proto.encoded_size)
    chunk_room(stream_id, destination_identities, max_frame=None) -> int
        the most content one chunk of this stream may carry: 15000, or less when the
        fields every chunk repeats (above all a long destination list) would take its
        LINK frame over max_frame (JOINED's); StreamError when nothing would fit
    OutgoingStream(stream_id, kind, topic, destination_identities, max_frame=None,
                   **header options)
        .header() -> packet (once); .write(data) -> [chunk packets]; .close(reason="",
        attributes=None) -> trailer packet. Never inline, never compressed; a text
        stream's write takes a str (a byte stream's bytes-like: TypeError otherwise,
        before any packet), cut into chunks between characters.
        Its attributes (stream_id, topic, kind, name, ...) describe the stream.

Incoming
    IncomingStreams(has_handler, max_streams=8, can_inflate=True, max_inflated=None,
                    piece_size=512, evict_idle_ms=None, max_inflate_ratio=None)
        has_handler(kind, topic) -> bool decides which streams are wanted.
        .header(sender, header_dict, inline, now_ms=0)   inline: None or the whole content
        .chunk(sender, stream_id, chunk_index, piece, final, now_ms=0)   one piece of a chunk
        .trailer(sender, trailer_dict)
        .participant_left(identity), .close_all(reason)
    Each returns an iterable of events: pull it to the end (a generator, whose work
    happens as it is pulled, when there may be several; chunk() answers with a tuple
    of at most one event when it has no more, the usual one made once per stream, so
    the hot path allocates nothing). A StreamData's `data` is a view of a reused
    buffer (the link's piece or the inflater's output) and the StreamData object itself
    is reused per stream: both are valid only until the next event is pulled.
    Events: StreamOpened(info), StreamData(info, data) (at most piece_size bytes,
    inflated when compressed), StreamEnded(info, error) (error None or StreamError;
    .evicted True when it gave way to a new stream, see below),
    StreamIgnored(stream_id, reason, sender, header) (the stream's packets are dropped;
        header and sender are set when the header itself was refused).
    A duplicate open stream_id yields StreamIgnored for the new header only.
    When max_streams are open and another wanted stream arrives, the open stream whose
    sender has been silent longest gives way if it has been silent for evict_idle_ms
    or more (StreamEnded with "abnormal end: idle for N s while all M stream slots were
    in use"; its later packets are dropped); otherwise the new one is refused.
    .evict_idle(now_ms, among=None, full=None) does the same on the adapter's demand
    (e.g. RPC handler slots all taken by request streams: among their ids). So a
    peer that opens streams and never ends them (a writer left unclosed) cannot shut
    others out for good, while a slow writer keeps its slot unless the slots run out.
    Time is what the caller passes in (now_ms), as everywhere in the cores.
    A trailer with a non-empty reason ends the stream with "abnormal end: <reason>",
    as livekit-client (JS) does ("closed abnormally").
    StreamInfo: what handlers see (stream_id, topic, kind, ...; see the class).
"""
from . import load, utf8
from .consts import (COMPRESSION_DEFLATE_RAW, COMPRESSION_NONE, MIME_BYTES, MIME_TEXT,
                     OP_CREATE, STREAM_CHUNK_SIZE_BYTES, TOPIC_RPC_RESPONSE)

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

_MAX_IGNORED = const(16)         # remembered ids of ignored streams
_FULL = "full"                   # _refusal: every slot taken (header() may make room)


class StreamError(ValueError):
    """A stream cannot be sent or was received wrong (the message says what and why)."""


def header_packet(stream_id, kind, topic, destination_identities, total_length=None,
                  attributes=None, mime_type=None, name=None, timestamp_ms=0,
                  inline_content=None, compression=COMPRESSION_NONE, operation_type=OP_CREATE,
                  version=0, reply_to_stream_id="", attached_stream_ids=None, generated=False):
    """A DataPacket dict carrying a DataStream.Header (kind 'text' or 'bytes')."""
    if isinstance(destination_identities, str):  # every stream's header is made here
        raise load("misuse")._dests_str(destination_identities)
    if not isinstance(topic, str):   # (proto would take bytes, and None as "")
        raise load("misuse")._wrong_type("a stream topic is a str", topic)
    if kind == "text":
        # Only fields that differ from their defaults (proto3 omits those anyway).
        th = {"operation_type": operation_type}
        if version:
            th["version"] = version
        if reply_to_stream_id:
            th["reply_to_stream_id"] = reply_to_stream_id
        if attached_stream_ids:
            th["attached_stream_ids"] = list(attached_stream_ids)
        if generated:
            th["generated"] = True
        mime = mime_type or MIME_TEXT
        content = ("text_header", th)
    elif kind == "bytes":
        mime = mime_type or MIME_BYTES
        content = ("byte_header", {"name": "unknown" if name is None else name})
    else:
        raise StreamError("stream kind must be 'text' or 'bytes', not %r" % (kind,))
    h = {"stream_id": stream_id, "timestamp": timestamp_ms, "topic": topic, "mime_type": mime,
         "attributes": dict(attributes or {}), content[0]: content[1]}
    if total_length is not None:
        h["total_length"] = total_length
    if inline_content is not None:
        h["inline_content"] = inline_content
    if compression:
        h["compression"] = compression
    return {"destination_identities": list(destination_identities), "stream_header": h}


def chunk_packet(stream_id, index, destination_identities, content):
    return {"destination_identities": list(destination_identities),
            "stream_chunk": {"stream_id": stream_id, "chunk_index": index, "content": content}}


def trailer_packet(stream_id, destination_identities, reason="", attributes=None):
    return {"destination_identities": list(destination_identities),
            "stream_trailer": {"stream_id": stream_id, "reason": reason or "",
                               "attributes": dict(attributes or {})}}


def packet_size(pkt):
    """Serialized size of a DataPacket dict (Blobs count by their .size)."""
    from . import proto  # only senders need it: a receive-only import stays small
    return proto.encoded_size(proto.DATA_PACKET, pkt)


# A chunk room below this means the destination list crowds out the content: refused,
# not sent as thousands of slivers.
_MIN_CHUNK_ROOM = const(256)


def chunk_room(stream_id, destination_identities, max_frame=None):
    """The most content one chunk of this stream may carry (see the module doc)."""
    if max_frame is None:
        return STREAM_CHUNK_SIZE_BYTES
    # Most streams go to a few identities: a bound on what every chunk repeats (at most
    # 4 bytes a character, 3 of tag and length per string, 32 for the rest) says that a
    # full chunk fits without building a packet to measure (a board opens many streams).
    bound = 32 + 4 * len(stream_id)
    for d in destination_identities:
        bound += 4 * len(d) + 3
    if STREAM_CHUNK_SIZE_BYTES + bound <= max_frame:
        return STREAM_CHUNK_SIZE_BYTES
    # A 1-byte chunk at the largest index (5-byte varint) measures what every chunk
    # repeats; a 15000-byte content adds itself plus at most one byte to each of the
    # two length prefixes around it (content, stream_chunk). The frame adds its type.
    fixed = 1 + packet_size(chunk_packet(stream_id, 0xFFFFFFFF, destination_identities, b"-")) + 1
    room = min(STREAM_CHUNK_SIZE_BYTES, max_frame - fixed)
    if room < _MIN_CHUNK_ROOM:
        raise StreamError("a chunk of this stream repeats %d bytes of headers (%d destination "
                          "identities): the relay's max_frame %d leaves %d bytes for content; "
                          "send to fewer destinations at once" % (
                              fixed, len(destination_identities), max_frame, max(room, 0)))
    return room


def _check_header(pkt):
    size = packet_size(pkt)
    if size > STREAM_CHUNK_SIZE_BYTES:
        raise StreamError("stream header packet is %d bytes, over the %d-byte limit "
                          "(attributes or topic too large)" % (size, STREAM_CHUNK_SIZE_BYTES))


class OutgoingStream:
    """An incremental stream (stream_text/stream_bytes): header, write()s, close()."""

    def __init__(self, stream_id, kind, topic, destination_identities, attributes=None,
                 name=None, mime_type=None, total_length=None, timestamp_ms=0, max_frame=None,
                 **text_options):
        self.stream_id = stream_id
        self.kind = kind
        self.topic = topic
        self.attributes = dict(attributes or {})
        # first: it refuses a str for destination_identities ("bob" is no list)
        self._hdr = header_packet(stream_id, kind, topic, destination_identities,
                                  total_length=total_length, attributes=self.attributes,
                                  mime_type=mime_type, name=name, timestamp_ms=timestamp_ms,
                                  **text_options)
        self.destination_identities = list(destination_identities)
        self._chunk = chunk_room(stream_id, self.destination_identities, max_frame)
        self.name = name
        self.total_length = total_length
        self.timestamp = timestamp_ms
        self.mime_type = self._hdr["stream_header"]["mime_type"]
        self._index = 0
        self._written = 0
        self._closed = False

    def header(self):
        """The header packet, once: the stream keeps no copy while it is written (on a
        board its dicts would stay in the heap for the stream's whole life)."""
        hdr = self._hdr
        if hdr is None:
            raise StreamError("the header of stream %s was already taken" % self.stream_id)
        _check_header(hdr)   # first: an oversized header says so again if asked again
        self._hdr = None
        return hdr

    def write(self, data):
        """Chunk packets for `data`: a str for a text stream (as the LiveKit SDK's
        TextStreamWriter takes), bytes-like for a byte stream."""
        if self._closed:
            raise StreamError("stream %s is closed" % self.stream_id)
        text = self.kind == "text"
        if text != isinstance(data, str):   # before any packet: nothing of it is sent
            raise load("misuse")._stream_takes(text, data)
        if text:
            data = utf8.encoded_text(data)   # a memoryview already on MicroPython
        mv = data if isinstance(data, memoryview) else memoryview(data)
        if self.total_length is not None and self._written + len(mv) > self.total_length:
            raise StreamError("length exceeded: %d bytes written to a stream of total_length %d"
                              % (self._written + len(mv), self.total_length))
        out = []
        while len(mv):
            n = min(len(mv), self._chunk)
            if text:
                n = utf8.cut(mv, n)   # whole characters: a str holds no partial one
            out.append(chunk_packet(self.stream_id, self._index, self.destination_identities, mv[:n]))
            self._index += 1
            self._written += n
            mv = mv[n:]
        return out

    def close(self, reason="", attributes=None):
        """The trailer packet."""
        if self._closed:
            raise StreamError("stream %s is already closed" % self.stream_id)
        self._closed = True
        if attributes:
            self.attributes.update(attributes)
        return trailer_packet(self.stream_id, self.destination_identities, reason, attributes)


# ================================================================== incoming
def _gap(last_index, index):   # (parameter names are interned on a board: existing ones)
    return StreamError("gap in chunk indices: chunk %d missing" % (last_index + 1) if index == last_index + 2
                       else "gap in chunk indices: chunks %d..%d missing" % (last_index + 1, index - 1))


class StreamInfo:
    """What a handler learns about an incoming stream (like LiveKit's TextStreamInfo /
    ByteStreamInfo: .size and .attachments are LiveKit's names for .total_length and
    .attached_stream_ids). `attributes` gets the trailer's attributes merged at the end."""

    def __init__(self, sender_identity, header, kind):
        self.stream_id = header.get("stream_id", "")
        self.topic = header.get("topic", "")
        self.timestamp = header.get("timestamp", 0)
        self.mime_type = header.get("mime_type", "")
        # 0 is "unknown", as livekit-client reads it (some of its senders write 0 for a
        # stream of unknown length)
        self.total_length = header.get("total_length") or None
        self.size = self.total_length   # LiveKit's name for it
        self.attributes = dict(header.get("attributes") or {})
        self.kind = kind
        self.sender_identity = sender_identity
        self.compression = header.get("compression", COMPRESSION_NONE)
        bh = header.get("byte_header") or {}
        self.name = bh.get("name", "") if kind == "bytes" else None
        th = header.get("text_header") or {}
        self.operation_type = th.get("operation_type", OP_CREATE)
        self.version = th.get("version", 0)
        self.reply_to_stream_id = th.get("reply_to_stream_id", "")
        self.attached_stream_ids = self.attachments = list(th.get("attached_stream_ids") or ())
        self.generated = bool(th.get("generated", False))

    def __repr__(self):
        return "StreamInfo(%s %s topic=%r from %r)" % (self.kind, self.stream_id, self.topic,
                                                       self.sender_identity)


class StreamOpened:
    def __init__(self, info):
        self.info = info


class StreamData:
    """`data`: bytes-like, valid only until the next event is pulled."""

    def __init__(self, info, data=None):
        self.info = info
        self.data = data


class StreamEnded:
    """evicted: True when the stream gave way to a new one (evict_idle_ms): its
    handler's slot is free at once, the handler learns it at its next read."""
    evicted = False

    def __init__(self, info, error=None):
        self.info = info
        self.error = error


class StreamIgnored:
    """header: the refused header's dict (None for a stray chunk or trailer), so that
    a refused lk.rpc_request stream can still be answered; sender: its sender."""

    def __init__(self, stream_id, reason, sender=None, header=None):
        self.stream_id = stream_id
        self.reason = reason
        self.sender = sender
        self.header = header

    def __repr__(self):
        return "StreamIgnored(%s: %s)" % (self.stream_id, self.reason)


class _Open:
    """State of one open incoming stream."""

    def __init__(self, info, inflater):
        self.info = info
        self.inflater = inflater
        self.received = 0       # uncompressed bytes delivered (or refused as too many)
        self.last_index = -1    # highest chunk index taken
        self.cur_index = -1     # chunk whose pieces are arriving, -1 between chunks
        self.dropping = False   # the current chunk is a duplicate
        self.ev = StreamData(info)
        self.one = (self.ev,)   # chunk()'s usual answer, made once per stream
        self.heard_ms = 0       # when its sender's last header or chunk came (now_ms)


def _done(st):
    """The stream ended: its inflater, if any, gives its window back (inflate) now."""
    if st.inflater is not None:
        st.inflater.close()
        st.inflater = None


class IncomingStreams:
    """Routes stream packets to events; see the module docstring."""

    def __init__(self, has_handler, max_streams=8, can_inflate=True, max_inflated=None,
                 piece_size=512, evict_idle_ms=None, max_inflate_ratio=None):
        self.has_handler = has_handler
        self.max_streams = max_streams
        self.evict_idle_ms = evict_idle_ms
        self.can_inflate = can_inflate
        self.max_inflated = max_inflated
        self.max_inflate_ratio = max_inflate_ratio
        self.piece_size = piece_size
        self.open = {}          # stream_id -> _Open
        # hashes of the ids of ignored streams, whose chunks/trailer are dropped
        # silently: ids are the sender's (up to max_field bytes each); small ints, so
        # a sender that left pins no heap here
        self._ignored = []

    # ------------------------------------------------------------ header
    def header(self, sender_identity, header, inline, now_ms=0):
        sid = header.get("stream_id", "")
        why = self._refusal(header, sid, inline is not None)
        if why is _FULL:
            why = None
            if not (yield from self.evict_idle(now_ms)) and not (yield from self._evict_hog(sender_identity)):
                why = "too many open streams (limit %d)" % self.max_streams
                self._ignore(sid)
        if why is not None:
            yield StreamIgnored(sid, why, sender_identity, header)
            return
        kind = "text" if "text_header" in header else "bytes"
        info = StreamInfo(sender_identity, header, kind)
        inflater = None
        if info.compression == COMPRESSION_DEFLATE_RAW:
            try:
                inflater = self._new_inflater()
            except (MemoryError, ImportError, ValueError) as e:
                if inline is None:
                    self._ignore(sid)
                yield StreamIgnored(sid, "cannot inflate: %s" % (e,), sender_identity, header)
                return
        st = _Open(info, inflater)
        inflater = None   # st holds it: ended, its window goes back (_done)
        st.heard_ms = now_ms
        yield StreamOpened(info)
        if inline is None:
            self.open[sid] = st
            return
        yield from self._inline(st, inline)

    def _refusal(self, header, sid, inline):
        """Why this header's stream is not taken, or None."""
        if "text_header" in header:
            kind = "text"
        elif "byte_header" in header:
            kind = "bytes"
        else:
            return "header has neither text_header nor byte_header"
        if sid in self.open:
            return "duplicate stream_id: a stream with this id is already open"
        topic = header.get("topic", "")
        why = None
        if not self.has_handler(kind, topic):
            why = "no handler for %s streams on topic %r" % (kind, topic)
        else:
            comp = header.get("compression", COMPRESSION_NONE)
            if comp == COMPRESSION_DEFLATE_RAW and not self.can_inflate:
                why = "compressed (DEFLATE_RAW) and this receiver cannot inflate"
            elif (comp == COMPRESSION_DEFLATE_RAW and not header.get("total_length")
                  and self.max_inflated is None):
                # Senders compress only finite streams; without a total_length nothing
                # would bound what it inflates to (a decompression bomb).
                why = "compressed without a total_length (set RoomOptions.max_inflated to accept such streams)"
            elif comp not in (COMPRESSION_NONE, COMPRESSION_DEFLATE_RAW):
                why = "unknown compression type %r" % (comp,)
            elif not inline and len(self.open) >= self.max_streams:
                return _FULL  # header() makes room or refuses
        if why is not None and not inline:
            self._ignore(sid)
        return why

    def evict_idle(self, now_ms, among=None, full=None):
        """Make room: end the open stream (one whose id is in `among`, if given)
        silent longest, if it has been silent for evict_idle_ms; yields its StreamEnded
        (.evicted True) and returns True, else False. `full` says what was full
        (default: the stream slots), for the stream's error. header() calls it when
        every slot is taken; the adapter when something streams hold ran out (Room: RPC
        handler slots, among the request streams that hold one)."""
        limit = self.evict_idle_ms
        idlest = None
        for st in self.open.values():
            if (among is None or st.info.stream_id in among) and (idlest is None or st.heard_ms < idlest.heard_ms):
                idlest = st
        if limit is None or idlest is None or now_ms - idlest.heard_ms < limit:
            return False
        ended = self._end(idlest, StreamError("abnormal end: idle for %d s while all %s were in use" % (
            (now_ms - idlest.heard_ms) // 1000, full or "%d stream slots" % self.max_streams)))[0]
        ended.evicted = True   # (as in _evict_hog: a helper for these 3 lines costs a board ~200 B)
        yield ended
        return True

    def _evict_hog(self, sender, among=None, limit=None):
        """Make room for `sender` when another sender holds more than half the `limit` slots
        (default max_streams; of the open streams whose id is in `among`, if given) and
        more than `sender` does: that one's stream silent longest ends (evicted), so
        one participant's trickled streams, RPC requests too, cannot lock every other
        sender out. Yields its StreamEnded and returns True, else False. Response
        streams (lk.rpc_response) are left out: each answers a call of our own."""
        limit = limit or self.max_streams
        cands = []   # (a loop, not a comprehension: that would be one more code object)
        held = {}
        for st in self.open.values():
            if (among is None or st.info.stream_id in among) and st.info.topic != TOPIC_RPC_RESPONSE:
                cands.append(st)
                k = st.info.sender_identity
                held[k] = held.get(k, 0) + 1
        hog = None
        for k in held:
            if hog is None or held[k] > held[hog]:
                hog = k
        if (hog is None or hog == sender or held[hog] <= max(1, limit // 2)
                or held.get(sender, 0) >= held[hog]):
            return False
        idlest = None
        for st in cands:
            if st.info.sender_identity == hog and (idlest is None or st.heard_ms < idlest.heard_ms):
                idlest = st
        ended = self._end(idlest, StreamError("abnormal end: %r held %d of the %d slots; another "
                                              "sender's stream took this one" % (hog, held[hog], limit)))[0]
        ended.evicted = True
        yield ended
        return True

    def _new_inflater(self):
        from . import inflate
        return inflate.Inflater(self.piece_size, self.max_inflated, self.max_inflate_ratio)

    def _inline(self, st, inline):
        mv = memoryview(inline)
        err = None
        try:
            if st.inflater is not None:
                yield from self._inflate(st, st.inflater.feed(mv))
                yield from self._inflate(st, st.inflater.finish())
            else:
                yield from self._deliver(st, mv)
            err = self._short_error(st)
        except StreamError as e:
            err = self._short_error(st, e)
        _done(st)
        mv = inline = st.ev.data = None
        yield StreamEnded(st.info, err)

    # ------------------------------------------------------------- chunks
    def chunk(self, sender_identity, stream_id, chunk_index, piece, final, now_ms=0):
        st = self.open.get(stream_id)
        if st is None:
            if hash(stream_id) in self._ignored:
                return ()
            self._ignore(stream_id)
            return (StreamIgnored(stream_id, "chunk for a stream that is not open"),)
        if st.info.sender_identity != sender_identity:
            return ()  # only the stream's sender may add to it
        st.heard_ms = now_ms
        if st.cur_index != chunk_index:
            if not len(piece) and final:
                # an empty chunk is ignored but uses its index, as in livekit-client:
                # the chunk after it is no gap; one after a gap is no cover for it
                if chunk_index > st.last_index + 1:
                    return self._end(st, _gap(st.last_index, chunk_index))
                if chunk_index == st.last_index + 1 and st.cur_index == -1:
                    st.last_index = chunk_index
                return ()
            err = self._start_chunk(st, chunk_index)
            if err is not None:
                return self._end(st, err)
        if final:
            st.cur_index = -1
        if st.dropping or not len(piece):
            return ()
        if st.inflater is not None or len(piece) > self.piece_size:
            return self._pieces(st, piece)
        # The common case is one event, handed out without a generator: on a board
        # every object made per piece is garbage to collect.
        try:
            self._count(st, len(piece))
        except StreamError as e:
            return self._end(st, e)
        st.ev.data = piece
        return st.one

    def _pieces(self, st, piece):
        try:
            if st.inflater is not None:
                yield from self._inflate(st, st.inflater.feed(piece))
            else:
                yield from self._deliver(st, memoryview(piece))
        except StreamError as e:
            yield from self._end(st, e)

    def _start_chunk(self, st, index):
        """Begin a chunk: StreamError for a gap in the indices, else None."""
        compressed = st.inflater is not None
        if st.cur_index != -1 and compressed:
            return StreamError("chunk %d of a compressed stream was cut short" % st.cur_index)
        st.cur_index = index
        if index <= st.last_index:
            st.dropping = True  # duplicate: dropped
            return None
        if index != st.last_index + 1:
            # STREAMS.md makes it an error on a compressed stream; livekit-client on every
            # stream ("Missing chunk(s)"): delivering the rest would hand out corrupt data
            return _gap(st.last_index, index)
        st.dropping = False
        st.last_index = index
        return None

    # ------------------------------------------------------------ trailer
    def trailer(self, sender_identity, trailer):
        sid = trailer.get("stream_id", "")
        st = self.open.get(sid)
        if st is None:
            h = hash(sid)
            if h in self._ignored:
                self._ignored.remove(h)
            else:
                yield StreamIgnored(sid, "trailer for a stream that is not open")
            return
        if st.info.sender_identity != sender_identity:
            return
        st.info.attributes.update(trailer.get("attributes") or {})
        reason = trailer.get("reason", "")
        err = None
        if reason:
            err = StreamError("abnormal end: %s" % reason)
        else:
            try:
                if st.inflater is not None:
                    yield from self._inflate(st, st.inflater.finish())
                err = self._short_error(st)
            except StreamError as e:
                err = self._short_error(st, e)
        del self.open[sid]
        _done(st)
        yield StreamEnded(st.info, err)

    def end(self, stream_id, err):
        """End open stream `stream_id` with `err` (the StreamEnded, or () if it is not
        open): for the adapter, when what fed it is gone (Room: the packet whose inline
        content it was is dropped)."""
        st = self.open.get(stream_id)
        return () if st is None else self._end(st, err)

    # ------------------------------------------------------ participants
    def participant_left(self, identity):
        out = []
        for st in [st for st in self.open.values() if st.info.sender_identity == identity]:
            out += self._end(st, StreamError("abnormal end: sender left"))
        return out

    def close_all(self, reason):
        out = []
        for st in list(self.open.values()):
            out += self._end(st, StreamError("abnormal end: %s" % reason))
        self._ignored = []
        return out

    # ------------------------------------------------------------ helpers
    def _ignore(self, sid):
        sid = hash(sid)
        if sid in self._ignored:
            return
        if len(self._ignored) >= _MAX_IGNORED:
            self._ignored.pop(0)
        self._ignored.append(sid)

    def _end(self, st, err):
        """End an open stream early with an error; its later packets are dropped."""
        sid = st.info.stream_id
        if self.open.get(sid) is st:
            del self.open[sid]
            self._ignore(sid)
        _done(st)
        return (StreamEnded(st.info, err),)

    @staticmethod
    def _count(st, n):
        st.received += n  # counted even when refused: more is never "incomplete"
        total = st.info.total_length
        if total is not None and st.received > total:
            raise StreamError("length exceeded: more than total_length %d bytes" % total)

    def _deliver(self, st, mv):
        self._count(st, len(mv))
        n = self.piece_size
        ev = st.ev
        for off in range(0, len(mv), n):
            ev.data = mv[off:off + n]
            yield ev

    def _inflate(self, st, outputs):
        """Deliver inflated pieces; inflater errors become StreamErrors."""
        from .inflate import InflateError
        try:
            for out in outputs:
                yield from self._deliver(st, out)
        except InflateError as e:
            raise StreamError(str(e))
        except MemoryError:
            raise StreamError("not enough memory to inflate the stream")

    @staticmethod
    def _short_error(st, cause=None):
        """At the end: "incomplete" when fewer than total_length bytes came (with why
        the inflater stopped short, if it did), else `cause`."""
        total = st.info.total_length
        if total is not None and st.received < total:
            return StreamError("incomplete: got %d of %d bytes%s"
                               % (st.received, total, "" if cause is None else " (%s)" % cause))
        return cause
