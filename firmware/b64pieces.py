"""Base64 in pieces, so files of any size cross a text RPC through small buffers."""
import binascii

RAW_PIECE = 384  # 384 raw bytes -> 512 base64 characters, no padding until the end


class B64Error(ValueError):
    """The text is not valid base64 (the message says where)."""


class FileB64Source:
    """An async iterable of base64 str pieces of an open binary file (MicroPython has
    no async generators, hence the class). Closes the file at the end."""

    def __init__(self, f):
        self.f = f
        self.buf = bytearray(RAW_PIECE)
        self.mv = memoryview(self.buf)
        self.size = 0

    def __aiter__(self):
        return self

    async def __anext__(self):
        n = self.f.readinto(self.buf)
        if not n:
            self.f.close()
            raise StopAsyncIteration
        self.size += n
        # b2a_base64 ends with "\n": cut it off before decoding to str
        out = binascii.b2a_base64(self.mv[:n])
        return out[:-1].decode()


class B64Sink:
    """Decodes base64 text read with readinto() from a stream and hands the bytes to
    `write(data)`. Keeps the 0-3 characters of a partial quad between reads. Line
    breaks (CR, LF) anywhere are ignored, as in wrapped base64; anything else is a
    B64Error naming the offset (in characters, line breaks not counted): a character
    outside the alphabet (A-Z a-z 0-9 + /, so also spaces), '=' other than 1-2 at the
    very end, text after it, or a partial quad at the end. (binascii skips what it
    cannot decode and stops at '=' on both interpreters: each quad run is checked by
    the length of what it gave.)"""

    def __init__(self, write, piece=512):
        self.write = write
        self.buf = bytearray(piece + 3)
        self.mv = memoryview(self.buf)
        self.piece = piece
        self.carry = 0
        self.size = 0
        self.chars = 0       # characters decoded so far (line breaks not counted)
        self.ended = False   # the text ended in '=': nothing may follow

    async def pump(self, reader):
        """Read `reader` to its end; returns the number of decoded bytes."""
        mv = self.mv
        while True:
            n = await reader.readinto(mv[self.carry:self.carry + self.piece])
            if not n:
                break
            self._decode(self.carry + n)
        if self.carry:
            raise B64Error("the text ends in a partial quad of %d characters at offset %d (a quad is 4; "
                           "the last one is padded with '=')" % (self.carry, self.chars))
        return self.size

    def feed(self, data):
        """Decode bytes already in memory (the text after a header line)."""
        i = 0
        while i < len(data):
            n = min(self.piece, len(data) - i)
            self.mv[self.carry:self.carry + n] = data[i:i + n]
            self._decode(self.carry + n)
            i += n

    def _decode(self, total):
        buf = self.buf
        if buf.find(b"\n", 0, total) >= 0 or buf.find(b"\r", 0, total) >= 0:
            total = self._strip_breaks(total)  # rare: wrapped base64
        if self.ended and total:
            raise B64Error("text after the '=' padding that ends base64, at offset %d" % self.chars)
        cut = total - total % 4
        if cut:
            self._quads(cut)
            if self.ended and total > cut:
                raise B64Error("text after the '=' padding that ends base64, at offset %d" % self.chars)
        self.carry = total - cut
        self.mv[:self.carry] = self.mv[cut:total]

    def _quads(self, cut):
        """Decode buf[:cut] (whole quads), refusing what binascii would skip or stop at."""
        buf = self.buf
        pad = 0
        while pad < 3 and buf[cut - 1 - pad] == 61:  # '='
            pad += 1
        try:
            data = binascii.a2b_base64(self.mv[:cut])
        except ValueError:
            data = None
        if pad > 2 or data is None or len(data) != cut // 4 * 3 - pad:
            raise B64Error(self._bad(cut - pad))
        self.size += len(data)
        self.chars += cut
        self.ended = pad > 0
        self.write(data)

    def _bad(self, end):
        """What is wrong in buf[:end] (the error path: a loop per character is fine)."""
        buf = self.buf
        for i in range(end):
            c = buf[i]
            if c == 61:
                q = i - i % 4 + 4   # the end of this quad: all '=' from i on is a padded quad
                if i % 4 > 1 and buf[i:q] == b"=" * (q - i):
                    return "text after the '=' padding that ends base64, at offset %d" % (self.chars + q)
                return "'=' at offset %d: it pads only the end of base64" % (self.chars + i)
            if not (65 <= c <= 90 or 97 <= c <= 122 or 48 <= c <= 57 or c == 43 or c == 47):
                what = "%r" % chr(c) if 32 < c < 127 else "byte 0x%02x" % c
                return "%s at offset %d is not base64" % (what, self.chars + i)
        return "too much '=' padding at offset %d" % (self.chars + end)

    def _strip_breaks(self, total):
        text = bytes(self.mv[:total]).replace(b"\r", b"").replace(b"\n", b"")
        self.mv[:len(text)] = text
        return len(text)
