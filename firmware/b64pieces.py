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
    `write(data)`. Keeps the 0-3 characters of a partial quad between reads; line
    breaks in the text are ignored."""

    def __init__(self, write, piece=512):
        self.write = write
        self.buf = bytearray(piece + 3)
        self.mv = memoryview(self.buf)
        self.piece = piece
        self.carry = 0
        self.size = 0

    async def pump(self, reader):
        """Read `reader` to its end; returns the number of decoded bytes."""
        mv = self.mv
        while True:
            n = await reader.readinto(mv[self.carry:self.carry + self.piece])
            if not n:
                break
            self._decode(self.carry + n)
        if self.carry:
            raise B64Error("base64 text ends in a partial quad (%d characters left)" % self.carry)
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
        mv = self.mv
        if self.buf.find(b"\n", 0, total) >= 0 or self.buf.find(b"\r", 0, total) >= 0:
            total = self._strip_breaks(total)  # rare: wrapped base64
        cut = total - total % 4
        if cut:
            try:
                data = binascii.a2b_base64(mv[:cut])
            except ValueError as e:
                raise B64Error("invalid base64 after %d decoded bytes: %s" % (self.size, e))
            self.size += len(data)
            self.write(data)
        self.carry = total - cut
        mv[:self.carry] = mv[cut:total]

    def _strip_breaks(self, total):
        text = bytes(self.mv[:total]).replace(b"\r", b"").replace(b"\n", b"")
        self.mv[:len(text)] = text
        return len(text)
