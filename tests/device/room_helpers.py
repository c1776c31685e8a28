"""Helpers for Room-level tests: two or more participants in an in-memory room."""
import asyncio

from lkedge.config import RoomOptions
from lkedge.memroom import MemRoom, RawPeer
from lkedge.room import Room


async def join(mem, identity, **opts):
    o = RoomOptions(**opts)
    o.auto_reconnect = opts.get("auto_reconnect", False)
    r = Room(o)
    await r.connect(mem.transport(), identity)
    return r


async def pair(**opts):
    """A MemRoom with rooms 'a' and 'b' that see each other."""
    mem = MemRoom()
    a = await join(mem, "a", **opts)
    b = await join(mem, "b", **opts)
    await settle(lambda: "b" in a.remote_participants)
    return mem, a, b


async def raw(mem, identity, client_protocol=2, capabilities=()):
    p = RawPeer(mem, identity, client_protocol, capabilities)
    await p.join()
    return p


async def settle(pred, timeout=5.0):
    """Wait until pred() is true (event-driven code settles within a few loop turns)."""
    n = int(timeout * 100)
    for _ in range(n):
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached within %.1f s" % timeout)


def watch_escapes():
    """A list that collects what escapes to the event loop from now on (exceptions of
    tasks nobody awaited), as the loop's exception handler; the caller sets it back with
    asyncio.get_event_loop().set_exception_handler(None)."""
    escaped = []
    asyncio.get_event_loop().set_exception_handler(
        lambda lp, ctx: escaped.append(ctx.get("exception") or ctx.get("message")))
    return escaped


async def close(*rooms):
    for r in rooms:
        if hasattr(r, "disconnect"):
            await r.disconnect()
        else:
            await r.close()


def expect_rpc_error(code):
    """Context-free check helper: returns a function that asserts an exception."""
    def check(e):
        from lkedge.rpc import RpcError
        assert isinstance(e, RpcError), "expected RpcError %d, got %r" % (code, e)
        assert e.code == code, "expected RpcError %d, got %d %s" % (code, e.code, e.message)
    return check


async def raises(exc_type, aw, *words):
    """Await aw, which must raise exc_type with each of `words` in its text; -> the error."""
    try:
        await aw
    except exc_type as e:
        for w in words:
            assert w in str(e), (w, str(e))
        return e
    raise AssertionError("expected %s" % exc_type.__name__)


async def raises_rpc(code, aw):
    try:
        await aw
    except Exception as e:
        expect_rpc_error(code)(e)
        return e
    raise AssertionError("expected RpcError %d, call succeeded" % code)


async def room_and_peer(identity="a", peer_identity="old", client_protocol=0, capabilities=(), **opts):
    """A Room (RoomOptions `opts`) and a RawPeer that sees it (and is seen by it) in a
    fresh MemRoom."""
    mem = MemRoom()
    room = await join(mem, identity, **opts)
    peer = await raw(mem, peer_identity, client_protocol, capabilities)
    await settle(lambda: peer_identity in room.remote_participants)
    return mem, room, peer


async def send_request_v1(peer, to, request_id, method, payload="", version=1, timeout_ms=8000):
    """Send a v1 rpc_request packet from a RawPeer (its caller gives up after timeout_ms)."""
    await peer.send({"destination_identities": [to], "rpc_request": {
        "id": request_id, "method": method, "payload": payload, "response_timeout_ms": timeout_ms,
        "version": version}})


async def request_v1(peer, to, request_id, method, payload="", version=1):
    """Send a v1 rpc_request packet from a RawPeer; returns the rpc_response packet."""
    await send_request_v1(peer, to, request_id, method, payload, version)
    return await peer.wait_for(lambda p: "rpc_response" in p and p["rpc_response"]["request_id"] == request_id)


async def noting_cancel(log, aw, done="sent"):
    """await aw, noting in log "cancelled" if the task is cancelled there (then raised
    on), else `done`; -> what aw returned. (Handlers that must show how they ended.)"""
    try:
        r = await aw
    except asyncio.CancelledError:
        log.append("cancelled")
        raise
    log.append(done)
    return r


def error_collector(errors):
    """A stream handler that reads to the end and records the reader's error."""
    async def handler(reader, sender):
        try:
            await reader.read_all()
        except Exception as e:
            errors.append(str(e))
    return handler


class CannedRelay:
    """A transport that answers whatever is sent with the bytes `answer`, then ends the
    connection (a relay refusing a JOIN, a web server), counting its connects."""

    def __init__(self, answer):
        self.answer = self.out = answer
        self.connects = 0

    async def connect(self):
        self.connects += 1
        self.out = self.answer

    async def write(self, data):
        pass

    async def read_into(self, buf):
        n = len(self.out)
        buf[:n] = self.out
        self.out = b""
        return n

    async def close(self):
        pass


def varint(n):
    """Protobuf's base-128 varint of n >= 0 (for packets written by hand)."""
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(num, data):
    """A length-delimited protobuf field: its tag, its length, `data`."""
    return varint(num << 3 | 2) + varint(len(data)) + data


class Rng:
    """A small seeded generator for the sequence tests: the same sequences on both
    interpreters (no random module needed)."""

    def __init__(self, seed):
        self.s = seed

    def below(self, n):
        self.s = (self.s * 1103515245 + 12345) & 0x7FFFFFFF
        return (self.s >> 8) % n

    def pick(self, seq):
        return seq[self.below(len(seq))]

    def shuffled(self, seq):
        out = list(seq)
        for i in range(len(out) - 1, 0, -1):
            j = self.below(i + 1)
            out[i], out[j] = out[j], out[i]
        return out
