"""The relay's bounds against what a peer (or the system) can make it do: WebSocket
memory and malformed WebSocket input, destination lists, the open-file limit, the HTTP
port, a quiet serial line, token lifetimes, LEAVE reasons and log-line quoting."""
import asyncio
import errno
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jwt
from livekit.protocol import models

from linkpeer import RelayUnderTest
from lkedge import link, relayside, ws
from lkedge_host.relay import auth, command, server
from lkedge_host.relay.process import _free_port
from test_relay_router import Sim, data
from test_relay_server import expect_leave, parse


# ---------------------------------------------------------------- WebSocket

async def _raw_ws(r):
    """A WebSocket connection on a plain socket: (reader, writer), handshake done."""
    host, port = r.srv.addresses["ws"]
    rd, wr = await asyncio.open_connection(host, port)
    key = ws.new_key()
    wr.write(ws.handshake_request("%s:%d" % (host, port), "/", key))
    assert b" 101 " in await rd.readuntil(b"\r\n\r\n")
    return rd, wr


async def _ws_events(rd, timeout=3.0, until=None):
    """Link frames and the close frame the relay sends, until it closes (or a frame of
    kind `until` came): [(kind, x)]."""
    dec = ws.FrameDecoder()
    frames = link.FrameReader(1 << 20)
    out = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = await asyncio.wait_for(rd.read(65536), deadline - time.monotonic())
        except (asyncio.TimeoutError, ConnectionError):
            break
        if not chunk:
            break
        dec.receive(chunk)
        while True:
            ev = dec.next_event()
            if ev == ws.NEED_DATA:
                break
            if ev == ws.DATA:
                buf = bytearray(1 << 16)
                n = dec.take(buf)
                frames.receive(memoryview(bytes(buf[:n])))
                while True:
                    e = frames.next_event()
                    if e == link.NEED_DATA:
                        break
                    if e[0] == link.FRAME:
                        out.append((link.type_name(e[1]), link.decode_control(e[2])
                                    if e[1] == link.LEAVE else e[2]))
            elif ev == ws.CLOSE:
                out.append(("CLOSE", dec.close_code))
        if until is not None and any(k == until for k, _ in out):
            break
    return out


def _leave_then_close(events, close_code):
    """The LEAVE body, asserted to come before a close frame of close_code."""
    kinds = [k for k, _ in events]
    assert "LEAVE" in kinds and ("CLOSE", close_code) in events, events
    assert kinds.index("LEAVE") < kinds.index("CLOSE"), events
    leave = events[kinds.index("LEAVE")][1]
    assert leave["code"] == link.LEAVE_PROTOCOL, leave
    return leave["reason"]


async def test_a_websocket_frame_over_the_limit_gets_leave_4_before_close_1009():
    async with RelayUnderTest() as r:
        rd, wr = await _raw_ws(r)
        join = link.encode_control(link.JOIN, {"v": 1, "token": r.token("eve")})
        wr.write(ws.encode_frame(ws.OP_BINARY, join, b"mask"))
        assert (await _ws_events(rd, until="JOINED"))[0][0] == "JOINED"
        limit = getattr(r.srv, "ws_frame_limit", None) or 65536 + 4096
        assert 65536 < limit <= 65536 + 8192        # one max_frame link frame and some
        # frames packed in one 300 KiB message: under the old 1 MiB max_size, over the limit
        pings = link.encode_frame(link.PING, b"") * (300 * 1024 // 2)
        wr.write(ws.encode_frame(ws.OP_BINARY, pings, b"mask"))
        events = await _ws_events(rd)
        wr.close()
        reason = _leave_then_close(events, 1009)
        assert "WebSocket frame too big" in reason and str(limit) in reason, reason
        assert "eve" not in r.router.rooms().get("lab", [])


async def test_malformed_websocket_input_gets_leave_4_before_the_close_frame():
    # non-UTF-8 text (websockets alone would close 1007 without a LEAVE), an unmasked
    # client frame (1002)
    for frame, close_code, words in (
            (ws.encode_frame(ws.OP_TEXT, b"\xff\xfe not UTF-8", b"mask"), 1000, "text WebSocket message"),
            (b"\x82\x05hello", 1002, "WebSocket protocol error")):
        async with RelayUnderTest() as r:
            rd, wr = await _raw_ws(r)
            join = link.encode_control(link.JOIN, {"v": 1, "token": r.token("eve")})
            wr.write(ws.encode_frame(ws.OP_BINARY, join, b"mask") + frame)
            events = await _ws_events(rd)
            wr.close()
            reason = _leave_then_close(events, close_code)
            assert words in reason, reason


async def test_a_websocket_peer_that_pings_in_a_burst_and_resets_costs_no_log_line_per_pong(caplog):
    # websockets answers every PING; written after the reset, asyncio logged
    # "socket.send() raised exception." per pong past the 5th (about 2,000 lines for
    # five such peers), outside the relay's own rate-limited log
    import logging
    import struct
    caplog.set_level(logging.WARNING, logger="asyncio")
    async with RelayUnderTest() as r:
        for _ in range(3):
            rd, wr = await _raw_ws(r)
            wr.write(ws.encode_frame(ws.OP_PING, b"pp", b"mask") * 2000)
            await wr.drain()
            wr.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            wr.close()
        await asyncio.sleep(1.0)
        rd, wr = await _raw_ws(r)   # the relay still serves
        wr.close()
    lines = [rec.getMessage() for rec in caplog.records if "socket.send() raised" in rec.getMessage()]
    assert len(lines) <= 3, "%d lines, e.g. %r" % (len(lines), lines[:1])


async def test_a_websocket_message_is_read_as_its_fragments_arrive():
    # an unfinished fragmented message is not held by websockets until it ends: its
    # bytes reach the link at once (here DATA before JOIN: LEAVE 4 long before the
    # JOIN timeout)
    async with RelayUnderTest(join_timeout_ms=30000) as r:
        rd, wr = await _raw_ws(r)
        bad = link.encode_frame(link.DATA, b"\x0a\x00")
        wr.write(ws.encode_frame(ws.OP_BINARY, bad, b"mask", fin=False))
        wr.write(ws.encode_frame(ws.OP_CONT, b"\x00" * 1000, b"mask", fin=False))
        events = await _ws_events(rd, timeout=3)
        wr.close()
        assert events and events[0][0] == "LEAVE", events
        assert "DATA before JOIN" in events[0][1]["reason"], events


def _ws_held(ln):
    """Bytes of a WebSocket link's input held in the relay: frames websockets parsed and
    queued, the frame it is parsing, the part of a frame the router has not had yet."""
    conn = ln.ws
    queued = sum(len(f.data) for f in conn.recv_messages.frames.queue)
    parsing = len(conn.protocol.reader.buffer)
    return queued + parsing + len(getattr(ln, "_rest", None) or b"")


async def test_a_paused_websocket_sender_holds_a_few_frames_not_a_queue_of_messages():
    import websockets
    async with RelayUnderTest(queue_bytes=65536) as r:
        # bob never reads: his queue fills and the sender is paused
        rd, wr = await asyncio.open_connection(*r.tcp)
        wr.write(link.encode_control(link.JOIN, {"v": 1, "token": r.token("bob")}))
        sender = await websockets.connect(r.ws_url, compression=None, ping_interval=None,
                                          max_size=None)
        await sender.send(link.encode_control(link.JOIN, {"v": 1, "token": r.token("s")}))
        await sender.recv()
        pkt = link.encode_frame(link.DATA, models.DataPacket(
            destination_identities=["bob"],
            user=models.UserPacket(payload=b"z" * 60000)).SerializeToString())
        deadline = time.monotonic() + 30
        stalled = False
        while time.monotonic() < deadline and not stalled:
            try:                  # one link frame per message, as most senders write
                await asyncio.wait_for(sender.send(pkt), 1.0)
            except asyncio.TimeoutError:
                stalled = True    # the relay stopped reading: every buffer is full
        assert stalled, "the relay kept reading a sender whose receiver does not read"
        ln = next(ln for ln in r.srv.links.values() if ln.kind == "ws")
        assert r.router.paused(ln.cid)
        held = _ws_held(ln)
        # before: websockets queued up to 16 messages (here 16 x 60 KB) more
        assert held <= 2 * (65536 + 8192) + 256 * 1024, held
        sender.transport.abort()
        wr.close()


async def test_a_link_client_at_the_websocket_port_is_told_at_once_with_a_leave_naming_the_link_port():
    # A tcp:// URL given the WebSocket port: websockets waited for a request line that
    # never came, and the client for a JOINED till its join timeout (10 s), then said
    # nothing of why. No HTTP request begins with a JOIN frame's length varint.
    from linkpeer import LinkPeer
    async with RelayUnderTest() as r:
        peer = await LinkPeer.tcp(*r.srv.addresses["ws"])
        r.peers.append(peer)
        t0 = time.monotonic()
        await peer.join(r.token("lost"), expect=False)
        body = await expect_leave(peer, link.LEAVE_PROTOCOL)
        assert time.monotonic() - t0 < 2
        assert "this is the relay's WebSocket port" in body["reason"], body
        assert "its link port is tcp://%s:%d" % r.tcp in body["reason"], body
        assert r.srv.ws_handshakes == 0
        ok = await LinkPeer.ws(r.ws_url)   # a WebSocket client there still joins
        r.peers.append(ok)
        assert (await ok.join(r.token("fine")))["identity"] == "fine"


async def test_websocket_upgrade_requests_in_progress_are_bounded_and_counted_as_connections():
    # Unfinished upgrade requests need no token: websockets held up to 128 header lines
    # of 8 KiB each, and they did not count in max_connections (1000 of them: 1.1 GB).
    async with RelayUnderTest(max_connections=3) as r:
        host, port = r.srv.addresses["ws"]
        # one request head past WS_HANDSHAKE_LIMIT: 431, closed
        rd, wr = await asyncio.open_connection(host, port)
        wr.write(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: %s\r\n" % (b"a" * 4000) * 5)
        answer = await asyncio.wait_for(rd.read(), 5)
        assert answer.startswith(b"HTTP/1.1 431 ") and str(server.WS_HANDSHAKE_LIMIT).encode() in answer, answer
        wr.close()
        # three unfinished requests take the three places; a fourth connection gets 503
        pending = []
        for _ in range(3):
            rd, wr = await asyncio.open_connection(host, port)
            wr.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
            pending.append((rd, wr))
        for _ in range(100):
            if r.srv.ws_handshakes == 3:
                break
            await asyncio.sleep(0.01)
        assert r.srv.ws_handshakes == 3
        rd, wr = await asyncio.open_connection(host, port)
        answer = await asyncio.wait_for(rd.read(), 5)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"relay full" in answer, answer
        wr.close()
        # and on the TCP link port too: they hold the places a link connection needs
        p = await r.connect()
        await p.send_control(link.JOIN, {"v": 1, "token": r.token("t")})
        leave = await expect_leave(p, link.LEAVE_SHUTDOWN)
        assert "relay full" in leave["reason"], leave
        # once they go, the places are free again: a WebSocket participant joins
        for _rd, wr in pending:
            wr.close()
        for _ in range(100):
            if r.srv.ws_handshakes == 0:
                break
            await asyncio.sleep(0.01)
        assert r.srv.ws_handshakes == 0
        rd, wr = await _raw_ws(r)
        wr.write(ws.encode_frame(ws.OP_BINARY, link.encode_control(link.JOIN, {"v": 1, "token": r.token("w")}),
                                 b"mask"))
        events = await _ws_events(rd, until="JOINED")
        assert events and events[-1][0] == "JOINED", events
        wr.close()


async def test_tls_handshakes_in_progress_count_as_connections_and_last_the_join_timeout(tmp_path):
    # Connections still in their TLS handshake were not counted anywhere and were held
    # for asyncio's default 60 s: 3000 that never sent a ClientHello held 916 MB and
    # 3000 descriptors past --max-connections 100.
    import ssl
    cert, key = str(tmp_path / "c.pem"), str(tmp_path / "k.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    async with RelayUnderTest(max_connections=3, join_timeout_ms=2000, server_options={"ssl": ctx}) as r:
        for kind in ("tcp", "ws"):
            host, port = r.srv.addresses[kind]
            conns = [await asyncio.open_connection(host, port) for _ in range(5)]
            await asyncio.sleep(0.3)
            assert len(r.srv._tls) == 3, (kind, len(r.srv._tls))

            async def closed(rd, wait):
                try:
                    return await asyncio.wait_for(rd.read(1), wait) == b""
                except asyncio.TimeoutError:
                    return False
                except OSError:
                    return True
            at_once = [await closed(rd, 0.2) for rd, _ in conns]
            assert at_once.count(True) == 2, (kind, at_once)   # past the limit: closed unread
            later = [await closed(rd, 3.5) for rd, _ in conns]
            assert all(later), (kind, later)                   # the rest at the handshake timeout
            for _ in range(100):   # and they leave the count (by their deadline at the latest)
                if len(r.srv._tls) == 0:
                    break
                await asyncio.sleep(0.02)
            assert len(r.srv._tls) == 0
            for _, wr in conns:
                wr.close()
        assert "event=tls_refused" in r.logbuf.getvalue()
        assert r.router.metrics.get("lkedge_relay_refused_total", reason="full_tls_handshake") == 4
        # the places are free again: a TLS participant joins
        client = ssl.create_default_context(cafile=cert)
        host, port = r.srv.addresses["tcp"]
        rd, wr = await asyncio.open_connection(host, port, ssl=client)
        wr.write(link.encode_control(link.JOIN, {"v": 1, "token": r.token("t")}))
        head = await asyncio.wait_for(rd.readexactly(4), 5)   # varint(n) of 1-3 bytes, then the type
        n_len = next(i for i, b in enumerate(head) if b < 0x80) + 1
        assert head[n_len] == link.JOINED, head
        wr.close()


# ---------------------------------------------------------------- the event loop

class _Recorder:
    """A stand-in for RelayServer and its Router (named as such): records what a link
    hands the router, so the test sees how a read is cut and when others run."""
    def __init__(self, seen):
        self.seen = seen
        self.router = self

    def receive(self, cid, data, now):
        self.seen.append(len(data))

    def apply(self):
        pass


async def _interleaving(data, turn_s, monkeypatch):
    monkeypatch.setattr(server, "TURN_S", turn_s)
    seen = []
    ln = server._Link(_Recorder(seen), 1, "")

    async def other():
        while True:
            seen.append("other")
            await asyncio.sleep(0)
    task = asyncio.ensure_future(other())
    await asyncio.sleep(0)
    seen.clear()
    await ln._take(data)
    task.cancel()
    return seen


async def test_a_long_read_is_handed_over_in_slices_and_other_connections_run_between(monkeypatch):
    # A read of tiny frames costs the router microseconds a frame: one connection
    # flooding empty DATA in its own room held the loop for seconds (p50 2-3 s for a
    # pair in another room). Past TURN_S a link gives the loop up between slices.
    n = server.RECEIVE_SLICE
    seen = await _interleaving(b"\0" * (3 * n - 1), 0, monkeypatch)
    assert seen == [n, "other", n, "other", n - 1, "other", "other"], seen
    # within its turn a bulk read goes through whole, then gives the loop up once
    seen = await _interleaving(b"\0" * (3 * n), 60, monkeypatch)
    assert seen == [n, n, n, "other"], seen


# ---------------------------------------------------------------- destinations

def test_skipped_destinations_are_counted_once_per_packet_and_distinct():
    s = Sim()
    for cid, who in ((1, "a@r"), (2, "b@r")):
        s.join(cid, who)
    s.take(1)
    s.take(2)
    m = s.r.metrics
    calls = []
    inc = m.inc
    m.inc = lambda name, n=1, **labels: (calls.append((name, labels.get("reason"))), inc(name, n, **labels))
    dests = ["g%d" % (i % 4000) for i in range(5000)] + ["b", "a", "b"]
    s.feed(1, data(b"x", dest=dests))
    assert s.types(2) == [link.DATA]           # once, though named twice
    assert m.get("lkedge_relay_drops_total", reason="unknown_destination") == 4000
    assert m.get("lkedge_relay_drops_total", reason="destination_is_sender") == 1
    drops = [c for c in calls if c[0] == "lkedge_relay_drops_total"]
    assert sorted(drops) == [("lkedge_relay_drops_total", "destination_is_sender"),
                             ("lkedge_relay_drops_total", "unknown_destination")], drops[:5]


def test_a_destination_list_longer_than_the_room_reaches_exactly_the_members_named():
    s = Sim()
    for cid in range(1, 8):
        s.join(cid, "p%d@r" % cid)
    for cid in range(1, 8):
        s.take(cid)
    # more distinct names than members: the room is walked instead of the list
    s.feed(1, data(b"x", dest=["p3", "p5", "p1"] + ["nobody%d" % i for i in range(50)] + ["p3"]))
    got = {cid for cid in range(1, 8) if s.take(cid)}
    assert got == {3, 5}
    s.feed(1, data(b"y", dest=["p2", "nobody"]))   # shorter: the list is walked
    assert [cid for cid in range(1, 8) if s.types(cid)] == [2]


# ---------------------------------------------------------------- open-file limit

class _Limits:
    def __init__(self, soft, hard, refuse=False):
        self.soft, self.hard, self.refuse = soft, hard, refuse

    def get(self):
        return self.soft, self.hard

    def set(self, soft, hard):
        if self.refuse or soft > self.hard:
            raise ValueError("not allowed")
        self.soft = soft


def test_the_open_file_limit_is_raised_toward_the_hard_limit_as_needed():
    lim = _Limits(1024, 1 << 20)
    assert command.fd_budget(10000, 64, False, (lim.get, lim.set)) == (10000, None)
    assert lim.soft == 10000 + 64 + command.FD_RESERVE
    lim = _Limits(1 << 16, 1 << 20)                 # enough already: left alone
    assert command.fd_budget(10000, 64, True, (lim.get, lim.set)) == (10000, None)
    assert lim.soft == 1 << 16


def test_an_open_file_limit_too_low_lowers_the_default_or_refuses_an_explicit_value():
    lim = _Limits(256, 256)
    n, warning = command.fd_budget(10000, 64, False, (lim.get, lim.set))
    assert n == 256 - 64 - command.FD_RESERVE
    assert "256" in warning and "10000" in warning and "serving at most %d" % n in warning
    try:
        command.fd_budget(400, 64, True, (lim.get, lim.set))
    except ValueError as e:
        assert "--max-connections 400" in str(e) and "is 256" in str(e), e
    else:
        raise AssertionError("an explicit --max-connections over the limit must be refused")
    lim = _Limits(1024, 1 << 20, refuse=True)       # setrlimit refused (e.g. macOS caps)
    n, warning = command.fd_budget(10000, 0, False, (lim.get, lim.set))
    assert n == 1024 - command.FD_RESERVE and warning


def _relay_cmd(*extra):
    return [sys.executable, "-m", "lkedge_host.cli", "relay", "--port", "0", "--ws-port", "0",
            "--http-port", "0"] + list(extra)


def _nofile(n):
    def limit():
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    return limit


def test_a_relay_under_a_low_open_file_limit_says_relay_full_instead_of_failing_accept():
    proc = subprocess.Popen(_relay_cmd(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_nofile(100))
    socks = []
    try:
        line = proc.stdout.readline()
        while line and not line.startswith("lkedge relay: link "):
            line = proc.stdout.readline()
        port = int(line.split()[3].rsplit(":", 1)[1])
        fit = 100 - command.FD_RESERVE
        for _ in range(fit):
            socks.append(socket.create_connection(("127.0.0.1", port)))
        extra = socket.create_connection(("127.0.0.1", port))
        socks.append(extra)
        extra.settimeout(5)
        reader = link.FrameReader(1 << 16)
        reader.receive(memoryview(extra.recv(4096)))
        ev = reader.next_event()
        leave = link.decode_control(ev[2])
        assert ev[1] == link.LEAVE and leave["code"] == link.LEAVE_SHUTDOWN, leave
        assert "relay full: %d connections" % fit in leave["reason"], leave
    finally:
        for s in socks:
            s.close()
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=15)
    first = err.splitlines()[0]
    assert "event=warning" in first and "RLIMIT_NOFILE) is 100" in first, first
    assert "Traceback" not in err


def test_an_explicit_max_connections_over_the_open_file_limit_is_a_usage_error():
    p = subprocess.run(_relay_cmd("--max-connections", "500"), capture_output=True, text=True,
                       preexec_fn=_nofile(100), timeout=30)
    assert p.returncode == command.EXIT_USAGE
    assert "--max-connections 500 needs" in p.stderr and "is 100" in p.stderr, p.stderr


def test_accept_failing_for_want_of_descriptors_is_one_log_line_not_a_traceback_each_time():
    log = io.StringIO()

    async def main():
        srv = server.RelayServer(None, port=None, ws_port=None, http_port=None, log=log)
        srv.router = type("R", (), {"next_deadline": lambda self: None,
                                    "tick": lambda self, now: None,
                                    "pop_actions": lambda self: [],
                                    "shutdown": lambda self, now: None})()
        await srv.start()
        loop = asyncio.get_running_loop()
        for _ in range(5):
            loop.call_exception_handler({"message": "socket.accept() out of system resource",
                                         "exception": OSError(errno.EMFILE, "Too many open files")})
        await srv.stop()
    asyncio.run(main())
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 and "event=accept_failed" in lines[0] and "EMFILE" in lines[0], lines


# ---------------------------------------------------------------- HTTP

async def _http(r, raw, read=True):
    rd, wr = await asyncio.open_connection(*r.http)
    wr.write(raw)
    if not read:
        return rd, wr
    out = await asyncio.wait_for(rd.read(), 5)
    wr.close()
    return out


async def test_http_request_heads_are_bounded_and_head_has_no_body():
    async with RelayUnderTest() as r:
        big = await _http(r, b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
        assert big.startswith(b"HTTP/1.1 431 "), big[:60]
        get = await _http(r, b"GET /metrics HTTP/1.1\r\n\r\n")
        head = await _http(r, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        ghead, _, gbody = get.partition(b"\r\n\r\n")
        hhead, _, hbody = head.partition(b"\r\n\r\n")
        assert hhead.startswith(b"HTTP/1.1 200 ") and hbody == b"", head[:200]
        length = int(hhead.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        assert length > 0 and abs(length - len(gbody)) < 200   # counters moved in between


async def test_a_link_frame_on_the_http_port_gets_400_at_once_not_after_the_head_timeout():
    # A board or `lkedge call` given the HTTP port with tcp:// sends a link frame (no
    # HTTP method starts with its length bytes): it learns at once that this is HTTP.
    async with RelayUnderTest() as r:
        rd, wr = await _http(r, b"\x00\x00\x00\x20\x0a\x1e", read=False)
        out = await asyncio.wait_for(rd.read(), server.HTTP_TIMEOUT_S / 2)
        wr.close()
        assert out.startswith(b"HTTP/1.1 400 "), out[:60]


async def test_http_connections_are_counted_and_one_over_the_limit_gets_503():
    async with RelayUnderTest() as r:
        idle = [await _http(r, b"GET /metrics HTTP/1.1\r\n", read=False)
                for _ in range(server.HTTP_MAX_CONNECTIONS)]
        while len(r.srv._http_tasks) < server.HTTP_MAX_CONNECTIONS:
            await asyncio.sleep(0.01)
        over = await _http(r, b"GET /healthz HTTP/1.1\r\n\r\n")
        assert over.startswith(b"HTTP/1.1 503 "), over[:80]
        assert b"%d HTTP connections" % server.HTTP_MAX_CONNECTIONS in over
        for _rd, wr in idle:
            wr.close()
        while r.srv._http_tasks:
            await asyncio.sleep(0.01)
        ok = await _http(r, b"GET /healthz HTTP/1.1\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 "), ok[:80]
        assert r.logbuf.getvalue().count("event=http_refused") == 1


def test_stopping_with_http_connections_open_prints_no_traceback():
    http_port = _free_port()
    proc = subprocess.Popen(_relay_cmd()[:-1] + [str(http_port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    socks = []
    try:
        line = proc.stdout.readline()
        while line and not line.startswith("lkedge relay: link "):
            line = proc.stdout.readline()
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", http_port))
            s.sendall(b"GET /metrics HTTP/1.1\r\n")       # a head never finished
            socks.append(s)
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=15)
        for s in socks:
            s.close()
    assert proc.returncode == 0
    assert "Traceback" not in err and "CancelledError" not in err, err[-2000:]




# ---------------------------------------------------------------- serial

async def test_a_quiet_serial_line_gets_no_leave_and_no_log_until_bytes_arrive():
    from lkedge_host.relay.router import Router
    master, slave = os.openpty()
    os.set_blocking(master, False)
    import tty
    tty.setraw(slave)
    log = io.StringIO()
    v = auth.Verifier(auth.DEV_API_KEY, auth.DEV_API_SECRET)
    srv = server.RelayServer(Router(v.verify, join_timeout_ms=150), port=None, ws_port=None,
                             http_port=None, serial=os.ttyname(slave), log=log)
    await srv.start()
    try:
        await asyncio.sleep(1.0)          # over six join timeouts of a quiet line
        try:
            written = os.read(master, 65536)
        except BlockingIOError:
            written = b""
        assert written == b"" and log.getvalue() == "", (written, log.getvalue())
        # bytes arrive: the JOIN timeout runs from then on
        os.write(master, link.frame_header(link.JOIN, 100))
        got = b""
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and b"no JOIN within" not in got:
            await asyncio.sleep(0.05)
            try:
                got += os.read(master, 65536)
            except BlockingIOError:
                pass
        assert b"no JOIN within 150 ms" in got, got
        assert log.getvalue().count("event=leave") == 1, log.getvalue()
    finally:
        await srv.stop()
        os.close(master)
        os.close(slave)


# ---------------------------------------------------------------- tokens, reasons

def _signed(**over):
    c = {"iss": auth.DEV_API_KEY, "sub": "eve", "exp": int(time.time()) + 600,
         "video": {"roomJoin": True, "room": "lab"}}
    c.update(over)
    return jwt.encode(c, auth.DEV_API_SECRET, algorithm="HS256")


def test_a_token_valid_for_more_than_ten_years_is_refused():
    v = auth.Verifier(auth.DEV_API_KEY, auth.DEV_API_SECRET)
    for exp in (10 ** 20, 1e20, int(time.time()) + auth.MAX_TTL_S + auth.CLOCK_SKEW_S + 600):
        try:
            v.verify(_signed(exp=exp))
        except auth.AuthError as e:
            assert "more than 10 years ahead" in str(e) and str(auth.MAX_TTL_S) in str(e), e
        else:
            raise AssertionError("exp %r accepted" % exp)
    # PyJWT takes a numeric string for exp: it must not get past the cap that way
    for exp in ("99999999999", "0099999999999", str(int(time.time()) + 600), None, True, [1]):
        try:
            v.verify(_signed(exp=exp))
        except auth.AuthError as e:
            assert "is not a number" in str(e), e
        else:
            raise AssertionError("exp %r accepted" % (exp,))
    # the longest lifetime minting allows is taken
    assert v.verify(auth.mint_token(auth.DEV_API_KEY, auth.DEV_API_SECRET, "eve", "lab",
                                    ttl_s=auth.MAX_TTL_S))["identity"] == "eve"


async def test_leave_reasons_name_the_bad_value_and_the_malformed_claim():
    async with RelayUnderTest() as r:
        p = await r.connect()
        await p.send_control(link.JOIN, {"v": 1, "token": r.token("eve"), "client_protocol": -1})
        reason = (await expect_leave(p, link.LEAVE_PROTOCOL))["reason"]
        assert reason.endswith('"client_protocol" must be a non-negative integer, got -1'), reason
        p = await r.connect()
        await p.send_control(link.JOIN, {"v": 1, "token": r.token("eve"), "capabilities": [2, -7]})
        reason = (await expect_leave(p, link.LEAVE_PROTOCOL))["reason"]
        assert "got -7 (item 1)" in reason, reason
        for claim, words in (({"roomConfig": {"maxParticipants": "zz"}}, 'claim "roomConfig" is malformed'),
                             ({"exp": 10 ** 20}, "more than 10 years ahead")):
            p = await r.connect()
            await p.join(_signed(**claim), expect=False)
            reason = (await expect_leave(p, link.LEAVE_UNAUTHORIZED))["reason"]
            assert words in reason, reason


def test_a_negative_leave_code_is_named():
    try:
        relayside.check_leave({"code": -3})
    except link.LinkError as e:
        assert "got -3" in str(e)
    else:
        raise AssertionError("a negative code must be refused")


# ---------------------------------------------------------------- logs

def test_log_values_cannot_forge_lines_whatever_the_separator():
    nasty = ["a\u2028ts=x event=join", "b\u2029c", "c\x85d", "d\x7fe", "e\x9bf", "f\u202eg",
             "h\ni", "j\rk", "l\x0bm", "n\x1cq", "sur\udc80", 'q"uote\\', "sp ace", ""]
    for v in nasty:
        out = io.StringIO()
        server.log_line(out, "join", {"identity": v, "room": "lab"})
        line = out.getvalue()
        assert line.endswith("\n") and len(line.splitlines()) == 1, repr(line)
        line.encode("utf-8")                                   # always writable
        value = line.split("identity=", 1)[1].rsplit(" room=", 1)[0]
        assert value.startswith('"') and json.loads(value) == v, (v, value)
    # printable text, non-ASCII included, stays as it is
    out = io.StringIO()
    server.log_line(out, "join", {"identity": "J\u00f6rg-\u00e9t\u00e9", "n": 3})
    assert out.getvalue().endswith(" identity=J\u00f6rg-\u00e9t\u00e9 n=3\n")


def test_forwarding_still_works_with_destinations_read_by_the_official_parser():
    s = Sim()
    s.join(1, "a@r")
    s.join(2, "b@r")
    s.take(2)
    s.feed(1, data(b"hi", dest=["b"]))
    (t, body), = s.take(2)
    assert t == link.DATA and parse(body).participant_identity == "a"
    s.feed(1, link.encode_frame(link.DATA, b"\x2a\x02\xff\xfe"))
    assert "destination_identities is not valid UTF-8" in s.take(1)[-1][1]["reason"]


def test_grants_are_taken_only_as_livekit_spells_them():
    # each of these was let through by a mutant no test caught (mutation review)
    v = auth.Verifier(auth.DEV_API_KEY, auth.DEV_API_SECRET)

    def refused(words, **over):
        try:
            v.verify(_signed(**over))
        except auth.AuthError as e:
            assert words in str(e), (words, str(e))
        else:
            raise AssertionError("accepted: %r" % (over,))
    refused("no identity", sub="")
    claims = {"iss": auth.DEV_API_KEY, "exp": int(time.time()) + 600, "video": {"roomJoin": True, "room": "lab"}}
    try:   # no sub at all
        v.verify(jwt.encode(claims, auth.DEV_API_SECRET, algorithm="HS256"))
    except auth.AuthError as e:
        assert "no identity" in str(e), e
    else:
        raise AssertionError("a token without sub was accepted")
    refused("names no room", video={"roomJoin": True})
    refused("names no room", video={"roomJoin": True, "room": ""})
    for join in (1, "yes", "true", None):   # JSON true, not merely truthy
        refused("roomJoin grant", video={"roomJoin": join, "room": "lab"})
    # canPublishData: absent or true allows; anything else forbids
    for value, allowed in ((None, True), (True, True), (False, False), ("false", False), (0, False),
                           ("true", False), (1, False)):
        video = {"roomJoin": True, "room": "lab"}
        if value is not None:
            video["canPublishData"] = value
        assert v.verify(_signed(video=video))["can_publish_data"] is allowed, value
    # the identity's bound, at the byte
    assert v.verify(_signed(sub="é" * (auth.MAX_IDENTITY_BYTES // 2)))["identity"]
    refused("identity", sub="x" * (auth.MAX_IDENTITY_BYTES + 1))


def test_development_keys_are_the_pair_not_either_half():
    assert auth.is_dev_keys(auth.DEV_API_KEY, auth.DEV_API_SECRET)
    assert not auth.is_dev_keys(auth.DEV_API_KEY, "a-real-secret-of-32-characters-at-least")
    assert not auth.is_dev_keys("APIrealkey", auth.DEV_API_SECRET)
