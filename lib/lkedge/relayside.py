"""The relay's side of the codecs: what only a relay (host_tools/relay, lkedge.memroom)
and host tools use. A board never imports this module, so none of it costs a board
heap; lkedge.proto and lkedge.link still answer these names as attributes (their
module `__getattr__` loads this module on first use).

From lkedge.proto:
- `scan_fields(data) -> [(number, wire_type, field_start, value_start, end)]`: the
  top-level fields of a message, not decoded; value_start is after the length prefix
  for wire type 2, after the tag otherwise. ProtoError on a truncated or malformed walk.
- `decode_packet(data) -> dict` = proto.decode(DATA_PACKET, data): big fields included.
- `encode(schema, msg) -> bytes` and `decode(schema, data) -> dict`: whole messages
  (a board writes with encode_segments and reads with PacketDecoder).

From lkedge.link:
- `frame_header(type, body_len) -> bytes`, `encode_frame(type, body) -> bytes`: whole
  frames (a board writes its frames with put_frame_header into its send buffer).
- `type_name(t)` names a frame type for logs ("JOIN", ..., "type 0x42").
- `encode_control(type, mapping) -> bytes`: a whole control frame whose body is
  `cbor.dumps(mapping)`.
- Validators of the maps a relay receives, like link.check_joined (a NEW normalised
  dict, only the LINK.md keys, LinkError naming the key): `check_join(d)` (required v,
  token; client_protocol → 0, capabilities → [], sdk and sdk_version → ""; at most
  MAX_CAPABILITIES capabilities, int32 values, MAX_SDK_TEXT characters of sdk texts),
  `check_participant_left(d)` (required identity; reason → ""), `check_leave(d)`
  (required code; reason → ""). A negative integer is named by its value.
"""
from . import cbor, link, proto
from .link import _get, _is_int, _tname, _version


# ---------------------------------------------------------------- proto

def _read_varint(mv, i, end, what=None):
    """(value, next index). `what` names a tag or length, which official parsers take
    in at most 5 bytes (values: 10)."""
    v = 0
    shift = 0
    while True:
        if i >= end:
            raise proto.ProtoError("truncated message: a varint is cut off at byte %d" % end)
        b = mv[i]
        i += 1
        if shift == 28 and what and b & 0x80:
            raise proto.ProtoError("%s varint longer than 5 bytes at byte %d" % (what, i - 5))
        if shift == 63 and b > 1:
            if b & 0x80:
                raise proto.ProtoError("varint longer than 10 bytes at byte %d" % (i - 1))
            b &= 1
        v |= (b & 0x7F) << shift
        if not b & 0x80:
            return v, i
        shift += 7


def scan_fields(data):
    """Top-level fields of a message, not decoded: [(number, wire_type, field_start,
    value_start, end)], value_start after the length prefix for wire type 2.
    One-byte tags and lengths (nearly all of them) are read inline: a relay scans every
    DATA it forwards, and a frame of tiny fields must not cost much more than one of a
    single big field."""
    mv = data if isinstance(data, memoryview) else memoryview(data)
    end = len(mv)
    out = []
    append = out.append
    i = 0
    while i < end:
        start = i
        tag = mv[i]
        if tag < 0x80:
            i += 1
        else:
            tag, i = _read_varint(mv, i, end, "tag")
        num = tag >> 3
        wt = tag & 7
        if not num or num > 0x1FFFFFFF:
            raise proto.ProtoError("field number %d at byte %d is out of range [1, 2**29 - 1]" % (num, start))
        if wt == 2:
            if i < end and mv[i] < 0x80:
                n = mv[i]
                vstart = i + 1
            else:
                n, vstart = _read_varint(mv, i, end, "length")
            i = vstart + n
        elif wt == 0:
            vstart = i
            if i < end and mv[i] < 0x80:
                i += 1
            else:
                i = _read_varint(mv, i, end)[1]
        elif wt == 1 or wt == 5:
            vstart = i
            i += 8 if wt == 1 else 4
        else:
            raise proto.ProtoError("field %d at byte %d has wire type %d (groups are not supported)" % (num, start, wt))
        if i > end:
            raise proto.ProtoError("truncated message: field %d at byte %d needs %d bytes, %d left" % (
                num, start, i - vstart, end - vstart))
        append((num, wt, start, vstart, i))
    return out


def encode(schema, msg):
    """The serialized message, byte-identical to SerializeToString(deterministic=True)
    (a board sends with proto.encode_segments instead, never holding a big value twice)."""
    segs = proto.encode_segments(schema, msg)
    if len(segs) == 1 and isinstance(segs[0], bytes):
        return segs[0]
    out = bytearray()
    for s in segs:
        if not isinstance(s, proto._BYTES_LIKE):
            raise ValueError("%s holds a Blob: use encode_segments()" % schema[0])   # the name
        out += s
    return bytes(out)


def decode(schema, data):
    """A whole message from bytes-like data, big fields included as values (a board
    reads packets piece by piece with proto.PacketDecoder instead)."""
    dec = proto.PacketDecoder(None)
    dec._root = schema
    dec._pieces = False
    dec.start(len(data))
    dec.receive(data)
    return dec.next_event()[1]   # all bytes were given: PACKET, or a ProtoError


def decode_packet(data):
    """A whole DataPacket (host side, tests): big fields included as values."""
    return decode(proto.DATA_PACKET, data)


# ---------------------------------------------------------------- link

def type_name(t):
    if t == link.DATA:
        return "DATA"
    if link.JOIN <= t <= link.PONG:
        return link._CONTROL_NAMES[t - 1]
    return "type 0x%02x" % t


def encode_control(type, mapping):
    """A whole control frame whose body is the CBOR encoding of mapping."""
    if type == link.DATA:
        raise ValueError("DATA frames carry a DataPacket, not a control map")
    if not isinstance(mapping, dict):
        raise ValueError("a control body must be a dict, got %s" % _tname(mapping))
    return encode_frame(type, cbor.dumps(mapping))


def frame_header(type, body_len):
    """varint(1 + body_len) followed by the type byte."""
    out = bytearray(6)
    return bytes(out[:link.put_frame_header(out, type, body_len)])


def encode_frame(type, body):
    """A whole frame (a board streams its frames through sender.PacketSender instead)."""
    return frame_header(type, len(body)) + bytes(body)


# What a JOIN may claim about itself. The relay repeats client_protocol and capabilities
# to everyone in the room (PARTICIPANT, JOINED), so they must stay small enough for a
# board's control-frame buffer; both are int32 in LiveKit's ParticipantInfo.
MAX_CAPABILITIES = 16
MAX_SDK_TEXT = 128
_INT32_MAX = 0x7FFFFFFF


def _negative(d, what, key, array=False):
    """LinkError naming the value when d[key] (or, with array, an item of it) is a
    negative integer: link._get says only "got int" for those."""
    v = d.get(key) if isinstance(d, dict) else None
    items = v if array and isinstance(v, list) else [v]
    for i, x in enumerate(items):
        if _is_int(x) and x < 0:
            raise link.LinkError('%s: key "%s" must be %s, got %d%s' % (
                what, key, "an array of non-negative integers" if array else
                "a non-negative integer", x, " (item %d)" % i if array else ""))


def check_join(d):
    w = "JOIN"
    _negative(d, w, "client_protocol")
    _negative(d, w, "capabilities", array=True)
    out = {"v": _version(d, w), "token": _get(d, w, "token", "text"),
           "client_protocol": _get(d, w, "client_protocol", "int", 0),
           "capabilities": _get(d, w, "capabilities", "ints", []),
           "sdk": _get(d, w, "sdk", "text", ""), "sdk_version": _get(d, w, "sdk_version", "text", "")}
    caps = out["capabilities"]
    if len(caps) > MAX_CAPABILITIES:
        raise link.LinkError('JOIN: key "capabilities" has %d items, at most %d'
                             % (len(caps), MAX_CAPABILITIES))
    for key, v in (("client_protocol", out["client_protocol"]),
                   ("capabilities", max(caps) if caps else 0)):
        if v > _INT32_MAX:
            raise link.LinkError('JOIN: key "%s" holds %d, over the int32 maximum %d'
                                 % (key, v, _INT32_MAX))
    for key in ("sdk", "sdk_version"):
        if len(out[key]) > MAX_SDK_TEXT:
            raise link.LinkError('JOIN: key "%s" is %d characters, at most %d'
                                 % (key, len(out[key]), MAX_SDK_TEXT))
    return out


def check_participant_left(d):
    w = "PARTICIPANT_LEFT"
    return {"identity": _get(d, w, "identity", "text"), "reason": _get(d, w, "reason", "text", "")}


def check_leave(d):
    w = "LEAVE"
    _negative(d, w, "code")
    return {"code": _get(d, w, "code", "int"), "reason": _get(d, w, "reason", "text", "")}
