"""`lkedge serve` as it runs methods: plain ones in threads (a slow one holds up nothing),
a method's SystemExit or KeyboardInterrupt an answer rather than the end of serve, every
method (register(room)'s too) listed and logged, a token that could never answer refused.
serve is a real process; calls come from a Room in the test (many at once, quickly)."""
import asyncio
import os
import subprocess
import sys
import time

import pytest

from lkedge.config import RoomOptions
from lkedge.room import Room
from lkedge.rpc import RpcError
from lkedge_host.relay import auth
from lkedge_host.relay.process import RelayProcess
from test_cli_mistakes import _env, _Serve   # no LKEDGE_/LIVEKIT_ settings; serve in the background

LKEDGE = [os.path.join(os.path.dirname(sys.executable), "lkedge")]
NOWHERE = "tcp://127.0.0.1:1"   # nothing listens: a serve that tried to join would exit 4

METHODS = '''
import asyncio, threading, time

_lock = threading.Lock()
_running = [0, 0]   # now, most at once

def hold(data):
    with _lock:
        _running[0] += 1
        _running[1] = max(_running)
    time.sleep(float(data.payload))   # blocking, as a plain function may
    with _lock:
        _running[0] -= 1
    return "held"

def peak(data):
    return str(_running[1])

def echo(data):
    return data.payload

def quits(data):
    raise SystemExit(3)

def interrupted(data):
    raise KeyboardInterrupt

async def quits_async(data):
    raise SystemExit("from async")

def register(room):
    @room.local_participant.register_rpc_method("added")
    def added(data):
        return "added " + data.payload
'''


@pytest.fixture(scope="module")
def methods_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("serve") / "methods.py"
    f.write_text(METHODS)
    return str(f)


@pytest.fixture(scope="module")
def serve(methods_file):
    """(relay, serve process, its first stdout line, its stderr lines so far)."""
    with RelayProcess() as relay:
        s = _Serve(methods_file, relay.url)
        try:
            yield relay, s.proc, s.line, s.lines
        finally:
            s.stop()


async def _caller(relay):
    room = Room(RoomOptions())
    token = auth.mint_token(auth.DEV_API_KEY, auth.DEV_API_SECRET, identity="tester", room="lkedge")
    await room.connect(relay.url, token)
    for _ in range(100):
        if "host" in room.remote_participants:
            break
        await asyncio.sleep(0.05)
    return room


def _call(room, method, payload=""):
    return room.local_participant.perform_rpc(destination_identity="host", method=method, payload=payload)


async def test_a_slow_plain_method_holds_up_no_other_call(serve):
    relay, p, _line, _lines = serve
    room = await _caller(relay)
    try:
        slow = asyncio.ensure_future(_call(room, "hold", "3"))
        await asyncio.sleep(0.3)   # its request is out first
        t0 = time.monotonic()
        assert await _call(room, "echo", "meanwhile") == "meanwhile"
        assert time.monotonic() - t0 < 2 and not slow.done()
        assert await slow == "held"
    finally:
        await room.disconnect()


async def test_plain_methods_run_at_most_8_at_once_and_the_rest_wait(serve):
    relay, _p, _line, _lines = serve
    room = await _caller(relay)
    try:
        t0 = time.monotonic()
        assert await asyncio.gather(*(_call(room, "hold", "1") for _ in range(10))) == ["held"] * 10
        assert time.monotonic() - t0 >= 2   # two rounds: 8, then 2
        assert await _call(room, "peak") == "8"
    finally:
        await room.disconnect()


async def test_a_method_exiting_or_interrupted_is_a_1500_answer_and_serve_goes_on(serve):
    relay, p, _line, lines = serve
    room = await _caller(relay)
    try:
        for method, named in (("quits", "SystemExit: 3"), ("interrupted", "KeyboardInterrupt"),
                              ("quits_async", "SystemExit: from async")):
            with pytest.raises(RpcError) as e:
                await _call(room, method)
            assert (e.value.code, e.value.data) == (1500, named)
        assert await _call(room, "echo", "still serving") == "still serving"
    finally:
        await room.disconnect()
    assert p.poll() is None
    assert "call quits from tester failed: SystemExit(3)" in "".join(lines)


async def test_methods_register_adds_are_listed_and_logged(serve):
    relay, _p, line, lines = serve
    assert "serving added, echo, hold, interrupted, peak, quits, quits_async" in line
    room = await _caller(relay)
    try:
        assert await _call(room, "added", "too") == "added too"
    finally:
        await room.disconnect()
    for _ in range(100):
        if "call added from tester ok" in "".join(lines):
            break
        time.sleep(0.05)
    assert "call added from tester ok" in "".join(lines)


def test_ctrl_c_stops_serve_with_0_even_with_a_plain_method_running(methods_file):
    with RelayProcess() as relay:
        s = _Serve(methods_file, relay.url, "busy")
        c = subprocess.Popen(LKEDGE + ["call", "busy", "hold", "30", "--url", relay.url],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        time.sleep(1.5)
        try:
            assert s.stop(5) == 0
        finally:
            c.kill()
            c.wait(10)
        assert "lkedge serve: stopped" in s.err


SLOW = """
import asyncio, sys

async def slow(data):
    print("slow started", file=sys.stderr, flush=True)
    await asyncio.sleep(float(data.payload))
    return "late"
"""


def test_a_call_whose_answer_could_not_be_sent_is_logged_as_failed_not_ok(tmp_path):
    # the link went while the method ran: the library could not send its answer ("could
    # not answer RPC ...: not connected"), and serve had logged the call "ok" all the same
    f = tmp_path / "slow.py"
    f.write_text(SLOW)
    with RelayProcess() as relay:
        s = _Serve(str(f), relay.url, "lost")
        c = subprocess.Popen(LKEDGE + ["call", "lost", "slow", "2", "--url", relay.url],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
        try:
            s.wait_for("slow started")
            relay.kill()   # no relay to rejoin: the answer finds serve's room not connected
            s.wait_for("call slow from")
            assert s.stop() == 0
        finally:
            c.kill()
            c.wait(10)
    line = [ln for ln in s.err.splitlines() if "call slow from" in ln][0]
    assert "failed: its answer could not be sent: OSError('not connected to a relay (reconnecting)')" in line, s.err
    assert " ok " not in s.err and "could not answer RPC" in s.proc.stdout.read(), s.err


def test_a_token_without_can_publish_data_is_refused_before_joining(methods_file):
    mute = auth.mint_token(auth.DEV_API_KEY, auth.DEV_API_SECRET, identity="mute", room="lkedge",
                           can_publish_data=False)
    r = subprocess.run(LKEDGE + ["serve", methods_file, "--token", mute, "--url", NOWHERE],
                       capture_output=True, text=True, timeout=30, env=_env())
    assert r.returncode == 2 and "canPublishData" in r.stderr and "could never answer" in r.stderr, r.stderr
    assert r.stdout == "" and "Traceback" not in r.stderr
    ok = auth.mint_token(auth.DEV_API_KEY, auth.DEV_API_SECRET, identity="fine", room="lkedge")
    r = subprocess.run(LKEDGE + ["serve", methods_file, "--token", ok, "--url", NOWHERE],
                       capture_output=True, text=True, timeout=30, env=_env())
    assert r.returncode == 4 and "cannot join" in r.stderr   # not refused: it went to join


def test_help_says_how_methods_run():
    r = subprocess.run(LKEDGE + ["serve", "--help"], capture_output=True, text=True, timeout=30, env=_env())
    assert r.returncode == 0
    assert "at most 8 at once" in r.stdout and "canPublishData" in r.stdout


def test_a_minted_token_is_minted_afresh_at_every_join(monkeypatch):
    # serve rejoins by itself; with one token minted at start (6 h), the first link
    # loss after six hours ended it: "LEAVE 3 token expired". Minted here, every join
    # (Room.connect calls join_token at each rejoin) mints a fresh one.
    import argparse
    from lkedge_host import calls
    minted = []
    real = auth.mint_token

    def recording(*a, **kw):
        minted.append(kw)
        return real(*a, **kw)

    monkeypatch.setattr(auth, "mint_token", recording)
    args = argparse.Namespace(url="tcp://127.0.0.1:7880", cafile=None, token=None, api_key=None,
                              api_secret=None, identity="svc", room="lab")
    monkeypatch.delenv("LIVEKIT_API_KEY", raising=False)
    monkeypatch.delenv("LIVEKIT_API_SECRET", raising=False)
    calls.prepare_connection(args)
    assert args.minted and len(minted) == 1
    assert callable(args.join_token)
    fresh = args.join_token()
    assert len(minted) == 2 and minted[1]["identity"] == "svc" and minted[1]["room"] == "lab"
    assert auth.Verifier(auth.DEV_API_KEY, auth.DEV_API_SECRET).verify(fresh)["identity"] == "svc"
    # a token given by the user is used as it is, at every join
    args = argparse.Namespace(url="tcp://127.0.0.1:7880", cafile=None, token=fresh, api_key=None,
                              api_secret=None, identity="svc", room="lab")
    calls.prepare_connection(args)
    assert args.join_token == fresh and not args.minted
