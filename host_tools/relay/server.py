"""The relay's asyncio adapter: listeners and per-connection tasks around the Router.

    srv = RelayServer(router, host="127.0.0.1", port=7880, ws_port=7881, http_port=7882,
                      ssl=None, serial=None, serial_baud=115200, log=sys.stderr,
                      http_host="127.0.0.1",   # the HTTP port stays on loopback by default
                      socket_buffer=SOCKET_BUFFER)  # each link socket's kernel buffers
    await srv.start()          # binds every listener; srv.urls lists them (real ports)
    await srv.serve()          # until stop() (or request_stop() from a signal handler)
    await srv.stop()           # LEAVE 5 to everyone, flush (bounded), close listeners

Port 0 binds an ephemeral port; `None` (or http_port 0 from the CLI) disables a listener.
Each connection has a reader task (paused while the Router says so) and a writer task
that writes the Router's SENDs and reports them `drained` once the transport took them
(TCP: after drain(); WebSocket: after send()): each key's frames in order, the keys in
turn (one frame each), a LEAVE after all (see router.py), so a receiver flooded by one
sender still gets another's frames at once. A CLOSE flushes what is queued,
then closes; a receiver that cannot take it within CLOSE_GRACE_S is aborted.
A connection's input goes to the router in slices of RECEIVE_SLICE bytes, and the
connection gives the event loop up after each read and whenever it has held it TURN_S,
so a flood of tiny frames in one room does not delay the others.
WebSocket: an upgrade request is at most WS_HANDSHAKE_LIMIT bytes (431), and requests in
progress count in the router's max_connections (503 past it).
TLS (tls:// and wss://): handshakes in progress count in max_connections too, from
accept (past it the socket is closed before its TLS layer is made), and last at most the
join timeout (_TlsHandshakes).
WebSocket: messages are read frame by frame (never whole), each WebSocket frame at most
one max_frame link frame plus WS_FRAME_SLACK, with websockets parsing at most
WS_MAX_QUEUE frames ahead; input websockets fails the connection for (a frame too big,
bad framing) gets LEAVE 4 before the close frame, a text message LEAVE 4 too.
The serial bridge treats the line as one link connection at a time: when that connection
ends (LEAVE, error, timeout), a new one starts on the same line at its next byte (a
quiet line has no connection: no JOIN timeout, no LEAVE, no log line).
HTTP: one request per connection, HTTP_MAX_CONNECTIONS at once, heads of _HTTP_LIMIT
bytes. accept() failing for want of file descriptors is one log line a minute, not a
traceback a second. Log values are quoted as `_fmt` says.
"""
import asyncio
import collections
import errno
import json
import socket
import sys
import time

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from lkedge import link, relayside
from lkedge.clock import wait_for   # (asyncio's before 3.12 can lose a cancel)

from . import router as rt

CLOSE_GRACE_S = 1.0
READ_SIZE = 65536
# A connection's input goes to the router RECEIVE_SLICE bytes at a time, and the
# connection gives the event loop up after each read and once it has held it TURN_S
# (see _Link._take): 2 KiB of 2-byte frames is ~1000 frames, a few ms of the router.
RECEIVE_SLICE = 2048
TURN_S = 0.005
# The kernel's send and receive buffers of each link socket (SO_SNDBUF, SO_RCVBUF; Linux
# books twice this). Left to autotuning they grow to megabytes: a receiver reading
# slowly then drains them for tens of seconds while the relay's own queue, which the
# stuck rule watches, does not move (a board working through a flood of requests at
# 55 KB/s was dropped as stuck), and a paused sender still has megabytes accepted.
SOCKET_BUFFER = 64 * 1024
SERIAL_SLICE = 1024   # a serial link's frames are written this much at a time (~90 ms at 115200 baud)
# WebSocket: a frame may hold one max_frame link frame plus this (see RelayServer.start),
# and websockets parses at most WS_MAX_QUEUE frames ahead of the reader.
WS_FRAME_SLACK = 4096
WS_MAX_QUEUE = 1
# A WebSocket upgrade request (request line and headers) may be this long; a longer one
# gets 431 and is closed. Requests in progress count in max_connections.
WS_HANDSHAKE_LIMIT = 16384
# accept() failing for want of resources (see RelayServer._loop_exception): logged at
# most once per ACCEPT_LOG_S.
_ACCEPT_RESOURCE_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
ACCEPT_LOG_S = 60
# The HTTP port: a request head (request line and headers) of at most _HTTP_LIMIT bytes
# (else 431), complete within HTTP_TIMEOUT_S (else 408), HTTP_MAX_CONNECTIONS at once
# (one more gets 503 without being read, and up to as many again wait CLOSE_GRACE_S
# for it to be read). They count in the file descriptors the relay needs (command.py).
_HTTP_LIMIT = 8192
HTTP_TIMEOUT_S = 5
HTTP_MAX_CONNECTIONS = 64


def now_ms():
    return int(time.monotonic() * 1000)


def _fmt(v):
    """A value as it stands in a log line: bare when it is printable text without a
    space, quote, = or backslash, else a JSON string in which every character that is
    not printable is escaped: ASCII and C1 controls, DEL, the Unicode line and paragraph
    separators (U+0085, U+2028, U+2029), format characters (bidi overrides), lone
    surrogates... so that no value (an identity, a peer's reason) can end a line, forge
    another or break the log's encoding. Printable non-ASCII text stays readable."""
    s = str(v)
    if s and s.isprintable() and not any(ch in s for ch in ' "=\\'):
        return s
    return '"%s"' % "".join(_ESCAPES.get(ch) or (ch if ch.isprintable() or ch == " "
                                                  else json.dumps(ch)[1:-1]) for ch in s)


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def log_line(stream, event, fields):
    """One key=value line (see _fmt for how values are quoted)."""
    # UTC with milliseconds (RFC 3339): lines of several hosts, and across a change of
    # daylight saving time, sort and join by it
    t = time.time()
    parts = ["ts=%s.%03dZ" % (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)), int(t * 1000) % 1000),
             "event=%s" % event]
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
        # What is queued for this link, by key (Router SEND actions): one deque per
        # sender (or subject) in turn order, and the LEAVE that goes after them all.
        self.out = {}
        self.last = None
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
    last_buffered = 0   # the transport's write buffer at the last look (_progress)

    def buffered(self):
        """Bytes in the transport's write buffer, or None where it cannot say (serial)."""
        return None

    def enqueue(self, data, key=""):
        if key is None:
            self.last = data
        else:
            q = self.out.get(key)
            if q is None:
                q = self.out[key] = collections.deque()
            q.append(data)
        self.wake.set()

    def discard(self, key):
        """Drop the DATA frames queued under key (Router DISCARD), keeping its
        PARTICIPANT / PARTICIPANT_LEFT frames in order (a receiver must not hear of a
        leaving without the joining); -> (bytes, frames) dropped."""
        q = self.out.get(key)
        if not q:
            return 0, 0
        kept = collections.deque()
        n = dropped = 0
        for data in q:
            if _frame_type(data) == link.DATA:
                n += len(data)
                dropped += 1
            else:
                kept.append(data)
        if kept:
            self.out[key] = kept   # in its turn, as before
        else:
            del self.out[key]
        return n, dropped

    def next_out(self):
        """The next frame to write, or None: one of the key whose turn it is (the
        oldest key first), which then goes to the back; the LEAVE once all are out."""
        for key in self.out:
            q = self.out.pop(key)
            data = q.popleft()
            if q:
                self.out[key] = q
            return data
        data, self.last = self.last, None
        return data

    def take_all(self):
        """Everything queued, in the order next_out would write it; the queue empties."""
        out = []
        data = self.next_out()
        while data is not None:
            out.append(data)
            data = self.next_out()
        return out

    def finish(self):
        if not self.closing:
            self.closing = True
            # A backlog of half a queue or more (a receiver dropped as stuck, or far
            # behind at shutdown) cannot go out within CLOSE_GRACE_S: dropped, so its
            # LEAVE follows the frame being written instead of the link being cut in
            # the middle of one with the LEAVE unsent.
            n = 0
            for q in self.out.values():
                for data in q:
                    n += len(data)
            if n * 2 >= self.server.router.queue_bytes:
                lost = sum(1 for q in self.out.values() for data in q if _frame_type(data) == link.DATA)
                if lost:   # DATA deliveries not made: counted as the router's drops are
                    self.server.router.metrics.inc("lkedge_relay_drops_total", lost, reason="receiver_closed")
                self.out = {}
            self.readable.set()        # a paused reader must notice the close
            self.wake.set()
            self.abort_handle = asyncio.get_running_loop().call_later(CLOSE_GRACE_S, self._abort)

    def _abort(self):
        if self.writer_task is not None and not self.writer_task.done():
            self.writer_task.cancel()
        self.abort_transport()

    async def run(self):
        srv = self.server
        srv.router.open(self.cid, now_ms(), transport=self.kind, peer=self.peer,
                        pending=srv.ws_handshakes + len(srv._tls))
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
                await self._take(data)
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

    async def _take(self, data):
        """Hand data to the router RECEIVE_SLICE bytes at a time, and let the other
        connections run once per read and whenever this one has had the loop for
        TURN_S: a read returns at once while the transport has bytes buffered, and a
        read of tiny frames (an empty DATA is 2 bytes) costs the router microseconds
        each, so one flooding connection held the event loop for seconds and delayed
        everyone, in every room (LINK.md: other participants are unaffected)."""
        srv = self.server
        mv = memoryview(data)
        t_end = time.monotonic() + TURN_S
        for i in range(0, len(mv), RECEIVE_SLICE):
            srv.router.receive(self.cid, mv[i:i + RECEIVE_SLICE], now_ms())
            srv.apply()
            if time.monotonic() >= t_end:
                await asyncio.sleep(0)
                if self.closing:
                    return
                t_end = time.monotonic() + TURN_S
        await asyncio.sleep(0)

    async def _writer(self):
        srv = self.server
        try:
            while True:
                data = self.next_out()
                while data is not None:
                    await self.write(data)
                    srv.router.drained(self.cid, len(data), now_ms())
                    srv.apply()
                    data = self.next_out()
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
                await wait_for(self.close_transport(), CLOSE_GRACE_S)
            except Exception:
                self.abort_transport()


class _PeerError(Exception):
    """The peer broke the transport's rules (the router answers LEAVE code, default 4)."""

    def __init__(self, reason, code=link.LEAVE_PROTOCOL):
        super().__init__(reason)
        self.code = code


# Close codes websockets fails a connection with for what the peer sent (malformed
# WebSocket framing, a frame over our size limit, bad UTF-8 in a close reason): the
# relay says LEAVE 4 first, as for any malformed input, while the link is writable.
_WS_PEER_FAULTS = {1002: "WebSocket protocol error", 1007: "invalid WebSocket data",
                   1009: "WebSocket frame too big"}


def _ws_fragment_limits():
    """True when this websockets can bound each WebSocket frame rather than each
    message (max_size=(message, fragment): websockets 15 and later)."""
    from websockets.server import ServerProtocol
    return getattr(ServerProtocol(max_size=(None, 1 << 16)), "max_fragment_size", None) == 1 << 16


class _TlsHandshakes:
    """TLS handshakes in progress on the tls:// and wss:// ports, counted from accept.

    asyncio makes a connection's protocol at accept but calls it only once its TLS
    handshake is done, and says nothing of one that fails or times out. Each holds a
    descriptor and ~300 KB (the TLS layer's buffers), so they count in max_connections:
    uncounted, 3000 sockets that never sent a ClientHello held 916 MB for 60 s (asyncio's
    default handshake timeout) past --max-connections 100. The handshake timeout is the
    join timeout, so an entry leaves the count at its handshake (done()) or, failed or
    timed out, by its deadline (swept when the count matters)."""

    def __init__(self, timeout_s):
        self.timeout_s = timeout_s
        self.pending = set()                  # tokens of handshakes in progress
        self.deadlines = collections.deque()  # (deadline, token), in order: one timeout for all
        self.refused = 0         # closed at accept since last logged
        self.logged = None

    def __len__(self):
        now = time.monotonic()
        dl = self.deadlines
        while dl and (dl[0][0] <= now or dl[0][1] not in self.pending):
            self.pending.discard(dl.popleft()[1])   # failed or timed out by now, or done
        return len(self.pending)

    def start(self, relay):
        """A token for a new handshake; raises ConnectionRefusedError past max_connections
        (raised in a protocol factory, asyncio then drops the socket, unread)."""
        if relay.busy() >= relay.router.max_connections or relay._stopping:
            self._refused(relay)
            raise ConnectionRefusedError(relay.router.full_reason())
        token = object()
        self.pending.add(token)
        self.deadlines.append((time.monotonic() + self.timeout_s + 0.5, token))
        return token

    def done(self, token):
        self.pending.discard(token)

    def _refused(self, relay):
        # one log line a minute with the count, not one per connection (a flood)
        self.refused += 1
        relay.router.metrics.inc("lkedge_relay_refused_total", reason="full_tls_handshake")
        self.flush(relay)

    def flush(self, relay):
        """The refusals not yet logged, once ACCEPT_LOG_S has passed since the last line
        (also from the relay's timer: a burst is said within a minute, not at the next)."""
        t = time.monotonic()
        if self.refused and (self.logged is None or t - self.logged >= ACCEPT_LOG_S):
            self.logged = t
            log_line(relay.log, "tls_refused", {"connections": self.refused,
                                                "reason": relay.router.full_reason() + " (TLS handshakes "
                                                "in progress count; closed at accept)"})
            self.refused = 0


class _TlsStreamProtocol(asyncio.StreamReaderProtocol):
    """The tls:// port's protocol: made at accept (counted), called once TLS is up."""

    def __init__(self, relay):
        self._tls_token = relay._tls.start(relay)   # raises when full
        self._tls = relay._tls
        super().__init__(asyncio.StreamReader(limit=2 ** 16), relay._on_tcp)

    def connection_made(self, transport):
        self._tls.done(self._tls_token)
        super().connection_made(transport)


class _BoundedWsConnection(ServerConnection):
    """websockets writes its automatic replies (a pong for every ping) whether or not
    the peer reads them, and keeps reading meanwhile: a peer that pings and never reads
    would grow the write buffer without bound. Past `write_cap` bytes it is aborted and
    `overflow` says why (its link gets LEAVE 6: a receiver stuck).

    `kinds` holds the opcode (TEXT or BINARY) of each message whose first frame was
    received, in order, so the reader (which takes frames undecoded) can refuse a text
    message without websockets decoding it (invalid UTF-8 would close with 1007 and no
    LEAVE). `on_fault(code, reason) -> [bytes]`, set by the link, runs when websockets
    is about to fail the connection for the peer's bytes (_WS_PEER_FAULTS): the bytes
    it returns (the LEAVE) are written before the close frame."""
    write_cap = 1 << 20
    overflow = None
    on_fault = None
    faulted = False
    relay = None          # the RelayServer: handshakes in progress count in its limit
    _counted = False
    _head = 0             # bytes received before the handshake completed

    def connection_made(self, transport):
        super().connection_made(transport)
        r = self.relay
        if r is None:
            return
        if self._tls_token is not None:   # its TLS handshake is done: now an upgrade request
            r._tls.done(self._tls_token)
            self._tls_token = None
        # An upgrade request in progress holds what its headers took (websockets keeps
        # up to 128 lines of 8 KiB): unbounded, a thousand unfinished requests without a
        # token held 1.1 GB. They count in max_connections like link connections.
        if r.busy() >= r.router.max_connections:
            r.router.metrics.inc("lkedge_relay_refused_total", reason="full_ws_upgrade")
            self._refuse(b"503 Service Unavailable", r.router.full_reason())
            return
        r.ws_handshakes += 1
        self._counted = True

    def handshake_done(self):
        """The upgrade request was taken (or the connection ended): uncounted."""
        if self._counted:
            self._counted = False
            self.relay.ws_handshakes -= 1

    def connection_lost(self, exc):
        self.handshake_done()
        super().connection_lost(exc)

    def _wrong_port(self):
        links = [u for u in self.relay.urls if u.startswith(("tcp:", "tls:"))]
        why = ("this is the relay's WebSocket port, which takes ws:// (or wss://) URLs; %s"
               % ("its link port is " + links[0] if links else "this relay has no link port"))
        if not self.transport.is_closing():
            self.transport.write(relayside.encode_control(link.LEAVE, {"code": link.LEAVE_PROTOCOL, "reason": why}))
            self.transport.close()

    def _refuse(self, status, why):
        if not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\n"
                                 b"Connection: close\r\n\r\n" + why.encode() + b"\n")
            self.transport.close()

    _tls_token = None

    def __init__(self, protocol, *args, **kwargs):
        if self.relay is not None and self.relay.ssl is not None:   # made at accept: counted
            self._tls_token = self.relay._tls.start(self.relay)      # (raises when full)
        super().__init__(protocol, *args, **kwargs)
        self.kinds = collections.deque()
        self._protocol_fail = protocol.fail
        protocol.fail = self._fail

    def process_event(self, event):
        if isinstance(event, Frame) and event.opcode in (Opcode.TEXT, Opcode.BINARY):
            self.kinds.append(event.opcode)
        super().process_event(event)

    def _fail(self, code, reason=""):
        hook = self.on_fault
        if hook is not None and code in _WS_PEER_FAULTS and self.protocol.state is State.OPEN:
            self.on_fault = None
            self.faulted = True     # what we write now was counted as queued already
            try:
                for data in hook(code, reason):
                    self.protocol.send_binary(data)
            except Exception:       # a relay fault: the close frame must still go
                pass
        self._protocol_fail(code, reason)

    def send_data(self):
        """websockets' send_data, but a transport closing (the peer reset it, or we
        aborted it) is written no more: asyncio logs "socket.send() raised exception."
        at each write past the 5th, so a peer that sent a burst of PINGs and reset
        logged a line per pong (websockets writes them all in one call)."""
        t = self.transport
        for data in self.protocol.data_to_send():
            if t.is_closing():
                continue
            if data:
                t.write(data)
            elif t.can_write_eof():   # half-close when possible (no TLS), as websockets does
                try:
                    t.write_eof()
                except Exception:
                    pass
            else:
                t.close()

    def data_received(self, data):
        if self.protocol.state is State.CONNECTING:
            if not self._head and data and not 0x41 <= data[0] <= 0x5A and self.relay is not None:
                # No HTTP request starts so (its method is upper case), a LINK client's
                # JOIN does (its length varint): a tcp:// URL given this port. Told at
                # once with a LEAVE it reads, not left waiting for a JOINED till its
                # join timeout while websockets waits for a request line.
                self.handshake_done()
                self._wrong_port()
                return
            self._head += len(data)
            if self._head > WS_HANDSHAKE_LIMIT:
                self.handshake_done()
                self._refuse(b"431 Request Header Fields Too Large", "the WebSocket upgrade "
                             "request is over %d bytes" % WS_HANDSHAKE_LIMIT)
                return
        super().data_received(data)
        size = self.transport.get_write_buffer_size()
        if size > self.write_cap and self.overflow is None and not self.faulted:
            self.overflow = ("WebSocket peer does not read: %d bytes of writes and automatic "
                             "replies (pongs) queued, over %d" % (size, self.write_cap))
            self.transport.abort()


def _frame_type(frame):
    """The type of one whole link frame: the byte after its length varint (LINK.md)."""
    i = 0
    while frame[i] & 0x80:
        i += 1
    return frame[i + 1]


class _StreamLink(_Link):
    kind = "tcp"

    def buffered(self):
        return self.w.transport.get_write_buffer_size()

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
    """The link byte stream in binary WebSocket messages (LINK.md: frames may be split
    across or packed into messages). Frames of a message are taken one by one as they
    arrive (never a whole message), and handed to the router READ_SIZE bytes at a time,
    so a paused sender holds what a TCP one does: see RelayServer.start for the bounds."""
    kind = "ws"

    def buffered(self):
        t = self.ws.transport
        return None if t is None else t.get_write_buffer_size()

    def __init__(self, server, cid, ws, kind):
        peer = ws.remote_address
        super().__init__(server, cid, "%s:%s" % peer[:2] if peer else "")
        self.kind = kind
        self.ws = ws
        self._message = None        # the recv_streaming iterator of the current message
        self._rest = None           # what the router has not had yet of the last frame
        if isinstance(ws, _BoundedWsConnection):
            ws.on_fault = self._fault

    async def read(self):
        while True:
            if self._rest:
                piece, self._rest = self._rest[:READ_SIZE], self._rest[READ_SIZE:]
                return piece
            try:
                if self._message is None:
                    self._message = self.ws.recv_streaming(decode=False)
                    frag = await self._message.__anext__()
                    kinds = getattr(self.ws, "kinds", None)
                    if kinds and kinds.popleft() is Opcode.TEXT:
                        raise _PeerError("text WebSocket message: the link is carried in "
                                         "binary messages")
                else:
                    frag = await self._message.__anext__()
            except StopAsyncIteration:      # the message ended: the next one
                self._message = None
                continue
            except ConnectionClosed:
                if getattr(self.ws, "overflow", None):
                    raise _PeerError(self.ws.overflow, link.LEAVE_IDLE)
                raise
            self._rest = memoryview(frag)   # an empty frame carries no bytes: skipped

    def _fault(self, code, reason):
        """websockets fails the connection for the peer's bytes (close `code`): LEAVE 4
        now, and everything queued for this link before it, ahead of the close frame."""
        srv = self.server
        if code == 1009:
            why = ("%s (%s): the relay takes WebSocket %s of at most %d bytes, one "
                   "max_frame (%d) link frame and some; split the link byte stream over "
                   "more messages or fragments" % (_WS_PEER_FAULTS[code], reason,
                                                   srv.ws_limit_unit, srv.ws_frame_limit,
                                                   srv.router.max_frame))
        else:
            why = "%s (close code %d): %s" % (_WS_PEER_FAULTS[code], code, reason)
        srv.router.fail(self.cid, link.LEAVE_PROTOCOL, why, now_ms())
        srv.apply()
        return self.take_all()

    async def write(self, data):
        await self.ws.send(data)

    async def close_transport(self):
        await self.ws.close()

    def abort_transport(self):
        self.ws.transport.abort()


class _SerialLink(_Link):
    kind = "serial"

    def __init__(self, server, cid, port, device, first=b""):
        super().__init__(server, cid, device)
        self.port = port
        self._first = first     # the bytes that started this link connection

    async def read(self):
        if self._first:
            data, self._first = self._first, b""
            return data
        loop = asyncio.get_running_loop()
        while True:
            # read() returns after its 0.1 s timeout with b"" when the line is quiet
            data = await loop.run_in_executor(None, self.port.read, READ_SIZE)
            if data or self.closing:
                return data

    async def write(self, data):
        # in slices, so the bytes of a frame still to go say that the line moves (the
        # stuck clock: _progress; a 16 KiB frame takes 2.8 s at 57600 baud)
        loop = asyncio.get_running_loop()
        data = bytes(data)
        self._left = len(data)
        for i in range(0, len(data), SERIAL_SLICE):
            await loop.run_in_executor(None, self.port.write, data[i:i + SERIAL_SLICE])
            self._left = max(0, len(data) - i - SERIAL_SLICE)

    _left = 0

    def buffered(self):
        return self._left

    async def close_transport(self):
        pass        # the line stays open for the next link connection

    def abort_transport(self):
        pass


class RelayServer:
    def __init__(self, router, host="127.0.0.1", port=7880, ws_port=7881, http_port=7882,
                 ssl=None, serial=None, serial_baud=115200, log=None, http_host="127.0.0.1",
                 socket_buffer=SOCKET_BUFFER):
        self.router = router
        self.socket_buffer = socket_buffer   # 0: the OS's (autotuned) buffers
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
        self.ws_handshakes = 0   # WebSocket upgrade requests in progress (_BoundedWsConnection)
        self._tls = _TlsHandshakes(getattr(router, "join_timeout_ms", 5000) / 1000)
        self.warnings = []           # said at start (command.py logs them)
        self.ws_frame_limit = None   # the largest WebSocket frame taken (set by start)
        self.ws_limit_unit = "frames"  # or "messages" with websockets < 15
        self.urls = []
        self.addresses = {}      # "tcp"/"ws"/"http"/"serial" -> (host, port) or device
        self._next_cid = 0
        self._servers = []
        self._tasks = []
        self._http_tasks = set()     # requests being served
        self._loop_handler = None    # (loop, its exception handler before start())
        self._accept_failures = 0
        self._accept_logged = None
        self._http_refused = 0       # 503s since the HTTP port was last idle
        self._http_closing = 0       # 503s written, their sockets not yet closed
        self._stopped = asyncio.Event()
        self._stopping = False

    def busy(self):
        """Connections that count in max_connections: links, and the WebSocket upgrade
        requests and TLS handshakes in progress."""
        return self.router.connection_count() + self.ws_handshakes + len(self._tls)

    # ------------------------------------------------------------ router glue
    def apply(self):
        actions = self.router.pop_actions()
        while actions:
            for a in actions:
                self._apply(a)
            actions = self.router.pop_actions()   # a DISCARD may resume senders

    def _apply(self, a):
        kind = a[0]
        if kind == rt.LOG:
            log_line(self.log, a[1], a[2])
            return
        ln = self.links.get(a[1])
        if ln is None:
            return
        if kind == rt.SEND:
            ln.enqueue(a[2], a[3])
        elif kind == rt.DISCARD:
            nbytes, nframes = ln.discard(a[2])
            self.router.discarded(a[1], nbytes, nframes, a[2], now_ms())
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
        loop = asyncio.get_running_loop()
        self._loop_handler = (loop, loop.get_exception_handler())
        loop.set_exception_handler(self._loop_exception)
        tls = self.ssl is not None
        hs = self._tls.timeout_s   # a TLS handshake has the time a JOIN has
        if self.port is not None:
            if tls:
                s = await loop.create_server(lambda: _TlsStreamProtocol(self), self.host, self.port,
                                             ssl=self.ssl, ssl_handshake_timeout=hs)
            else:
                s = await asyncio.start_server(self._on_tcp, self.host, self.port)
            self._servers.append(s)
            self._add_url("tls" if tls else "tcp", s)
        if self.ws_port is not None:
            from websockets.asyncio.server import serve
            mf = self.router.max_frame
            # Memory of a WebSocket link, as of a TCP one, is a few max_frame whatever it
            # sends. LINK.md lets a message pack several frames, so messages are not
            # bounded (a message is read frame by frame, never whole); each WebSocket
            # FRAME is, to one max_frame link frame plus WS_FRAME_SLACK (its length varint
            # and small frames packed with it, e.g. a PING). websockets buffers a frame
            # whole before we see it, so this is what one connection can make it hold:
            # the frame being parsed, at most max_queue + 1 parsed frames (it stops
            # reading the socket past max_queue), the one the router is being fed from.
            # A bigger frame is refused (LEAVE 4, close 1009) at its header, unread.
            # A websockets older than 15 bounds only whole messages: then a message may
            # pack frames up to the same total.
            self.ws_frame_limit = mf + WS_FRAME_SLACK
            if _ws_fragment_limits():
                size, self.ws_limit_unit = (None, self.ws_frame_limit), "frames"
            else:
                size, self.ws_limit_unit = self.ws_frame_limit, "messages"
            # room for one frame being sent (the writer waits for each) and then some
            conn = type("_WsConnection", (_BoundedWsConnection,),
                        {"write_cap": 2 * (mf + link.STAMP_ROOM) + (1 << 20), "relay": self})
            s = await serve(self._on_ws, self.host, self.ws_port, ssl=self.ssl,
                            compression=None, ping_interval=None, max_size=size,
                            max_queue=WS_MAX_QUEUE, create_connection=conn,
                            **({"ssl_handshake_timeout": hs} if tls else {}))
            self._servers.append(s)
            self._add_url("wss" if tls else "ws", s)
        if self.http_port is not None:
            # limit: a request head is read into at most 2 * _HTTP_LIMIT bytes
            s = await asyncio.start_server(self._on_http, self.http_host, self.http_port,
                                           limit=_HTTP_LIMIT)
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

    def _loop_exception(self, loop, context):
        """asyncio reports accept() failing for want of file descriptors (EMFILE: more
        sockets than the open-file limit) with a traceback, and retries every second:
        here it is one log line per ACCEPT_LOG_S, counting the failures in between."""
        exc = context.get("exception")
        if (isinstance(exc, OSError) and exc.errno in _ACCEPT_RESOURCE_ERRNOS
                and "accept" in context.get("message", "")):
            self._accept_failures += 1
            t = time.monotonic()
            if self._accept_logged is None or t - self._accept_logged >= ACCEPT_LOG_S:
                self._accept_logged = t
                log_line(self.log, "accept_failed", {
                    "error": "%s (%s)" % (errno.errorcode.get(exc.errno, exc.errno), exc.strerror),
                    "failures": self._accept_failures,
                    "reason": "cannot accept connections: out of file descriptors or memory; "
                              "listeners retry every second (raise the open-file limit, "
                              "ulimit -n, or lower --max-connections)"})
                self._accept_failures = 0
            return
        prev = self._loop_handler[1] if self._loop_handler else None
        if prev is not None:
            prev(loop, context)
        else:
            loop.default_exception_handler(context)

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
        self._bound(writer.get_extra_info("socket"))
        await _StreamLink(self, self._cid(), reader, writer,
                          "tls" if self.ssl else "tcp").run()

    async def _on_ws(self, ws):
        ws.handshake_done()
        if self._stopping:
            await ws.close()
            return
        self._bound(ws.transport.get_extra_info("socket"))
        await _WsLink(self, self._cid(), ws, "wss" if self.ssl else "ws").run()

    def _bound(self, sock):
        """Bound the kernel's buffers of a link socket (SOCKET_BUFFER)."""
        if sock is None or not self.socket_buffer:
            return
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, self.socket_buffer)
            except (OSError, ValueError, OverflowError, TypeError):
                pass   # a platform (or size) it refuses: its defaults it is

    async def _serial_loop(self, port):
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping:
                # A quiet line has no peer yet: no link connection (so no JOIN timeout,
                # LEAVE or log line every join-timeout period, which a board booting
                # later could take for the answer to its JOIN) until a byte arrives.
                first = await loop.run_in_executor(None, port.read, READ_SIZE)
                if not first:
                    continue            # read()'s 0.1 s timeout: the line is quiet
                t0 = time.monotonic()
                await _SerialLink(self, self._cid(), port, self.serial, first).run()
                if time.monotonic() - t0 < 1 and not self._stopping:
                    await asyncio.sleep(1)  # ended at once (e.g. relay full): no tight loop
        finally:
            port.close()

    async def _timer(self):
        while True:
            d = self.router.next_deadline()
            wait = 0.25 if d is None else min(0.25, max(0.005, (d - now_ms()) / 1000))
            await asyncio.sleep(wait)
            now = now_ms()
            self._progress(now)
            self.router.tick(now)
            self._tls.flush(self)
            self.apply()

    def _progress(self, now):
        """A receiver whose transport buffer shrank took bytes: the router's stuck clock
        restarts. drained() comes once per whole frame, and one big frame (--max-frame
        up to 16M) to a steady slow reader took longer than --send-timeout."""
        for cid in self.router.untaken():
            ln = self.links.get(cid)
            size = ln.buffered() if ln is not None else None
            if size is None:
                continue
            if size < ln.last_buffered:
                self.router.progress(cid, ln.last_buffered - size, now)
            ln.last_buffered = size

    # ------------------------------------------------------------ HTTP
    async def _on_http(self, reader, writer):
        """One request per connection (Connection: close). At most HTTP_MAX_CONNECTIONS
        are served at once (one more gets 503 at once, unread); a request head over
        _HTTP_LIMIT bytes gets 431, one not complete within HTTP_TIMEOUT_S 408."""
        if self._stopping or len(self._http_tasks) >= HTTP_MAX_CONNECTIONS:
            self._http_refuse(writer)
            return
        task = asyncio.current_task()
        self._http_tasks.add(task)
        try:
            await self._http_serve(reader, writer)
        except asyncio.CancelledError:
            # stop() cancels requests still being read; returning (not raising) keeps
            # asyncio's stream callback from printing a traceback for each of them
            writer.transport.abort()
        finally:
            self._http_tasks.discard(task)
            if not self._http_tasks:
                self._http_refused = 0

    def _http_refuse(self, writer):
        """503 without reading the request: the reply, our end of the stream, and the
        socket closed CLOSE_GRACE_S later (closing at once, with the request unread,
        would reset the connection and lose the reply). At most HTTP_MAX_CONNECTIONS
        wait so; more are reset at once."""
        if not self._http_refused:      # once per burst, not per connection
            log_line(self.log, "http_refused", {
                "reason": "relay stopping" if self._stopping else
                "%d HTTP connections open, the limit" % HTTP_MAX_CONNECTIONS})
        self._http_refused += 1
        transport = writer.transport
        if self._http_closing >= HTTP_MAX_CONNECTIONS:
            transport.abort()
            return
        self._http_reply(writer, "503 Service Unavailable", "text/plain",
                         "busy: %d HTTP connections open, the limit; try again\n"
                         % HTTP_MAX_CONNECTIONS, head_only=False)
        self._http_closing += 1

        def close():
            self._http_closing -= 1
            transport.abort()
        try:
            writer.write_eof()
        except OSError:
            pass
        asyncio.get_running_loop().call_later(CLOSE_GRACE_S, close)

    async def _http_serve(self, reader, writer):
        method = None
        try:
            first = await wait_for(reader.readexactly(1), HTTP_TIMEOUT_S)
            if not b"A" <= first <= b"Z":
                # No HTTP method starts so: a link frame (a board or `lkedge call` given
                # this port with tcp://) is told at once, not after HTTP_TIMEOUT_S.
                raise ValueError("not HTTP")
            head = first + await wait_for(reader.readuntil(b"\r\n\r\n"), HTTP_TIMEOUT_S)
            line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            method = line[0] if line else None
            status, ctype, body = self._http_route(line)
        except asyncio.LimitOverrunError:
            status, ctype, body = ("431 Request Header Fields Too Large", "text/plain",
                                   "request head over %d bytes\n" % _HTTP_LIMIT)
        except asyncio.TimeoutError:
            status, ctype, body = ("408 Request Timeout", "text/plain",
                                   "no complete request head within %d s\n" % HTTP_TIMEOUT_S)
        except (asyncio.IncompleteReadError, ValueError, UnicodeError):
            status, ctype, body = "400 Bad Request", "text/plain", "bad request\n"
        except (OSError, ConnectionError):
            writer.transport.abort()
            return
        self._http_reply(writer, status, ctype, body, head_only=method == "HEAD")
        try:
            await wait_for(writer.drain(), HTTP_TIMEOUT_S)
            writer.close()
            await wait_for(writer.wait_closed(), HTTP_TIMEOUT_S)
        except (OSError, ConnectionError, asyncio.TimeoutError):
            writer.transport.abort()

    @staticmethod
    def _http_reply(writer, status, ctype, body, head_only):
        """The response; HEAD gets the head GET would (Content-Length too), no body."""
        data = body.encode()
        writer.write(("HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                      "Connection: close\r\n\r\n" % (status, ctype, len(data))).encode()
                     + (b"" if head_only else data))

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
        for t in list(self._tasks) + list(self._http_tasks):
            t.cancel()
        if self._http_tasks:
            await asyncio.wait(list(self._http_tasks), timeout=CLOSE_GRACE_S)
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        for s in self._servers:
            try:
                await wait_for(s.wait_closed(), 2)
            except (asyncio.TimeoutError, Exception):
                pass
        if self._loop_handler is not None:
            loop, handler = self._loop_handler
            if loop.get_exception_handler() == self._loop_exception:
                loop.set_exception_handler(handler)
            self._loop_handler = None

    async def _wait_link(self, ln):
        while self.links.get(ln.cid) is ln:
            await asyncio.sleep(0.01)
