"""`lkedge relay` as a process (ready line, SIGTERM, key refusal), TLS, the serial bridge,
its option values (sizes, durations, ranges)."""
import asyncio
import os
import signal
import ssl
import subprocess
import sys
import time

import pytest
from linkpeer import LinkPeer
from lkedge import link
from lkedge_host.relay import auth

READY = "lkedge relay: link "


def start_relay(*extra, env=None):
    cmd = [sys.executable, "-m", "lkedge_host.cli", "relay", "--port", "0", "--ws-port", "0",
           "--http-port", "0"] + list(extra)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    lines = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith(READY):
            return proc, line[len(READY):].split(), lines
    proc.kill()
    raise AssertionError("no ready line; stdout %r stderr %r" % (lines, proc.stderr.read()))


def _hostport(url):
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


def token(identity, room="lab"):
    return auth.mint_token(auth.DEV_API_KEY, auth.DEV_API_SECRET, identity=identity, room=room)


async def test_process_prints_ready_line_and_sigterm_sends_leave_5():
    proc, urls, lines = start_relay()
    try:
        assert [u.split(":")[0] for u in urls] == ["tcp", "ws"], urls
        assert any("development keys" in ln and auth.DEV_API_KEY in ln for ln in lines)
        a = await LinkPeer.tcp(*_hostport(urls[0]))
        await a.join(token("alice"))
        w = await LinkPeer.ws(urls[1])
        await w.join(token("wsbob", room="other"))
        proc.send_signal(signal.SIGTERM)
        for p in (a, w):
            _t, body = await p.expect(link.LEAVE, 5)
            assert body["code"] == link.LEAVE_SHUTDOWN
            assert await p.closed(5)
            await p.close()
        assert proc.wait(10) == 0
        err = proc.stderr.read()
        assert "event=join" in err and "identity=alice" in err and "code=5" in err
    finally:
        if proc.poll() is None:
            proc.kill()


def test_dev_keys_refused_off_loopback_and_half_keys_refused():
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    r = subprocess.run([sys.executable, "-m", "lkedge_host.cli", "relay", "--host", "0.0.0.0"],
                       capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 2 and "development keys" in r.stderr and "loopback" in r.stderr
    env["LIVEKIT_API_KEY"] = "k"
    r = subprocess.run([sys.executable, "-m", "lkedge_host.cli", "relay"],
                       capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 2 and "API key given without API secret" in r.stderr


def test_relay_help_shows_defaults():
    r = subprocess.run([sys.executable, "-m", "lkedge_host.cli", "relay", "--help"],
                       capture_output=True, text=True, timeout=30)
    text = " ".join(r.stdout.split())
    for want in ("--port", "default 7880", "default 7881", "default 7882", "default 65536",
                 "default 30.0", "--join-timeout", "--queue-bytes", "--tls-cert", "--serial"):
        assert want in text, want


async def test_real_keys_from_environment():
    env = dict(os.environ, LIVEKIT_API_KEY="prodkey", LIVEKIT_API_SECRET="s" * 40)
    proc, urls, lines = start_relay("--no-ws", env=env)
    try:
        assert not any("development keys" in ln for ln in lines)
        good = auth.mint_token("prodkey", "s" * 40, identity="a", room="lab")
        p = await LinkPeer.tcp(*_hostport(urls[0]))
        assert (await p.join(good))["identity"] == "a"
        q = await LinkPeer.tcp(*_hostport(urls[0]))
        await q.join(token("dev-keyed"), expect=False)
        _t, body = await q.expect(link.LEAVE)
        assert body["code"] == link.LEAVE_UNAUTHORIZED
        await p.close()
        await q.close()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0


def _self_signed(tmp):
    cert, key = os.path.join(tmp, "c.pem"), os.path.join(tmp, "k.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=localhost"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


async def test_tls_listener(tmp_path):
    cert, key = _self_signed(str(tmp_path))
    proc, urls, _ = start_relay("--tls-cert", cert, "--tls-key", key)
    try:
        assert [u.split(":")[0] for u in urls] == ["tls", "wss"], urls
        ctx = ssl.create_default_context(cafile=cert)
        ctx.check_hostname = False
        host, port = _hostport(urls[0])
        p = LinkPeer()
        p._r, p._w = await asyncio.open_connection(host, port, ssl=ctx)
        p._kind = "tcp"
        p._task = asyncio.ensure_future(p._pump())
        assert (await p.join(token("tls-alice")))["identity"] == "tls-alice"
        await p.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def _other_key(tmp_path):
    """A private key that is not the certificate's own."""
    other = str(tmp_path / "other_key.pem")
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", other],
                   check=True, capture_output=True, timeout=60)
    return other


def test_tls_files_that_cannot_serve_are_said_for_what_they_are(tmp_path):
    cert, key = _self_signed(str(tmp_path))
    ports = ("--port", "0", "--ws-port", "0", "--http-port", "0")
    # the missing file is the key (was: "cannot load TLS certificate c.pem: No such file")
    assert "--tls-key %s: no such file" % (tmp_path / "nope.pem") in _relay_usage(
        *ports, "--tls-cert", cert, "--tls-key", str(tmp_path / "nope.pem"))
    assert "no private key: give --tls-key" in _relay_usage(*ports, "--tls-cert", cert)
    # an encrypted key: said, not OpenSSL's passphrase prompt (printed twice), then EINVAL
    enc_k, enc_c = str(tmp_path / "ek.pem"), str(tmp_path / "ec.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-keyout", enc_k, "-out", enc_c,
                    "-days", "1", "-subj", "/CN=localhost", "-passout", "pass:secret"],
                   check=True, capture_output=True, timeout=60)
    r = subprocess.run([sys.executable, "-m", "lkedge_host.cli", "relay", *ports, "--tls-cert", enc_c,
                        "--tls-key", enc_k], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and "is encrypted (it asks for a passphrase" in r.stderr, r.stderr
    assert "Enter PEM pass phrase" not in r.stderr, r.stderr
    assert "holds no PEM certificate (-----BEGIN CERTIFICATE-----): it is a private key" in _relay_usage(
        *ports, "--tls-cert", key, "--tls-key", cert)   # the two swapped
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not PEM\n")
    assert "%s holds no PEM certificate" % garbage in _relay_usage(*ports, "--tls-cert", str(garbage))
    assert "%s holds no PEM private key" % garbage in _relay_usage(*ports, "--tls-cert", cert, "--tls-key",
                                                                   str(garbage))
    assert "do not load together" in _relay_usage(*ports, "--tls-cert", cert, "--tls-key", _other_key(tmp_path))
    # and an empty --room, which would refuse every token
    assert "--room '' names no room" in _relay_usage(*ports, "--room", "")


async def test_sighup_stops_the_relay_as_sigterm_does():
    proc, urls, _ = start_relay()
    try:
        a = await LinkPeer.tcp(*_hostport(urls[0]))
        await a.join(token("hup"))
        proc.send_signal(signal.SIGHUP)   # its terminal closed: it died without a word
        _t, body = await a.expect(link.LEAVE, 5)
        assert body["code"] == link.LEAVE_SHUTDOWN
        await a.close()
        assert proc.wait(10) == 0
        err = proc.stderr.read()
        assert "stopped" in err or "code=5" in err, err
    finally:
        if proc.poll() is None:
            proc.kill()


def test_log_lines_carry_utc_time_with_milliseconds():
    import io
    import re
    from lkedge_host.relay.server import log_line
    out = io.StringIO()
    log_line(out, "join", {"identity": "a"})
    assert re.match(r"ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z event=join identity=a\n$", out.getvalue()), \
        out.getvalue()


async def _read_frames(fd, reader, want, timeout=3.0):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            await asyncio.sleep(0.01)
            continue
        reader.receive(memoryview(data))
        while True:
            ev = reader.next_event()
            if ev == link.NEED_DATA:
                break
            if ev[0] == link.FRAME:
                out.append((ev[1], link.decode_control(ev[2])))
            elif ev[0] == link.DATA_END:
                out.append((link.DATA, None))
    return out


async def test_serial_bridge_over_a_pty():
    master, slave = os.openpty()
    os.set_blocking(master, False)
    from lkedge_host.relay.router import Router
    from lkedge_host.relay.server import RelayServer
    import io
    v = auth.Verifier(auth.DEV_API_KEY, auth.DEV_API_SECRET)
    srv = RelayServer(Router(v.verify), port=0, ws_port=None, http_port=None,
                      serial=os.ttyname(slave), log=io.StringIO())
    await srv.start()
    try:
        assert srv.urls == ["tcp://127.0.0.1:%d" % srv.addresses["tcp"][1],
                            "serial:" + os.ttyname(slave)]
        host = await LinkPeer.tcp(*srv.addresses["tcp"])
        await host.join(token("host"))
        reader = link.FrameReader(1 << 20)
        os.write(master, link.encode_control(link.JOIN, {"v": 1, "token": token("board")}))
        (t, joined), = await _read_frames(master, reader, 1)
        assert t == link.JOINED and joined["identity"] == "board"
        assert [p["identity"] for p in joined["participants"]] == ["host"]
        await host.expect(link.PARTICIPANT)
        from livekit.protocol import models
        pkt = models.DataPacket(user=models.UserPacket(payload=bytes(range(256)) * 4))
        await host.send_data(pkt.SerializeToString())
        assert await _read_frames(master, reader, 1) == [(link.DATA, None)]
        # the board leaves; the line then serves a new link connection
        os.write(master, link.encode_control(link.LEAVE, {"code": 1, "reason": ""}))
        _t, left = await host.expect(link.PARTICIPANT_LEFT)
        assert left["identity"] == "board"
        await asyncio.sleep(0.3)
        reader = link.FrameReader(1 << 20)
        os.write(master, link.encode_control(link.JOIN, {"v": 1, "token": token("board")}))
        (t, joined), = await _read_frames(master, reader, 1)
        assert t == link.JOINED
        await host.close()
    finally:
        await srv.stop()
        os.close(master)
        os.close(slave)


def test_port_in_use_is_a_clear_error():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        r = subprocess.run([sys.executable, "-m", "lkedge_host.cli", "relay", "--port",
                            str(s.getsockname()[1]), "--ws-port", "0", "--http-port", "0"],
                           capture_output=True, text=True, timeout=30)
    finally:
        s.close()
    assert r.returncode == 1 and "cannot start listening" in r.stderr
    assert "Traceback" not in r.stderr and READY not in r.stdout


def _relay_usage(*args):
    r = subprocess.run([sys.executable, "-m", "lkedge_host.cli", "relay"] + list(args),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and READY not in r.stdout
    return r.stderr


def test_ports_out_of_range_or_given_twice_are_usage_errors():
    assert "--port -1 is not a port" in _relay_usage("--port", "-1", "--ws-port", "0", "--http-port", "0")
    assert "--ws-port 70000 is not a port" in _relay_usage("--port", "0", "--ws-port", "70000", "--http-port", "0")
    assert "0 for no HTTP listener" in _relay_usage("--port", "0", "--ws-port", "0", "--http-port", "65536")
    err = _relay_usage("--port", "7990", "--ws-port", "7990", "--http-port", "0")
    assert "--port and --ws-port are both 7990" in err


def test_port_in_use_says_what_to_do():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        r = subprocess.run([sys.executable, "-m", "lkedge_host.cli", "relay", "--port", "0", "--ws-port",
                            str(s.getsockname()[1]), "--http-port", "0"],
                           capture_output=True, text=True, timeout=30)
    finally:
        s.close()
    assert r.returncode == 1 and "address already in use" in r.stderr
    assert "0 picks a free one" in r.stderr


def test_a_token_of_other_keys_is_refused_for_its_issuer():
    theirs = auth.mint_token("otherkey", "o" * 40, identity="a", room="r")
    v = auth.Verifier("relaykey", "r" * 40)
    try:
        v.verify(theirs)
    except auth.AuthError as e:
        assert str(e) == "token issuer 'otherkey' is not this relay's API key"
    else:
        raise AssertionError("accepted")
    # the right issuer with the wrong secret is still a signature failure
    forged = auth.mint_token("relaykey", "x" * 40, identity="a", room="r")
    try:
        v.verify(forged)
    except auth.AuthError as e:
        assert "signature" in str(e)
    else:
        raise AssertionError("accepted")


def test_an_unknown_http_host_is_named_as_such():
    # --host is fine here: the hint must name --http-host, not --host
    r = subprocess.run([sys.executable, "-m", "lkedge_host.cli", "relay", "--port", "0", "--ws-port", "0",
                        "--http-port", "17999", "--http-host", "no-such-host.invalid"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "cannot start listening" in r.stderr, r.stderr
    assert "--http-host 'no-such-host.invalid' is not an address of this machine" in r.stderr, r.stderr
    assert "--host '127.0.0.1'" not in r.stderr and "Traceback" not in r.stderr


# ---- sizes, durations and ranges, in-process (parser and build(), nothing listens)

def _args(*argv):
    import argparse
    from lkedge_host.relay import command
    p = argparse.ArgumentParser(prog="lkedge relay")
    command.add_arguments(p)
    return p.parse_args(["--port", "0", "--ws-port", "0", "--http-port", "0"] + list(argv))


def _built(monkeypatch, *argv):
    from lkedge_host.relay import command
    monkeypatch.delenv("LIVEKIT_API_KEY", raising=False)
    monkeypatch.delenv("LIVEKIT_API_SECRET", raising=False)
    return command.build(_args(*argv))[0].router


def test_sizes_and_durations_take_units_and_plain_numbers_keep_theirs(monkeypatch):
    r = _built(monkeypatch, "--max-frame", "64K", "--queue-bytes", "1M", "--idle-timeout", "30s",
               "--join-timeout", "500ms", "--send-timeout", "2m")
    assert (r.max_frame, r.queue_bytes) == (65536, 1 << 20)
    assert (r.idle_timeout_ms, r.join_timeout_ms, r.stuck_ms) == (30000, 500, 120000)
    r = _built(monkeypatch, "--max-frame", "20000", "--queue-bytes", "40000", "--idle-timeout", "2.5",
               "--join-timeout", "1", "--send-timeout", "1h")
    assert (r.max_frame, r.queue_bytes) == (20000, 40000)
    assert (r.idle_timeout_ms, r.join_timeout_ms, r.stuck_ms) == (2500, 1000, 3600000)


def test_an_idle_timeout_shorter_than_two_participant_pings_is_warned_about(monkeypatch):
    # participants PING every 10 s: a 5 s idle timeout made every idle one flap, before
    # the relay PINGed quiet ones (now only those that do not answer it do)
    from lkedge_host.relay import command
    monkeypatch.delenv("LIVEKIT_API_KEY", raising=False)
    monkeypatch.delenv("LIVEKIT_API_SECRET", raising=False)
    warned = [w for w in command.build(_args("--idle-timeout", "5s"))[0].warnings if "--idle-timeout" in w]
    assert len(warned) == 1 and "use at least 20 s" in warned[0] and "(one after 2.5s of quiet)" in warned[0], warned
    assert not [w for w in command.build(_args())[0].warnings if "--idle-timeout" in w]


def test_a_send_timeout_of_two_participant_pings_or_more_is_warned_about(monkeypatch):
    # a participant paused that long hears nothing and takes its link for dead
    from lkedge_host.relay import command
    monkeypatch.delenv("LIVEKIT_API_KEY", raising=False)
    monkeypatch.delenv("LIVEKIT_API_SECRET", raising=False)
    warned = [w for w in command.build(_args("--send-timeout", "30s"))[0].warnings if "--send-timeout" in w]
    assert len(warned) == 1 and "use under 20 s" in warned[0], warned
    assert not [w for w in command.build(_args("--send-timeout", "19s"))[0].warnings if "--send-timeout" in w]


@pytest.mark.parametrize("argv, want", [
    (["--join-timeout", "nan"], "argument --join-timeout: 'nan' is not a duration of 1ms or more"),
    (["--idle-timeout", "inf"], "argument --idle-timeout: 'inf' is not a duration of 1ms or more"),
    (["--send-timeout", "0"], "argument --send-timeout: '0' is not a duration of 1ms or more"),
    (["--max-frame", "1.5K"], "argument --max-frame: '1.5K' is not a size"),
    (["--queue-bytes", "1G"], "argument --queue-bytes: '1G' is not a size"),
])
def test_a_value_that_is_not_a_duration_or_size_names_its_option(argv, want, capsys):
    with pytest.raises(SystemExit) as e:
        _args(*argv)
    assert e.value.code == 2
    assert want in capsys.readouterr().err


@pytest.mark.parametrize("argv, want", [
    (["--max-frame", "100000000000"], "--max-frame 100000000000 is out of range: use 16384..16777216"),
    (["--max-frame", "17M", "--queue-bytes", "64M"],
     "--max-frame 17825792 is out of range: use 16384..16777216"),
    (["--max-frame", "1000"], "--max-frame 1000 is out of range: use 16384..16777216"),
    (["--max-frame", "64K", "--queue-bytes", "32K"],
     "--queue-bytes 32768 is out of range: use at least --max-frame 65536"),
    (["--max-connections", "0"], "--max-connections 0 is out of range: use 1 or more"),
    (["--socket-buffer", "32K"], "--socket-buffer 32768 is out of range: use 0 (the OS's) or 64K..64M"),
    (["--socket-buffer", "2147483648"], "--socket-buffer 2147483648 is out of range: use 0 (the OS's) or 64K..64M"),
])
def test_a_value_out_of_range_names_its_option_and_the_range(argv, want, monkeypatch):
    with pytest.raises(ValueError) as e:
        _built(monkeypatch, *argv)
    assert str(e.value).startswith(want), str(e.value)


def test_socket_buffer_defaults_to_64k_takes_units_and_0_leaves_the_os_buffers(monkeypatch):
    from lkedge_host.relay import command
    monkeypatch.delenv("LIVEKIT_API_KEY", raising=False)
    monkeypatch.delenv("LIVEKIT_API_SECRET", raising=False)
    for argv, want in (((), 65536), (("--socket-buffer", "1M"), 1 << 20), (("--socket-buffer", "0"), 0)):
        assert command.build(_args(*argv))[0].socket_buffer == want, argv


def test_the_largest_frame_is_accepted(monkeypatch):
    assert _built(monkeypatch, "--max-frame", "16M", "--queue-bytes", "16M").max_frame == 16 << 20


def test_a_short_api_secret_is_warned_about_at_start():
    from lkedge_host.relay import command
    warned = [w for w in command.build(_args("--api-key", "k", "--api-secret", "short"))[0].warnings
              if "HS256" in w]
    assert warned and "5 bytes" in warned[0] and "token_urlsafe" in warned[0], warned
    assert not [w for w in command.build(_args())[0].warnings if "HS256" in w]


def test_relay_process_picks_another_http_port_when_its_pick_was_taken_meanwhile(monkeypatch):
    # The HTTP port is picked before the relay binds it: a test running beside took it
    # now and then, the relay exited, and a whole module's tests errored at setup
    import socket
    from lkedge_host.relay import process
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    picks = [taken.getsockname()[1]]
    real = process._free_port
    monkeypatch.setattr(process, "_free_port", lambda: picks.pop(0) if picks else real())
    try:
        with process.RelayProcess(http=True) as r:
            assert not picks and r.http_url and r.http_url != "http://127.0.0.1:%d" % taken.getsockname()[1]
            assert r.health()["status"] == "ok"
    finally:
        taken.close()
