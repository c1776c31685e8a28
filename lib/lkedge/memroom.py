"""An in-memory room for tests and benchmarks (a test double of the relay).

MemRoom speaks real LINK.md frames to real Room objects through MemTransport, so every
test exercises the real codecs: frames, CBOR, DataPackets, identity stamping. It is a
FAKE in two respects: it does not verify tokens (the JOIN token is either the
identity itself or a JWT whose `sub` claim is read WITHOUT checking the signature), and
it checks a DataPacket's top-level fields only, where the relay checks it whole, so
that tests can hand a Room malformed packets. Never use it outside tests; boards do
not ship it.

RawPeer is a captured-packet participant: it records every DataPacket it receives
(decoded whole with relayside.decode_packet) and sends any packet dict it is given, so
tests can play a LiveKit peer of any client_protocol byte by byte.
"""
import asyncio

from . import link, proto, relayside
from .clock import wait_for


def _identity_from_token(token):
    if token.count(".") != 2:
        return token
    import binascii
    import json
    part = token.split(".")[1]
    part += "=" * (-len(part) % 4)
    raw = binascii.a2b_base64(part.replace("-", "+").replace("_", "/"))
    return json.loads(raw)["sub"]


class _Conn:
    def __init__(self, room, transport):
        self.room = room
        self.t = transport
        self.identity = None
        self.sid = ""
        self.info = None
        self.reader = link.FrameReader(room.max_frame)
        self.body = None


class MemRoom:
    def __init__(self, name="test-room", max_frame=65536, queue_bytes=262144):
        self.name = name
        self.max_frame = max_frame
        self.queue_bytes = queue_bytes
        self.conns = {}
        self._seq = 0
        self.frames = 0

    def transport(self):
        return MemTransport(self)

    # ---------------------------------------------------------------- routing
    async def _feed(self, conn, data):
        r = conn.reader
        r.receive(memoryview(bytes(data)))
        while True:
            ev = r.next_event()
            if ev == link.NEED_DATA:
                return
            k = ev[0]
            if k == link.FRAME:
                await self._control(conn, ev[1], ev[2])
            elif k == link.DATA_START:
                conn.body = bytearray()
            elif k == link.DATA_PIECE:
                conn.body.extend(ev[1])
            elif k == link.DATA_END:
                body, conn.body = conn.body, None
                await self._data(conn, bytes(body))

    async def _control(self, conn, ftype, body):
        self.frames += 1
        if ftype == link.JOIN:
            d = relayside.check_join(link.decode_control(body))
            ident = _identity_from_token(d["token"])
            old = self.conns.get(ident)
            if old is not None:
                await old.t._deliver(relayside.encode_control(link.LEAVE, {"code": link.LEAVE_DUPLICATE, "reason": "duplicate identity"}))
                await self._leave(old, "replaced")
            self._seq += 1
            conn.identity = ident
            conn.sid = "PA_mem%d" % self._seq
            conn.info = {"identity": ident, "sid": conn.sid,
                         "client_protocol": d.get("client_protocol", 0),
                         "capabilities": list(d.get("capabilities", [])), "attributes": {}}
            others = [c.info for c in self.conns.values()]
            self.conns[ident] = conn
            await conn.t._deliver(relayside.encode_control(link.JOINED, {
                "v": 1, "room": self.name, "identity": ident, "sid": conn.sid,
                "server_version": "memroom", "max_frame": self.max_frame, "participants": others}))
            frame = relayside.encode_control(link.PARTICIPANT, conn.info)
            for c in list(self.conns.values()):
                if c is not conn:
                    await c.t._deliver(frame)
        elif ftype == link.PING:
            await conn.t._deliver(relayside.encode_frame(link.PONG, body))
        elif ftype == link.LEAVE:   # its reason passed on, as the relay does
            try:
                reason = relayside.check_leave(link.decode_control(body))["reason"]
            except link.LinkError as e:
                reason = "(unreadable LEAVE: %s)" % e
            await self._leave(conn, "client initiated" + (": " + reason if reason else ""))

    async def _data(self, conn, body):
        if conn.identity is None:
            raise link.LinkError("DATA before JOIN")
        fields = relayside.scan_fields(body)
        dests = []
        kept = []
        for num, wt, fstart, vstart, end in fields:
            if num in (4, 17):
                continue  # the sender may not pose as anyone: stamped below
            if num == 5:
                dests.append(bytes(body[vstart:end]).decode())
            kept.append(body[fstart:end])
        stamp = relayside.encode(proto.DATA_PACKET, {"participant_identity": conn.identity})
        sid = relayside.encode(proto.DATA_PACKET, {"participant_sid": conn.sid})
        packet = stamp + sid + b"".join(kept)
        frame = relayside.frame_header(link.DATA, len(packet)) + packet
        targets = dests or [i for i in self.conns if i != conn.identity]
        for ident in targets:
            c = self.conns.get(ident)
            if c is not None and c is not conn:
                await c.t._deliver(frame)

    async def _leave(self, conn, reason):
        if conn.identity is not None and self.conns.get(conn.identity) is conn:
            del self.conns[conn.identity]
            frame = relayside.encode_control(link.PARTICIPANT_LEFT, {"identity": conn.identity, "reason": reason})
            for c in list(self.conns.values()):
                await c.t._deliver(frame)
        conn.t._eof()

    async def kick(self, identity, code=link.LEAVE_SHUTDOWN, reason="kicked"):
        """Drop one participant as the relay would (tests of link loss)."""
        c = self.conns.get(identity)
        if c is not None:
            await c.t._deliver(relayside.encode_control(link.LEAVE, {"code": code, "reason": reason}))
            await self._leave(c, reason)


class MemTransport:
    """The Transport seam (docs/internals.md) over a MemRoom, with bounded queues."""

    def __init__(self, room):
        self.room = room
        self.conn = None
        # Queued frames, each copied once; read_into() walks them with an offset, so a
        # long stream never needs one big contiguous buffer (a fragmented MicroPython
        # heap may not have one) and nothing is copied twice.
        self._frames = []
        self._off = 0           # read position in self._frames[0]
        self._queued = 0        # bytes queued and not yet read
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._closed = False

    async def connect(self):
        self.conn = _Conn(self.room, self)
        self._closed = False

    async def write(self, data):
        if self._closed:
            raise OSError("memroom transport closed")
        await self.room._feed(self.conn, data)

    async def read_into(self, buf):
        while not self._frames:
            if self._closed:
                return 0
            self._ready.clear()
            await self._ready.wait()
        head = self._frames[0]
        n = min(len(buf), len(head) - self._off)
        buf[:n] = memoryview(head)[self._off:self._off + n]
        self._off += n
        if self._off == len(head):
            self._frames.pop(0)
            self._off = 0
        self._queued -= n
        if self._queued < self.room.queue_bytes:
            self._space.set()
        return n

    async def _deliver(self, frame):
        # Backpressure: the sender waits while this receiver's queue is full.
        while self._queued >= self.room.queue_bytes and not self._closed:
            self._space.clear()
            await self._space.wait()
        if self._closed:
            return
        if len(frame):
            self._frames.append(bytes(frame))  # the writer may reuse its buffer
            self._queued += len(frame)
        self._ready.set()

    def _eof(self):
        self._closed = True
        self._ready.set()
        self._space.set()

    async def close(self):
        if self.conn is not None and not self._closed:
            await self.room._leave(self.conn, "closed")
        self._eof()


class RawPeer:
    """A participant that records decoded DataPackets and sends raw packet dicts."""

    def __init__(self, room, identity, client_protocol=2, capabilities=()):
        self.room = room
        self.identity = identity
        self.client_protocol = client_protocol
        self.capabilities = list(capabilities)
        self.t = room.transport()
        self.packets = []
        self.controls = []
        self._got = asyncio.Event()
        self._task = None

    async def join(self):
        await self.t.connect()
        await self.t.write(relayside.encode_control(link.JOIN, {
            "v": 1, "token": self.identity, "client_protocol": self.client_protocol,
            "capabilities": self.capabilities, "sdk": "rawpeer", "sdk_version": "0"}))
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self):
        buf = memoryview(bytearray(4096))
        r = link.FrameReader(1 << 24)
        body = None
        while True:
            n = await self.t.read_into(buf)
            if not n:
                return
            r.receive(buf[:n])
            while True:
                ev = r.next_event()
                if ev == link.NEED_DATA:
                    break
                if ev[0] == link.FRAME:
                    self.controls.append((ev[1], link.decode_control(ev[2]) if ev[1] not in (link.PING, link.PONG) else ev[2]))
                elif ev[0] == link.DATA_START:
                    body = bytearray()
                elif ev[0] == link.DATA_PIECE:
                    body.extend(ev[1])
                elif ev[0] == link.DATA_END:
                    self.packets.append(relayside.decode_packet(bytes(body)))
                self._got.set()

    async def send(self, pkt):
        body = relayside.encode(proto.DATA_PACKET, pkt)
        await self.t.write(relayside.encode_frame(link.DATA, body))

    async def wait_for(self, pred, timeout=5.0):
        """Wait until a received packet satisfies `pred`; returns it."""
        async def loop():
            seen = 0
            while True:
                while seen < len(self.packets):
                    p = self.packets[seen]
                    seen += 1
                    if pred(p):
                        return p
                self._got.clear()
                await self._got.wait()
        return await wait_for(loop(), timeout)

    async def close(self):
        await self.t.close()
        if self._task is not None:
            self._task.cancel()
