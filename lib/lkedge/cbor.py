"""The CBOR subset of the link (RFC 8949), for LINK.md control maps and telemetry.

    dumps(obj) -> bytes        loads(data, max_values=None, drop=None) -> obj
    CBORError(ValueError)      DROPPED

Decoding takes any well-formed CBOR (RFC 8949) whose map keys are hashable:
integers up to 64 bits (major types 0, 1), byte and text strings (2, 3), arrays (4) and
maps (5), definite or indefinite length (string chunks are joined), tags (6: the tagged
item is returned, the tag number dropped), false/true/null and floats; `undefined` and
the unassigned simple values read as None. So a control map whose unknown keys hold
anything still reads (LINK.md: unknown keys are ignored). Refused with a `CBORError`
naming what was met and where: what is not well-formed (reserved additional-info
values, a stray break byte, an indefinite-length integer or tag, a string chunk of
another type, truncated input, trailing bytes after the top-level item, invalid UTF-8),
unhashable or duplicate map keys, nesting (arrays, maps, tags) deeper than
`MAX_DEPTH`. Every length is checked against the bytes still unread before anything is
allocated, so a 4 GiB claim in a 10-byte input fails at once.

A values budget, optional (without one, nothing is measured or dropped):
`loads(data, max_values, drop, max_total=None)` bounds what a map holding the key
`drop` may make in memory, and with max_total what all the values of `drop` in `data`
make together (each value that would pass what is left of it is dropped, whatever its
map costs; link: the attributes of all participants a JOINED frame lists). When that key is met, the whole map is measured first by walking its bytes
and keeping nothing (text is still decoded to check it, as garbage): the bytes of its
strings plus 32 per value (the map itself, its keys, nested containers and their
items), the accounting of proto's max_values; the walk stops as soon as the total
passes max_values. If it does, the value of `drop` is not built but walked
(well-formed CBOR and valid UTF-8 are required as ever; its map keys are not checked
for being hashable or repeated) and reads as `DROPPED`; the map's other keys are
decoded as usual. A map that fits is not measured again inside that value, so nesting
costs at most one extra walk. Indefinite-length strings are gathered into one buffer,
never held as a list of chunk objects. Each map holding the key is measured on its
own (LINK.md: one budget per participant map, which a JOINED frame nests in its
"participants" array), so a frame of many small maps is not refused for its total,
and a map over budget costs its other keys, not thousands of tiny objects (~15 times
their wire size in heap on a board).

Encoding is canonical for lengths and integers (shortest argument form) and keeps the
insertion order of dicts, so for these types `dumps(x) == cbor2.dumps(x)`. Floats are
always written as float64 (0xfb); cbor2 does the same for finite floats but writes
NaN and +/-Infinity as float16 (f97e00, f97c00, f9fc00) — the one byte-level
difference; both decode to the same values. bytearray/memoryview encode as byte
strings and tuples as arrays (decoded back as bytes and list). MicroPython dicts do
not keep insertion order, so there a multi-key map's keys come out in the dict's own
iteration order (still valid CBOR; the link never depends on key order).

Non-shortest arguments are well-formed and read. Map keys come back as decoded (the link
uses text keys; link.decode_control checks); a key that repeats is refused rather than
silently overwritten. The encoder writes only the types listed above, definite lengths.
"""
import struct

from .utf8 import text

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

MAX_DEPTH = const(16)   # arrays/maps nested deeper than this are refused (stack safety)

# for error messages: _MAJOR_NAMES.split(",")[major] (one string costs less RAM than eight)
_MAJOR_NAMES = "unsigned integer,negative integer,byte string,text string,array,map,tag,simple/float"


class CBORError(ValueError):
    """Malformed or unsupported CBOR, or an object that cannot be encoded."""


# ---------------------------------------------------------------- encoding

def _head(out, major, n):
    """Append the shortest initial byte + argument for `major` and value n."""
    mt = major << 5
    if n < 24:
        out.append(mt | n)
    elif n < 0x100:
        out.append(mt | 24)
        out.append(n)
    elif n < 0x10000:
        out.extend(struct.pack(">BH", mt | 25, n))
    elif not n >> 32:   # n < 2**32 (no big-int literal held in RAM on a 32-bit board)
        out.extend(struct.pack(">BI", mt | 26, n))
    else:
        out.extend(struct.pack(">BQ", mt | 27, n))


def _encode(out, obj, depth):
    # bool first: on CPython bool is an int subclass
    if obj is None:
        out.append(0xf6)
    elif obj is True:
        out.append(0xf5)
    elif obj is False:
        out.append(0xf4)
    elif isinstance(obj, int):
        n = obj if obj >= 0 else -1 - obj   # major type 0, or 1 for negatives
        if n >> 64:
            raise CBORError("integer %d does not fit in 64 bits" % obj)
        _head(out, 0 if obj >= 0 else 1, n)
    elif isinstance(obj, str):
        b = obj.encode("utf-8")
        _head(out, 3, len(b))
        out.extend(b)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        _head(out, 2, len(obj))
        out.extend(obj)
    elif isinstance(obj, float):
        out.extend(struct.pack(">Bd", 0xfb, obj))
    elif isinstance(obj, (list, tuple)):
        if depth >= MAX_DEPTH:
            raise CBORError("cannot encode: nesting deeper than %d" % MAX_DEPTH)
        _head(out, 4, len(obj))
        for item in obj:
            _encode(out, item, depth + 1)
    elif isinstance(obj, dict):
        if depth >= MAX_DEPTH:
            raise CBORError("cannot encode: nesting deeper than %d" % MAX_DEPTH)
        _head(out, 5, len(obj))
        for k in obj:
            _encode(out, k, depth + 1)
            _encode(out, obj[k], depth + 1)
    else:
        raise CBORError("cannot encode objects of type %s" % type(obj).__name__)


def dumps(obj):
    """Encode obj (see the module docstring for the types) as CBOR bytes."""
    out = bytearray()
    _encode(out, obj, 0)
    return bytes(out)


# ---------------------------------------------------------------- decoding

# The value loads() puts in place of a value it did not build (max_values, drop).
DROPPED = object()


def _half_to_float(x):
    """IEEE 754 binary16 → float, by hand: not every port's struct has 'e'."""
    sign = -1.0 if x & 0x8000 else 1.0
    exp = (x >> 10) & 0x1f
    frac = x & 0x3ff
    if exp == 0:
        return sign * frac * (2.0 ** -24)
    if exp == 31:
        return sign * float("inf") if frac == 0 else float("nan")
    return sign * (frac + 1024) * (2.0 ** (exp - 25))


class _Over(Exception):
    """A map being measured passed max_values: the measuring stops there."""


class _Decoder:
    def __init__(self, data, max_values=None, drop=None, max_total=None):
        self.mv = memoryview(data)
        self.pos = 0
        self.end = len(self.mv)
        self.max_values = max_values
        self.max_total = max_total
        self.total = 0      # what the values of `drop` kept so far cost (max_total)
        self.fits = False
        self.spent = 0
        self.limit = None   # a limit only while something is measured (_measure)
        # the key whose value a map over budget drops (DROPPED: none, it is no key)
        budget = max_values is not None or max_total is not None
        self.drop = drop if budget and drop is not None else DROPPED

    def need(self, n, what):
        if n > self.end - self.pos:
            raise CBORError("truncated CBOR: %s needs %d bytes at offset %d, only %d left"
                            % (what, n, self.pos, self.end - self.pos))

    def take(self, n, what):
        self.need(n, what)
        p = self.pos
        self.pos = p + n
        return self.mv[p:p + n]

    def item(self, depth, build=True):
        """The next item; with build False, what building it would cost instead (the
        bytes of its strings plus 32 per value, map keys and items included), checked
        as well-formed all the same (map keys are not checked for being hashable or
        repeated)."""
        self.need(1, "an item")
        start = self.pos
        ib = self.mv[start]
        self.pos = start + 1
        major = ib >> 5
        ai = ib & 0x1f
        if major == 7:
            v = self.simple(ai, start)
            if build:
                return v
            self.spend(32)
            return 32
        if ai == 31:
            if major < 2 or major == 6:
                raise CBORError("indefinite length (0x%02x) at offset %d is not well-formed for a %s"
                                % (ib, start, _MAJOR_NAMES.split(",")[major]))
            n = -1  # items until a break byte
        elif ai > 27:
            raise CBORError("reserved additional info %d in initial byte 0x%02x at offset %d"
                            % (ai, ib, start))
        else:
            n = ai   # the argument: ai itself, or the 1, 2, 4 or 8 bytes that follow
            if ai >= 24:
                size = 1 << (ai - 24)
                raw = self.take(size, "the argument (%s)" % _MAJOR_NAMES.split(",")[major])
                n = raw[0] if size == 1 else int.from_bytes(bytes(raw), "big")
        if major < 4:
            if major == 0:
                v = n
            elif major == 1:
                v = -1 - n
            elif n < 0:
                v = self.chunks(major, start, build)
            else:
                raw = self.take(n, "a byte string" if major == 2 else "a text string")
                if major == 2:
                    v = bytes(raw) if build else None
                else:
                    try:
                        v = text(raw)
                    except UnicodeError:
                        raise CBORError("invalid UTF-8 in the text string at offset %d" % start)
            if build:
                return v
            c = 32 if major < 2 else 32 + (n if n >= 0 else self.pos - start)
            self.spend(c)
            return c
        if depth >= MAX_DEPTH:
            raise CBORError("CBOR nested deeper than %d at offset %d" % (MAX_DEPTH, start))
        if major == 6:
            return self.item(depth + 1, build)   # a tag: what it tags (the number is dropped)
        # every item takes at least one byte: refuse impossible counts before looping
        left = self.end - self.pos
        if major == 4 and n > left:
            raise CBORError("truncated CBOR: array at offset %d claims %d items, only %d bytes left"
                            % (start, n, left))
        if major == 5 and n > left // 2:
            raise CBORError("truncated CBOR: map at offset %d claims %d pairs, only %d bytes left"
                            % (start, n, left))
        out = [] if major == 4 else {}
        cost = 32
        if not build:
            self.spend(32)
        i = 0
        while self.more(n, i):
            i += 1
            kpos = self.pos
            k = self.item(depth + 1, build)
            if not build:
                cost += k + (self.item(depth + 1, False) if major == 5 else 0)
            elif major == 4:
                out.append(k)
            else:
                if isinstance(k, (list, dict)):
                    raise CBORError("unhashable map key (%s) at offset %d" % (type(k).__name__, kpos))
                if k in out:
                    raise CBORError("duplicate map key %r at offset %d" % (k, kpos))
                v = None
                # never without a budget (see __init__); a str first: MicroPython warns
                # when bytes and str are compared
                is_drop = type(k) is str and k == self.drop and not self.fits
                if is_drop:
                    # measured first, nothing built: the whole map against max_values,
                    # then this value against what is left of max_total
                    if self.max_values is not None:
                        v = self._measure(start, depth, self.max_values)
                    if v is not DROPPED and self.max_total is not None:
                        # (an empty map, 32, always fits: nothing to drop)
                        v = self._measure(self.pos, depth + 1, max(self.max_total - self.total, 32))
                        if v is not DROPPED:
                            self.total += v
                if v is DROPPED:
                    self.item(depth + 1, False)   # walked, not built
                elif is_drop:
                    self.fits = True    # what a fitting map holds fits too: not measured again
                    try:
                        v = self.item(depth + 1)
                    finally:
                        self.fits = False
                else:
                    v = self.item(depth + 1)
                out[k] = v
        return out if build else cost

    def _measure(self, at, depth, limit):
        """What the item at offset `at` would cost, or DROPPED once that passes `limit`
        (the rest is checked when it is walked or built afterwards); pos is kept."""
        p = self.pos
        self.pos = at
        self.spent = 0
        self.limit = limit
        try:
            self.item(depth, False)
            return self.spent
        except _Over:
            return DROPPED
        finally:
            self.limit = None
            self.pos = p

    def spend(self, c):
        self.spent += c
        if self.limit is not None and self.spent > self.limit:
            raise _Over()

    def more(self, n, count):
        """Another item of a container: count < n, or with n = -1 (indefinite length)
        anything but the break byte, which it consumes."""
        if n >= 0:
            return count < n
        self.need(1, "a break (0xff) ending an indefinite-length item")
        if self.mv[self.pos] == 0xff:
            self.pos += 1
            return False
        return True

    def chunks(self, major, start, build=True):
        """An indefinite-length byte/text string: definite chunks of the same type,
        each checked (text: valid UTF-8 on its own), their bytes gathered in one buffer."""
        buf = bytearray() if build else None
        saved = self.spent, self.limit
        self.limit = None   # the string's cost is counted by the caller
        while self.more(-1, 0):
            ib = self.mv[self.pos]
            if ib >> 5 != major or ib & 0x1f == 31:
                raise CBORError("chunk 0x%02x at offset %d of the indefinite-length %s at offset %d "
                                "is not a definite %s" % (ib, self.pos, _MAJOR_NAMES.split(",")[major],
                                                          start, _MAJOR_NAMES.split(",")[major]))
            p = self.pos
            self.item(MAX_DEPTH, False)   # checks the head, length and UTF-8
            if build:
                hl = 1 if ib & 0x1f < 24 else 1 + (1 << ((ib & 0x1f) - 24))
                buf.extend(self.mv[p + hl:self.pos])
        self.spent, self.limit = saved
        if not build:
            return None
        return bytes(buf) if major == 2 else text(buf)

    def simple(self, ai, start):
        if ai == 20:
            return False
        if ai == 21:
            return True
        if ai < 24:
            return None   # null (22), undefined (23), unassigned simple values (0-19)
        if ai == 25:
            return _half_to_float(int.from_bytes(bytes(self.take(2, "a float16")), "big"))
        if ai == 26:
            return struct.unpack(">f", self.take(4, "a float32"))[0]
        if ai == 27:
            return struct.unpack(">d", self.take(8, "a float64"))[0]
        if ai == 31:
            raise CBORError("unexpected break (0xff) at offset %d" % start)
        if ai == 24:
            v = self.take(1, "a simple value")[0]
            if v < 32:   # those have one-byte forms: not well-formed (RFC 8949 3.3)
                raise CBORError("simple value %d in two bytes at offset %d is not well-formed" % (v, start))
            return None
        raise CBORError("reserved additional info %d in initial byte 0x%02x at offset %d"
                        % (ai, 0xe0 | ai, start))


def loads(data, max_values=None, drop=None, max_total=None):
    """Decode exactly one CBOR item filling all of data (bytes-like). With max_values
    and drop, a map holding the key `drop` gets DROPPED as that key's value when the
    whole map would cost over max_values; with max_total, also when the values of
    `drop` kept so far in `data` and this one would cost over max_total (see the
    module docstring)."""
    d = _Decoder(data, max_values, drop, max_total)
    obj = d.item(0)
    if d.pos != d.end:
        raise CBORError("%d trailing bytes after the CBOR item (which ends at offset %d)"
                        % (d.end - d.pos, d.pos))
    return obj
