"""LINK.md frames without I/O: encode, incremental reading, control-map validation.

    frame = varint(n) , type , body        n = 1 + len(body), varint as in protobuf

API (docs/internals.md, with the details fixed here):

- `put_frame_header(buf, type, body_len) -> n` writes the varint and the type byte
  into buf[:n] (n <= 6); a DATA body is streamed after it. Whole frames,
  `encode_frame(type, body) -> bytes` and `frame_header(type, body_len) -> bytes`, are
  what hosts write: they live in lkedge.relayside and are answered here too.
- `decode_control(body, max_values=None) -> dict`: the CBOR map of a control body,
  checked to be a map with text keys. With max_values (RoomOptions.max_values), each
  participant map (a PARTICIPANT body, each entry of JOINED's "participants") is
  budgeted while it is decoded, as a DataPacket is: if its values would take over
  max_values bytes, counting 32 more per value, its "attributes" are not built and
  read as `cbor.DROPPED` (cbor.loads' drop): thousands of tiny attributes cost a board
  the frame's bytes, not ~15 times as much in objects. The rest of that map, and every
  other map of the frame, reads whole.
- Validators of the LINK.md maps a participant receives; each returns a NEW normalised
  dict holding only the LINK.md keys (unknown keys are ignored) and raises `LinkError`
  naming the key on a missing required key or a wrong type: `check_joined(d)` (its
  "participants" normalised by `participant_info`), `participant_info(d)` (for
  PARTICIPANT and JOINED entries: missing client_protocol → 0, capabilities → [],
  attributes → {}; attributes that decode_control dropped → {} and the extra key
  "attributes_dropped": True; its optional second argument names the map in errors).
  "v" must equal `LINK_VERSION`. Required: JOINED v, room, identity, sid, max_frame
  (>= 1); participant identity, sid. Optional text fields default to ""
  (server_version), participants to []. Text fields are `str`; ints are non-negative,
  never bool.
- What only a relay needs lives in lkedge.relayside, which a board never imports:
  `type_name`, `encode_control`, `check_join`, `check_participant_left`, `check_leave`
  (this module still answers those names, loading relayside on first use).
- `FrameReader(max_frame, max_control=None, grow=False)`, sans-I/O. `receive(mv)` keeps a reference
  to mv (copies nothing); call it only after `next_event()` returned `NEED_DATA`
  (else RuntimeError: the caller's mistake, not the peer's). Event kinds are the ints
  `NEED_DATA` (0), `FRAME`, `DATA_START`, `DATA_PIECE`, `DATA_END`.
  `next_event()` returns:
    `NEED_DATA`;
    `(FRAME, type, body)` for every known non-DATA type (body is bytes-like: `bytes`,
      or the `bytearray` it was gathered in across reads; buffered whole; type byte +
      body may not exceed `max_control`, default `max_frame`;
      PING/PONG bodies may not exceed 64 bytes; the body's buffer is allocated once at
      its header, or with grow=True as its bytes arrive, so that what a peer that has
      not authenticated makes a relay hold follows what it sent, not what it announced);
    `(DATA_START, body_len)`, then `[DATA_PIECE, mv]` events, then `(DATA_END,)` for
      DATA frames, whose bodies are never buffered: each mv is the received memoryview
      itself when the piece spans all of it, else a slice of it, valid until the next
      call. The DATA_PIECE event is ONE reused 2-item list (not a tuple) so the hot path
      allocates nothing: unpack it (`kind, mv = ev`) and do not keep it.
  Frames of unknown types are skipped without buffering and without an event.
  `max_frame` bounds n (the type byte plus the body) for every frame, and is checked as
  soon as the length varint ends. `LinkError` for: a length varint longer than 5 bytes,
  n = 0, n > max_frame, a control frame over max_control, a PING/PONG body over
  `MAX_PING_BODY` (64). The stream cannot be resynchronised after that: the reader
  keeps raising the same error (a relay answers LEAVE 4 and closes). `between_frames`
  is True when no partial frame is pending (so the transport closing then is a clean
  end, otherwise a truncated frame). A participant's reader takes the relay's DATA
  frames up to JOINED's max_frame plus `STAMP_ROOM` (512 bytes: the sender stamp).
"""
from . import cbor

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

LINK_VERSION = const(1)

JOIN = const(0x01)
JOINED = const(0x02)
PARTICIPANT = const(0x03)
PARTICIPANT_LEFT = const(0x04)
LEAVE = const(0x05)
PING = const(0x06)
PONG = const(0x07)
DATA = const(0x10)

LEAVE_CLIENT = const(1)
LEAVE_DUPLICATE = const(2)
LEAVE_UNAUTHORIZED = const(3)
LEAVE_PROTOCOL = const(4)
LEAVE_SHUTDOWN = const(5)
LEAVE_IDLE = const(6)
LEAVE_FORBIDDEN = const(7)
# After these a participant does not rejoin by itself: a new JOIN would get the same
# answer (another connection took the identity, the token is refused or forbids data)
# or the participant left on purpose.
FINAL_LEAVE = (LEAVE_CLIENT, LEAVE_DUPLICATE, LEAVE_UNAUTHORIZED, LEAVE_FORBIDDEN)

MAX_PING_BODY = const(64)
# The relay takes DATA frames up to the max_frame JOINED announces and forwards them
# with the sender's identity and sid stamped in front: a frame from the relay may be
# longer than max_frame by at most this much (the relay refuses a DATA frame whose
# stamp would need more).
STAMP_ROOM = const(512)

# FrameReader events (first item of the event tuple; NEED_DATA is returned bare)
NEED_DATA = const(0)
FRAME = const(1)
DATA_START = const(2)
DATA_PIECE = const(3)
DATA_END = const(4)

_MAX_VARINT_BYTES = const(5)
_ST_LEN = const(0)     # reading the length varint
_ST_TYPE = const(1)    # reading the type byte
_ST_DATA = const(2)    # handing out a DATA body as pieces
_ST_CTRL = const(3)    # buffering a control body
_ST_SKIP = const(4)    # skipping the body of an unknown type

# the control types JOIN..PONG are 1..7, named by _CONTROL_NAMES[t - 1]
_CONTROL_NAMES = ("JOIN", "JOINED", "PARTICIPANT", "PARTICIPANT_LEFT", "LEAVE", "PING", "PONG")
_END_EVENT = (DATA_END,)
_EMPTY = memoryview(b"")


class LinkError(ValueError):
    """A malformed frame or control map from the peer (the relay answers LEAVE 4)."""


# ---------------------------------------------------------------- writing

def put_frame_header(buf, type, body_len):
    """frame_header() written at the start of buf (6 bytes at most); returns its length."""
    if not 0 <= type <= 0xff:
        raise ValueError("frame type %d is not a byte" % type)
    n = 1 + body_len
    if body_len < 0 or n >> 32:   # no 0xffffffff literal: a big int on a 32-bit board
        raise ValueError("frame body length %d out of range" % body_len)
    i = 0
    while n >= 0x80:
        buf[i] = (n & 0x7f) | 0x80
        n >>= 7
        i += 1
    buf[i] = n
    buf[i + 1] = type
    return i + 2


# ---------------------------------------------------------------- reading

class FrameReader:
    def __init__(self, max_frame, max_control=None, grow=False):
        self.max_frame = max_frame
        self.max_control = max_frame if max_control is None else max_control
        self._grow = grow
        self._mv = _EMPTY
        self._pos = 0
        self._type = 0
        self._left = 0       # body bytes still to hand out / buffer / skip
        self._buf = None     # control body being buffered
        self._error = None
        self._piece = [DATA_PIECE, _EMPTY]   # the reused DATA_PIECE event
        self._next_frame()   # _state, _n (the length varint so far, then n), _shift

    @property
    def between_frames(self):
        return self._state == _ST_LEN and self._shift == 0

    def receive(self, mv):
        if self._error is not None:
            raise self._error
        if self._pos < len(self._mv):
            raise RuntimeError("receive() called before next_event() consumed the previous data")
        self._mv = mv if isinstance(mv, memoryview) else memoryview(mv)
        self._pos = 0

    def next_event(self):
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except LinkError as e:
            self._error = e
            self._mv = _EMPTY
            self._buf = None
            raise

    def _next(self):
        mv = self._mv
        end = len(mv)
        while True:
            st = self._state
            pos = self._pos
            if st == _ST_DATA:
                left = self._left
                if not left:
                    self._next_frame()
                    return _END_EVENT
                if pos >= end:
                    break
                if left >= end - pos:
                    take = end - pos
                    piece = mv if pos == 0 else mv[pos:]   # whole buffer: no new memoryview
                else:
                    take = left
                    piece = mv[pos:pos + take]
                self._pos = pos + take
                self._left = left - take
                ev = self._piece
                ev[1] = piece
                return ev
            if pos >= end:
                break
            if st == _ST_LEN:
                b = mv[pos]
                self._pos = pos + 1
                if self._shift == 7 * (_MAX_VARINT_BYTES - 1) and b & 0x80:
                    raise LinkError("frame length varint longer than %d bytes" % _MAX_VARINT_BYTES)
                self._n |= (b & 0x7f) << self._shift
                self._shift += 7
                if not b & 0x80:
                    n = self._n
                    if n == 0:
                        raise LinkError("zero-length frame (n = 0: every frame has a type byte)")
                    if n > self.max_frame:
                        raise LinkError("frame of %d bytes (type + body) exceeds max_frame %d"
                                        % (n, self.max_frame))
                    self._state = _ST_TYPE
            elif st == _ST_TYPE:
                self._pos = pos + 1
                ev = self._start_body(mv[pos])
                if ev is not None:
                    return ev
            else:  # _ST_CTRL: buffering a control body; _ST_SKIP: skipping an unknown one
                left = self._left
                take = min(left, end - pos)
                if st == _ST_CTRL:
                    buf = self._buf
                    if self._grow:
                        buf.extend(mv[pos:pos + take])
                    else:
                        start = len(buf) - left
                        buf[start:start + take] = mv[pos:pos + take]
                self._pos = pos + take
                self._left = left - take
                if take == left:
                    self._next_frame()
                    if st == _ST_CTRL:
                        self._buf = None
                        # the buffer itself, not a bytes copy: a second block of the
                        # frame's size (14 KiB for a participant's attributes) at once
                        # was what a fragmented board's heap lacked
                        return (FRAME, self._type, buf)
        self._mv = _EMPTY     # all of mv is consumed: do not pin the caller's buffer
        self._pos = 0
        return NEED_DATA

    def _start_body(self, t):
        self._type = t
        body_len = self._n - 1
        self._left = body_len
        if t == DATA:
            self._state = _ST_DATA
            return (DATA_START, body_len)
        if not JOIN <= t <= PONG:
            self._state = _ST_SKIP
            if not body_len:
                self._next_frame()
            return None
        if self._n > self.max_control:
            raise LinkError("%s frame of %d bytes (type + body) exceeds max_control %d"
                            % (_CONTROL_NAMES[t - 1], self._n, self.max_control))
        if (t == PING or t == PONG) and body_len > MAX_PING_BODY:
            raise LinkError("%s body of %d bytes exceeds %d" % (_CONTROL_NAMES[t - 1], body_len, MAX_PING_BODY))
        pos = self._pos
        if len(self._mv) - pos >= body_len:
            # the whole body is here: copy it once, no staging buffer
            self._pos = pos + body_len
            self._next_frame()
            return (FRAME, t, bytes(self._mv[pos:pos + body_len]))
        self._state = _ST_CTRL
        self._buf = bytearray() if self._grow else bytearray(body_len)
        return None

    def _next_frame(self):
        self._state = _ST_LEN
        self._n = 0
        self._shift = 0


# ---------------------------------------------------------------- control maps

def _tname(x):
    return type(x).__name__


def decode_control(body, max_values=None, max_attributes=None):
    """The CBOR map of a control frame body; LinkError if not a map with text keys.
    With max_values, a participant map over it gets cbor.DROPPED for its attributes;
    with max_attributes, so do the participants past it, all of the frame together."""
    try:
        d = cbor.loads(body, max_values, "attributes", max_attributes)
    except cbor.CBORError as e:
        raise LinkError("control body is not valid CBOR: %s" % e)
    if not isinstance(d, dict):
        raise LinkError("control body must be a CBOR map, got %s" % _tname(d))
    for k in d:
        if not isinstance(k, str):
            raise LinkError("control map key %r is not a text string" % (k,))
    return d


_REQUIRED = object()


def _is_int(x):
    # bool is an int subclass on CPython (not on MicroPython): refuse it on both
    return isinstance(x, int) and not isinstance(x, bool)


def _get(d, what, key, kind, default=_REQUIRED):
    """d[key], or default when absent, checked to be of `kind`: "int" (non-negative),
    "text", "ints" (an array of non-negative integers), "map" (text to text), None
    (anything). Arrays and maps come back as copies. LinkError naming `what` (the map)
    and the key otherwise."""
    if not isinstance(d, dict):
        raise LinkError("%s must be a map, got %s" % (what, _tname(d)))
    if key in d:
        v = d[key]
    elif default is _REQUIRED:
        raise LinkError('%s: missing key "%s"' % (what, key))
    else:
        v = default
    if kind == "int":
        if _is_int(v) and v >= 0:
            return v
        expected = "a non-negative integer"
    elif kind == "text":
        if isinstance(v, str):
            return v
        expected = "a text string"
    elif kind == "ints":
        if not isinstance(v, list):
            expected = "an array of integers"
        else:
            for x in v:
                if not _is_int(x) or x < 0:
                    raise LinkError('%s: key "%s" must be an array of non-negative integers '
                                    '(an item), got %s' % (what, key, _tname(x)))
            return list(v)
    elif kind == "map":
        if not isinstance(v, dict):
            expected = "a map of text to text"
        else:
            for k in v:
                if not isinstance(k, str) or not isinstance(v[k], str):
                    raise LinkError('%s: key "%s" must map text to text, has %r: %r'
                                    % (what, key, k, v[k]))
            return dict(v)
    else:
        return v
    raise LinkError('%s: key "%s" must be %s, got %s' % (what, key, expected, _tname(v)))


def _version(d, what):
    v = _get(d, what, "v", "int")
    if v != LINK_VERSION:
        raise LinkError("%s: link version %d not supported (this side speaks %d)"
                        % (what, v, LINK_VERSION))
    return v


def participant_info(d, what="PARTICIPANT"):
    out = {"identity": _get(d, what, "identity", "text"), "sid": _get(d, what, "sid", "text"),
           "client_protocol": _get(d, what, "client_protocol", "int", 0),
           "capabilities": _get(d, what, "capabilities", "ints", []), "attributes": {}}
    if d.get("attributes") is cbor.DROPPED:   # over max_values (decode_control)
        out["attributes_dropped"] = True
    else:
        out["attributes"] = _get(d, what, "attributes", "map", {})
    return out


def check_joined(d):
    w = "JOINED"
    out = {"v": _version(d, w), "room": _get(d, w, "room", "text"),
           "identity": _get(d, w, "identity", "text"), "sid": _get(d, w, "sid", "text"),
           "server_version": _get(d, w, "server_version", "text", "")}
    mf = _get(d, w, "max_frame", "int")
    if mf < 1:
        raise LinkError('JOINED: key "max_frame" must be at least 1, got %d' % mf)
    out["max_frame"] = mf
    ps = _get(d, w, "participants", None, [])
    if not isinstance(ps, list):
        raise LinkError('JOINED: key "participants" must be an array of participant maps, got %s'
                        % _tname(ps))
    out["participants"] = [participant_info(p, "JOINED participant") for p in ps]
    return out


def __getattr__(name):
    """The relay-side names (lkedge.relayside), loaded on first use: a board never does."""
    if name in "frame_header encode_frame type_name encode_control check_join check_participant_left check_leave".split():
        from . import relayside
        return getattr(relayside, name)
    raise AttributeError(name)
