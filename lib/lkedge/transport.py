"""Byte transports to the relay (LINK.md "Transport"): tcp://, tls://, ws://, wss://.

Runs unchanged on MicroPython asyncio and CPython asyncio.

    t = open_transport(url, timeout_ms=10000, ssl=None, verify=True, cadata=None,
                       cafile=None, server_hostname=None, headers=None,
                       rx_size=256, tx_chunk=512)
    await t.connect()          -> the transport itself (the LINK JOIN exchange is
                                  room.py's job: a transport only carries bytes)
    n = await t.read_into(buf) -> bytes read into buf (a bytearray or memoryview),
                                  at least 1; 0 once the peer closed the stream
    await t.write(data)        bytes-like, written whole (drained) before returning
    await t.close()            idempotent
    t.url, t.close_code, t.close_reason   (close_* set for WebSocket closes)

Every failure is a TransportError (an OSError) whose message names the URL and the
cause: bad URL, unresolvable host, refused connection, timeout, TLS failure, refused
WebSocket upgrade (the server's status line is shown), WebSocket protocol violation.

Options: `ssl` a ready SSLContext (either runtime); otherwise one is made: `verify`
False skips certificate checks; `cadata` (PEM or DER bytes) / `cafile` (path) is the
CA to trust. `headers` extra WebSocket upgrade headers. `rx_size` the WebSocket
frame-header read buffer, `tx_chunk` the WebSocket masking buffer (both allocated once).

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

ws = None  # lkedge.ws, imported on first WebSocket use: a tcp:// board does not pay for it
_MICROPYTHON = sys.implementation.name == "micropython"
_DEFAULT_PORTS = {"ws": 80, "wss": 443}
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
    rest = url[i + 3:]
    j = rest.find("/")
    hostport, path = (rest, "/") if j < 0 else (rest[:j], rest[j:])
    if scheme in ("tcp", "tls") and path != "/":
        raise TransportError(url, "a %s:// URL has no path (got %r)" % (scheme, path))
    host, port = _split_hostport(url, scheme, hostport)
    return scheme, host, port, path


def _split_hostport(url, scheme, hp):
    if "@" in hp:
        raise TransportError(url, "credentials in the URL are not supported")
    if hp.startswith("["):  # IPv6 literal
        k = hp.find("]")
        if k < 0:
            raise TransportError(url, "unclosed '[' in the host")
        host, tail = hp[1:k], hp[k + 1:]
        if tail and not tail.startswith(":"):
            raise TransportError(url, "junk %r after the IPv6 address" % tail)
        port_s = tail[1:] if tail else None
    else:
        k = hp.rfind(":")
        host, port_s = (hp, None) if k < 0 else (hp[:k], hp[k + 1:])
    if not host:
        raise TransportError(url, "missing host")
    if port_s is None or port_s == "":
        if scheme not in _DEFAULT_PORTS:
            raise TransportError(url, "missing port (%s://host:port)" % scheme)
        return host, _DEFAULT_PORTS[scheme]
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise TransportError(url, "bad port %r (expected 1..65535)" % port_s)
    return host, int(port_s)


def open_transport(url, **opts):
    """A not yet connected Transport for url (see the module docstring)."""
    scheme, host, port, path = parse_url(url)
    if scheme in ("ws", "wss"):
        return WebSocketTransport(url, scheme == "wss", host, port, path, **opts)
    return StreamTransport(url, scheme == "tls", host, port, **opts)


# ------------------------------------------------------------------ TLS context
def _pem_to_der(pem):
    """The first certificate of a PEM text as DER (MicroPython's SSLContext wants DER)."""
    import binascii
    begin, end = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"
    i = pem.find(begin)
    j = pem.find(end, i + 1)
    if i < 0 or j < 0:
        raise ValueError("no PEM certificate in the CA data")
    body = pem[i + len(begin):j].replace(b"\r", b"").replace(b"\n", b"")
    return binascii.a2b_base64(body)


def _make_ssl_context(url, verify, cadata, cafile):
    import ssl
    if cafile is not None:
        with open(cafile, "rb") as f:
            cadata = f.read()
    if isinstance(cadata, str):
        cadata = cadata.encode()
    if not _MICROPYTHON:
        ctx = ssl.create_default_context()
        if cadata is not None:
            ctx.load_verify_locations(cadata=cadata.decode() if cadata.lstrip().startswith(b"-----") else cadata)
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if not verify:
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if cadata is None:
        raise TransportError(url, "certificate verification needs cadata= or cafile= on MicroPython "
                                  "(no system CA store); pass verify=False to skip it")
    if cadata.lstrip().startswith(b"-----"):
        cadata = _pem_to_der(cadata)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=cadata)
    return ctx


def _describe(e):
    """A short cause for an exception from the socket/TLS layers."""
    s = str(e)
    name = type(e).__name__
    if "addrinfo" in s or name == "gaierror":
        return "cannot resolve the host (%s)" % s
    errno = getattr(e, "errno", None)
    if errno == 111 or name == "ConnectionRefusedError":
        return "connection refused"
    if "MBEDTLS" in s or "certificate" in s.lower() or "SSL" in name:
        return "TLS handshake failed: %s" % s.strip()
    return "%s: %s" % (name, s.strip()) if s else name


# ------------------------------------------------------------------ raw stream
class _Raw:
    """An asyncio (reader, writer) pair with one behaviour on both runtimes."""

    def __init__(self, reader, writer):
        self.r = reader
        self.w = writer
        self._readinto = getattr(reader, "readinto", None) if _MICROPYTHON else None

    async def readinto(self, mv):
        if self._readinto is not None:
            while True:
                n = await self._readinto(mv)
                if n is not None:  # None: a TLS record is still incomplete
                    return n
        data = await self.r.read(len(mv))  # CPython, or an old MicroPython without readinto
        n = len(data)
        mv[:n] = data
        return n

    async def readline(self):
        return await self.r.readline()

    async def write(self, data):
        if not _MICROPYTHON and not isinstance(data, bytes):
            data = bytes(data)  # CPython transports keep a reference to what they get
        self.w.write(data)
        await self.w.drain()

    async def close(self):
        try:
            self.w.close()
            await self.w.wait_closed()
        except Exception:  # closing a broken connection: nothing left to report
            pass


async def _open_raw(url, tls, host, port, o):
    ctx = None
    if tls:
        ctx = o["ssl"] or _make_ssl_context(url, o["verify"], o["cadata"], o["cafile"])
    sni = o["server_hostname"] or host
    if not _MICROPYTHON:
        r, w = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=sni if tls else None)
        return _Raw(r, w)
    r, w = await asyncio.open_connection(host, port)
    _check_connected(r, host, port)
    if ctx is None:
        return _Raw(r, w)
    # TLS after the TCP check, so that a refused port is not reported as a TLS error.
    s = ctx.wrap_socket(r.s, server_hostname=sni, do_handshake_on_connect=False)
    s.setblocking(False)
    st = asyncio.StreamReader(s)
    return _Raw(st, st)


def _check_connected(stream, host, port):
    # MicroPython's open_connection returns once the socket is writable, which is
    # also how a failed connect ends; connecting again reports the real outcome.
    s = getattr(stream, "s", None)
    if s is None or not hasattr(s, "connect"):
        return
    import socket
    try:
        s.connect(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][-1])
    except OSError as e:
        if e.errno not in (106, 114, 115):  # EISCONN, EALREADY, EINPROGRESS: connected or on its way
            s.close()
            raise


def _options(ssl=None, verify=True, cadata=None, cafile=None, server_hostname=None,
             timeout_ms=10000, headers=None, rx_size=256, tx_chunk=512):
    return {"ssl": ssl, "verify": verify, "cadata": cadata, "cafile": cafile,
            "server_hostname": server_hostname, "timeout_ms": timeout_ms,
            "headers": headers, "rx_size": rx_size, "tx_chunk": tx_chunk}


class _Base:
    def __init__(self, url, tls, host, port, opts):
        self.url = url
        self._tls = tls
        self._host = host
        self._port = port
        self._o = _options(**opts)
        self._raw = None
        self._closed = False
        self.close_code = None
        self.close_reason = ""

    async def connect(self):
        if self._raw is not None:
            raise TransportError(self.url, "already connected")
        self._closed = False
        try:
            await asyncio.wait_for(self._connect(), self._o["timeout_ms"] / 1000)
        except TransportError:
            await self._abort()
            raise
        except asyncio.TimeoutError:
            await self._abort()
            raise TransportError(self.url, "connect timed out after %d ms" % self._o["timeout_ms"])
        except Exception as e:
            await self._abort()
            raise TransportError(self.url, _describe(e))
        return self

    async def _abort(self):
        raw, self._raw = self._raw, None
        if raw is not None:
            await raw.close()

    def _io_error(self, e, doing):
        if isinstance(e, TransportError):
            return e
        return TransportError(self.url, "%s failed: %s" % (doing, _describe(e)))

    def _live(self):
        if self._raw is None:
            raise TransportError(self.url, "closed" if self._closed else "not connected")
        return self._raw


class StreamTransport(_Base):
    """tcp:// and tls://: the byte stream is the socket itself."""

    def __init__(self, url, tls, host, port, **opts):
        _Base.__init__(self, url, tls, host, port, opts)

    async def _connect(self):
        self._raw = await _open_raw(self.url, self._tls, self._host, self._port, self._o)

    async def read_into(self, buf):
        raw = self._raw
        if raw is None:
            return 0
        mv = buf if isinstance(buf, memoryview) else memoryview(buf)
        try:
            return await raw.readinto(mv)
        except Exception as e:
            await self._abort()
            raise self._io_error(e, "read")

    async def write(self, data):
        raw = self._live()
        try:
            await raw.write(data)
        except Exception as e:
            await self._abort()
            raise self._io_error(e, "write")

    async def close(self):
        self._closed = True
        await self._abort()


class WebSocketTransport(_Base):
    """ws:// and wss://: binary messages carry the byte stream (one per write())."""

    def __init__(self, url, tls, host, port, path, **opts):
        global ws
        if ws is None:
            from . import ws as m
            ws = m
        _Base.__init__(self, url, tls, host, port, opts)
        self._path = path
        default = 443 if tls else 80
        h = "[%s]" % host if ":" in host else host
        self._host_header = h if port == default else "%s:%d" % (h, port)
        self._rx = memoryview(bytearray(self._o["rx_size"]))
        self._enc = ws.FrameEncoder(self._o["tx_chunk"])
        self._dec = None
        self._lock = asyncio.Lock()
        self._pong = None       # latest PING payload owed a PONG while a write held the lock
        self._sent_close = False

    async def _connect(self):
        self._raw = await _open_raw(self.url, self._tls, self._host, self._port, self._o)
        key = ws.new_key()
        await self._raw.write(ws.handshake_request(self._host_header, self._path, key, self._o["headers"]))
        parser = ws.ResponseParser(key)
        while not parser.done:
            line = await self._raw.readline()
            if not line:
                raise TransportError(self.url, "connection closed during the WebSocket handshake%s"
                                     % (" (after %r)" % parser.status if parser.status else ""))
            try:
                parser.feed(line)
            except ws.HandshakeError as e:
                raise TransportError(self.url, "WebSocket handshake failed: %s" % e)
        self._dec = ws.FrameDecoder()
        self._sent_close = False
        self.close_code = None
        self.close_reason = ""

    async def read_into(self, buf):
        if self._raw is None:
            return 0
        mv = buf if isinstance(buf, memoryview) else memoryview(buf)
        try:
            return await self._read(mv)
        except ws.WSError as e:
            await self._fail(ws.CLOSE_PROTOCOL_ERROR, "protocol error")
            raise TransportError(self.url, "WebSocket protocol error from the server: %s" % e)
        except TransportError:
            raise
        except Exception as e:
            await self._abort()
            raise self._io_error(e, "read")

    async def _read(self, mv):
        dec = self._dec
        while True:
            ev = dec.next_event()
            if ev == ws.DATA:
                n = dec.take(mv)
                if n:
                    return n
            elif ev == ws.PING:
                await self._answer_ping(dec.control)
            elif ev == ws.CLOSE:
                self.close_code = dec.close_code
                self.close_reason = dec.close_reason
                code = dec.close_code if dec.close_code != ws.CLOSE_NO_STATUS else None
                await self._fail(code, "")
                return 0
            elif ev == ws.NEED_DATA:
                n = await self._fill(dec, mv)
                if n < 0:
                    return 0
                if n:
                    return n
            # PONG: nothing owed

    async def _fill(self, dec, mv):
        """Read from the socket: payload straight into mv, headers into the rx buffer.
        Returns payload bytes delivered, 0 for 'decode more', -1 at end of stream."""
        raw = self._raw
        if raw is None:
            return -1
        left = dec.payload_left
        if left:
            n = await raw.readinto(mv if left >= len(mv) else mv[:left])
            if n:
                dec.payload_read(n)
                return n
        else:
            n = await raw.readinto(self._rx)
            if n:
                dec.receive(self._rx[:n])
                return 0
        self.close_code = ws.CLOSE_ABNORMAL  # TCP closed without a close frame
        await self._abort()
        return -1

    async def _answer_ping(self, payload):
        if self._lock.locked():
            self._pong = bytes(payload)  # a write is mid-frame: it sends this after
            return
        await self._lock.acquire()
        try:
            await self._send_control(ws.OP_PONG, payload)
        finally:
            self._lock.release()

    async def _send_control(self, op, payload):
        await self._raw.write(ws.encode_frame(op, payload, ws.new_mask_key()))

    async def write(self, data):
        raw = self._live()
        if self._sent_close:
            raise TransportError(self.url, "write after the WebSocket close")
        await self._lock.acquire()
        try:
            for piece in self._enc.pieces(ws.OP_BINARY, data, ws.new_mask_key()):
                await raw.write(piece)
            if self._pong is not None:
                pong, self._pong = self._pong, None
                await self._send_control(ws.OP_PONG, pong)
        except Exception as e:
            await self._abort()
            raise self._io_error(e, "write")
        finally:
            self._lock.release()

    async def _fail(self, code, reason):
        """Send our close frame (best effort) and drop the connection."""
        if self._raw is not None and not self._sent_close and not self._lock.locked():
            self._sent_close = True
            body = b"" if code is None else bytes((code >> 8, code & 0xFF)) + reason.encode()
            try:
                await self._send_control(ws.OP_CLOSE, body)
            except Exception:  # the peer is already gone: closing anyway
                pass
        await self._abort()

    async def close(self):
        self._closed = True
        await self._fail(ws.CLOSE_NORMAL, "")
