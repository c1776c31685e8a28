"""What `lkedge call`, `room` and `serve` say when a person gets something wrong, or when
the room changes under them: a clear line and an exit code, never a traceback or a
silent hang (real processes, as a person runs them)."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from lkedge_host.relay.process import RelayProcess

LKEDGE = [os.path.join(os.path.dirname(sys.executable), "lkedge")]
NOWHERE = "tcp://127.0.0.1:1"   # nothing listens: a command that tried to join would exit 4

HANDLERS = '''
import asyncio
import sys
from lkedge.rpc import RpcError

def echo(data):
    return data.payload

def missing(data):
    raise RpcError(4004, "no such file")

def register(room):
    room.local_participant.register_rpc_method("big_added", lambda d: "z" * int(d.payload))   # buffered
    async def count(data):   # streaming: the request is never held whole here either
        n = 0
        async for piece in data.reader:
            n += len(piece.encode())
        return str(n)
    room.local_participant.register_rpc_method("count", count, streaming=True)

async def sleepy(data):
    print("sleepy started for", data.caller_identity, file=sys.stderr, flush=True)
    await asyncio.sleep(float(data.payload or 30))
    return "woke"

def number(data):
    return 42

def big(data):
    return "z" * int(data.payload)
'''


def _env():
    env = dict(os.environ)
    for k in ("LKEDGE_URL", "LKEDGE_ROOM", "LKEDGE_TOKEN", "LKEDGE_CAFILE", "LIVEKIT_API_KEY",
              "LIVEKIT_API_SECRET"):
        env.pop(k, None)
    return env


def _lk(*args, stdin=None):
    return subprocess.run(LKEDGE + list(args), input=stdin, capture_output=True, text=True, timeout=60,
                          env=_env())


def _usage_error(r, *texts):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    for t in texts:
        assert t in r.stderr, r.stderr


class _Serve:
    """`lkedge serve FILE` in the background, its stderr collected line by line. It never
    outlives the test: a start that fails kills it, and stop() kills one that does not
    stop on Ctrl-C (the next tests would meet it in the room under the same identity)."""

    def __init__(self, path, url, identity="host", *extra):
        self.proc = subprocess.Popen(LKEDGE + ["serve", path, "--url", url, "--identity", identity] + list(extra),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        self.lines = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stderr.readline, "")),
                                       daemon=True)
        self.reader.start()
        self.line = self.proc.stdout.readline()   # "" when it ended first
        if "serving" not in self.line:
            self.stop()
            raise AssertionError("lkedge serve did not start: %r %s" % (self.line, self.err))

    @property
    def err(self):
        return "".join(self.lines)

    def wait_for(self, text, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.err:
                return
            time.sleep(0.05)
        raise AssertionError("%r not in serve's stderr: %r" % (text, self.err))

    def stop(self, timeout=10):
        """Ctrl-C it; -> its exit code (None when it had to be killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = None
        self.reader.join(5)
        return code


@pytest.fixture(scope="module")
def handlers(tmp_path_factory):
    f = tmp_path_factory.mktemp("serve") / "handlers.py"
    f.write_text(HANDLERS)
    return str(f)


@pytest.fixture(scope="module")
def served(handlers):
    with RelayProcess() as relay:
        s = _Serve(handlers, relay.url)
        yield relay, s
        s.stop()


# ------------------------------------------------------------------ before joining
def test_payload_file_mistakes_are_usage_errors_naming_the_file(tmp_path):
    _usage_error(_lk("call", "host", "echo", "@" + str(tmp_path / "nope.txt"), "--url", NOWHERE),
                 "payload file", "nope.txt", "does not exist")
    _usage_error(_lk("call", "host", "echo", "@" + str(tmp_path), "--url", NOWHERE), "is a directory")
    binary = tmp_path / "photo.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    _usage_error(_lk("call", "host", "echo", "@" + str(binary), "--url", NOWHERE),
                 "photo.bin is not UTF-8 text", "base64")


def test_an_unwritable_output_is_found_before_the_call(tmp_path):
    _usage_error(_lk("call", "host", "echo", "hi", "-o", str(tmp_path / "missing" / "out.txt"), "--url", NOWHERE),
                 "--output", "does not exist")
    _usage_error(_lk("call", "host", "echo", "hi", "-o", str(tmp_path), "--url", NOWHERE), "is a directory")


def test_timeout_and_wait_must_be_sane():
    _usage_error(_lk("call", "host", "echo", "--timeout", "0", "--url", NOWHERE), "usage: lkedge call", "--timeout")
    _usage_error(_lk("call", "host", "echo", "--timeout", "-5", "--url", NOWHERE), "--timeout")
    _usage_error(_lk("call", "host", "echo", "--wait", "-1", "--url", NOWHERE), "--wait")


@pytest.mark.parametrize("command", [["call", "host", "echo"], ["room"], ["serve", "HANDLERS"]])
def test_half_given_api_keys_are_a_usage_error_not_a_traceback(command, handlers):
    command = [handlers if a == "HANDLERS" else a for a in command]
    _usage_error(_lk(*command, "--api-key", "only-a-key", "--url", NOWHERE),
                 "cannot mint a token", "API key given without API secret")


def test_a_malformed_url_is_a_usage_error_with_a_hint():
    _usage_error(_lk("call", "host", "echo", "--url", "http://127.0.0.1:7882"), "bad --url", "/metrics",
                 "tcp://HOST:7880")
    _usage_error(_lk("room", "--url", "127.0.0.1:7880"), "bad --url", "not a URL")


def test_calling_the_identity_we_would_join_as_is_refused():
    # joining as "host" would replace the participant being called
    _usage_error(_lk("call", "host", "echo", "--identity", "host", "--url", NOWHERE), "'host'", "--identity")
    from lkedge_host.relay import auth
    token = auth.mint_token(auth.DEV_API_KEY, auth.DEV_API_SECRET, identity="host", room="lkedge")
    _usage_error(_lk("call", "host", "echo", "--token", token, "--url", NOWHERE), "'host'", "token")


def test_an_unknown_option_shows_the_commands_own_usage():
    r = _lk("call", "host", "echo", "--bogus", "--url", NOWHERE)
    _usage_error(r, "usage: lkedge call", "unrecognized arguments: --bogus")
    _usage_error(_lk("--bogus"), "unrecognized arguments: --bogus")


def test_cafile_is_checked():
    _usage_error(_lk("room", "--url", NOWHERE, "--cafile", "/no/such.pem"), "--cafile", "tls://")
    _usage_error(_lk("room", "--url", "tls://127.0.0.1:1", "--cafile", "/no/such.pem"), "no such file")


# ------------------------------------------------------------------ in a room
def test_ctrl_c_on_a_long_call_says_interrupted_and_exits_130(served):
    relay, s = served
    r = _ctrl_c(relay, s)
    assert r.returncode == 130, r.stderr
    assert "lkedge call: interrupted" in r.stderr and "Traceback" not in r.stderr


def test_unknown_destination_names_the_room_and_who_is_in_it(served):
    relay, _s = served
    r = _lk("call", "ghost", "echo", "--wait", "0.3", "--url", relay.url)
    assert r.returncode == 3
    assert "'ghost' did not join room lkedge within --wait 0.3 s; in the room: host" in r.stderr


def test_a_handler_returning_a_non_str_is_logged_as_failed(served):
    relay, s = served
    r = _lk("call", "host", "number", "--url", relay.url)
    assert r.returncode == 3 and "1500" in r.stderr
    s.wait_for("number returned int, not str")


def test_our_own_link_ended_by_the_relay_is_a_connection_failure_with_its_leave(served):
    # not "RPC error 1503: Recipient disconnected" with exit 3: the destination is fine
    relay, _s = served
    r = _lk("call", "host", "echo", "hi", "--url", relay.url, "--token", _no_publish_token())
    assert r.returncode == 4, r.stderr
    assert "our own link to the relay ended during the call: LEAVE 7" in r.stderr
    assert "--no-publish-data" in r.stderr and "1503" not in r.stderr


def _no_publish_token():
    from lkedge_host.relay import auth
    return auth.mint_token(auth.DEV_API_KEY, auth.DEV_API_SECRET, identity="mute", room="lkedge",
                           can_publish_data=False)


def test_a_token_minted_with_other_keys_says_which_keys_to_use():
    with RelayProcess(extra_args=["--api-key", "prodkey", "--api-secret", "s" * 40]) as relay:
        r = _lk("room", "--url", relay.url)
    assert r.returncode == 4
    assert "token issuer 'devkey' is not this relay's API key" in r.stderr
    assert "minted here with API key 'devkey'" in r.stderr and "LIVEKIT_API_KEY" in r.stderr


def test_an_expired_token_says_what_to_do_about_it(served, handlers):
    # "LEAVE 3 token expired" alone left a person to guess; README recommends a token
    # minted at every join (what the commands do without --token) for a room that stays
    relay, _s = served
    expired = relay.token("late", ttl_s=-3600)
    for command in (["room"], ["call", "host", "echo"], ["serve", handlers]):
        r = _lk(*command, "--token", expired, "--url", relay.url)
        assert r.returncode == 4, r.stderr
        assert ("cannot join: the relay refused to join: LEAVE 3 token expired; the --token (or LKEDGE_TOKEN) "
                "has expired: mint a fresh one (`lkedge token --identity ID --room ROOM --ttl 30d`), or give "
                "none: lkedge then mints one with the relay's keys at every join") in r.stderr, r.stderr


def test_serve_whose_token_expired_while_serving_says_so_when_the_relay_refuses_it_back(handlers):
    with RelayProcess() as relay:
        # 60 s past its expiry the relay still takes it (its clock-skew leeway), 52 s: for
        # another 8 s
        token = relay.token("brief", ttl_s=-52)
        born = time.monotonic()
        s = _Serve(handlers, relay.url, "brief", "--token", token)
        try:
            time.sleep(max(0, born + 9 - time.monotonic()))
            relay.restart()   # the rejoin meets the expired token
            assert s.proc.wait(20) == 4
        finally:
            s.stop()
    assert ("stopped: the relay will not take us back: LEAVE 3 token expired (the --token (or LKEDGE_TOKEN) "
            "has expired: mint a fresh one") in s.err, s.err


def test_a_self_signed_tls_relay_is_reached_with_cafile(tmp_path):
    cert, key = str(tmp_path / "c.pem"), str(tmp_path / "k.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    with RelayProcess(extra_args=["--tls-cert", cert, "--tls-key", key]) as relay:
        assert relay.url.startswith("tls://")
        r = _lk("room", "--url", relay.url)
        assert r.returncode == 4 and "CERTIFICATE_VERIFY_FAILED" in r.stderr and "--cafile" in r.stderr
        r = _lk("room", "--url", relay.url, "--cafile", cert)
        assert r.returncode == 0, r.stderr
        assert "room lkedge" in r.stdout
        # the plain scheme at a TLS port: said, with the URL to use (was "the link
        # closed without a LEAVE", and for ws:// "its link port takes tcp://")
        plain = "tcp://" + relay.url.split("://", 1)[1]
        r = _lk("room", "--url", plain)
        assert r.returncode == 4, r.stderr
        assert "%s speaks TLS: that is a relay's tls:// port; use %s" % (plain, relay.url) in r.stderr, r.stderr
        ws = "ws://" + relay.ws_url.split("://", 1)[1]
        r = _lk("room", "--url", ws)
        assert r.returncode == 4 and "speaks TLS: that is a relay's wss:// port; use %s" % relay.ws_url \
            in r.stderr, r.stderr
    # a --cafile with no certificate in it (the key, say) is a usage error naming it
    _usage_error(_lk("room", "--url", "tls://127.0.0.1:1", "--cafile", key),
                 "--cafile %s holds no certificate to trust" % key)


def test_a_refused_token_gets_the_keys_advice_only_when_the_keys_are_what_is_wrong():
    with RelayProcess(extra_args=["--room", "only"]) as relay:
        r = _lk("room", "--url", relay.url)   # minted for room lkedge, which it does not serve
    assert r.returncode == 4 and "room 'lkedge' is not served by this relay" in r.stderr, r.stderr
    assert "give the relay's keys" not in r.stderr, r.stderr
    # an identity the relay would refuse is said before joining, as `lkedge token` does
    _usage_error(_lk("call", "host", "echo", "--identity", "a" * 300, "--url", NOWHERE),
                 "identity is 300 bytes of UTF-8, over 256")
    # and an empty token is not taken as "mint one" (`--token "$(a command that failed)"`)
    _usage_error(_lk("room", "--token", "", "--url", NOWHERE), "--token (or LKEDGE_TOKEN) is empty")
    env = dict(_env(), LKEDGE_TOKEN="")
    r = subprocess.run(LKEDGE + ["room", "--url", NOWHERE], capture_output=True, text=True, timeout=60, env=env)
    _usage_error(r, "is empty")


# Joins with the token it is given (argv: url, token) and stays until killed.
TAKER = """
import asyncio, sys
from lkedge.config import RoomOptions
from lkedge.room import Room

async def main():
    room = Room(RoomOptions())
    await room.connect(sys.argv[1], sys.argv[2])
    print("joined", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_serve_rejoins_after_a_relay_restart_and_stops_when_replaced(handlers):
    with RelayProcess() as relay:
        s = _Serve(handlers, relay.url, "svc")
        second = None
        try:
            relay.restart()   # same port: LEAVE 5, then the relay is back
            s.wait_for("rejoined room lkedge as svc")
            assert s.proc.poll() is None
            r = _lk("call", "svc", "echo", "still here", "--url", relay.url)
            assert r.returncode == 0 and r.stdout == "still here", r.stderr
            # another participant takes the identity: the relay drops us for good
            # (`room`, `call` and `serve --identity svc` refuse to: a participant of
            # its own does not)
            second = subprocess.Popen([sys.executable, "-c", TAKER, relay.url, relay.token("svc")],
                                      stdout=subprocess.PIPE, text=True)
            assert second.stdout.readline().strip() == "joined"
            assert s.proc.wait(10) == 4
        finally:
            s.stop()
            if second is not None:
                second.kill()
                second.wait()
    assert "link lost: LEAVE 5" in s.err
    assert "stopped: the relay will not take us back: LEAVE 2" in s.err
    assert "give each its own --identity" in s.err


def test_a_failing_register_hook_is_reported_with_its_own_traceback(tmp_path):
    f = tmp_path / "hook.py"
    f.write_text("def register(room):\n    raise RuntimeError('hook broke')\n")
    with RelayProcess() as relay:
        r = subprocess.run(LKEDGE + ["serve", str(f), "--url", relay.url, "--identity", "hooked"],
                           capture_output=True, text=True, timeout=30, env=_env())
    assert r.returncode == 1
    assert "register(room) in %s failed" % f in r.stderr and "RuntimeError: hook broke" in r.stderr
    assert "calls.py" not in r.stderr and "link lost" not in r.stderr and "Task was destroyed" not in r.stderr


def test_output_closed_early_stops_quietly(served):
    relay, _s = served
    p = subprocess.Popen(LKEDGE + ["call", "host", "echo", "x" * 100000, "--url", relay.url],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    p.stdout.close()   # as `lkedge call ... | head -c 10` does once it has its bytes
    err = p.stderr.read()
    assert p.wait(30) == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_a_timeout_outside_what_a_call_can_carry_is_a_usage_error():
    # a response timeout travels as whole milliseconds in a uint32: 0.0001 s (0 ms),
    # inf and 1e7 s were accepted here and then ended the call in a traceback
    for t in ("0.0001", "inf", "1e7"):
        _usage_error(_lk("call", "host", "echo", "--timeout", t, "--url", NOWHERE), "--timeout", t)
    _usage_error(_lk("call", "host", "echo", "--wait", "nan", "--url", NOWHERE), "--wait")


# ------------------------------------------------------------------ -o, stdout, payload text
def _ctrl_c(relay, s, *output, sig=signal.SIGINT):
    """Ctrl-C (or `sig`) on a call of `sleepy 30`, once serve has started it (a fixed delay
    raced the caller's start on a loaded machine); the caller is killed if it does not
    stop, so no stray participant stays in the room for the next tests."""
    before = s.err.count("sleepy started")
    p = subprocess.Popen(LKEDGE + ["call", "host", "sleepy", "30", "--timeout", "60", *output, "--url", relay.url],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        deadline = time.monotonic() + 20
        while s.err.count("sleepy started") == before and time.monotonic() < deadline:
            time.sleep(0.05)
        p.send_signal(sig)
        err = p.communicate(timeout=10)[1]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return subprocess.CompletedProcess(p.args, p.returncode, "", err)


@pytest.mark.parametrize("how,code", [("rpc error", 3), ("timeout", 1), ("ctrl-c", 130), ("sigterm", 143),
                                      ("sighup", 129)])
def test_a_failed_call_leaves_the_output_file_as_it_was(served, tmp_path, how, code):
    relay, s = served
    out = tmp_path / "out8.b64"
    out.write_text("the good copy\n")
    if how == "ctrl-c":
        r = _ctrl_c(relay, s, "-o", str(out))
    elif how.startswith("sig"):   # `timeout`, `kill`: a hidden .part file was left behind
        r = _ctrl_c(relay, s, "-o", str(out), sig=getattr(signal, how.upper()))
        assert "lkedge call: stopped by %s" % how.upper() in r.stderr, r.stderr
    else:
        method = ["missing"] if how == "rpc error" else ["sleepy", "5", "--timeout", "0.3"]
        r = _lk("call", "host", *method, "-o", str(out), "--url", relay.url)
    assert r.returncode == code, r.stderr
    assert out.read_text() == "the good copy\n"
    assert sorted(os.listdir(tmp_path)) == ["out8.b64"]   # no temporary file left beside it
    assert "--output %s not written" % out in r.stderr and "Traceback" not in r.stderr


def test_a_complete_answer_replaces_the_output_file_keeping_its_mode(served, tmp_path):
    relay, _s = served
    out = tmp_path / "out.txt"
    out.write_text("old")
    os.chmod(out, 0o640)
    r = _lk("call", "host", "echo", "new", "-o", str(out), "--url", relay.url)
    assert r.returncode == 0, r.stderr
    assert out.read_text() == "new" and (os.stat(out).st_mode & 0o777) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["out.txt"]


def test_an_output_that_fails_while_written_is_one_line_and_exit_1(served):
    relay, _s = served
    r = _lk("call", "host", "echo", "hi", "-o", "/dev/full", "--url", relay.url)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "cannot write the response to /dev/full: No space left on device" in r.stderr
    with open("/dev/full", "w") as full:
        r = subprocess.run(LKEDGE + ["call", "host", "echo", "hi", "--url", relay.url], stdout=full,
                           stderr=subprocess.PIPE, text=True, timeout=60, env=_env())
    assert r.returncode == 1 and "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
    assert "cannot write the response to standard output: No space left on device" in r.stderr


def test_payloads_not_utf8_on_stdin_or_argv_are_usage_errors_as_for_a_file():
    r = subprocess.run(LKEDGE + ["call", "host", "echo", "-", "--url", NOWHERE], input=b"ok\xa6\xff",
                       capture_output=True, timeout=60, env=_env())
    _usage_error(_decoded(r), "standard input is not UTF-8 text (byte 2", "base64")
    r = subprocess.run(LKEDGE + ["call", "host", "file.stat", b"\xe9", "--url", NOWHERE],
                       capture_output=True, timeout=60, env=_env())
    _usage_error(_decoded(r), "the payload argument is not UTF-8 text (byte 0", "base64")
    r = subprocess.run(LKEDGE + ["call", b"b\xe9", "echo", "--url", NOWHERE], capture_output=True, timeout=60,
                       env=_env())
    _usage_error(_decoded(r), "the destination is not UTF-8 text")


def _decoded(r):
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(errors="replace"),
                                       r.stderr.decode(errors="replace"))


def test_a_large_payload_file_is_streamed_in_bounded_memory(served, tmp_path):
    relay, _s = served
    f = tmp_path / "put48.txt"
    with open(f, "w") as w:
        for _ in range(48):
            w.write("é" * (512 * 1024))   # 48 MiB of UTF-8, a character cut at every 64 KiB piece
    f_bad = tmp_path / "late.txt"
    f_bad.write_bytes(b"a" * 200000 + b"\xff")
    _usage_error(_lk("call", "host", "count", "@" + str(f_bad), "--url", NOWHERE),
                 "late.txt is not UTF-8 text (byte 200000")   # found before joining
    small = tmp_path / "put1.txt"
    small.write_text("é" * (512 * 1024))   # 1 MiB: streamed too, the baseline

    def peak_kib(path, size):
        p = subprocess.Popen(LKEDGE + ["call", "host", "count", "@" + str(path), "-q", "--url", relay.url],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
        out, err = p.stdout.read(), p.stderr.read()
        _pid, status, usage = os.wait4(p.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, err
        assert out.strip() == str(size).encode()
        return usage.ru_maxrss
    base, big = peak_kib(small, 1 << 20), peak_kib(f, 48 << 20)
    # RSS is not deterministic, but holding the 48 MiB file (once as text, once as
    # bytes) would add far more than 24 MiB over the 1 MiB call's peak
    assert big - base < 24 * 1024, (base, big)


def test_pieces_count_as_sent_once_the_link_wrote_them():
    from lkedge_host.calls import Progress, _Pieces
    import asyncio
    progress = Progress("sending", 10, quiet=True)
    pieces = _Pieces(iter(["abc", "défg"]), progress)

    async def pull():
        seen = [await pieces.__anext__()]
        assert progress.done == 0             # handed to the writer, not yet written
        seen.append(await pieces.__anext__())
        assert progress.done == 3
        try:
            await pieces.__anext__()
        except StopAsyncIteration:
            return seen
    assert asyncio.run(pull()) == ["abc", "défg"]
    assert progress.done == 8


def test_progress_says_sent_to_the_relay_then_waits_for_the_answer_on_a_terminal(served, tmp_path):
    import pty
    relay, _s = served
    big = tmp_path / "big.txt"
    big.write_text("x" * 300000)
    r = _lk("call", "host", "count", "@" + str(big), "--url", relay.url)
    assert r.returncode == 0 and "sent to the relay [" in r.stderr and "100.0%" in r.stderr, r.stderr
    assert "waiting for" not in r.stderr   # not on a pipe
    master, slave = pty.openpty()
    p = subprocess.Popen(LKEDGE + ["call", "host", "sleepy", "1", "--url", relay.url],
                         stdout=subprocess.PIPE, stderr=slave, env=_env())
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:   # EIO: the call ended and closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert p.wait(30) == 0 and p.stdout.read() == b"woke"
    assert b"waiting for host's answer 0." in seen and b"host.sleepy ok" in seen, seen


# ------------------------------------------------------------------ what a failure says
def test_a_timeout_names_its_seconds_and_exits_1(served):
    relay, _s = served
    r = _lk("call", "host", "sleepy", "5", "--timeout", "0.3", "--url", relay.url)
    assert r.returncode == 1, r.stderr   # no answer: not an error the destination returned
    assert "no answer from 'host' to sleepy within --timeout 0.3 s" in r.stderr
    assert "longer --timeout" in r.stderr


def test_a_request_too_large_for_rpc_v1_names_the_limit_and_v2(served, tmp_path):
    relay, _s = served
    f = tmp_path / "big.txt"
    f.write_text("y" * 100000)   # streamed in pieces, gathered for v1
    for payload in ("z" * 20000, "@" + str(f)):
        r = _lk("call", "host", "echo", payload, "--protocol", "0", "--url", relay.url)
        assert r.returncode == 3 and "1402" in r.stderr, r.stderr
        assert "at most 15360 bytes" in r.stderr and "--protocol 2" in r.stderr
        assert "this one is %d bytes" % (20000 if payload[0] == "z" else 100000) in r.stderr


def test_a_tls_url_for_a_plain_relay_says_the_handshake_failed(served):
    relay, _s = served
    for url in ("wss://" + relay.ws_url.split("://")[1], "tls://" + relay.url.split("://")[1]):
        r = _lk("room", "--url", url)
        assert r.returncode == 4, r.stderr
        assert "TLS handshake failed" in r.stderr and "may not speak TLS there" in r.stderr, r.stderr


def test_a_tcp_url_at_the_relays_http_port_says_it_is_not_the_link_port():
    with RelayProcess(http=True) as relay:
        url = "tcp://" + relay.http_url.split("://")[1]
        r = _lk("room", "--url", url)
    assert r.returncode == 4, r.stderr
    assert "answers HTTP: that is a relay's WebSocket or HTTP port, not its link port" in r.stderr, r.stderr
    assert "without a LEAVE" not in r.stderr and "relay stopped" not in r.stderr, r.stderr   # not what happened


def test_a_ws_url_at_the_relays_link_port_says_which_port_takes_ws(served):
    relay, _s = served
    r = _lk("room", "--url", "ws://" + relay.url.split("://")[1])
    assert r.returncode == 4, r.stderr
    assert "a relay's WebSocket port?" in r.stderr and "link port takes tcp://" in r.stderr, r.stderr


def test_an_identity_already_in_the_room_is_refused_not_pushed_out(served, handlers):
    relay, s = served
    from lkedge_host.relay import auth
    token = auth.mint_token(auth.DEV_API_KEY, auth.DEV_API_SECRET, identity="host", room="lkedge")
    # serve too: a second `lkedge serve --identity svc` pushed the first out (LEAVE 2), and
    # so did one without --identity ("host" by default)
    for command in (["room", "--identity", "host"], ["room", "--token", token],
                    ["call", "ghost", "echo", "--identity", "host"], ["serve", handlers, "--identity", "host"],
                    ["serve", handlers], ["serve", handlers, "--token", token]):
        _usage_error(_lk(*command, "--url", relay.url), "'host'", "already in room lkedge", "LEAVE 2")
    assert "choose another --identity" in _lk("serve", handlers, "--url", relay.url).stderr
    assert s.proc.poll() is None and "link lost" not in s.err
    r = _lk("call", "host", "echo", "still served", "--url", relay.url)
    assert r.returncode == 0 and r.stdout == "still served", r.stderr
    r = _lk("room", "--identity", "newcomer", "--url", relay.url)
    assert r.returncode == 0 and "host" in r.stdout, r.stderr


def test_serve_logs_an_answer_too_large_for_a_v1_caller_as_failed(served):
    relay, s = served
    for method in ("big", "big_added"):   # the file's own, and one register(room) added
        r = _lk("call", "host", method, "16000", "--protocol", "0", "--url", relay.url)
        assert r.returncode == 3 and "1504" in r.stderr, r.stderr
        s.wait_for("call %s from" % method)
        line = [ln for ln in s.err.splitlines() if "call %s from" % method in ln][-1]
        assert "failed: its 16000-byte answer is over the 15360 bytes an answer to a v1 request carries" \
            in line, line
    r = _lk("call", "host", "big_added", "16000", "--url", relay.url)   # v2: streamed, any size
    assert r.returncode == 0 and len(r.stdout) == 16000, r.stderr


def test_a_call_too_large_for_v1_because_of_our_own_protocol_says_whose_it_is(served):
    relay, _s = served
    r = _lk("call", "host", "echo", "y" * 20000, "--protocol", "0", "--url", relay.url)
    assert r.returncode == 3, r.stderr
    assert "20000 bytes by RPC v1 (client_protocol 0, the lower of the caller's and the destination's)" \
        in r.stderr, r.stderr


def test_serve_stopped_while_joining_exits_0_and_imports_modules_beside_its_file(tmp_path):
    import socket
    (tmp_path / "helper.py").write_text("WORD = 'from the helper'\n")
    f = tmp_path / "meth.py"
    f.write_text("import helper\n\ndef word(data):\n    return helper.WORD\n")
    silent = socket.socket()   # accepts, never answers: serve waits for its JOINED
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    silent.settimeout(60)
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            p = subprocess.Popen(LKEDGE + ["serve", str(f), "--url", "tcp://127.0.0.1:%d" % silent.getsockname()[1]],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
            try:
                # its link is up: it is joining (a fixed 1.5 s landed in its imports
                # on a loaded machine, a Python traceback instead of a stop)
                conn, _ = silent.accept()
            except socket.timeout:
                p.kill()
                raise AssertionError("serve never connected: %s" % (p.communicate()[1],))
            p.send_signal(sig)
            _out, err = p.communicate(timeout=15)
            conn.close()
            assert p.returncode == 0, (sig, p.returncode, err)
            assert "stopped before serving began" in err and "Traceback" not in err, err
    finally:
        silent.close()
    with RelayProcess() as relay:
        srv = _Serve(str(f), relay.url, "beside")
        try:
            r = _lk("call", "beside", "word", "--url", relay.url)
            assert r.returncode == 0 and r.stdout == "from the helper", r.stderr
            # SIGHUP while serving (its terminal closed): the same clean stop as SIGTERM
            srv.proc.send_signal(signal.SIGHUP)
            assert srv.proc.wait(10) == 0
            srv.reader.join(5)
            assert "lkedge serve: stopped" in srv.err and "before serving began" not in srv.err, srv.err
        finally:
            srv.stop()


def test_installed_without_its_checkout_the_command_says_so(tmp_path, monkeypatch, capsys):
    # `pip install <checkout>` (a wheel) brings the packages alone: each command said
    # "No module named lkedge_host.relay" or failed later on a missing boards/ folder
    from lkedge_host import cli
    monkeypatch.setattr(cli, "_ROOT", str(tmp_path))
    for command in ("relay", "board", "call"):
        assert cli.main([command, "--help"]) == 1
        err = capsys.readouterr().err
        assert "runs from a checkout of its repository" in err and "pip install -e <checkout>" in err, err
        assert str(tmp_path) in err


@pytest.mark.parametrize("exists", [True, False])
def test_an_output_the_user_may_not_write_is_refused_before_the_call(tmp_path, monkeypatch, exists):
    # as root every file is writable, so the check is driven by os.access itself here
    from lkedge_host import calls
    out = tmp_path / "out.txt"
    if exists:
        out.write_text("old")
    asked = []

    def access(path, mode):
        asked.append((str(path), mode))
        return False
    monkeypatch.setattr(calls.os, "access", access)
    with pytest.raises(calls.UsageError) as e:
        calls._check_output(str(out))
    assert str(e.value) == "--output %s is not writable" % out
    assert asked == [(str(out) if exists else str(tmp_path), os.W_OK)], asked
