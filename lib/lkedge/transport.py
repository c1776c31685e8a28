"""Byte transports to the relay (LINK.md "Transport"): tcp://, tls://, ws://, wss://.

Runs unchanged on MicroPython asyncio and CPython asyncio.

    t = open_transport(url, timeout_ms=10000, ssl=None, verify=True, cadata=None,
                       cafile=None, server_hostname=None, headers=None,
                       rx_size=256, tx_chunk=512)
    await t.connect()          -> the transport itself (the LINK JOIN exchange is
                                  room.py's job: a transport only carries bytes)
    n = await t.read_into(buf) -> bytes read into buf (a bytearray or memoryview),
                                  at least 1; 0 once the peer closed the stream
    await t.write(data)        bytes-like, written whole (drained) before returning; a
                               transport keeps no reference to data (the caller
                               reuses its buffer for the next frame). Cancelled inside
                               write(), t.sent says how many bytes of data went out:
                               `await t.write(data[t.sent:])` goes on exactly there
                               (PacketSender finishes a frame so; a WebSocket transport
                               finishes its message first, so its sent is all of data)
    await t.close()            idempotent
    t.url, t.close_code, t.close_reason   (close_* set for WebSocket closes)

Every failure is a TransportError (an OSError) whose message names the URL and the
cause: bad URL, unresolvable host, refused connection, timeout, TLS failure, refused
WebSocket upgrade (the server's status line is shown), WebSocket protocol violation.

Options: `ssl` a ready SSLContext (either runtime); otherwise one is made: `verify`
False skips certificate checks; `cadata` (PEM or DER bytes) / `cafile` (path) is the
CA to trust. `timeout_ms` bounds connecting, and finishing a write that was cancelled
halfway (a link that takes longer does not drain: it is closed, and the write fails).
`headers` extra WebSocket upgrade headers. `rx_size` the WebSocket
frame-header read buffer, `tx_chunk` the WebSocket masking buffer (both allocated once).
The WebSocket options are accepted (and ignored) on tcp:// and tls:// too, so one
set of options fits every URL.

A module is loaded whole on MicroPython, and on the unix port its bytecode lives in the
heap, so this one holds only what a board on tcp:// runs; the rest is imported on use:
    lkedge.tls         SSLContext from verify/cadata/cafile   (tls://, wss:// without ssl=)
    lkedge.ws          WebSocketTransport and its codec        (ws://, wss://)
    lkedge.hoststream  asyncio's (reader, writer) pair as one stream (CPython only)

Runtime differences (MicroPython unix port 1.29, mbedTLS):
- MicroPython has no system CA store: verify=True needs cadata or cafile. Only the
  first certificate of a PEM bundle is loaded (its SSLContext takes one DER cert).
- MicroPython's asyncio starts TLS lazily: on tls:// the handshake (and so a bad
  certificate) surfaces at the first write or read, as a TransportError saying so;
  on wss:// the upgrade request is that first write, so connect() reports it.
- DNS lookup on MicroPython blocks the event loop (its getaddrinfo is synchronous).
- Reads on the board go straight into the caller's buffer (Stream.readinto); on
  CPython StreamReader.read() returns new bytes that are copied into it.
"""
import asyncio
import sys

from .clock import wait_for

_SCHEMES = ("tcp", "tls", "ws", "wss")


class TransportError(OSError):
    """A transport failed; the message names the URL and the cause."""

    def __init__(self, url, cause):
        super().__init__("%s: %s" % (url, cause))
        self.url = url
        self.cause = cause


def parse_url(url):
    """-> (scheme, host, port, path). Raises TransportError on anything malformed."""
    if not isinstance(url, str):
        raise TransportError(repr(url), "a transport URL must be a str")
    i = url.find("://")
    if i <= 0:
        raise TransportError(url, "not a URL (expected scheme://host:port, scheme one of %s)" % ", ".join(_SCHEMES))
    scheme = url[:i].lower()
    if scheme not in _SCHEMES:
        raise TransportError(url, "unsupported scheme %r (supported: %s)" % (scheme, ", ".join(_SCHEMES)))
    hp = url[i + 3:]
    j = hp.find("/")
    hp, path = (hp, "/") if j < 0 else (hp[:j], hp[j:])
    if scheme in ("tcp", "tls") and path != "/":
        raise TransportError(url, "a %s:// URL has no path (got %r)" % (scheme, path))
    # host[:port] or [IPv6]:port
    if "@" in hp:
        raise TransportError(url, "credentials in the URL are not supported")
    if hp.startswith("["):  # IPv6 literal
        k = hp.find("]")
        if k < 0:
            raise TransportError(url, "unclosed '[' in the host")
        host, tail = hp[1:k], hp[k + 1:]
        if tail and not tail.startswith(":"):
            raise TransportError(url, "junk %r after the IPv6 address" % tail)
        port = tail[1:]
    else:
        k = hp.rfind(":")
        host, port = (hp, "") if k < 0 else (hp[:k], hp[k + 1:])
    if not host:
        raise TransportError(url, "missing host")
    if not port:
        if scheme in ("tcp", "tls"):
            raise TransportError(url, "missing port (%s://host:port)" % scheme)
        port = 443 if scheme == "wss" else 80
    elif not port.isdigit() or not 0 < int(port) < 65536:
        raise TransportError(url, "bad port %r (expected 1..65535)" % port)
    return scheme, host, int(port), path


def open_transport(url, **opts):
    """A not yet connected Transport for url (see the module docstring)."""
    scheme, host, port, path = parse_url(url)
    if scheme[0] == "w":  # ws, wss
        from .ws import WebSocketTransport
        return WebSocketTransport(url, scheme == "wss", host, port, path, **opts)
    return StreamTransport(url, scheme == "tls", host, port, **opts)


class StreamTransport:
    """tcp:// and tls://: the byte stream is the socket itself. Also the base of
    ws.WebSocketTransport, which frames its bytes.

    self._s is the connected stream (None when not connected) with the interface of
    MicroPython's asyncio.Stream: readinto, readline, write + drain, close +
    wait_closed. On CPython it is a hoststream.Stream over asyncio's pair."""

    close_code = None
    close_reason = ""
    sent = 0          # bytes of the last write's data that went out (see write)
    _guard = None     # the task closing a link whose cancelled write does not finish
    _holds = 0        # writers finishing a cancelled write (_hold)
    _gone = None      # why the connection ended (a TransportError): what later reads and
                      # writes report, not the EBADF of a socket closed under them
    _s = None
    _sock = None      # MicroPython: the socket under _s, written without its buffer
    _closed = False

    def __init__(self, url, tls, host, port, ssl=None, verify=True, cadata=None, cafile=None,
                 server_hostname=None, timeout_ms=10000, headers=None, rx_size=0, tx_chunk=0):
        # headers, rx_size, tx_chunk: WebSocket options (ws.WebSocketTransport takes
        # them first); accepted here so that one set of options fits every URL.
        self.url = url
        self._host = host
        self._port = port
        self._timeout_ms = timeout_ms
        self._tls = (ssl, verify, cadata, cafile, server_hostname or host) if tls else None

    async def connect(self):
        if self._s is not None:
            raise TransportError(self.url, "already connected")
        self._closed = False
        self._gone = None
        try:
            await wait_for(self._connect(), self._timeout_ms / 1000)
        except Exception as e:
            if isinstance(e, asyncio.TimeoutError):
                await self._abort()
                raise TransportError(self.url, "connect timed out after %d ms" % self._timeout_ms)
            raise await self._drop(e, "")
        return self

    async def _connect(self):
        """Open the TCP connection (and TLS on it) into self._s."""
        host, port, tls = self._host, self._port, self._tls
        ctx = None
        if tls:
            ctx = tls[0]
            if ctx is None:
                from .tls import make_context
                ctx = make_context(self.url, tls[1], tls[2], tls[3])
        if sys.implementation.name != "micropython":
            from .hoststream import open_stream
            self._s = await open_stream(host, port, ctx, tls and tls[4])
            return
        s, _ = await asyncio.open_connection(host, port)
        # MicroPython's open_connection returns once the socket is writable, which is
        # also how a failed connect ends; connecting again reports the real outcome.
        sock = getattr(s, "s", None)
        if sock is not None and hasattr(sock, "connect"):
            import socket
            try:
                sock.connect(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][-1])
            except OSError as e:
                if e.errno not in (106, 114, 115):  # EISCONN, EALREADY, EINPROGRESS: connected or on its way
                    sock.close()
                    raise
            # Each frame is a write of its own (an ack, then its answer): with Nagle's
            # algorithm the second waits for the peer's delayed ACK, ~40 ms a call.
            # Ports that support it name TCP_NODELAY (esp32, rp2); the unix port passes
            # Linux's numbers through.
            if hasattr(socket, "TCP_NODELAY") or sys.platform == "linux":
                try:
                    sock.setsockopt(getattr(socket, "IPPROTO_TCP", 6), getattr(socket, "TCP_NODELAY", 1), 1)
                except OSError:
                    pass
        if ctx is not None:
            # TLS after the TCP check, so that a refused port is not reported as a TLS error.
            sock = ctx.wrap_socket(sock, server_hostname=tls[4], do_handshake_on_connect=False)
            sock.setblocking(False)
            s = asyncio.StreamReader(sock)
        self._sock = getattr(s, "s", None)
        if not hasattr(s, "readinto"):  # a MicroPython older than Stream.readinto
            from .hoststream import Stream
            s = Stream(s, s)
        self._s = s

    async def read_into(self, buf):
        s = self._s
        if s is None:
            return 0
        try:
            while True:
                n = await s.readinto(buf)
                if n is not None:  # None: a TLS record is still incomplete (MicroPython)
                    return n
        except Exception as e:
            raise await self._drop(e, "read")

    async def write(self, data):
        self.sent = 0
        s = self._s
        if s is None:
            raise self._gone or TransportError(self.url, "not connected")
        try:
            w = self._sock
            if w is None:  # CPython: the stream takes all of data at once, then drains
                s.write(data)
                self.sent = len(data)
                await s.drain()
                return
            # MicroPython: Stream.drain forgets how much it wrote when cancelled (and
            # would write it again), so the socket is written here and self.sent
            # counts: a frame cancelled halfway can be finished instead of ending
            # the link. A full socket is polled, not waited on in asyncio's IO queue:
            # a task cancelled there takes the socket's whole entry with it, the
            # reader's wait too, and the link would be read no more. Nothing is
            # allocated unless the socket is full.
            self.sent = w.write(data) or 0
            if self.sent == len(data):
                await asyncio.sleep(0)  # as Stream.drain: other tasks' frames get a turn
                return
            mv = data if isinstance(data, memoryview) else memoryview(data)
            ms = 1
            while self.sent < len(mv):
                await asyncio.sleep_ms(ms)
                if self._sock is not w:   # closed meanwhile (a TLS socket may not raise)
                    raise self._gone or TransportError(self.url, "closed")
                n = w.write(mv[self.sent:])
                if n:
                    self.sent += n
                    ms = 1
                elif ms < 8:
                    ms *= 2
        except Exception as e:
            raise await self._drop(e, "write")

    def _hold(self, on):
        """A write cancelled halfway is being finished (PacketSender, WebSocket): if
        that takes timeout_ms, the link does not drain and is closed (the write fails).
        Called with False once it is done; nested (a WebSocket message inside a frame)."""
        self._holds += 1 if on else -1
        g = self._guard
        if on and g is None:
            self._guard = asyncio.create_task(self._close_late(asyncio.current_task()))
        elif not self._holds and g is not None:
            self._guard = None
            g.cancel()

    async def _close_late(self, task):
        await asyncio.sleep(self._timeout_ms / 1000)
        self._guard = None
        self._closing("closed: a write cancelled halfway did not finish within %d ms" % self._timeout_ms)
        task.cancel()  # before the close can yield: it then finds the link closed
        await self._abort()

    async def close(self):
        self._closing("closed")
        await self._abort()

    def _closing(self, why):
        self._closed = True
        if self._gone is None:
            self._gone = TransportError(self.url, why)

    async def _abort(self):
        s, self._s = self._s, None
        self._sock = None
        if s is not None:
            try:
                s.close()
                await s.wait_closed()  # MicroPython: this is what closes the socket
            except Exception:  # closing a broken connection: nothing left to report
                pass

    async def _drop(self, e, what):
        """Drop the connection after exception e; -> the TransportError to raise,
        "<what> failed: <cause>" (just the cause when what is ""), or the one that ended
        it first (a read woken by a failed write's close says why the write failed)."""
        await self._abort()
        if self._gone is not None:
            return self._gone
        # a MemoryError as it is: no heap is not the link's fault (Room says it so)
        if isinstance(e, (TransportError, MemoryError)):
            self._gone = e
            return e
        s = str(e).strip()
        name = type(e).__name__
        if "addrinfo" in s or name == "gaierror":
            s = "cannot resolve the host (%s)" % s
        elif getattr(e, "errno", None) == 111 or name == "ConnectionRefusedError":
            s = "connection refused"
        elif "MBEDTLS" in s or "certificate" in s.lower() or "SSL" in name:
            s = "TLS handshake failed: " + s
        else:
            s = "%s: %s" % (name, s) if s else name
        self._gone = TransportError(self.url, "%s failed: %s" % (what, s) if what else s)
        return self._gone
