"""A raw LINK.md test client on lib/lkedge/link.py and cbor.py (no Room logic).

    p = await LinkPeer.tcp(host, port)        or  await LinkPeer.ws(url)
    joined = await p.join(token, client_protocol=2, capabilities=[2])
    await p.send_data(packet_bytes)            a DATA frame with that DataPacket
    await p.send_raw(b"...")                   any bytes (garbage, split frames)
    t, body = await p.next_frame(timeout=2)    the next frame (DATA bodies whole);
                                               control bodies decoded to dicts
    t, body = await p.expect(link.LEAVE)       next frame, asserted to be of that type
    await p.closed(timeout=2)                  True once the relay closed the stream
    await p.close()

The WebSocket variant can split each write into several binary messages
(`split=n` bytes per message) or pack (`pack=True` buffers writes until flush()).
"""
import asyncio

from lkedge import link


class LinkClosed(Exception):
    pass


class LinkPeer:
    def __init__(self, max_frame=1 << 22):
        self.reader = link.FrameReader(max_frame)
        self.frames = asyncio.Queue()
        self.eof = asyncio.Event()
        self._body = None
        self._task = None

    # ---------------------------------------------------------------- opening
    @classmethod
    async def tcp(cls, host, port, rcvbuf=None, **kw):
        """rcvbuf: the socket's receive buffer, set before connecting (a board's small
        TCP window rather than Linux's autotuned one; set later, it can stall a loopback
        link whose segments are 64 KiB)."""
        self = cls(**kw)
        if rcvbuf is None:
            self._r, self._w = await asyncio.open_connection(host, port)
        else:
            import socket
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
            self._r, self._w = await asyncio.open_connection(sock=sock)
        self._kind = "tcp"
        self._task = asyncio.ensure_future(self._pump())
        return self

    @classmethod
    async def ws(cls, url, split=None, **kw):
        import websockets
        self = cls(**kw)
        self._ws = await websockets.connect(url, compression=None, ping_interval=None,
                                            max_size=None)
        self._kind = "ws"
        self._split = split
        self._task = asyncio.ensure_future(self._pump())
        return self

    # ---------------------------------------------------------------- reading
    async def _read(self):
        if self._kind == "tcp":
            return await self._r.read(65536)
        try:
            return await self._ws.recv()
        except Exception:
            return b""

    async def _pump(self):
        try:
            while True:
                data = await self._read()
                if not data:
                    break
                self.reader.receive(memoryview(bytes(data)))
                while True:
                    ev = self.reader.next_event()
                    if ev == link.NEED_DATA:
                        break
                    self._event(ev)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self.eof.set()

    def _event(self, ev):
        kind = ev[0]
        if kind == link.DATA_START:
            self._body = bytearray()
        elif kind == link.DATA_PIECE:
            self._body += ev[1]
        elif kind == link.DATA_END:
            self.frames.put_nowait((link.DATA, bytes(self._body)))
        else:
            t, body = ev[1], ev[2]
            if t not in (link.PING, link.PONG):
                body = link.decode_control(body)
            self.frames.put_nowait((t, body))

    async def next_frame(self, timeout=2.0):
        get = asyncio.ensure_future(self.frames.get())
        eof = asyncio.ensure_future(self.eof.wait())
        done, _ = await asyncio.wait([get, eof], timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        eof.cancel()
        if get in done:
            return get.result()
        get.cancel()
        if self.eof.is_set() and self.frames.empty():
            raise LinkClosed("the relay closed the link")
        raise asyncio.TimeoutError("no frame within %.1f s" % timeout)

    async def expect(self, t, timeout=2.0):
        got, body = await self.next_frame(timeout)
        assert got == t, "expected %s, got %s %r" % (link.type_name(t), link.type_name(got), body)
        return got, body

    async def closed(self, timeout=2.0):
        try:
            await asyncio.wait_for(self.eof.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    # ---------------------------------------------------------------- writing
    async def send_raw(self, data):
        if self._kind == "tcp":
            self._w.write(data)
            await self._w.drain()
            return
        step = self._split or len(data)
        for i in range(0, len(data), step):
            await self._ws.send(bytes(data[i:i + step]))

    async def send_ws_message(self, msg):
        await self._ws.send(msg)

    async def send_control(self, t, mapping):
        await self.send_raw(link.encode_control(t, mapping))

    async def send_data(self, packet):
        await self.send_raw(link.encode_frame(link.DATA, packet))

    async def join(self, token, client_protocol=2, capabilities=(), expect=True):
        await self.send_control(link.JOIN, {"v": 1, "token": token,
                                            "client_protocol": client_protocol,
                                            "capabilities": list(capabilities),
                                            "sdk": "linkpeer", "sdk_version": "1"})
        if not expect:
            return None
        _t, body = await self.expect(link.JOINED)
        return link.check_joined(body)

    async def close(self):
        try:
            if self._kind == "tcp":
                self._w.close()
            else:
                await self._ws.close()
        except Exception:
            pass
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except BaseException:
                pass


class RelayUnderTest:
    """`async with RelayUnderTest(**router_options) as r:` an in-process relay on
    ephemeral loopback ports with the development keys. r.router, r.srv, r.tcp (host,
    port), r.ws_url, r.http (host, port); r.token(identity, room="lab", **mint_options);
    await r.peer(identity, room="lab") -> a joined TCP LinkPeer (r.peers closes them)."""

    def __init__(self, rooms=None, log=None, server_options=None, **router_options):
        from lkedge_host.relay import auth
        self.auth = auth
        self.rooms = rooms
        self.options = router_options
        self.server_options = server_options or {}
        self.log = log
        self.peers = []

    async def __aenter__(self):
        import io
        from lkedge_host.relay.router import Router
        from lkedge_host.relay.server import RelayServer
        verifier = self.auth.Verifier(self.auth.DEV_API_KEY, self.auth.DEV_API_SECRET,
                                      rooms=self.rooms)
        self.router = Router(verifier.verify, **self.options)
        self.logbuf = io.StringIO()
        self.srv = RelayServer(self.router, port=0, ws_port=0, http_port=0,
                               log=self.log or self.logbuf, **self.server_options)
        await self.srv.start()
        self.tcp = self.srv.addresses["tcp"]
        self.ws_url = "ws://%s:%d" % self.srv.addresses["ws"]
        self.http = self.srv.addresses["http"]
        return self

    async def __aexit__(self, *exc):
        for p in self.peers:
            await p.close()
        await self.srv.stop()

    def token(self, identity, room="lab", **kw):
        return self.auth.mint_token(self.auth.DEV_API_KEY, self.auth.DEV_API_SECRET,
                                    identity=identity, room=room, **kw)

    async def connect(self):
        p = await LinkPeer.tcp(*self.tcp)
        self.peers.append(p)
        return p

    async def peer(self, identity, room="lab", **join_kw):
        p = await self.connect()
        p.joined = await p.join(self.token(identity, room), **join_kw)
        return p

    async def http_get(self, path):
        r, w = await asyncio.open_connection(*self.http)
        w.write(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path).encode())
        data = await r.read()
        w.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body.decode()
