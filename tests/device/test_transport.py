"""lkedge.transport on MicroPython and CPython: URLs, errors, and real loopback sockets
against small servers written in this module with the runtime's own asyncio."""
import asyncio
import os

from lkedge import ws
from lkedge.transport import TransportError, open_transport, parse_url
from transport_helpers import read_exactly, read_to_end


def _expect_error(fn, words):
    try:
        fn()
    except TransportError as e:
        for w in words:
            assert w in str(e), "error %r should mention %r" % (str(e), w)
        return e
    raise AssertionError("no TransportError (expected one mentioning %r)" % (words,))


async def _expect_error_async(coro, words):
    try:
        await coro
    except TransportError as e:
        for w in words:
            assert w in str(e), "error %r should mention %r" % (str(e), w)
        return e
    raise AssertionError("no TransportError (expected one mentioning %r)" % (words,))


async def _serve(handler):
    """Start a loopback server on a free port (MicroPython cannot report port 0's pick)."""
    last = None
    for _ in range(20):
        port = 20000 + (int.from_bytes(os.urandom(2), "big") % 30000)
        try:
            return await asyncio.start_server(handler, "127.0.0.1", port), port
        except OSError as e:
            last = e
    raise last


async def _wait_for_key(d, key):
    for _ in range(200):
        if key in d:
            return d[key]
        await asyncio.sleep(0.01)
    raise AssertionError("the server never recorded %r: %r" % (key, d))


async def _hang_up(w):
    w.close()
    await w.wait_closed()  # MicroPython's Stream.close() does nothing: this closes the socket


async def _stop(srv):
    srv.close()
    await srv.wait_closed()


# ---------------------------------------------------------------- URLs
def test_parse_url_accepts_the_four_schemes():
    assert parse_url("tcp://127.0.0.1:7000") == ("tcp", "127.0.0.1", 7000, "/")
    assert parse_url("tls://relay.example:7443") == ("tls", "relay.example", 7443, "/")
    assert parse_url("ws://relay.local/link?room=a") == ("ws", "relay.local", 80, "/link?room=a")
    assert parse_url("wss://relay.local:8443") == ("wss", "relay.local", 8443, "/")
    assert parse_url("ws://[::1]:9000/x") == ("ws", "::1", 9000, "/x")


def test_bad_urls_name_the_url_and_the_cause():
    cases = [
        ("http://h:1", ["http://h:1", "unsupported scheme 'http'"]),
        ("relay:7000", ["not a URL"]),
        ("tcp://relay", ["missing port"]),
        ("tcp://:7000", ["missing host"]),
        ("tcp://h:0", ["bad port '0'"]),
        ("ws://h:http/", ["bad port 'http'"]),
        ("tcp://h:1/path", ["has no path"]),
        ("ws://u:p@h:1/", ["credentials"]),
        ("ws://[::1:9000/", ["unclosed '['"]),
    ]
    for url, words in cases:
        e = _expect_error(lambda: open_transport(url), words)
        assert e.url == url


# ---------------------------------------------------------------- TCP
async def test_tcp_refused_connection_is_reported_at_connect():
    srv, port = await _serve(lambda r, w: None)
    await _stop(srv)  # the port is free now: nothing listens
    await _expect_error_async(open_transport("tcp://127.0.0.1:%d" % port).connect(), ["connection refused", str(port)])


async def test_room_connect_to_a_refused_port_names_the_url_once_and_the_cause():
    from lkedge.config import RoomOptions
    from lkedge.room import ConnectError, Room
    srv, port = await _serve(lambda r, w: None)
    await _stop(srv)
    url = "tcp://127.0.0.1:%d" % port
    room = Room(RoomOptions(auto_reconnect=False))
    try:
        await room.connect(url, "token")
    except ConnectError as e:
        msg = str(e)
        assert msg == "cannot reach the relay at %s: connection refused" % url, msg
    else:
        raise AssertionError("connected to a port nobody listens on")
    assert room.connection_state == "disconnected"


async def test_room_connect_to_a_malformed_url_fails_clearly_and_can_be_retried():
    from lkedge.config import RoomOptions
    from lkedge.room import ConnectError, Room
    room = Room(RoomOptions(auto_reconnect=False))
    for _ in range(2):   # the second attempt is refused for the URL too, not "already connecting"
        try:
            await room.connect("nonsense", "token")
        except ConnectError as e:
            assert str(e).startswith("bad relay URL: ") and "nonsense" in str(e), str(e)
        else:
            raise AssertionError("connected to a malformed URL")
        assert room.connection_state == "disconnected"


async def _echo(r, w):
    while True:
        data = await r.read(512)
        if not data:
            break
        w.write(data)
        await w.drain()
    await _hang_up(w)


async def test_tcp_round_trip_and_server_close():
    srv, port = await _serve(_echo)
    try:
        t = open_transport("tcp://127.0.0.1:%d" % port)
        assert await t.connect() is t
        payload = bytes(i & 0xFF for i in range(3000))
        await t.write(payload)
        buf = memoryview(bytearray(256))
        got = 0
        while got < len(payload):
            n = await t.read_into(buf)
            assert n > 0, "stream ended after %d bytes" % got
            assert buf[:n] == payload[got:got + n], "echo differs at byte %d" % got
            got += n
        await t.close()
        assert await t.read_into(buf) == 0, "read after close() must say closed"
        await _expect_error_async(t.write(b"x"), ["closed"])
    finally:
        await _stop(srv)


async def test_tcp_peer_close_reads_as_zero():
    async def bye(r, w):
        w.write(b"last")
        await w.drain()
        await _hang_up(w)
    srv, port = await _serve(bye)
    try:
        t = await open_transport("tcp://127.0.0.1:%d" % port).connect()
        got = await read_to_end(t, 16)
        assert got == b"last"
        await t.close()
    finally:
        await _stop(srv)


async def test_a_memory_error_is_passed_on_as_it_is_not_as_the_link_failing():
    # The Room says "out of memory" for it (joining: "out of memory while joining"), not
    # "cannot reach the relay at ...: MemoryError: ..."; the connection is dropped all the
    # same, and later reads and writes report that first cause.
    srv, port = await _serve(_echo)
    try:
        t = await open_transport("tcp://127.0.0.1:%d" % port).connect()

        async def no_heap(buf):
            raise MemoryError("memory allocation failed, allocating 512 bytes")
        t._s.readinto = no_heap
        for aw in (t.read_into(bytearray(16)), t.write(b"x")):
            try:
                await aw
            except MemoryError as e:
                assert "allocating 512 bytes" in str(e), e
            else:
                raise AssertionError("no MemoryError")
        assert await t.read_into(bytearray(16)) == 0   # dropped: the connection is gone
        await t.close()
    finally:
        await _stop(srv)


# ---------------------------------------------------------------- a tiny WebSocket server
async def _accept_upgrade(r, w, status=None):
    key = None
    while True:
        line = await r.readline()
        if line in (b"\r\n", b""):
            break
        if line.lower().startswith(b"sec-websocket-key:"):
            key = line[18:].strip().decode()
    if status:
        w.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
    else:
        w.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + ws.accept_for(key).encode() + b"\r\n\r\n")
    await w.drain()


def _frame(op, payload, fin=True):
    return bytes(((0x80 if fin else 0) | op, len(payload))) + payload  # payloads < 126 here


async def _read_client_frame(r):
    h = await r.readexactly(2)
    assert h[1] & 0x80, "client frame not masked"
    n = h[1] & 0x7F
    if n == 126:
        e = await r.readexactly(2)
        n = (e[0] << 8) | e[1]
    key = await r.readexactly(4)
    body = await r.readexactly(n) if n else b""
    return h[0] & 0x0F, ws.mask_bytes(body, key)


async def test_websocket_fragments_ping_echo_and_server_close():
    seen = {}

    async def script(r, w):
        await _accept_upgrade(r, w)
        w.write(_frame(ws.OP_BINARY, b"hel", fin=False) + _frame(ws.OP_PING, b"p")
                + _frame(ws.OP_CONT, b"lo ", fin=False) + _frame(ws.OP_CONT, b"world"))
        await w.drain()
        seen["pong"] = await _read_client_frame(r)
        op, data = await _read_client_frame(r)
        w.write(_frame(ws.OP_BINARY, data))
        w.write(_frame(ws.OP_CLOSE, b"\x0f\xa1bye"))  # 4001
        await w.drain()
        seen["close"] = await _read_client_frame(r)
        await _hang_up(w)

    srv, port = await _serve(script)
    try:
        t = await open_transport("ws://127.0.0.1:%d/link" % port).connect()
        got = await read_exactly(t, 11, 4)  # a buffer smaller than the messages
        assert got == b"hello world", got
        await t.write(b"abcdef")
        got = await read_to_end(t, 4)
        assert got == b"abcdef"
        assert (t.close_code, t.close_reason) == (4001, "bye")
        assert seen["pong"] == (ws.OP_PONG, b"p"), seen
        close = await _wait_for_key(seen, "close")
        assert close == (ws.OP_CLOSE, b"\x0f\xa1"), "close code echoed: %r" % (close,)
        await t.close()
    finally:
        await _stop(srv)


async def test_websocket_refused_upgrade_shows_the_status_line():
    async def refuse(r, w):
        await _accept_upgrade(r, w, b"403 Forbidden")
        await _hang_up(w)
    srv, port = await _serve(refuse)
    try:
        await _expect_error_async(open_transport("ws://127.0.0.1:%d/" % port).connect(),
                                  ["WebSocket handshake failed", "HTTP/1.1 403 Forbidden"])
    finally:
        await _stop(srv)


async def test_websocket_protocol_error_closes_with_1002():
    seen = {}

    async def text(r, w):
        await _accept_upgrade(r, w)
        w.write(_frame(ws.OP_TEXT, b"hi"))
        await w.drain()
        seen["close"] = await _read_client_frame(r)
        await _hang_up(w)
    srv, port = await _serve(text)
    try:
        t = await open_transport("ws://127.0.0.1:%d/" % port).connect()
        await _expect_error_async(t.read_into(bytearray(8)), ["WebSocket protocol error", "text message"])
        close = await _wait_for_key(seen, "close")
        assert close[1][:2] == b"\x03\xea", "expected close 1002: %r" % (close,)
    finally:
        await _stop(srv)


async def test_websocket_server_gone_without_close_frame():
    async def vanish(r, w):
        await _accept_upgrade(r, w)
        w.write(_frame(ws.OP_BINARY, b"x"))
        await w.drain()
        await _hang_up(w)
    srv, port = await _serve(vanish)
    try:
        t = await open_transport("ws://127.0.0.1:%d/" % port).connect()
        buf = bytearray(8)
        assert await t.read_into(buf) == 1 and buf[0] == ord("x")
        assert await t.read_into(buf) == 0
        assert t.close_code == ws.CLOSE_ABNORMAL
    finally:
        await _stop(srv)
