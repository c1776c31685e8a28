"""Streaming protobuf for the LiveKit messages of WIRE.md (DataPacket and its parts).

Messages are plain dicts keyed by the official field names; an absent key means "not
present". Schemas are module constants: DATA_PACKET, USER_PACKET, RPC_REQUEST, RPC_ACK,
RPC_RESPONSE, RPC_ERROR, STREAM_HEADER, STREAM_CHUNK, STREAM_TRAILER, TEXT_HEADER,
BYTE_HEADER, PARTICIPANT_INFO (compact tuples, see _schema below).
Covered: every field of those messages, except the DataPacket oneof cases WIRE.md
leaves out (3, 6, 7, 8, 9, 18: skipped unparsed, but they still replace an earlier
case, as officially) and the ParticipantInfo fields other than 1, 2, 3, 14, 15, 20, 21.

Writing, byte-identical to livekit-protocol's SerializeToString(deterministic=True):
- `encode(schema, msg) -> bytes`; `encoded_size(schema, msg) -> int` (no output built);
- `encode_segments(schema, msg) -> list` of segments in wire order: `bytes` for the
  small parts, Blob objects (anything with an int `size`, standing for that many bytes
  of a bytes/string field), and string/bytes values of 64 bytes or more as they are
  (bytes-like, not copied; a str as its UTF-8 bytes); the writer sends the bytes-like
  ones and streams each Blob itself. Size-0 Blobs are written as empty fields and left
  out of the list. `encode()` of a Blob: ValueError.
- Values: ints for varint types (range-checked; bools for bool), `str` or raw UTF-8
  bytes-like for strings, bytes-like for bytes, dicts for sub-messages and maps, lists
  for repeated fields; None counts as absent. Defaults are left out except for fields
  with presence (proto3 `optional`, oneof cases, sub-messages). Map entries follow the
  official (upb) deterministic order: by UTF-8 bytes, but a key after the longer keys
  it prefixes ("ab" before "a"). An unknown key, a wrong type, an out-of-range int or
  two cases of one oneof raise ValueError naming the field.

Reading (results equal what the official parser reads, as dicts of present fields):
- `PacketDecoder(max_field=4096, max_values=None)`: sans-I/O decoder of ONE DataPacket of known length.
  `start(length)`; `receive(mv)` keeps a reference, copies nothing (call it when
  `next_event()` returned NEED_DATA; more bytes than `length`: ProtoError);
  `next_event()` -> NEED_DATA | [PIECE, key, mv, final] | (PACKET, msg).
  The PIECE event is ONE reused 4-item list (the hot path allocates nothing): unpack or
  index it, do not keep it. Its mv is the received memoryview itself when the piece
  spans all of it, else a slice; valid until the next call; never longer than what
  receive() was given. A present-but-empty big field gives one piece with an empty mv
  and final=True. Big fields (K_*) never appear in the msg dict; big string fields come
  out as raw UTF-8 bytes. Streaming cannot take back what it handed out: a big field
  that occurs twice is streamed twice (a new first piece after a final one), and a big
  oneof case followed by another case has been streamed although msg holds the later.
  `decoder.msg` is the partial DataPacket dict (sub-message dicts attached as soon as
  they start). As in official parsers: a sub-message that occurs twice merges, other
  singular fields: the last occurrence wins, a default value on the wire (0, "", ...)
  of a field without presence reads as absent, a known field with the wrong wire type
  is an unknown field; packed and unpacked repeated enums; unknown fields of wire
  types 0, 1, 2, 5 are skipped. Errors (ProtoError, a ValueError, naming the field):
  truncation ("truncated ..."), a length overrunning its parent, groups (wire types
  3/4, which we do not support), varints over 10 bytes, field numbers outside
  [1, 2**29 - 1], invalid UTF-8 in a small string, a small bytes/string field over
  `max_field`, a packet whose small values (every value kept in the msg dict: strings,
  bytes, ints, map entries and repeated items) add up to over `max_values` bytes,
  counting 32 more per value (about a board's cost of an object and its slot: thousands
  of tiny attributes or identities in one frame would take ~20 times its size in heap).
  After an error, next_event() and receive() raise it again until start().
- `decode(schema, data) -> dict`: a whole message, big fields included as values (str
  for strings), no max_field.
- `encode`, `decode`, `scan_fields` and `decode_packet` (= decode(DATA_PACKET, data))
  are what hosts and the relay use (a board sends with encode_segments and reads with
  PacketDecoder): they live in lkedge.relayside, which a board never imports (this
  module still answers those names, loading relayside on first use).
"""
from .utf8 import Utf8Error, encoded_text, text

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

NEED_DATA = const(0)
PIECE = const(1)
PACKET = const(2)

# Big fields: delivered as PIECE events instead of dict values.
K_USER_PAYLOAD = const(1)
K_RPC_REQUEST_PAYLOAD = const(2)
K_RPC_RESPONSE_PAYLOAD = const(3)
K_RPC_ERROR_DATA = const(4)
K_INLINE_CONTENT = const(5)
K_CHUNK_CONTENT = const(6)

# Field types (varint types first: type <= _T_ENUM means wire type 0)
_T_INT32 = const(0)
_T_INT64 = const(1)
_T_UINT32 = const(2)
_T_UINT64 = const(3)
_T_BOOL = const(4)
_T_ENUM = const(5)
_T_STRING = const(6)
_T_BYTES = const(7)
_T_MSG = const(8)
_T_MAP = const(9)      # map<string,string>
_T_SKIP = const(10)    # a oneof case this project does not decode: clears the oneof, skipped
_TYPE = const(0x0F)    # mask of the type in a field's type|flags byte

# Field flags, kept with the type in one byte: code = type | flags
_F_REP = const(0x10)     # repeated
_F_PRES = const(0x20)    # explicit presence: written whenever the key is present
_F_PACKED = const(0x40)  # repeated scalar written packed
_F_ONEOF = const(0x80)   # a case of the message's (only) oneof
_CASE = const(0xA0)      # _F_PRES | _F_ONEOF: a oneof case holding a message or value

# A schema is ONE tuple (name, spec, field names..., sub-schemas...), so that a board
# holds few objects per message type. spec is bytes: [field count n, then 3 bytes per
# field j in number order at 3j+1: number, type|flags, extra; then a table mapping
# field number k to index + 1 at 3n+1+k (0: unknown)]. extra is the big-field key (K_*)
# of a bytes/string field, and for a message field the index in the tuple of its
# sub-schema. Field names are the tuple items from _S_NAMES on, indexed like the fields.
_S_NAME = const(0)
_S_SPEC = const(1)
_S_NAMES = const(2)

# A string/bytes value this long or longer is a segment of its own in
# encode_segments() instead of being copied among the small parts.
_COPY_MAX = const(64)

_EMPTY = memoryview(b"")
_BYTES_LIKE = (bytes, bytearray, memoryview)


class ProtoError(ValueError):
    """Malformed protobuf input; the message says what and where."""


def _schema(_name, **fields):
    """fields: field_name=(number, type|flags) or (number, type|flags, big key or
    sub-schema). Keyword names make every field name an interned string (a qstr on
    MicroPython), which costs a board less heap than a string object; _name has a
    leading underscore so that no field name can collide with it. Import time only."""
    names = sorted(fields, key=lambda k: fields[k][0])
    n = len(names)
    top = fields[names[-1]][0] + 1
    spec = bytearray(1 + 3 * n + top)
    spec[0] = n
    sc = [_name, None] + names
    for j in range(n):
        f = fields[names[j]]
        assert f[0] < 256
        spec[1 + 3 * n + f[0]] = j + 1
        spec[3 * j + 1] = f[0]
        spec[3 * j + 2] = f[1]
        if len(f) > 2:
            if isinstance(f[2], int):
                spec[3 * j + 3] = f[2]
            else:
                spec[3 * j + 3] = len(sc)
                sc.append(f[2])
    sc[_S_SPEC] = bytes(spec)
    return tuple(sc)


_MAP_ENTRY = _schema("MapEntry", key=(1, _T_STRING), value=(2, _T_STRING))

USER_PACKET = _schema(
    "UserPacket",
    participant_sid=(1, _T_STRING),
    payload=(2, _T_BYTES, K_USER_PAYLOAD),
    destination_sids=(3, _T_STRING | _F_REP),
    topic=(4, _T_STRING | _F_PRES),
    participant_identity=(5, _T_STRING),
    destination_identities=(6, _T_STRING | _F_REP),
    id=(8, _T_STRING | _F_PRES),
    start_time=(9, _T_UINT64 | _F_PRES),
    end_time=(10, _T_UINT64 | _F_PRES),
    nonce=(11, _T_BYTES))

RPC_REQUEST = _schema(
    "RpcRequest",
    id=(1, _T_STRING),
    method=(2, _T_STRING),
    payload=(3, _T_STRING, K_RPC_REQUEST_PAYLOAD),
    response_timeout_ms=(4, _T_UINT32),
    version=(5, _T_UINT32),
    compressed_payload=(6, _T_BYTES))

RPC_ACK = _schema("RpcAck", request_id=(1, _T_STRING))

RPC_ERROR = _schema(
    "RpcError",
    code=(1, _T_UINT32),
    message=(2, _T_STRING),
    data=(3, _T_STRING, K_RPC_ERROR_DATA))

RPC_RESPONSE = _schema(
    "RpcResponse",
    request_id=(1, _T_STRING),
    payload=(2, _T_STRING | _CASE, K_RPC_RESPONSE_PAYLOAD),
    error=(3, _T_MSG | _CASE, RPC_ERROR),
    compressed_payload=(4, _T_BYTES | _CASE))

TEXT_HEADER = _schema(
    "DataStream.TextHeader",
    operation_type=(1, _T_ENUM),
    version=(2, _T_INT32),
    reply_to_stream_id=(3, _T_STRING),
    attached_stream_ids=(4, _T_STRING | _F_REP),
    generated=(5, _T_BOOL))

BYTE_HEADER = _schema("DataStream.ByteHeader", name=(1, _T_STRING))

STREAM_HEADER = _schema(
    "DataStream.Header",
    stream_id=(1, _T_STRING),
    timestamp=(2, _T_INT64),
    topic=(3, _T_STRING),
    mime_type=(4, _T_STRING),
    total_length=(5, _T_UINT64 | _F_PRES),
    encryption_type=(7, _T_ENUM),
    attributes=(8, _T_MAP),
    text_header=(9, _T_MSG | _CASE, TEXT_HEADER),
    byte_header=(10, _T_MSG | _CASE, BYTE_HEADER),
    inline_content=(11, _T_BYTES | _F_PRES, K_INLINE_CONTENT),
    compression=(12, _T_ENUM))

STREAM_CHUNK = _schema(
    "DataStream.Chunk",
    stream_id=(1, _T_STRING),
    chunk_index=(2, _T_UINT64),
    content=(3, _T_BYTES, K_CHUNK_CONTENT),
    version=(4, _T_INT32),
    iv=(5, _T_BYTES | _F_PRES))

STREAM_TRAILER = _schema(
    "DataStream.Trailer",
    stream_id=(1, _T_STRING),
    reason=(2, _T_STRING),
    attributes=(3, _T_MAP))

DATA_PACKET = _schema(
    "DataPacket",
    kind=(1, _T_ENUM),
    user=(2, _T_MSG | _CASE, USER_PACKET),
    speaker=(3, _T_SKIP | _F_ONEOF),
    participant_identity=(4, _T_STRING),
    destination_identities=(5, _T_STRING | _F_REP),
    sip_dtmf=(6, _T_SKIP | _F_ONEOF),
    transcription=(7, _T_SKIP | _F_ONEOF),
    metrics=(8, _T_SKIP | _F_ONEOF),
    chat_message=(9, _T_SKIP | _F_ONEOF),
    rpc_request=(10, _T_MSG | _CASE, RPC_REQUEST),
    rpc_ack=(11, _T_MSG | _CASE, RPC_ACK),
    rpc_response=(12, _T_MSG | _CASE, RPC_RESPONSE),
    stream_header=(13, _T_MSG | _CASE, STREAM_HEADER),
    stream_chunk=(14, _T_MSG | _CASE, STREAM_CHUNK),
    stream_trailer=(15, _T_MSG | _CASE, STREAM_TRAILER),
    sequence=(16, _T_UINT32),
    participant_sid=(17, _T_STRING),
    encrypted_packet=(18, _T_SKIP | _F_ONEOF))

PARTICIPANT_INFO = _schema(
    "ParticipantInfo",
    sid=(1, _T_STRING),
    identity=(2, _T_STRING),
    state=(3, _T_ENUM),
    kind=(14, _T_ENUM),
    attributes=(15, _T_MAP),
    client_protocol=(20, _T_INT32),
    capabilities=(21, _T_ENUM | _F_REP | _F_PACKED))

del _schema


def _fname(sc, j):
    return sc[_S_NAME] + "." + sc[_S_NAMES + j]


def _uvarint_len(v):
    n = 1
    while v > 0x7F:
        v >>= 7
        n += 1
    return n


def _clear_oneof(sc, j, msg):
    """Setting a oneof case removes the other cases (as official parsers do)."""
    spec = sc[_S_SPEC]
    if not spec[3 * j + 2] & _F_ONEOF:
        return
    for k in range(spec[0]):
        if k != j and spec[3 * k + 2] & _F_ONEOF and sc[_S_NAMES + k] in msg:
            del msg[sc[_S_NAMES + k]]


# ---------------------------------------------------------------- size pass
#
# The size pass walks the message in wire order and records in `plan`, in the same
# order, what the write pass would otherwise compute again: the UTF-8 bytes of every
# string and the size of every sub-message. plan[0] sums the bytes held by Blobs.

def _scalar(sc, j, t, v):
    """The unsigned varint value of a scalar, after type and range checks."""
    if not isinstance(v, int) and not isinstance(v, bool):  # MicroPython: bool is no int
        raise _want(sc, j, "an int", v)
    if 0 <= v <= 0x3FFFFFFF and (v <= 1 or t != _T_BOOL):  # small-int fast path
        return int(v)
    # Checked by shifting, which allocates nothing for a value that is a small int: the
    # limits are big ints on a board (over 2**30), so they are made only for the error.
    bits = 1 if t == _T_BOOL else 64 if t == _T_INT64 or t == _T_UINT64 else 32
    signed = t == _T_INT32 or t == _T_INT64 or t == _T_ENUM
    if signed:
        bits -= 1
        top = v >> bits
        ok = top == 0 or top == -1
    else:
        ok = v >= 0 and not v >> bits
    if not ok:
        raise ValueError("%s = %d is out of range [%d, %d]" % (
            _fname(sc, j), v, -(1 << bits) if signed else 0, (1 << bits) - 1))
    return v + (1 << 64) if v < 0 else v   # negatives: 64-bit two's complement


def _want(sc, j, expected, v):
    """The ValueError for a value of the wrong type (j < 0: the message itself)."""
    return ValueError("%s must be %s, got %s" % (
        _fname(sc, j) if j >= 0 else sc[_S_NAME], expected, type(v).__name__))


def _data(sc, j, t, v, plan):
    """Byte length of a string/bytes value; appends its bytes (or the Blob) to plan.
    plan[0] sums what stays out of the small-parts buffer: Blobs, and values of
    _COPY_MAX bytes or more (segments of their own, never copied)."""
    if isinstance(v, str):
        try:
            b = encoded_text(v)
        except Utf8Error as e:   # the relay would refuse the whole packet (LEAVE 4)
            raise ValueError("%s is not valid UTF-8: %s" % (_fname(sc, j), e))
    elif isinstance(v, _BYTES_LIKE):
        b = v
    elif hasattr(v, "size"):   # a Blob
        plan[0] += v.size
        plan.append(v)
        return v.size
    else:
        raise _want(sc, j, "str" if t == _T_STRING else "bytes", v)
    plan.append(b)
    if len(b) >= _COPY_MAX:
        plan[0] += len(b)
    return len(b)


def _map_order(k):
    return k.encode("utf-8") + b"\xff" if isinstance(k, str) else b""


def _size(sc, msg, plan):
    """Serialized size of message msg of schema sc, after checking every value."""
    if not isinstance(msg, dict):
        raise _want(sc, -1, "a dict", msg)
    spec = sc[_S_SPEC]
    n = spec[0]
    case = None
    for k in msg:
        if msg[k] is None:
            continue
        try:
            fl = spec[3 * (sc.index(k, _S_NAMES, _S_NAMES + n) - _S_NAMES) + 2]
        except ValueError:
            raise ValueError("%s has no field %r" % (sc[_S_NAME], k))
        if fl & _TYPE == _T_SKIP:
            raise ValueError("%s.%s is not supported by this encoder" % (sc[_S_NAME], k))
        if fl & _F_ONEOF:
            if case is not None:
                raise ValueError("%s: oneof cases %r and %r are both set" % (sc[_S_NAME], case, k))
            case = k
    total = 0
    for j in range(n):
        v = msg.get(sc[_S_NAMES + j])
        if v is None:
            continue
        o = 3 * j + 1
        fl = spec[o + 1]
        t = fl & _TYPE
        tl = 1 if spec[o] < 16 else 2   # the tag's varint: field numbers are < 256
        if t == _T_MAP:
            if not isinstance(v, dict):
                raise _want(sc, j, "a dict", v)
            # key and value are always written; entries in the order of the official
            # (upb) deterministic output: by UTF-8 bytes, except that a key comes AFTER
            # the longer keys it is a prefix of ("ab" before "a", "" last). 0xFF never
            # occurs in UTF-8.
            for k in sorted(v, key=_map_order):
                if not isinstance(k, str) or not isinstance(v[k], str):
                    raise ValueError("%s must map str to str" % _fname(sc, j))
                kn = _data(sc, j, _T_STRING, k, plan)
                vn = _data(sc, j, _T_STRING, v[k], plan)
                m = 2 + _uvarint_len(kn) + kn + _uvarint_len(vn) + vn
                total += tl + _uvarint_len(m) + m
        elif fl & _F_REP:
            if not isinstance(v, (list, tuple)):
                raise _want(sc, j, "a list", v)
            if fl & _F_PACKED:
                m = 0
                for x in v:
                    m += _uvarint_len(_scalar(sc, j, t, x))
                if v:
                    total += tl + _uvarint_len(m) + m
            else:
                for x in v:
                    m = _data(sc, j, t, x, plan)
                    total += tl + _uvarint_len(m) + m
        elif t == _T_MSG:
            slot = len(plan)
            plan.append(0)
            m = plan[slot] = _size(sc[spec[o + 2]], v, plan)
            total += tl + _uvarint_len(m) + m
        elif t >= _T_STRING:
            m = _data(sc, j, t, v, plan)
            if m or fl & _F_PRES:   # proto3 leaves out "" and b"" without presence
                total += tl + _uvarint_len(m) + m
        else:
            u = _scalar(sc, j, t, v)
            if u or fl & _F_PRES:
                total += tl + _uvarint_len(u)
    return total


# ---------------------------------------------------------------- write pass

class _Out:
    """Writes into one preallocated buffer; notes where each Blob goes."""

    def __init__(self, size, plan):
        self.buf = bytearray(size)
        self.i = 0
        self.plan = plan
        self.p = 1          # next plan item
        self.cuts = []      # (offset in buf, blob)

    def varint(self, v):
        buf = self.buf
        i = self.i
        while v > 0x7F:
            buf[i] = (v & 0x7F) | 0x80
            v >>= 7
            i += 1
        buf[i] = v
        self.i = i + 1

    def data(self, tag, skip_empty=False):
        """Tag, length and bytes of the next planned string/bytes value (nothing if it
        is empty and skip_empty: the size pass left it out)."""
        d = self.plan[self.p]
        self.p += 1
        is_bytes = isinstance(d, _BYTES_LIKE)
        n = len(d) if is_bytes else d.size
        if skip_empty and not n:
            return
        self.varint(tag)
        self.varint(n)
        if is_bytes and n < _COPY_MAX:
            self.buf[self.i:self.i + n] = d
            self.i += n
        elif n:
            self.cuts.append((self.i, d))   # a Blob, or bytes too big to copy


def _write_msg(sc, msg, out):
    spec = sc[_S_SPEC]
    for j in range(spec[0]):
        v = msg.get(sc[_S_NAMES + j])
        if v is None:
            continue
        o = 3 * j + 1
        fl = spec[o + 1]
        t = fl & _TYPE
        tag = spec[o] << 3 | (2 if t >= _T_STRING or fl & _F_PACKED else 0)
        if t == _T_MAP:
            plan = out.plan
            for _ in range(len(v)):
                kn = len(plan[out.p])
                vn = len(plan[out.p + 1])
                out.varint(tag)
                out.varint(2 + _uvarint_len(kn) + kn + _uvarint_len(vn) + vn)
                out.data(0x0A)   # key: field 1, wire type 2
                out.data(0x12)   # value: field 2, wire type 2
        elif fl & _F_PACKED:
            if v:
                out.varint(tag)
                n = 0
                for x in v:
                    n += _uvarint_len(_scalar(sc, j, t, x))
                out.varint(n)
                for x in v:
                    out.varint(_scalar(sc, j, t, x))
        elif fl & _F_REP:
            for _ in v:
                out.data(tag)
        elif t == _T_MSG:
            out.varint(tag)
            out.varint(out.plan[out.p])   # the size the size pass planned
            out.p += 1
            _write_msg(sc[spec[o + 2]], v, out)
        elif t >= _T_STRING:
            out.data(tag, not fl & _F_PRES)
        else:
            u = _scalar(sc, j, t, v)
            if u or fl & _F_PRES:
                out.varint(tag)
                out.varint(u)


def encoded_size(schema, msg):
    """Serialized size of msg (Blobs count with their size); builds no output."""
    return _size(schema, msg, [0])


def encode_segments(schema, msg):
    """[segment, ...] in wire order: `bytes` for the small parts (tags, lengths, short
    values), and each Blob and each string/bytes value of _COPY_MAX bytes or more as
    it is (a Blob, or the bytes-like value itself: a chunk's content is never copied
    here; a str comes encoded)."""
    plan = [0]
    total = _size(schema, msg, plan)
    out = _Out(total - plan[0], plan)
    _write_msg(schema, msg, out)
    if not out.cuts:
        return [bytes(out.buf)]
    mv = memoryview(out.buf)
    segs = []
    prev = 0
    for off, blob in out.cuts:
        if off > prev:
            segs.append(bytes(mv[prev:off]))
        segs.append(blob)
        prev = off
    if len(mv) > prev:
        segs.append(bytes(mv[prev:]))
    return segs


# ---------------------------------------------------------------- decoding

# decoder states
_ST_TAG = const(0)      # reading a tag varint (or an element of a packed field)
_ST_LEN = const(1)      # reading the length varint of a wire-type-2 field
_ST_VARINT = const(2)   # reading a wire-type-0 value
_ST_SKIP = const(3)     # skipping the bytes of an unknown field
_ST_VALUE = const(4)    # gathering a small value split across receive() calls
_ST_BIG = const(5)      # handing out a big field as pieces
_ST_DONE = const(6)
_ST_IDLE = const(7)

# what opened a nesting level
_L_MSG = const(0)
_L_MAP = const(1)       # a map entry: inserted into the parent's map when it ends
_L_PACKED = const(2)    # a packed repeated field: its level reads values, not tags

_MAX_DEPTH = const(5)


def _from_varint(t, v):
    """A decoded varint (at most 64 bits) as the value of a field of type t."""
    if v <= 0x3FFFFFFF:  # small-int fast path
        return v if t != _T_BOOL else v != 0
    # beyond it, 2**n is computed (no big-int literals held in RAM, see _scalar)
    if t == _T_BOOL:
        return True
    if t == _T_INT32 or t == _T_ENUM or t == _T_UINT32:   # official parsers keep the low 32 bits
        v &= (1 << 32) - 1
        return v - (1 << 32) if v >> 31 and t != _T_UINT32 else v
    if t == _T_INT64:
        return v - (1 << 64) if v >> 63 else v
    return v


class PacketDecoder:
    """Sans-I/O streaming decoder of one DataPacket whose byte length is known."""

    def __init__(self, max_field=4096, max_values=None):
        self.max_field = max_field
        self.max_values = max_values
        self._root = DATA_PACKET
        self._pieces = True      # False: big fields become dict values (decode())
        # per nesting level: schema, dict, absolute end, opening field index, kind
        self._sch = [None] * _MAX_DEPTH
        self._msgs = [None] * _MAX_DEPTH
        self._ends = [0] * _MAX_DEPTH
        self._pj = bytearray(_MAX_DEPTH)
        self._kind = bytearray(_MAX_DEPTH)
        self._piece = [PIECE, 0, _EMPTY, False]
        self.start(0)    # creates every attribute, so the hot path never grows the instance
        self._st = _ST_IDLE
        self.msg = self._msgs[0] = None

    def start(self, length):
        """Begin a packet of `length` bytes; forgets any previous packet or error."""
        if length < 0:
            raise ValueError("negative packet length %d" % length)
        self._st = _ST_TAG
        self._err = None
        self._d = 0
        self._v = 0
        self._shift = 0
        self._j = -1
        self._num = 0
        self._big = 0
        self.big_len = 0
        self._left = 0
        self._val = None
        self._vi = 0
        self._mv = _EMPTY
        self._i = 0
        self._base = 0          # absolute offset of self._mv[0]
        self._held = 0          # the msg's small values so far (max_values)
        for d in range(_MAX_DEPTH):
            self._msgs[d] = None
        self.msg = {}
        self._sch[0] = self._root
        self._msgs[0] = self.msg
        self._ends[0] = length
        self._kind[0] = _L_MSG

    def receive(self, mv):
        if self._err is not None:
            raise self._err
        if self._st == _ST_IDLE:
            raise RuntimeError("PacketDecoder.%s() before start()" % "receive")
        if self._i < len(self._mv):
            raise RuntimeError("receive() called before next_event() consumed the previous data")
        if not isinstance(mv, memoryview):
            mv = memoryview(mv)
        self._base += len(self._mv)
        self._mv = mv
        self._i = 0
        over = self._base + len(mv) - self._ends[0]
        if over > 0:
            self._fail(ProtoError("%d bytes received beyond the %d-byte %s" % (
                over, self._ends[0], self._root[_S_NAME])))

    def _packet_left(self):
        """Bytes of the packet after the big field being read (known at its first piece)."""
        return self._ends[0] - self._base - self._i - self._left

    def _fail(self, e):
        self._err = e
        self._mv = _EMPTY
        self._i = 0
        raise e

    def next_event(self):
        if self._err is not None:
            raise self._err
        if self._st == _ST_IDLE:
            raise RuntimeError("PacketDecoder.%s() before start()" % "next_event")
        try:
            return self._run()
        except ProtoError as e:
            self._fail(e)

    def _run(self):
        mv = self._mv
        n = len(mv)
        while True:
            st = self._st
            i = self._i
            if st <= _ST_VARINT:
                d = self._d
                if self._base + i >= self._ends[d]:
                    if st != _ST_TAG or self._shift:
                        if d:
                            raise ProtoError("a varint runs past the end of %s" % self._where())
                        raise ProtoError("truncated %s: a varint is cut off at byte %d" % (
                            self._root[_S_NAME], self._ends[0]))
                    if not d:
                        self._st = _ST_DONE
                        return (PACKET, self.msg)
                    # the level ends: a map entry goes into its map, then back up
                    if self._kind[d] == _L_MAP and None not in self._msgs[d]:
                        entry = self._msgs[d]
                        parent = self._msgs[d - 1]
                        name = self._sch[d - 1][_S_NAMES + self._pj[d]]
                        m = parent.get(name)
                        if m is None:
                            m = parent[name] = {}
                        m[entry.get("key", "")] = entry.get("value", "")
                    self._msgs[d] = None
                    self._d = d - 1
                    continue
                if i >= n:
                    break
                b = mv[i]
                self._i = i + 1
                if b < 0x80 and not self._shift:
                    v = b
                else:  # a byte of a longer varint
                    shift = self._shift
                    if shift == 63 and b > 1:
                        if b & 0x80:
                            raise ProtoError("varint longer than 10 bytes in %s" % self._where())
                        b &= 1   # bits past 64 are dropped, as official parsers do
                    self._v |= (b & 0x7F) << shift
                    if b & 0x80:
                        if shift == 28 and st != _ST_VARINT and self._kind[d] != _L_PACKED:
                            # tags and lengths: at most 5 bytes, as official parsers read them
                            raise ProtoError("%s varint longer than 5 bytes in %s" % (
                                "tag" if st == _ST_TAG else "length", self._where()))
                        self._shift = shift + 7
                        continue
                    v = self._v
                    self._v = 0
                    self._shift = 0
                if st == _ST_TAG:
                    self._on_tag(v)
                elif st == _ST_LEN:
                    self._field_body(v)
                else:
                    self._st = _ST_TAG
                    j = self._j
                    if j >= 0:
                        self._set(j, _from_varint(self._sch[d][_S_SPEC][3 * j + 2] & _TYPE, v))
            elif st == _ST_BIG:
                left = self._left
                take = n - i
                if take >= left:
                    take = left
                elif not take:
                    break
                ev = self._piece
                ev[1] = self._big
                # the received memoryview itself when the piece spans all of it: no slice
                ev[2] = mv if (take == n and not i) else mv[i:i + take]
                self._i = i + take
                self._left = left = left - take
                ev[3] = not left
                if not left:
                    self._st = _ST_TAG
                return ev
            elif st == _ST_SKIP or st == _ST_VALUE:
                if i >= n:
                    break
                take = min(self._left, n - i)
                if st == _ST_VALUE:
                    self._val[self._vi:self._vi + take] = mv[i:i + take]
                    self._vi += take
                self._i = i + take
                self._left -= take
                if not self._left:
                    self._st = _ST_TAG
                    if st == _ST_VALUE:
                        val = self._val
                        self._val = None
                        self._set_data(val)
            else:  # _ST_DONE
                return NEED_DATA
        # all of mv is consumed
        self._base += n
        self._mv = _EMPTY    # do not pin the caller's buffer
        self._i = 0
        return NEED_DATA

    def _where(self):
        d = self._d
        sc = self._sch[d]
        if self._kind[d] == _L_PACKED:
            return "packed field " + _fname(sc, self._pj[d])
        return sc[_S_NAME]

    def _on_tag(self, v):
        d = self._d
        sc = self._sch[d]
        spec = sc[_S_SPEC]
        if self._kind[d] == _L_PACKED:  # an element, not a tag
            j = self._pj[d]
            self._set(j, _from_varint(spec[3 * j + 2] & _TYPE, v))
            return
        num = v >> 3
        wt = v & 7
        if not num or num > 0x1FFFFFFF:
            raise ProtoError("field number %d in %s is out of range [1, 2**29 - 1]" % (num, sc[_S_NAME]))
        k = 3 * spec[0] + 1 + num
        j = spec[k] - 1 if k < len(spec) else -1
        if j >= 0:
            fl = spec[3 * j + 2]
            t = fl & _TYPE
            if t == _T_SKIP:  # all skipped cases are messages: only wire type 2 counts
                if wt == 2:
                    _clear_oneof(sc, j, self._msgs[d])
                j = -1
            elif wt != (2 if t >= _T_STRING else 0) and not (wt == 2 and fl & _F_PACKED):
                j = -1  # a wrong wire type: official parsers keep it as an unknown field
        if j < 0 and self._kind[d] == _L_MAP:
            # A map entry with an unknown field is kept by official parsers as unknown
            # bytes of the parent, not put into the map: mark it to be left out.
            self._msgs[d][None] = 1
        self._j = j
        self._num = num
        if wt == 0:
            self._st = _ST_VARINT
        elif wt == 2:
            self._st = _ST_LEN
        elif wt == 1 or wt == 5:
            self._field_body(8 if wt == 1 else 4)   # j is -1 here: the bytes are skipped
        else:
            raise ProtoError("field %d of %s has wire type %d (groups are not supported)" % (num, sc[_S_NAME], wt))

    def _field_body(self, n):
        """The next n bytes are the value of field self._j (skipped if -1)."""
        d = self._d
        j = self._j
        sc = self._sch[d]
        left = self._ends[d] - self._base - self._i
        if n > left:   # a field must end within the message that holds it
            name = "field %d" % self._num
            if j >= 0:
                name += " (%s)" % sc[_S_NAMES + j]
            if not d:
                raise ProtoError("truncated %s: %s needs %d bytes, %d left" % (self._root[_S_NAME], name, n, left))
            raise ProtoError("%s of %s is %d bytes long, overrunning its parent (%d bytes left)" % (
                name, self._where(), n, left))
        if j < 0:
            self._left = n
            self._st = _ST_SKIP if n else _ST_TAG
            return
        spec = sc[_S_SPEC]
        o = 3 * j + 1
        fl = spec[o + 1]
        t = fl & _TYPE
        msg = self._msgs[d]
        end = self._base + self._i + n
        if t == _T_MSG:
            _clear_oneof(sc, j, msg)
            name = sc[_S_NAMES + j]
            sub = msg.get(name)
            if sub is None:  # a second occurrence merges into the first, as in protobuf
                sub = msg[name] = {}
            self._push(sc[spec[o + 2]], sub, end, j, _L_MSG)
        elif t == _T_MAP:
            self._push(_MAP_ENTRY, {}, end, j, _L_MAP)
        elif fl & _F_PACKED:
            self._push(sc, msg, end, j, _L_PACKED)
        elif spec[o + 2] and self._pieces:
            _clear_oneof(sc, j, msg)
            self._big = spec[o + 2]
            self._left = n
            self.big_len = n  # lets a consumer that gathers the field allocate it once
            self._st = _ST_BIG
        else:  # a small string/bytes value: taken from mv when whole, else gathered
            if self.max_field is not None and n > self.max_field:
                raise ProtoError("%s is %d bytes, over the %d-byte limit for small fields" % (
                    _fname(sc, j), n, self.max_field))
            i = self._i
            self._st = _ST_TAG
            if i + n <= len(self._mv):
                self._i = i + n
                self._set_data(self._mv[i:i + n])
            else:
                self._val = bytearray(n)
                self._vi = 0
                self._left = n
                self._st = _ST_VALUE

    def _set_data(self, data):
        self._held += len(data)
        j = self._j
        sc = self._sch[self._d]
        if sc[_S_SPEC][3 * j + 2] & _TYPE != _T_STRING:
            self._set(j, bytes(data))
            return
        try:
            s = text(data)
        except UnicodeError:
            raise ProtoError("%s is not valid UTF-8" % _fname(sc, j))
        self._set(j, s)

    def _set(self, j, v):
        self._held += 32
        if self.max_values is not None and self._held > self.max_values:
            raise ProtoError("%s holds over %d bytes of small values (max_values; 32 more per value)"
                             % (self._root[_S_NAME], self.max_values))
        d = self._d
        sc = self._sch[d]
        msg = self._msgs[d]
        fl = sc[_S_SPEC][3 * j + 2]
        name = sc[_S_NAMES + j]
        if fl & _F_REP:
            lst = msg.get(name)
            if lst is None:
                lst = msg[name] = []
            lst.append(v)
        elif not v and not fl & _F_PRES:
            # a default value on the wire reads as "not present" (0, "", b"", False),
            # and clears an earlier occurrence, as in official parsers
            if name in msg:
                del msg[name]
        else:
            _clear_oneof(sc, j, msg)
            msg[name] = v

    def _push(self, sc, msg, end, j, kind):
        d = self._d + 1
        if d >= _MAX_DEPTH:
            raise ProtoError("messages nested deeper than %d levels" % _MAX_DEPTH)
        self._sch[d] = sc
        self._msgs[d] = msg
        self._ends[d] = end
        self._pj[d] = j
        self._kind[d] = kind
        self._d = d
        self._st = _ST_TAG


def __getattr__(name):
    """The relay-side names (lkedge.relayside), loaded on first use: a board never does."""
    if name in "encode decode scan_fields decode_packet".split():
        from . import relayside
        return getattr(relayside, name)
    raise AttributeError(name)
