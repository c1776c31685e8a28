"""Helpers for the tests of participant attributes on the link: PARTICIPANT frames
written as raw bytes (so the relay's side never holds thousands of attribute objects),
delivered by the in-memory relay, and the library's warnings captured."""
from lkedge import link
from lkedge import room as room_module
from lkedge.room import Room


def _head(major, n):
    if n < 24:
        return bytes([major << 5 | n])
    if n < 256:
        return bytes([major << 5 | 24, n])
    return bytes([major << 5 | 25, n >> 8, n & 0xff])


def _text(s):
    b = s.encode()
    return _head(3, len(b)) + b


def participant_frame(identity, sid, n_attributes=0, attributes=None, client_protocol=2,
                      capabilities=(2,)):
    """The pieces (bytes of 1 KiB at most) of a PARTICIPANT frame: n tiny attributes
    {"0": "x", "1": "x", ...} (about 6.3 bytes each on the wire), made piece by piece,
    or the `attributes` dict."""
    pre = (b"\xa5" + _text("identity") + _text(identity) + _text("sid") + _text(sid)
           + _text("client_protocol") + _head(0, client_protocol)
           + _text("capabilities") + _head(4, len(capabilities))
           + b"".join(_head(0, c) for c in capabilities) + _text("attributes"))
    if attributes is not None:
        body = pre + _head(5, len(attributes)) + b"".join(
            _text(k) + _text(attributes[k]) for k in attributes)
        yield link.encode_frame(link.PARTICIPANT, body)
        return
    n = n_attributes
    pre += _head(5, n)
    size = len(pre) + sum(3 + len(b"%d" % i) for i in range(n))
    piece = link.frame_header(link.PARTICIPANT, size) + pre
    for i in range(n):
        if len(piece) > 1000:
            yield piece
            piece = b""
        piece += _text("%d" % i) + b"\x61x"
    yield piece


async def relay_says(mem, to, pieces):
    """The relay (MemRoom) sends participant `to` a frame, as these pieces."""
    n = 0
    for piece in pieces:
        await mem.conns[to].t._deliver(piece)
        n += len(piece)
    return n


async def join_with(mem, identity, options):
    options.auto_reconnect = False
    r = Room(options)
    await r.connect(mem.transport(), identity)
    return r


class Warnings:
    """Captures the library's warnings (room._warn) while in use."""

    def __enter__(self):
        self.saved = room_module._warn
        self.got = []
        room_module._warn = self.got.append
        return self.got

    def __exit__(self, *exc):
        room_module._warn = self.saved
