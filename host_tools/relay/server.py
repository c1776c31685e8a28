"""The relay's asyncio adapter: listeners and per-connection tasks around the Router.

    srv = RelayServer(router, host="127.0.0.1", port=7880, ws_port=7881, http_port=7882,
                      ssl=None, serial=None, serial_baud=115200, log=sys.stderr,
                      http_host="127.0.0.1")   # the HTTP port stays on loopback by default
    await srv.start()          # binds every listener; srv.urls lists them (real ports)
    await srv.serve()          # until stop() (or request_stop() from a signal handler)
    await srv.stop()           # LEAVE 5 to everyone, flush (bounded), close listeners

Port 0 binds an ephemeral port; `None` (or http_port 0 from the CLI) disables a listener.
Each connection has a reader task (paused while the Router says so) and a writer task
that writes the Router's SENDs in order and reports them `drained` once the transport
took them (TCP: after drain(); WebSocket: after send()). A CLOSE flushes what is queued,
then closes; a receiver that cannot take it within CLOSE_GRACE_S is aborted.
The serial bridge treats the line as one link connection at a time: when that connection
ends (LEAVE, error, timeout), a new one starts on the same line for the next JOIN.
"""
import asyncio
import collections
import json
import sys
import time

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from lkedge import link

from . import router as rt

CLOSE_GRACE_S = 1.0
READ_SIZE = 65536
_HTTP_LIMIT = 8192


def now_ms():
    return int(time.monotonic() * 1000)


def _fmt(v):
    s = str(v)
    if not s or any(ch in s for ch in ' "=\\') or any(ord(ch) < 32 for ch in s):
        return json.dumps(s)
    return s


def log_line(stream, event, fields):
    """One key=value line (values with spaces or quotes JSON-quoted)."""
    parts = ["ts=%s" % time.strftime("%Y-%m-%dT%H:%M:%S"), "event=%s" % event]
    parts += ["%s=%s" % (k, _fmt(v)) for k, v in fields.items()]
    stream.write(" ".join(parts) + "\n")
    stream.flush()


class _Link:
    """One link connection: a byte source and sink the subclasses implement."""
    kind = "?"

    def __init__(self, server, cid, peer):
        self.server = server
        self.cid = cid
        self.peer = peer
        self.out = collections.deque()
        self.wake = asyncio.Event()
        self.readable = asyncio.Event()
        self.readable.set()
        self.closing = False
        self.writer_task = None
        self.abort_handle = None

    # --- subclass hooks
    async def read(self):
        raise NotImplementedError

    async def write(self, data):
        raise NotImplementedError

    async def close_transport(self):
        raise NotImplementedError

    def abort_transport(self):
        raise NotImplementedError

    # --- driven by the server
    def enqueue(self, data):
        self.out.append(data)
        self.wake.set()

    def finish(self):
        if not self.closing:
            self.closing = True
            self.readable.set()        # a paused reader must notice the close
            self.wake.set()
            self.abort_handle = asyncio.get_running_loop().call_later(CLOSE_GRACE_S, self._abort)

    def _abort(self):
        if self.writer_task is not None and not self.writer_task.done():
            self.writer_task.cancel()
        self.abort_transport()

    async def run(self):
        srv = self.server
        srv.router.open(self.cid, now_ms(), transport=self.kind, peer=self.peer)
        srv.links[self.cid] = self
        srv.apply()
        self.writer_task = asyncio.ensure_future(self._writer())
        reason = "transport closed"
        try:
            while not self.closing:
                await self.readable.wait()
                if self.closing:
                    break
                data = await self.read()
                if not data:
                    break
                srv.router.receive(self.cid, data, now_ms())
                srv.apply()
        except _PeerError as e:
            srv.router.fail(self.cid, e.code, str(e), now_ms())
        except (OSError, EOFError) as e:
            reason = "transport error: %s" % (str(e) or e.__class__.__name__)
        except ConnectionClosed as e:
            reason = "WebSocket closed: %s" % e
        srv.router.closed(self.cid, now_ms(), reason)
        srv.apply()
        self.finish()
        try:
            await self.writer_task
        except asyncio.CancelledError:
            pass
        srv.links.pop(self.cid, None)

    async def _writer(self):
        srv = self.server
        try:
            while True:
                while self.out:
                    data = self.out.popleft()
                    await self.write(data)
                    srv.router.drained(self.cid, len(data), now_ms())
                    srv.apply()
                if self.closing:
                    break
                self.wake.clear()
                await self.wake.wait()
        except asyncio.CancelledError:
            pass
        except (OSError, ConnectionClosed):   # the peer went away: nothing to flush to
            pass
        finally:
            if self.abort_handle is not None:
                self.abort_handle.cancel()
            try:
                await asyncio.wait_for(self.close_transport(), CLOSE_GRACE_S)
            except Exception:
                self.abort_transport()


class _PeerError(Exception):
    """The peer broke the transport's rules (the router answers LEAVE code, default 4)."""

    def __init__(self, reason, code=link.LEAVE_PROTOCOL):
        super().__init__(reason)
        self.code = code


class _BoundedWsConnection(ServerConnection):
    """websockets writes its automatic replies (a pong for every ping) whether or not
    the peer reads them, and keeps reading meanwhile: a peer that pings and never reads
    would grow the write buffer without bound. Past `write_cap` bytes it is aborted and
    `overflow` says why (its link gets LEAVE 6: a receiver stuck)."""
    write_cap = 1 << 20
    overflow = None

    def data_received(self, data):
        super().data_received(data)
        size = self.transport.get_write_buffer_size()
        if size > self.write_cap and self.overflow is None:
            self.overflow = ("WebSocket peer does not read: %d bytes of writes and automatic "
                             "replies (pongs) queued, over %d" % (size, self.write_cap))
            self.transport.abort()


class _StreamLink(_Link):
    kind = "tcp"

    def __init__(self, server, cid, reader, writer, kind):
        peer = writer.get_extra_info("peername")
        super().__init__(server, cid, "%s:%s" % peer[:2] if peer else "")
        self.kind = kind
        self.r = reader
        self.w = writer

    async def read(self):
        return await self.r.read(READ_SIZE)

    async def write(self, data):
        self.w.write(data)
        await self.w.drain()

    async def close_transport(self):
        self.w.close()
        await self.w.wait_closed()

    def abort_transport(self):
        self.w.transport.abort()


class _WsLink(_Link):
    kind = "ws"

    def __init__(self, server, cid, ws, kind):
        peer = ws.remote_address
        super().__init__(server, cid, "%s:%s" % peer[:2] if peer else "")
        self.kind = kind
        self.ws = ws

    async def read(self):
        while True:     # an empty binary message carries no bytes: wait for the next
            try:
                msg = await self.ws.recv()
            except ConnectionClosed:
                if getattr(self.ws, "overflow", None):
                    raise _PeerError(self.ws.overflow, link.LEAVE_IDLE)
                raise
            if isinstance(msg, str):
                raise _PeerError("text WebSocket message: the link is carried in binary messages")
            if msg:
                return msg

    async def write(self, data):
        await self.ws.send(data)

    async def close_transport(self):
        await self.ws.close()

    def abort_transport(self):
        self.ws.transport.abort()


class _SerialLink(_Link):
    kind = "serial"

    def __init__(self, server, cid, port, device):
        super().__init__(server, cid, device)
        self.port = port

    async def read(self):
        loop = asyncio.get_running_loop()
        while True:
            # read() returns after its 0.1 s timeout with b"" when the line is quiet
            data = await loop.run_in_executor(None, self.port.read, READ_SIZE)
            if data or self.closing:
                return data

    async def write(self, data):
        await asyncio.get_running_loop().run_in_executor(None, self.port.write, bytes(data))

    async def close_transport(self):
        pass        # the line stays open for the next link connection

    def abort_transport(self):
        pass


class RelayServer:
    def __init__(self, router, host="127.0.0.1", port=7880, ws_port=7881, http_port=7882,
                 ssl=None, serial=None, serial_baud=115200, log=None, http_host="127.0.0.1"):
        self.router = router
        self.host = host
        # /healthz and /metrics name rooms and identities and need no token: loopback
        # unless asked otherwise, whatever address the link listens on
        self.http_host = http_host
        self.port = port
        self.ws_port = ws_port
        self.http_port = http_port
        self.ssl = ssl
        self.serial = serial
        self.serial_baud = serial_baud
        self.log = log if log is not None else sys.stderr
        self.links = {}
        self.urls = []
        self.addresses = {}      # "tcp"/"ws"/"http"/"serial" -> (host, port) or device
        self._next_cid = 0
        self._servers = []
        self._tasks = []
        self._stopped = asyncio.Event()
        self._stopping = False

    # ------------------------------------------------------------ router glue
    def apply(self):
        for a in self.router.pop_actions():
            kind = a[0]
            if kind == rt.LOG:
                log_line(self.log, a[1], a[2])
                continue
            ln = self.links.get(a[1])
            if ln is None:
                continue
            if kind == rt.SEND:
                ln.enqueue(a[2])
            elif kind == rt.CLOSE:
                ln.finish()
            elif kind == rt.PAUSE:
                ln.readable.clear()
            elif kind == rt.RESUME:
                ln.readable.set()

    def _cid(self):
        self._next_cid += 1
        return self._next_cid

    # ------------------------------------------------------------ listeners
    async def start(self):
        tls = self.ssl is not None
        if self.port is not None:
            s = await asyncio.start_server(self._on_tcp, self.host, self.port, ssl=self.ssl)
            self._servers.append(s)
            self._add_url("tls" if tls else "tcp", s)
        if self.ws_port is not None:
            from websockets.asyncio.server import serve
            mf = self.router.max_frame
            # room for one frame being sent (the writer waits for each) and then some
            conn = type("_WsConnection", (_BoundedWsConnection,),
                        {"write_cap": 2 * (mf + link.STAMP_ROOM) + (1 << 20)})
            s = await serve(self._on_ws, self.host, self.ws_port, ssl=self.ssl,
                            compression=None, ping_interval=None,
                            max_size=max(4 * mf, 1 << 20), create_connection=conn)
            self._servers.append(s)
            self._add_url("wss" if tls else "ws", s)
        if self.http_port is not None:
            s = await asyncio.start_server(self._on_http, self.http_host, self.http_port)
            self._servers.append(s)
            self._add_url("http", s)
        if self.serial:
            import serial
            port = serial.Serial(self.serial, self.serial_baud, timeout=0.1, write_timeout=5)
            self._tasks.append(asyncio.ensure_future(self._serial_loop(port)))
            self.urls.append("serial:" + self.serial)
            self.addresses["serial"] = self.serial
        self._tasks.append(asyncio.ensure_future(self._timer()))
        return self.urls

    def _add_url(self, scheme, server):
        sock = server.sockets[0]
        host, port = sock.getsockname()[:2]
        shown = "[%s]" % host if ":" in host else host
        self.urls.append("%s://%s:%d" % (scheme, shown, port))
        self.addresses[{"tls": "tcp", "wss": "ws"}.get(scheme, scheme)] = (host, port)

    async def _on_tcp(self, reader, writer):
        if self._stopping:
            writer.close()
            return
        await _StreamLink(self, self._cid(), reader, writer,
                          "tls" if self.ssl else "tcp").run()

    async def _on_ws(self, ws):
        if self._stopping:
            await ws.close()
            return
        await _WsLink(self, self._cid(), ws, "wss" if self.ssl else "ws").run()

    async def _serial_loop(self, port):
        try:
            while not self._stopping:
                t0 = time.monotonic()
                await _SerialLink(self, self._cid(), port, self.serial).run()
                if time.monotonic() - t0 < 1 and not self._stopping:
                    await asyncio.sleep(1)  # ended at once (e.g. relay full): no tight loop
        finally:
            port.close()

    async def _timer(self):
        while True:
            d = self.router.next_deadline()
            wait = 0.25 if d is None else min(0.25, max(0.005, (d - now_ms()) / 1000))
            await asyncio.sleep(wait)
            self.router.tick(now_ms())
            self.apply()

    # ------------------------------------------------------------ HTTP
    async def _on_http(self, reader, writer):
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            status, ctype, body = self._http_route(line)
        except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, asyncio.TimeoutError,
                ValueError, UnicodeError):
            status, ctype, body = "400 Bad Request", "text/plain", "bad request\n"
        except (OSError, ConnectionError):
            writer.close()
            return
        data = body.encode()
        writer.write(("HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                      "Connection: close\r\n\r\n" % (status, ctype, len(data))).encode() + data)
        try:
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        except (OSError, ConnectionError):
            pass

    def _http_route(self, line):
        if len(line) != 3 or line[0] not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", "only GET /healthz and /metrics\n"
        path = line[1].split("?", 1)[0]
        if path == "/healthz":
            rooms = self.router.rooms()
            info = {"status": "ok", "connections": self.router.connection_count(),
                    "rooms": {r: {"participants": len(m), "identities": m} for r, m in rooms.items()}}
            return "200 OK", "text/plain; charset=utf-8", "ok\n" + json.dumps(info, sort_keys=True) + "\n"
        if path == "/metrics":
            self.router.queue_gauges()
            return ("200 OK", "text/plain; version=0.0.4; charset=utf-8",
                    self.router.metrics.render())
        return "404 Not Found", "text/plain", "not found: %s (try /healthz or /metrics)\n" % path

    # ------------------------------------------------------------ lifecycle
    def request_stop(self):
        self._stopped.set()

    async def serve(self):
        await self._stopped.wait()
        await self.stop()

    async def stop(self):
        if self._stopping:
            return
        self._stopping = True
        self._stopped.set()
        self.router.shutdown(now_ms())
        self.apply()
        # flush every LEAVE 5 first: closing the WebSocket server would close its
        # connections before their LEAVE is written
        pending = [ln for ln in list(self.links.values())]
        if pending:
            await asyncio.wait([asyncio.ensure_future(self._wait_link(ln)) for ln in pending],
                               timeout=CLOSE_GRACE_S + 1)
        for s in self._servers:
            s.close()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        for s in self._servers:
            try:
                await asyncio.wait_for(s.wait_closed(), 2)
            except (asyncio.TimeoutError, Exception):
                pass

    async def _wait_link(self, ln):
        while self.links.get(ln.cid) is ln:
            await asyncio.sleep(0.01)
