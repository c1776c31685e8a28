"""Reading helpers shared by the transport tests (both interpreters)."""


async def read_to_end(t, size):
    """Everything the transport delivers until it closes, through a `size`-byte buffer."""
    buf = memoryview(bytearray(size))
    got = b""
    while True:
        n = await t.read_into(buf)
        if not n:
            return got
        got += bytes(buf[:n])


async def read_exactly(t, count, size):
    """`count` bytes through a `size`-byte buffer (pieces carry over); closing early fails."""
    buf = memoryview(bytearray(size))
    got = b""
    while len(got) < count:
        n = await t.read_into(buf)
        assert n > 0, "stream closed after %d of %d bytes" % (len(got), count)
        got += bytes(buf[:n])
    return got
