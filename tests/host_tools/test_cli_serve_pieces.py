"""`lkedge serve` methods that answer in pieces (an async iterable of str, as its --help
says): streamed to a v2 caller, gathered for a v1 one, the request still whole in
data.payload; a piece that is not a str, or pieces from a method register(room) added
without streaming=True, fail the call with 1500 and are logged as failed (the log said
"ok" while the library answered 1500); a method past its caller's response_timeout is
answered 1502 and frees its slot. serve is a real process, as a person runs it."""
import asyncio
import os
import subprocess
import sys

import pytest

from lkedge.config import RoomOptions
from lkedge.room import Room
from lkedge.rpc import RpcError
from lkedge_host.relay import auth
from lkedge_host.relay.process import RelayProcess
from test_cli_mistakes import _env, _Serve   # no LKEDGE_/LIVEKIT_ settings; serve in the background

LKEDGE = [os.path.join(os.path.dirname(sys.executable), "lkedge")]

METHODS = '''
import asyncio

async def lines(data):
    """An async generator: one line per number up to the request's."""
    for i in range(1, int(data.payload or 3) + 1):
        yield "%d\\n" % i

class _Upper:
    def __init__(self, text):
        self.parts = [text[:len(text) // 2], text[len(text) // 2:]]
    def __aiter__(self):
        return self
    async def __anext__(self):
        if not self.parts:
            raise StopAsyncIteration
        return self.parts.pop(0).upper()

def upper(data):
    """A plain function answering an async iterable: the request arrives whole."""
    return _Upper(data.payload)

async def bad_piece(data):
    yield "fine"
    yield 5

async def stuck(data):
    await asyncio.sleep(3600)

def echo(data):
    return data.payload

def register(room):
    async def unstreamed(data):   # registered without streaming=True: pieces cannot go
        return lines(data)
    room.local_participant.register_rpc_method("unstreamed", unstreamed)
'''


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    f = tmp_path_factory.mktemp("serve") / "pieces.py"
    f.write_text(METHODS)
    with RelayProcess() as relay:
        s = _Serve(str(f), relay.url)
        yield relay, s
        s.stop()


async def _caller(relay, protocol=2):
    room = Room(RoomOptions(client_protocol=protocol))
    await room.connect(relay.url, auth.mint_token(auth.DEV_API_KEY, auth.DEV_API_SECRET,
                                                  identity="tester-%d" % protocol, room="lkedge"))
    for _ in range(100):
        if "host" in room.remote_participants:
            break
        await asyncio.sleep(0.05)
    return room


def _call(room, method, payload="", timeout=10):
    return room.local_participant.perform_rpc(destination_identity="host", method=method, payload=payload,
                                              response_timeout=timeout)


async def test_an_async_iterable_answer_is_streamed_to_a_v2_caller(served):
    relay, s = served
    room = await _caller(relay)
    try:
        assert await _call(room, "lines", "5") == "1\n2\n3\n4\n5\n"
        reader = await room.local_participant.perform_rpc_stream(destination_identity="host", method="lines",
                                                                 payload="3")
        assert [p async for p in reader] == ["1\n", "2\n", "3\n"]   # piece by piece, as answered
        big = "abc" * 100000   # 300 KB: a streamed request, handed to the method whole
        assert await _call(room, "upper", big) == big.upper()
        assert await _call(room, "echo", "plain") == "plain"   # a str answer as before
    finally:
        await room.disconnect()
    s.wait_for("call lines from tester-2 ok")
    assert "(5 pieces, 10 characters)" in s.err, s.err
    s.wait_for("call upper from tester-2 ok")


def test_a_v1_caller_gets_the_pieces_gathered(served):
    relay, s = served
    r = subprocess.run(LKEDGE + ["call", "host", "lines", "4", "--protocol", "0", "--url", relay.url],
                       capture_output=True, text=True, timeout=60, env=_env())
    assert r.returncode == 0 and r.stdout == "1\n2\n3\n4\n", (r.stdout, r.stderr)
    # over a v1 answer's 15 KiB: 1504, and the call is still logged, as failed
    r = subprocess.run(LKEDGE + ["call", "host", "lines", "5000", "--protocol", "0", "--url", relay.url],
                       capture_output=True, text=True, timeout=60, env=_env())
    assert r.returncode == 3 and "1504" in r.stderr, r.stderr
    s.wait_for("failed: the answer stopped after")


async def test_pieces_the_library_refuses_are_1500_and_logged_as_failed(served):
    relay, s = served
    room = await _caller(relay)
    try:
        with pytest.raises(RpcError) as e:
            await _call(room, "bad_piece")
        assert e.value.code == 1500 and "bad_piece answered a piece of type int, not str" in e.value.data
        with pytest.raises(RpcError) as e:
            await _call(room, "unstreamed")
        assert e.value.code == 1500 and "streaming=True" in e.value.data, e.value.data
        assert await _call(room, "echo", "still serving") == "still serving"
    finally:
        await room.disconnect()
    s.wait_for("call bad_piece from tester-2 failed: TypeError")
    s.wait_for("call unstreamed from tester-2 failed: TypeError")
    assert "call bad_piece from tester-2 ok" not in s.err and "call unstreamed from tester-2 ok" not in s.err


async def test_a_method_past_the_callers_timeout_is_answered_1502_and_logged(served):
    relay, s = served
    room = await _caller(relay)
    try:
        with pytest.raises(RpcError) as e:
            await _call(room, "stuck", timeout=1)   # 8 s on the wire, the least LiveKit SDKs send
        assert e.value.code == 1502
        for _ in range(200):   # stay in the room until serve's deadline has passed
            if "call stuck from tester-2 failed" in s.err:
                break
            await asyncio.sleep(0.05)
        assert await _call(room, "echo", "free") == "free"
    finally:
        await room.disconnect()
    s.wait_for("call stuck from tester-2 failed")
    assert "1502" in s.err and "response_timeout of 8 s" in s.err, s.err


def test_help_says_a_method_may_answer_pieces():
    r = subprocess.run(LKEDGE + ["serve", "--help"], capture_output=True, text=True, timeout=30, env=_env())
    assert r.returncode == 0
    assert "async iterable of str" in r.stdout and "gathered up to 15 KiB for a v1 one" in r.stdout
