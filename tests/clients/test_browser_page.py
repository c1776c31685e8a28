"""The example page (examples/browser/index.html) and the bundle it loads, in a real
browser: headless Chromium over its DevTools protocol (tests/clients/chromium.py), against
the real relay's WebSocket port, a MicroPython board and a CPython participant.

What Node cannot stand in for is checked here: the bundle loading as an ES module from a
page, the browser's own WebSocket, crypto.randomUUID (livekit-client's stream ids; only
in a secure context, which http://127.0.0.1 is), CompressionStream and
DecompressionStream ('deflate-raw') as streams are compressed to a board and from a host,
and the page's own controls. Without a Chromium (Debian's `chromium`; `.ci/run` installs
it in CI) these tests are skipped, and say why.
"""
import contextlib
import functools
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "interop"))
from chromium import Chromium, executable  # noqa: E402
from py_peer import MpPeer, PyPeer  # noqa: E402
from test_browser_client import _relay  # noqa: E402

from lkedge_host.relay.process import RelayProcess  # noqa: E402

pytestmark = pytest.mark.skipif(executable() is None, reason="no Chromium here (Debian's `chromium` package, "
                                "or LKEDGE_CHROMIUM=path): the example page is not run in a browser")

PAGE = "/examples/browser/index.html"


class _Files(http.server.SimpleHTTPRequestHandler):
    # What `python3 -m http.server` serves (README): a module script must come as
    # JavaScript, and Python's own table maps .mjs so.
    extra_headers = {}

    def end_headers(self):
        for name, value in self.extra_headers.items():
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, *args):
        pass


def _serve_repository(headers=None):
    handler = type("_FilesWith", (_Files,), {"extra_headers": dict(headers or {})})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=ROOT))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _js(value):
    return json.dumps(value)


@contextlib.contextmanager
def _page_alone(relay, flags=(), headers=None):
    """The example page in a Chromium of its own, on `relay` (served with `headers`
    added); -> (page, closing): what else the test starts goes on `closing` (an
    ExitStack) to be stopped with them."""
    with contextlib.ExitStack() as closing:
        closing.callback(relay.stop)
        server = _serve_repository(headers)
        closing.callback(server.shutdown)
        page = Chromium.start("http://127.0.0.1:%d%s" % (server.server_address[1], PAGE), flags=flags)
        closing.callback(page.close)
        yield page, closing


def _host(relay, closing):
    host = PyPeer(relay.host, relay.port, relay.token("host"), name="host")
    host.start()
    closing.callback(host.close)
    return host


@pytest.fixture(scope="module")
def room():
    relay = _relay("page")
    with _page_alone(relay) as (page, closing):
        # the board and the host join first; the page joins once they serve
        board = MpPeer(relay.host, relay.port, relay.token("board"), name="board", heapsize="256K")
        board.start()
        closing.callback(board.close)
        host = _host(relay, closing)
        for peer in (board, host):
            peer.call("register_rpc", method="echo", behaviour="echo")
            peer.call("register_stream_handler", topic="chat", kind="text")
        board.call("register_stream_handler", topic="file", kind="bytes")
        _join(page, relay)
        # the relay announces the page to the others as it joins: their calls to it and
        # what they say of it count from then on
        for peer in (board, host):
            peer.wait_event("participant_joined", identity="browser")
        yield relay, board, host, page


def _join(page, relay):
    # the page's script is a module: its handlers are set once the bundle has loaded
    page.wait_for("typeof document.getElementById('connect')?.onclick === 'function'",
                  what="page script (the bundle did not load as an ES module?)")
    page.evaluate("document.getElementById('url').value = %s; document.getElementById('token').value = %s;"
                  "document.getElementById('connect').click()" % (_js(relay.ws_url), _js(relay.token("browser"))))
    page.wait_for("document.getElementById('state').textContent.startsWith('joined')", what="join")


def _log_line(page, containing, timeout=20):
    """The newest line of the page's log that contains `containing`, waited for."""
    return page.wait_for("[...document.querySelectorAll('#log div')].map((d) => d.textContent)"
                         ".find((t) => t.includes(%s))" % _js(containing), timeout, what=repr(containing))


def _call_from_page(page, dest, method, payload):
    page.evaluate("document.getElementById('dest').value = %s; document.getElementById('method').value = %s;"
                  "document.getElementById('payload').value = %s; document.getElementById('call').click()"
                  % (_js(dest), _js(method), _js(payload)))


def test_the_page_joins_and_lists_the_board_and_the_host_with_what_they_advertise(room):
    _, _, _, page = room
    shown = page.wait_for("document.getElementById('participants').textContent.includes('host')",
                          what="participants") and page.evaluate(
        "[...document.querySelectorAll('#participants li')].map((li) => li.textContent)")
    assert sorted(shown) == ["board (client_protocol 2, capabilities [2])",
                             "host (client_protocol 2, capabilities [2])"]
    assert page.evaluate("document.getElementById('state').textContent") == "joined page as browser"


def test_the_browser_advertises_deflate_raw_because_it_has_decompression_streams(room):
    _, _, host, _ = room
    seen = {p["identity"]: p for p in host.call("participants")["participants"]}
    assert seen["browser"]["client_protocol"] == 2
    assert seen["browser"]["capabilities"] == [2]


def test_the_page_calls_the_board_with_a_payload_over_the_v1_limit(room):
    _, board, _, page = room
    payload = "é" * 60000  # 120,000 UTF-8 bytes: a v2 call, its request and answer sent as data streams
    _call_from_page(page, "board", "echo", payload)
    line = _log_line(page, "echo answered in ")
    answer = line.split(" ms: ", 1)[1]
    assert hashlib.sha256(answer.encode()).hexdigest() == hashlib.sha256(payload.encode()).hexdigest()
    invoked = board.wait_event("rpc_invoked", method="echo")
    assert invoked["caller"] == "browser"  # stamped by the relay from the token


def test_the_page_shows_unsupported_method_for_a_method_the_board_lacks(room):
    _, _, _, page = room
    _call_from_page(page, "board", "no.such.method", "")
    line = _log_line(page, "no.such.method failed")
    assert line.endswith("no.such.method failed: RpcError 1400: Method not supported at destination")


def test_text_the_page_sends_reaches_everyone_compressed_with_its_sender_verified(room):
    _, board, host, page = room
    text = "".join("reading %d ok; " % i for i in range(3000))  # ~45 KB, compressible
    page.evaluate("document.getElementById('topic').value = 'chat'; document.getElementById('text').value = %s;"
                  "document.getElementById('send').click()" % _js(text))
    assert _log_line(page, "sent %d bytes on chat" % len(text))
    for peer in (board, host):
        got = peer.wait_event("stream", topic="chat", timeout=20)
        assert got["sender"] == "browser"  # stamped by the relay from the token
        assert (got["len"], got["sha256"]) == (len(text), hashlib.sha256(text.encode()).hexdigest())
        # both advertise deflate-raw: the page's CompressionStream compressed it, and
        # the board inflated it within its heap
        assert got["info"]["compression"] == 1, (peer, got["info"])


def test_the_board_calls_the_method_the_page_serves(room):
    _, board, _, page = room
    reply = board.call("perform_rpc", destination="browser", method="browser.echo", payload="from a board")
    assert reply["payload"] == "from a board"
    assert _log_line(page, "board called browser.echo (12 characters)")


def test_a_compressed_text_from_the_host_is_inflated_by_the_browser(room, tmp_path):
    _, _, host, page = room
    text = "".join("sample %05d\n" % i for i in range(8000))  # 104 KB, deflates to a few KB
    path = tmp_path / "samples.txt"
    path.write_text(text)
    host.call("send_text", topic="chat", destination="browser", payload_file=str(path))
    line = _log_line(page, "host on chat: ")
    assert line.split("host on chat: ", 1)[1] == text


def _pattern(n):
    return bytes((i * 7 + (i >> 8)) & 255 for i in range(n))


def test_a_file_the_board_streams_is_listed_with_a_link_that_saves_it_whole(room, tmp_path):
    _, board, _, page = room
    data = _pattern(200000)
    path = tmp_path / "reading.bin"
    path.write_bytes(data)
    board.call("stream_bytes", topic="file", destination="browser", payload_file=str(path), name="reading.bin",
               piece_bytes=4096)
    page.wait_for("[...document.querySelectorAll('#files li')].some((li) =>"
                  " li.textContent === 'board sent reading.bin: 200000 bytes save')", what="the file listed")
    # what the link saves, hashed in the page
    saved = page.evaluate(
        "(async () => { const a = [...document.querySelectorAll('#files li a')].find((a) => a.download ==="
        " 'reading.bin'); const b = await (await fetch(a.href)).arrayBuffer();"
        " const d = new Uint8Array(await crypto.subtle.digest('SHA-256', b));"
        " return [b.byteLength, [...d].map((x) => x.toString(16).padStart(2, '0')).join('')]; })()")
    assert saved == [200000, hashlib.sha256(data).hexdigest()]


def test_a_file_chosen_in_the_page_reaches_the_board_whole_with_progress(room, tmp_path):
    _, board, _, page = room
    data = _pattern(150000)
    path = tmp_path / "up.bin"
    path.write_bytes(data)
    page.set_files("#file", [str(path)])
    page.evaluate("document.getElementById('dest').value = 'board'; document.getElementById('sendfile').click()")
    assert _log_line(page, "sent up.bin (150000 bytes) to board")
    assert page.evaluate("document.getElementById('sendprogress').textContent") == "100%"
    got = board.wait_event("stream", topic="file", timeout=20)
    assert got["sender"] == "browser"
    assert (got["len"], got["sha256"]) == (150000, hashlib.sha256(data).hexdigest())
    assert got["info"]["name"] == "up.bin"


def test_after_a_relay_restart_the_page_rejoins_once_and_serves_again():
    # The browser's WebSocket reports a refused connection with `error` and then `close`
    # (Node 20's with `error` alone): each failed attempt while the relay is down must
    # count once, or two rejoin loops would push each other out (LEAVE 2).
    relay = _relay("page2")
    with _page_alone(relay) as (page, closing):
        _join(page, relay)
        relay.stop()
        page.wait_for("document.getElementById('state').textContent === 'reconnecting'", what="link loss")
        page.evaluate("new Promise((ok) => setTimeout(ok, 1500))")  # attempts refused meanwhile
        relay.start()
        page.wait_for("document.getElementById('state').textContent === 'joined page2 again'", 30, what="rejoin")
        # a participant of the new relay calls the method the page registered before the loss
        host = _host(relay, closing)
        reply = host.call("perform_rpc", destination="browser", method="browser.echo", payload="after the restart")
        assert reply["payload"] == "after the restart"
        page.evaluate("new Promise((ok) => setTimeout(ok, 1000))")  # a second loop would have joined by now
        assert page.evaluate("document.getElementById('state').textContent") == "joined page2 again"
        lost = page.evaluate("[...document.querySelectorAll('#log div')].filter((d) =>"
                             " d.textContent.includes('link lost')).length")
        assert lost == 1


def _self_signed(tmp_path):
    """A certificate for 127.0.0.1, and the base64 SHA-256 of its public key (what
    Chromium's --ignore-certificate-errors-spki-list trusts: this key, no other)."""
    cert, key = str(tmp_path / "c.pem"), str(tmp_path / "k.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    spki = subprocess.run("openssl x509 -in %s -pubkey -noout | openssl pkey -pubin -outform der"
                          " | openssl dgst -sha256 -binary | openssl base64" % cert, shell=True, check=True,
                          capture_output=True, text=True, timeout=60).stdout.strip()
    return cert, key, spki


def test_the_page_joins_a_tls_relay_over_wss_and_calls_through_it(tmp_path):
    # A page served over https may only open wss:// (README, "What browsers need"): the
    # relay's TLS WebSocket port, through Chromium's own TLS stack. The method called is
    # served by a second Room the test opens in the same page from the bundle.
    cert, key, spki = _self_signed(tmp_path)
    relay = RelayProcess(room="tls", extra_args=["--tls-cert", cert, "--tls-key", key]).start()
    assert relay.ws_url.startswith("wss://127.0.0.1:")
    with _page_alone(relay, flags=("--ignore-certificate-errors-spki-list=" + spki,)) as (page, _):
        _join(page, relay)
        assert page.evaluate(
            "(async () => { const { Room } = await import('/clients/browser/dist/lkedge.mjs');"
            " const second = await Room.connect(%s, %s);"
            " second.registerRpcMethod('echo', async (d) => `${d.callerIdentity} said ${d.payload}`);"
            " return second.state; })()" % (_js(relay.ws_url), _js(relay.token("second")))) == "connected"
        _call_from_page(page, "second", "echo", "over wss")
        assert _log_line(page, "echo answered in ").endswith(" ms: browser said over wss")


def test_a_hidden_tab_keeps_its_link_while_its_own_timers_are_throttled():
    # Chrome wakes a hidden tab's chained timers (those that ran 5 times or more) once a
    # minute: intensive wake-up throttling, after 5 minutes hidden (5 s here, by its
    # feature flag). PINGs from such a timer let the relay close the link as idle, again
    # and again. The client's PINGs tick in a worker, whose timers are not throttled; so
    # do the polls of a send waiting for the WebSocket to drain, or a send from a hidden
    # tab would crawl. (A Room that PINGs every second, so that its timer is chained
    # within the 5 s, and waits for a drain past 64 KiB queued.)
    relay = RelayProcess(room="hidden", extra_args=["--idle-timeout", "15"], http=True).start()
    flags = ("--enable-features=IntensiveWakeUpThrottling:grace_period_seconds/5",)
    with _page_alone(relay, flags) as (page, closing):
        _room_in_page(page, relay)
        page.hide()
        assert page.evaluate("document.visibilityState") == "hidden"
        # the page's timer held back well past the relay's idle timeout: PINGs from a page
        # timer would have stopped as long, and the relay closed the link meanwhile (the
        # wake-ups come on the minute: within ~40 s of hiding, 20 s of them held back)
        page.wait_for("performance.now() - lastTick > 20000", 100, what="a throttled timer")
        assert page.evaluate("[room.state, events]") == ["connected", []]
        # ... kept by its own PINGs: our relay PINGs a participant quiet for half its idle
        # timeout, and a page answers from its WebSocket's events, which are not
        # throttled; it never had to (the page is the only participant so far)
        assert relay.counter("lkedge_relay_frames_out_total", type="PING") == 0
        host = _host(relay, closing)
        reply = host.call("perform_rpc", destination="browser", method="hello", payload="")
        assert reply["payload"] == "hello host"
        # 4 MiB sent from the hidden tab, uncompressed: ~128 waits for the WebSocket to
        # drain, each polled every 5 ms. From the page's own timeouts each poll would wake
        # once a second at best (a hidden tab's timers) and then once a minute: minutes.
        _send_past_high_water(page, host)
        assert page.evaluate("document.visibilityState") == "hidden"


def _room_in_page(page, relay, ping_ms=1000):
    """A Room opened in the page from the bundle as `window.room`, PINGing every
    `ping_ms` and waiting for the WebSocket to drain past 64 KiB queued; it serves "hello", and
    `window.events` collects its reconnecting and disconnected events. `window.lastTick`
    is when the page's own 1 s timer last ran."""
    page.wait_for("typeof document.getElementById('connect')?.onclick === 'function'", what="page script")
    assert page.evaluate(
        "(async () => { const { Room } = await import('/clients/browser/dist/lkedge.mjs');"
        " window.events = []; window.room = await Room.connect(%s, %s,"
        " { pingIntervalMs: %d, sendHighWater: 65536 });"
        " for (const e of ['reconnecting', 'disconnected']) room.on(e, (why) => events.push(`${e}: ${why}`));"
        " room.registerRpcMethod('hello', async (d) => `hello ${d.callerIdentity}`);"
        " window.lastTick = performance.now();"
        " setInterval(() => { lastTick = performance.now(); }, 1000);"
        " return room.state; })()" % (_js(relay.ws_url), _js(relay.token("browser")), ping_ms)) == "connected"


def _send_past_high_water(page, host):
    """4 MiB of random bytes from the page's Room to `host`, uncompressed: ~128 waits
    for the WebSocket to drain. Checks that they arrive whole."""
    host.call("register_stream_handler", kind="bytes", topic="big")
    sha = page.evaluate(
        "(async () => { const b = new Uint8Array(4 << 20);"
        " for (let i = 0; i < b.length; i += 65536) crypto.getRandomValues(b.subarray(i, i + 65536));"
        " window.sent = room.localParticipant.sendBytes(b, { topic: 'big', destinationIdentities: ['host'],"
        " compress: false }).then((info) => `sent ${info.id}`, (e) => `failed: ${e.message}`);"
        " const d = new Uint8Array(await crypto.subtle.digest('SHA-256', b));"
        " return [...d].map((x) => x.toString(16).padStart(2, '0')).join(''); })()")
    got = host.wait_event("stream", topic="big", timeout=30)
    assert (got["len"], got["sha256"]) == (4 << 20, sha)
    assert page.evaluate("window.sent").startswith("sent ")


def test_a_page_whose_policy_refuses_workers_keeps_its_link_and_sends_on_its_own_timers():
    # A Content-Security-Policy without blob: workers refuses the ticker worker: the
    # PINGs and the drain polls fall back to the page's own timers. (The relay closes a
    # link silent for 3 s; the Room PINGs every second.)
    relay = RelayProcess(room="csp", extra_args=["--idle-timeout", "3"]).start()
    with _page_alone(relay, headers={"Content-Security-Policy": "worker-src 'none'"}) as (page, closing):
        # (once the page has loaded: before, a script may run in the blank page it replaces)
        page.wait_for("typeof document.getElementById('connect')?.onclick === 'function'", what="page script")
        page.evaluate("window.refused = []; document.addEventListener('securitypolicyviolation',"
                      " (e) => refused.push(e.violatedDirective)); 0")
        _room_in_page(page, relay)
        page.wait_for("refused.length > 0", what="the policy refusing the worker")
        assert page.evaluate("refused[0]") == "worker-src"
        page.evaluate("new Promise((ok) => setTimeout(ok, 6000))")  # twice the idle timeout
        assert page.evaluate("[room.state, events]") == ["connected", []]
        _send_past_high_water(page, _host(relay, closing))


def test_a_page_whose_own_pings_are_late_keeps_its_link_by_answering_the_relays():
    # Our relay PINGs a participant quiet for half its idle timeout (README, "Keepalive
    # both ways"); the page answers from its WebSocket's events, whatever its timers do.
    relay = RelayProcess(room="late", extra_args=["--idle-timeout", "2"], http=True).start()
    with _page_alone(relay) as (page, closing):
        _room_in_page(page, relay, ping_ms=60000)
        page.evaluate("new Promise((ok) => setTimeout(ok, 5000))")   # 2.5 idle timeouts
        assert page.evaluate("[room.state, events]") == ["connected", []]
        reply = _host(relay, closing).call("perform_rpc", destination="browser", method="hello", payload="")
        assert reply["payload"] == "hello host"
        assert relay.counter("lkedge_relay_frames_out_total", type="PING") >= 2
