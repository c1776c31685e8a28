"""UTF-8 character boundaries: cutting byte buffers and decoding byte pieces.

Text streams travel as bytes in chunks and pieces whose edges fall anywhere; these
helpers keep every cut (sender) and every decoded str (receiver) on a character
boundary.

    cut(buf, n) -> k          largest k <= n with buf[:k] ending on a boundary
    incomplete_tail(buf) -> n trailing bytes starting an unfinished character (0-3)
    Utf8Decoder().decode(piece) -> str   carries 1-3 trailing bytes to the next piece
    Utf8Decoder().finish()    raises Utf8Error when a character was left unfinished
    encoded(s) -> bytes-like  the UTF-8 bytes of str s (no copy on MicroPython)
    encoded_text(s) -> bytes-like   the same, refusing (Utf8Error) a str that is not
                              valid UTF-8 (MicroPython's json makes one of "\\ud800")
    text(data) -> str         strict decoding on every interpreter (UnicodeError): no
                              overlong forms, surrogates or code points past U+10FFFF
"""


class Utf8Error(ValueError):
    """Invalid UTF-8 (the message says where and why)."""


try:
    memoryview("")

    def encoded(s):
        """The UTF-8 bytes of str s. MicroPython keeps a str as UTF-8 and lends it as a
        read-only buffer: a view of s itself, no copy (a board sending text would
        otherwise copy every piece once more)."""
        return memoryview(s)
except TypeError:  # CPython: a str is not a buffer
    def encoded(s):
        return s.encode("utf-8")


def _is_cont(b):
    return (b & 0xC0) == 0x80


def _seq_len(b):
    """Byte length of the character starting with `b`, 0 when it cannot start one."""
    if b < 0x80:
        return 1
    if b >= 0xF8 or _is_cont(b):
        return 0
    if b >= 0xF0:
        return 4
    if b >= 0xE0:
        return 3
    return 2


def cut(buf, n):
    """Largest k <= n such that buf[:k] ends on a character boundary of UTF-8 `buf`."""
    size = len(buf)
    if n >= size:
        return size
    k = n
    # A character is at most 4 bytes: step back over at most 3 continuation bytes.
    while k > 0 and _is_cont(buf[k]):
        k -= 1
        if n - k > 3:
            raise Utf8Error("invalid UTF-8 near byte %d: more than 3 continuation bytes" % n)
    return k


def incomplete_tail(buf, start=0):
    """Number of trailing bytes of buf[start:] that begin a character not yet complete
    (0-3). Invalid bytes count as complete: decoding reports them."""
    size = len(buf)
    i = size - 1
    while i >= start and i > size - 4 and _is_cont(buf[i]):
        i -= 1
    if i < start:
        return 0
    need = _seq_len(buf[i])
    return size - i if need and i + need > size else 0


# Lead bytes after which a second byte in [_LO[k], _HI[k]] makes a well-shaped sequence
# invalid: C0 C1 F5 F6 F7 always (overlong or too high), E0 80-9F and F0 80-8F
# (overlong), ED A0-BF (surrogates), F4 90-BF (past U+10FFFF). Three byte strings, not
# tables of objects: on a board each object is heap.
_LEADS = b"\xc0\xc1\xf5\xf6\xf7\xe0\xed\xf0\xf4"
_LO = b"\x00\x00\x00\x00\x00\x80\xa0\x80\x90"
_HI = b"\xff\xff\xff\xff\xff\x9f\xbf\x8f\xbf"


_lead_bytes = []   # _LEADS as one-byte strings, made at the first non-ASCII text
_window = None     # _bad_forms' scratch for views, made at the first it scans

# MicroPython checks only the shape of each sequence; CPython refuses these itself.
try:
    str(b"\xed\xa0\x80", "utf-8")   # a surrogate
    _LAX = True
except UnicodeError:
    _LAX = False


def _bad_forms(data):
    """True when well-shaped UTF-8 bytes hold an overlong form, a surrogate or a code
    point past U+10FFFF. Only lead bytes are looked for (never continuation bytes),
    with find(), so a piece costs a few C scans, not a Python loop per byte. A view
    (a board's str lent as bytes) is scanned through a 256-byte window, never copied
    whole: a 16 KiB answer's copy was the MemoryError that failed it."""
    global _window
    if not _lead_bytes:
        for k in range(len(_LEADS)):
            _lead_bytes.append(_LEADS[k:k + 1])
    if isinstance(data, (bytes, bytearray)):   # find() needs one of these
        return _bad_in(data, len(data))
    if _window is None:
        _window = bytearray(256)
    w = _window
    n = len(data)
    i = 0
    while i < n:
        k = min(n - i, 256)
        w[:k] = data[i:i + k]
        if i + k < n:    # the last byte is looked at again, first of the next window,
            k -= 1       # where the byte after it is there to be checked
        if _bad_in(w, k):
            return True
        i += k
    return False


def _bad_in(b, end):
    # lead bytes in b[:end], each checked with the byte after it
    for k in range(len(_LEADS)):
        lead = _lead_bytes[k]
        i = b.find(lead, 0, end)
        while i >= 0:
            if _LO[k] <= b[i + 1] <= _HI[k]:
                return True
            i = b.find(lead, i + 1, end)
    return False


def text(data):
    """str of the UTF-8 bytes `data` (bytes-like); UnicodeError when they are not
    valid UTF-8, by the same rules on every interpreter."""
    s = str(data, "utf-8")
    # What MicroPython lets through is looked for here, in non-ASCII text only.
    if _LAX and len(s) != len(data) and _bad_forms(data):
        raise UnicodeError("overlong form, surrogate or code point past U+10FFFF")
    return s


def encoded_text(s):
    """encoded(s), or Utf8Error when s is not valid UTF-8 text: MicroPython lets a JSON
    escape such as "\\ud800" make a str holding a lone surrogate, which protobuf string
    fields (the relay checks them) and every receiver refuse. ASCII text costs a length
    comparison; other text one scan of its bytes."""
    try:
        b = encoded(s)
    except UnicodeError:   # CPython: a lone surrogate does not encode
        raise Utf8Error("text holds a lone surrogate")
    if _LAX and len(b) != len(s) and _bad_forms(b):
        raise Utf8Error("text holds a surrogate, an overlong form or a code point past U+10FFFF")
    return b


def _decode(data, offset):
    """str of UTF-8 bytes data, which start at byte `offset` of the text (for the error
    only: the message is made when it is needed, not for every piece)."""
    try:
        return text(data)
    except (UnicodeError, ValueError):
        raise Utf8Error("invalid UTF-8 in the text after byte %d" % offset)


class Utf8Decoder:
    """Turns byte pieces into str pieces, holding an unfinished character (1-3 bytes)."""

    def __init__(self):
        self._pend = bytearray(4)
        self._npend = 0
        self._need = 0          # full length of the pending character
        self.offset = 0         # bytes decoded so far (for error messages)

    def decode(self, piece):
        mv = piece if isinstance(piece, memoryview) else memoryview(piece)
        head = ""
        start = 0
        if self._npend:
            take = min(self._need - self._npend, len(mv))
            self._pend[self._npend:self._npend + take] = mv[:take]
            self._npend += take
            start = take
            if self._npend < self._need:
                return ""
            head = _decode(bytes(self._pend[:self._need]), self.offset)
            self.offset += self._need
            self._npend = 0
        end = self._complete_end(mv, start)
        if end > start:
            body = _decode(mv if start == 0 and end == len(mv) else mv[start:end], self.offset)
        else:
            body = ""
        self.offset += end - start
        rest = len(mv) - end
        if rest:
            self._pend[:rest] = mv[end:]
            self._npend = rest
            self._need = _seq_len(mv[end])
        return head + body if head else body

    @staticmethod
    def _complete_end(mv, start):
        """End of the last complete character in mv[start:] (the rest waits for more)."""
        return len(mv) - incomplete_tail(mv, start)

    def finish(self):
        """Call at the end of the text: an unfinished character is an error."""
        if self._npend:
            raise Utf8Error("text ends inside a UTF-8 character (%d of %d bytes) after byte %d"
                            % (self._npend, self._need, self.offset))
