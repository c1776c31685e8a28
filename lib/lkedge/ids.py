"""Random UUIDs (version 4) for RPC request ids and stream ids, on board and host."""
import os

_HEX = "0123456789abcdef"


def uuid4():
    """A random RFC 4122 version-4 UUID string, e.g. '1b4e28ba-2fa1-41d2-883f-0016d3cca427'."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    out = []
    for i in range(16):
        if i in (4, 6, 8, 10):
            out.append("-")
        out.append(_HEX[b[i] >> 4])
        out.append(_HEX[b[i] & 15])
    return "".join(out)
