"""WebSocket client (RFC 6455): a sans-I/O codec (handshake, frame encoder, frame
decoder) and WebSocketTransport, the ws:// and wss:// transport that drives it.

The codec has no sockets and no asyncio; WebSocketTransport (at the end) is the only
I/O here: transport.open_transport imports this module on the first ws:// or wss://
URL, so a tcp:// board never loads it. The link uses one binary WebSocket connection
whose byte stream is the concatenation of the binary message payloads, so the decoder
hands out payload bytes only, never message boundaries.

Handshake:
    key = new_key()
    request = handshake_request(host_header, path, key, headers=None) -> bytes
    parser = ResponseParser(key, max_head=4096)
    parser.feed(data) -> bytes consumed (stops right after the blank line);
        parser.done is True once the whole head was read and checked. A refused or
        malformed upgrade raises HandshakeError whose message shows the status line.

Encoder (client frames are always masked, RFC 6455 section 5.3):
    enc = FrameEncoder(chunk=512)
    for piece in enc.pieces(opcode, payload, mask_key): write(piece)
        A piece is valid until the next one is asked for: on MicroPython a view of
        the encoder's one preallocated buffer; on CPython a new bytes object (asyncio
        transports there keep references to what they are given).
    encode_frame(opcode, payload, mask_key) -> bytes    whole small frames (control)
    header_into(buf, opcode, length, mask_key) -> n      a header into a 14-byte buffer
    mask_into(dst, src, key, phase=0), mask_bytes(src, key, phase=0) -> bytes
        XOR with the 4-byte key starting at key byte `phase`: viper (native code, no
        allocation) on MicroPython, one big-int XOR on CPython, a plain loop where
        the port has no native emitter. new_mask_key() -> 4 random bytes.

Decoder (server frames are never masked):
    dec = FrameDecoder()
    dec.receive(data)     raw bytes; a reference is kept until they are consumed
    dec.next_event() ->
        NEED_DATA  give more bytes. If dec.payload_left > 0 the caller may instead
                   read up to that many bytes of the wire straight into its own
                   buffer and report them with dec.payload_read(n).
        DATA       binary payload bytes are pending: dec.take(dst) copies up to
                   len(dst) of them into dst and returns the count.
        PING/PONG  dec.control is a view of the payload (valid until the next call).
        CLOSE      dec.close_code (1005 when the frame had none), dec.close_reason.
    Fragmented binary messages (continuation frames) and control frames between
    fragments are handled; text messages, reserved opcodes or bits, masked or
    oversized control frames raise WSError naming the violation.

Transport (a transport.StreamTransport whose bytes travel as binary messages):
    WebSocketTransport(url, tls, host, port, path, headers=None, rx_size=256,
                       tx_chunk=512, **stream_options)
    Answers PINGs (after the frame a write is in the middle of), reports the server's
    close in close_code / close_reason (CLOSE_ABNORMAL when TCP ended without one),
    and answers a protocol violation with close 1002 and a TransportError naming it.
"""
import asyncio
import binascii
import hashlib
import sys

from .clock import wait_for
from .transport import StreamTransport, TransportError
from .utf8 import text

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

try:
    from os import urandom
except ImportError:  # ports without os.urandom
    import random

    def urandom(n):
        return bytes(random.getrandbits(8) for _ in range(n))

OP_CONT = const(0)
OP_TEXT = const(1)
OP_BINARY = const(2)
OP_CLOSE = const(8)
OP_PING = const(9)
OP_PONG = const(10)

NEED_DATA = const(0)
DATA = const(1)
PING = const(2)
PONG = const(3)
CLOSE = const(4)

CLOSE_NORMAL = const(1000)
CLOSE_PROTOCOL_ERROR = const(1002)
CLOSE_NO_STATUS = const(1005)
CLOSE_ABNORMAL = const(1006)

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_CONTROL = const(125)

_S_HEAD = const(0)
_S_DATA = const(1)
_S_CONTROL = const(2)
_S_CLOSED = const(3)


class WSError(ValueError):
    """The peer broke RFC 6455 (or the link's use of it)."""


class HandshakeError(WSError):
    """The server did not accept the upgrade; `status` is its status line."""

    def __init__(self, msg, status=""):
        super().__init__(msg)
        self.status = status


# ---------------------------------------------------------------- masking
# Why three versions: a Python loop over bytes is slow on a board, viper compiles the
# loop to machine code with no allocation; CPython has no viper but XORs big ints in C.
_VIPER_SRC = """
@micropython.viper
def _xor(dst: ptr8, src: ptr8, n: int, key: ptr8, phase: int):
    i = 0
    while i < n:
        dst[i] = src[i] ^ key[(i + phase) & 3]
        i += 1
"""
_xor = None
_BIG_INT_XOR = sys.implementation.name != "micropython"
if not _BIG_INT_XOR:
    try:
        import micropython
        _g = {"micropython": micropython}
        exec(_VIPER_SRC, _g)  # exec: a port without the native emitter rejects viper at compile time
        _xor = _g["_xor"]
        del _g
    except Exception:  # no native emitter on this port: the plain loop below
        _xor = None


def _xor_loop(dst, src, n, key, phase):
    for i in range(n):
        dst[i] = src[i] ^ key[(i + phase) & 3]


def _rotated(key, phase):
    phase &= 3
    return key[phase:] + key[:phase] if phase else key


def mask_into(dst, src, key, phase=0):
    """dst[:len(src)] = src XOR key, the key starting at byte `phase` (mod 4)."""
    n = len(src)
    if _BIG_INT_XOR:
        dst[:n] = mask_bytes(src, key, phase)
    elif _xor is not None:
        _xor(dst, src, n, key, phase)
    else:
        _xor_loop(dst, src, n, key, phase)


def mask_bytes(src, key, phase=0):
    """A new bytes object: src XOR key (key starting at byte `phase`). Host use."""
    n = len(src)
    if not n:
        return b""
    if not _BIG_INT_XOR:
        out = bytearray(n)
        mask_into(out, src, key, phase)
        return bytes(out)
    k = _rotated(bytes(key), phase) * ((n >> 2) + 1)
    x = int.from_bytes(src, "little") ^ int.from_bytes(k[:n], "little")
    return x.to_bytes(n, "little")


def new_mask_key():
    return urandom(4)


# ---------------------------------------------------------------- handshake
def new_key():
    """A fresh Sec-WebSocket-Key: base64 of 16 random bytes."""
    return binascii.b2a_base64(urandom(16)).strip().decode()


def accept_for(key):
    """The Sec-WebSocket-Accept value a server must answer to `key`."""
    h = hashlib.sha1(key.encode() + _GUID).digest()
    return binascii.b2a_base64(h).strip().decode()


def handshake_request(host, path, key, headers=None):
    """The HTTP/1.1 upgrade request. `host` is the Host header value (with :port
    when not the scheme's default); `headers` extra (name, value) pairs or a dict."""
    if not path:
        path = "/"
    lines = ["GET %s HTTP/1.1" % path, "Host: " + host, "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Key: " + key, "Sec-WebSocket-Version: 13"]
    if headers:
        items = headers.items() if hasattr(headers, "items") else headers
        for name, value in items:
            name = str(name)
            value = str(value)
            if "\r" in name or "\n" in name or "\r" in value or "\n" in value or ":" in name:
                raise ValueError("bad header %r: no CR/LF, no ':' in the name" % name)
            lines.append(name + ": " + value)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class ResponseParser:
    """Reads the server's handshake response head, bounded by max_head bytes."""

    def __init__(self, key, max_head=4096):
        self._accept = accept_for(key)
        self._max = max_head
        self._head = bytearray()
        self.done = False
        self.status = ""
        self.headers = {}   # lower-case name -> value (last one wins; joined for lists)

    def feed(self, data):
        """Take bytes of the response; returns how many belong to the head."""
        if self.done:
            return 0
        start = len(self._head)
        self._head.extend(data)
        end = self._head.find(b"\r\n\r\n", max(0, start - 3))
        if end < 0:
            if len(self._head) > self._max:
                raise HandshakeError("handshake response head over %d bytes without an end (%r...)"
                                     % (self._max, bytes(self._head[:60])), self._status_guess())
            return len(data)
        used = end + 4 - start
        head = bytes(self._head[:end])
        self._head = None
        self._check(head)
        self.done = True
        return used

    def _status_guess(self):
        i = self._head.find(b"\r\n")
        return _text(self._head[: i if i >= 0 else 80])

    def _check(self, head):
        lines = head.split(b"\r\n")
        self.status = status = _text(lines[0])
        parts = status.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise HandshakeError("not an HTTP response: %r" % status, status)
        for line in lines[1:]:
            i = line.find(b":")
            if i <= 0:
                raise HandshakeError("malformed header line %r in the response to %r" % (_text(line), status), status)
            name = _text(line[:i]).strip().lower()
            value = _text(line[i + 1:]).strip()
            old = self.headers.get(name)
            self.headers[name] = old + ", " + value if old else value
        if parts[1] != "101":
            raise HandshakeError("server refused the WebSocket upgrade: %s" % status, status)
        self._check_upgrade(status)

    def _check_upgrade(self, status):
        h = self.headers
        if h.get("upgrade", "").lower() != "websocket":
            raise HandshakeError("response %r lacks 'Upgrade: websocket' (got %r)" % (status, h.get("upgrade")), status)
        if "upgrade" not in [t.strip().lower() for t in h.get("connection", "").split(",")]:
            raise HandshakeError("response %r lacks 'Connection: Upgrade' (got %r)" % (status, h.get("connection")), status)
        got = h.get("sec-websocket-accept")
        if got != self._accept:
            raise HandshakeError("bad Sec-WebSocket-Accept %r (expected %r) in %r" % (got, self._accept, status), status)
        if h.get("sec-websocket-extensions"):
            raise HandshakeError("server chose extension %r that was not offered" % h["sec-websocket-extensions"], status)
        if h.get("sec-websocket-protocol"):
            raise HandshakeError("server chose subprotocol %r that was not offered" % h["sec-websocket-protocol"], status)


def _text(b):
    try:
        return bytes(b).decode()
    except Exception:  # non-UTF-8 bytes from the server: show them escaped
        return repr(bytes(b))


# ---------------------------------------------------------------- encoder
def header_into(buf, opcode, length, mask_key, fin=True):
    """Write a masked frame header into buf (>= 14 bytes); returns its length."""
    buf[0] = (0x80 if fin else 0) | opcode
    if length < 126:
        buf[1] = 0x80 | length
        i = 2
    elif length < 0x10000:
        buf[1] = 0x80 | 126
        buf[2] = length >> 8
        buf[3] = length & 0xFF
        i = 4
    else:
        buf[1] = 0x80 | 127
        for j in range(8):
            buf[2 + j] = (length >> (8 * (7 - j))) & 0xFF
        i = 10
    buf[i:i + 4] = mask_key
    return i + 4


def encode_frame(opcode, payload, mask_key, fin=True):
    """A whole masked frame as bytes (control frames, tests)."""
    hdr = bytearray(14)
    n = header_into(hdr, opcode, len(payload), mask_key, fin)
    return bytes(hdr[:n]) + mask_bytes(payload, mask_key)


class FrameEncoder:
    """Masks outgoing payloads through one preallocated buffer of `chunk` bytes."""

    def __init__(self, chunk=512):
        if chunk < 4:
            raise ValueError("chunk must be at least 4 bytes, got %d" % chunk)
        self.chunk = chunk
        self._buf = bytearray(14 + chunk)
        self._mv = memoryview(self._buf)

    def pieces(self, opcode, payload, mask_key, fin=True):
        """Yield the frame as pieces: header + first chunk, then further chunks."""
        src = payload if isinstance(payload, memoryview) else memoryview(payload)
        n = len(src)
        mv = self._mv
        h = header_into(mv, opcode, n, mask_key, fin)
        k = min(n, self.chunk)
        if _BIG_INT_XOR:
            yield bytes(mv[:h]) + mask_bytes(src[:k], mask_key)
        else:
            mask_into(mv[h:], src[:k], mask_key)
            yield mv[:h + k]
        off = k
        chunk = self.chunk
        while off < n:
            k = min(n - off, chunk)
            if _BIG_INT_XOR:
                yield mask_bytes(src[off:off + k], mask_key, off)
            else:
                mask_into(mv, src[off:off + k], mask_key, off)
                yield mv[:k]
            off += k


# ---------------------------------------------------------------- decoder
class FrameDecoder:
    """Incremental decoder of server frames; see the module docstring."""

    def __init__(self):
        self._hdr = bytearray(14)
        self._hn = 0            # header bytes collected
        self._hneed = 2         # header bytes needed (grows once byte 1 is known)
        self._ctl = bytearray(_MAX_CONTROL)
        self._cn = 0
        self._cleft = 0         # control payload bytes still to collect
        self._in = None         # memoryview of received, not yet consumed bytes
        self._pos = 0
        self._state = _S_HEAD
        self._op = 0
        self._fin = True
        self._in_message = False  # a fragmented binary message is open
        self.payload_left = 0   # payload bytes left in the current DATA frame (0 elsewhere)
        self.control = None
        self.close_code = None
        self.close_reason = ""

    def receive(self, data):
        if self._in is not None and self._pos < len(self._in):
            raise ValueError("receive() before the previous bytes were consumed")
        self._in = data if isinstance(data, memoryview) else memoryview(data)
        self._pos = 0

    def pending(self):
        """Received bytes not consumed yet."""
        return 0 if self._in is None else len(self._in) - self._pos

    def payload_read(self, n):
        """The caller read n payload bytes of the current data frame itself."""
        if self.pending() or n > self.payload_left or self._state != _S_DATA:
            raise ValueError("payload_read(%d) with %d payload bytes left and %d buffered"
                             % (n, self.payload_left, self.pending()))
        self.payload_left -= n
        if not self.payload_left:
            self._frame_done()

    def take(self, dst):
        """Copy pending payload bytes of the current data frame into dst."""
        if self._state != _S_DATA:
            return 0
        k = min(len(dst), self.payload_left, self.pending())
        if k:
            p = self._pos
            dst[:k] = self._in[p:p + k]
            self._pos = p + k
            self.payload_left -= k
            if not self.payload_left:
                self._frame_done()
        return k

    def next_event(self):
        while True:
            st = self._state
            if st == _S_CLOSED:
                return NEED_DATA
            if st == _S_DATA:
                return DATA if self.pending() else NEED_DATA
            if not self.pending():
                return NEED_DATA
            if st == _S_HEAD:
                if self._read_header():
                    ev = self._start_frame()
                    if ev is not None:
                        return ev
            else:  # _S_CONTROL
                ev = self._read_control()
                if ev is not None:
                    return ev

    # -- internals
    def _read_header(self):
        k = min(self._hneed - self._hn, self.pending())
        self._hdr[self._hn:self._hn + k] = self._in[self._pos:self._pos + k]
        self._hn += k
        self._pos += k
        if self._hn == 2 and self._hneed == 2:
            b1 = self._hdr[1]
            if b1 & 0x80:
                raise WSError("server sent a masked frame (RFC 6455 5.1 forbids it)")
            ln = b1 & 0x7F
            self._hneed = 2 + (2 if ln == 126 else 8 if ln == 127 else 0)
        return self._hn == self._hneed

    def _start_frame(self):
        b0 = self._hdr[0]
        op = b0 & 0x0F
        fin = bool(b0 & 0x80)
        if b0 & 0x70:
            raise WSError("frame with reserved bits 0x%02x set (no extension was negotiated)" % (b0 & 0x70))
        n = self._length()
        self._hn = 0
        self._hneed = 2
        if op >= 8:
            return self._start_control(op, fin, n)
        if op == OP_TEXT:
            raise WSError("text message on the binary link (opcode 1)")
        if op == OP_BINARY:
            if self._in_message:
                raise WSError("new binary message while a fragmented one is still open")
        elif op == OP_CONT:
            if not self._in_message:
                raise WSError("continuation frame without a message to continue")
        else:
            raise WSError("reserved opcode 0x%x" % op)
        self._in_message = not fin
        self._fin = fin
        self._op = op
        self.payload_left = n
        self._state = _S_DATA
        if not n:
            self._frame_done()
        return None

    def _length(self):
        h = self._hdr
        ln = h[1] & 0x7F
        if ln == 126:
            return (h[2] << 8) | h[3]
        if ln == 127:
            if h[2] & 0x80:
                raise WSError("64-bit frame length with the top bit set")
            n = 0
            for j in range(8):
                n = (n << 8) | h[2 + j]
            return n
        return ln

    def _start_control(self, op, fin, n):
        if op not in (OP_CLOSE, OP_PING, OP_PONG):
            raise WSError("reserved control opcode 0x%x" % op)
        if not fin:
            raise WSError("fragmented control frame (opcode 0x%x)" % op)
        if n > _MAX_CONTROL:
            raise WSError("control frame of %d bytes (limit 125)" % n)
        self._op = op
        self._cn = 0
        self._cleft = n
        self._state = _S_CONTROL
        return self._read_control() if (n == 0 or self.pending()) else None

    def _read_control(self):
        k = min(self._cleft, self.pending())
        if k:
            self._ctl[self._cn:self._cn + k] = self._in[self._pos:self._pos + k]
            self._cn += k
            self._pos += k
            self._cleft -= k
        if self._cleft:
            return None
        self._state = _S_HEAD
        self.control = memoryview(self._ctl)[:self._cn]
        if self._op == OP_PING:
            return PING
        if self._op == OP_PONG:
            return PONG
        return self._close_frame()

    def _close_frame(self):
        n = self._cn
        self._state = _S_CLOSED
        if n == 0:
            self.close_code = CLOSE_NO_STATUS
            return CLOSE
        if n == 1:
            raise WSError("close frame with a 1-byte payload (a code needs 2)")
        code = (self._ctl[0] << 8) | self._ctl[1]
        # RFC 6455 7.4: 1004-1006 and 1015 are never sent (1005/1006 are what an endpoint
        # reports when there was none), 1016-2999 are unassigned; echoing one back
        # would send what no endpoint may
        if not (1000 <= code <= 1014 and not 1004 <= code <= 1006 or 3000 <= code <= 4999):
            raise WSError("close code %d, which no endpoint may send" % code)
        self.close_code = code
        try:
            self.close_reason = text(self._ctl[2:n])
        except UnicodeError:
            raise WSError("close reason is not UTF-8")
        return CLOSE

    def _frame_done(self):
        self._state = _S_HEAD


# ---------------------------------------------------------------- transport
class WebSocketTransport(StreamTransport):
    """ws:// and wss://: binary messages carry the byte stream (one per write()).
    transport.open_transport makes it; see transport.py for the interface."""

    def __init__(self, url, tls, host, port, path, headers=None, rx_size=256, tx_chunk=512, **opts):
        StreamTransport.__init__(self, url, tls, host, port, **opts)
        self._path = path
        self._headers = headers
        h = "[%s]" % host if ":" in host else host
        self._host_header = h if port == (443 if tls else 80) else "%s:%d" % (h, port)
        self._rx = memoryview(bytearray(rx_size))
        self._enc = FrameEncoder(tx_chunk)
        self._dec = None
        self._lock = asyncio.Lock()
        self._pong = None       # latest PING payload owed a PONG while a write held the lock
        self._sent_close = False

    async def _connect(self):
        await StreamTransport._connect(self)
        key = new_key()
        await StreamTransport.write(self, handshake_request(self._host_header, self._path, key, self._headers))
        parser = ResponseParser(key)
        rx = self._rx
        # Read into the rx buffer, not by lines: MicroPython's readline has no bound (a
        # server sending one endless header line took the whole heap); the parser's
        # max_head bounds the head, and bytes past it are the first frames'.
        while not parser.done:
            n = await StreamTransport.read_into(self, rx)
            if not n:
                raise TransportError(self.url, "connection closed during the WebSocket handshake%s"
                                     % (" (after %r)" % parser.status if parser.status else ""))
            try:
                used = parser.feed(rx[:n])
            except HandshakeError as e:
                raise TransportError(self.url, "WebSocket handshake failed: %s" % e)
        self._dec = FrameDecoder()
        if used < n:
            self._dec.receive(rx[used:n])
        self._sent_close = False
        self.close_code = None
        self.close_reason = ""

    async def read_into(self, buf):
        if self._s is None:
            return 0
        mv = buf if isinstance(buf, memoryview) else memoryview(buf)
        try:
            return await self._read(mv)
        except WSError as e:
            await self._fail(CLOSE_PROTOCOL_ERROR, "protocol error")
            raise TransportError(self.url, "WebSocket protocol error from the server: %s" % e)
        except Exception as e:
            raise await self._drop(e, "read")

    async def _read(self, mv):
        dec = self._dec
        while True:
            ev = dec.next_event()
            if ev == DATA:
                n = dec.take(mv)
                if n:
                    return n
            elif ev == PING:
                await self._answer_ping(dec.control)
            elif ev == CLOSE:
                self.close_code = dec.close_code
                self.close_reason = dec.close_reason
                await self._fail(dec.close_code if dec.close_code != CLOSE_NO_STATUS else None, "")
                return 0
            elif ev == NEED_DATA:
                # Read from the socket: payload straight into mv, headers into the rx buffer.
                if self._s is None:
                    return 0
                left = dec.payload_left
                if left:
                    n = await StreamTransport.read_into(self, mv if left >= len(mv) else mv[:left])
                    if n:
                        dec.payload_read(n)
                        return n
                else:
                    n = await StreamTransport.read_into(self, self._rx)
                    if n:
                        dec.receive(self._rx[:n])
                        continue
                self.close_code = CLOSE_ABNORMAL  # TCP closed without a close frame
                await self._abort()
                return 0
            # PONG: nothing owed

    async def _answer_ping(self, payload):
        if self._lock.locked():
            self._pong = bytes(payload)  # a write is mid-frame: it sends this after
            return
        await self._lock.acquire()
        try:
            await StreamTransport.write(self, encode_frame(OP_PONG, payload, new_mask_key()))
        finally:
            self._lock.release()

    async def write(self, data):
        # StreamTransport.write puts bytes on the socket (or says "closed"/"not connected").
        self.sent = 0   # before the first wait: a cancel at the lock wrote nothing
        if self._sent_close and self._s is not None:  # our close frame is on its way
            raise TransportError(self.url, "write after the WebSocket close")
        await self._lock.acquire()
        stop = None  # a cancel that came mid-message: raised once the message is out
        try:
            pieces = self._enc.pieces(OP_BINARY, data, new_mask_key())
            while True:
                for piece in pieces:
                    try:
                        await StreamTransport.write(self, piece)
                    except asyncio.CancelledError as e:
                        # Half a message cannot be taken back (the link would be lost),
                        # and the next write cannot go on from where it stopped: the
                        # piece is finished here, within timeout_ms (_hold).
                        if stop is None:
                            stop = e
                            self._hold(True)
                        await self._rest(piece)
                if self._pong is None:
                    break
                pong, self._pong = self._pong, None
                pieces = (encode_frame(OP_PONG, pong, new_mask_key()),)
        except Exception as e:
            err = await self._drop(e, "write")
            if stop is None:
                raise err
            raise stop   # cancelled: that the link failed meanwhile is the Room's to see
        finally:
            if stop is not None:
                self._hold(False)
            self._lock.release()
        self.sent = len(data)
        if stop is not None:
            raise stop

    async def _rest(self, piece):
        """The rest of piece after a cancelled write (more cancels wait for it too)."""
        piece = piece[self.sent:]
        while piece:
            try:
                await StreamTransport.write(self, piece)
                return
            except asyncio.CancelledError:
                piece = piece[self.sent:]

    async def _fail(self, code, reason):
        """Send our close frame (best effort) and drop the connection."""
        if self._s is not None and not self._sent_close and not self._lock.locked():
            self._sent_close = True
            body = b"" if code is None else bytes((code >> 8, code & 0xFF)) + reason.encode()
            try:  # bounded: a link that does not drain must still be dropped
                await wait_for(StreamTransport.write(self, encode_frame(OP_CLOSE, body, new_mask_key())), 2)
            except Exception:  # the peer is already gone: closing anyway
                pass
        await self._abort()

    async def close(self):
        self._closing("closed")
        await self._fail(CLOSE_NORMAL, "")
