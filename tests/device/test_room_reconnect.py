"""Reconnecting after the link is lost (room.py `_link_lost`), on CPython and MicroPython.

The backoff is exponential from RoomOptions.reconnect_min_ms to reconnect_max_ms with
"equal jitter": each wait is drawn from [delay/2, delay]. The waits are recorded by a
stand-in for the room module's asyncio whose sleeps return at once (every other name is
the real asyncio), so the tests check the schedule without waiting it out.
"""
import asyncio

from room_helpers import CannedRelay, close, raw, settle

import lkedge.room as room_module
from lkedge import link, relayside
from lkedge.config import RoomOptions
from lkedge.memroom import MemRoom
from lkedge.room import ConnectError, Room

MP_HEAPSIZE = "1M"


class _Asyncio:
    """The real asyncio, except that sleep/sleep_ms record the wait and return at once."""

    def __init__(self, real):
        self.real = real
        self.waits_ms = []

    def __getattr__(self, name):
        return getattr(self.real, name)

    async def sleep_ms(self, ms):
        self.waits_ms.append(ms)
        await self.real.sleep(0.001)

    async def sleep(self, s):
        self.waits_ms.append(int(s * 1000 + 0.5))
        await self.real.sleep(0.001)


class _FlakyRelay:
    """A transport factory over a MemRoom: each connect() opens a fresh MemTransport,
    except that `fail` connects after the first one are refused (OSError);
    fail=None refuses them all."""

    def __init__(self, mem, fail=0):
        self.mem = mem
        self.fail = fail
        self.connects = 0
        self.t = None

    async def connect(self):
        self.connects += 1
        if self.connects > 1 and (self.fail is None or self.fail > 0):
            if self.fail is not None:
                self.fail -= 1
            raise OSError("connection refused (test)")
        self.t = self.mem.transport()
        await self.t.connect()

    async def write(self, data):
        await self.t.write(data)

    async def read_into(self, buf):
        return await self.t.read_into(buf)

    async def close(self):
        await self.t.close()


async def _board(mem, relay, events, **opts):
    o = RoomOptions(reconnect_min_ms=100, reconnect_max_ms=400, **opts)
    r = Room(o)
    for ev in ("disconnected", "reconnecting", "reconnected"):
        r.on(ev, (lambda name: lambda *a: events.append(name))(ev))
    await r.connect(relay, "board")
    return r


async def _board_and_host(relay_type, **opts):
    """A board (RoomOptions `opts`) through relay_type(MemRoom()), and a raw peer "host"
    it sees: (mem, relay, events, board, peer)."""
    mem = MemRoom()
    relay = relay_type(mem)
    events = []
    board = await _board(mem, relay, events, **opts)
    peer = await raw(mem, "host", client_protocol=2)
    await settle(lambda: "host" in board.remote_participants)
    return mem, relay, events, board, peer


async def _refused(coro):
    """The ConnectError a connect() raises (AssertionError when it joins instead)."""
    try:
        await coro
    except ConnectError as e:
        return e
    raise AssertionError("connect() joined where it must fail")


def _patched():
    fake = _Asyncio(asyncio)
    room_module.asyncio = fake
    return fake


def _restore():
    room_module.asyncio = asyncio


async def _kick_and_wait_rejoined(mem, events):
    """The relay drops "board" (LEAVE 5, not final); -> the recorded waits once it rejoined."""
    fake = _patched()
    try:
        await mem.kick("board", link.LEAVE_SHUTDOWN, "relay restarting")
        await settle(lambda: "reconnected" in events)
    finally:
        _restore()
    return fake


async def test_reconnect_backoff_doubles_with_jitter_up_to_the_max_then_rejoins():
    mem = MemRoom()
    relay = _FlakyRelay(mem, fail=4)
    events = []
    board = await _board(mem, relay, events)
    board.local_participant.register_rpc_method("ping", lambda d: "pong")
    fake = await _kick_and_wait_rejoined(mem, events)
    assert events == ["reconnecting", "reconnected"], "a loss the room rejoins after is no disconnect: %r" % events
    assert relay.connects == 6, "1 join, 4 refused attempts, 1 that succeeds: %d" % relay.connects
    nominal = [100, 200, 400, 400, 400]
    assert len(fake.waits_ms) == len(nominal), fake.waits_ms
    for w, d in zip(fake.waits_ms, nominal):
        assert d // 2 <= w <= d, "wait %d ms outside [%d, %d]: %s" % (w, d // 2, d, fake.waits_ms)
    assert board.connection_state == "connected"
    # Back in the room with its methods: a peer that joins now can call it.
    peer = Room(RoomOptions(auto_reconnect=False))
    await peer.connect(mem.transport(), "host")
    await settle(lambda: "board" in peer.remote_participants)
    assert await peer.local_participant.perform_rpc(destination_identity="board", method="ping", payload="") == "pong"
    await peer.disconnect()
    await board.disconnect()


async def test_reconnect_waits_are_jittered_not_fixed():
    """Equal jitter: 12 waits at the same nominal delay are not all the same value."""
    mem = MemRoom()
    relay = _FlakyRelay(mem, fail=12)
    events = []
    board = await _board(mem, relay, events)
    board.options.reconnect_min_ms = board.options.reconnect_max_ms = 1000
    fake = await _kick_and_wait_rejoined(mem, events)
    waits = fake.waits_ms
    assert len(waits) == 13 and all(500 <= w <= 1000 for w in waits), waits
    assert len(set(waits)) > 1, "every wait was %d ms: no jitter" % waits[0]
    await board.disconnect()


async def test_final_leave_code_ends_the_room_without_reconnecting():
    for code in (link.LEAVE_DUPLICATE, link.LEAVE_UNAUTHORIZED):
        mem = MemRoom()
        relay = _FlakyRelay(mem)
        events = []
        board = await _board(mem, relay, events)
        fake = _patched()
        try:
            await mem.kick("board", code, "final")
            await settle(lambda: board.connection_state == "disconnected")
            await asyncio.sleep(0.05)
        finally:
            _restore()
        assert events == ["disconnected"], (code, events)
        assert relay.connects == 1 and fake.waits_ms == [], (code, relay.connects, fake.waits_ms)
        await board.disconnect()


async def test_without_auto_reconnect_a_lost_link_stays_disconnected():
    mem = MemRoom()
    relay = _FlakyRelay(mem)
    events = []
    board = await _board(mem, relay, events, auto_reconnect=False)
    await mem.kick("board", link.LEAVE_SHUTDOWN, "relay restarting")
    await settle(lambda: board.connection_state == "disconnected")
    await asyncio.sleep(0.05)
    assert events == ["disconnected"] and relay.connects == 1, (events, relay.connects)
    assert board.last_error and "relay restarting" in board.last_error, board.last_error
    await board.disconnect()


async def test_a_link_closed_without_a_leave_says_so():
    # The relay's process killed, or the connection cut on the way: no LEAVE came, and
    # the reason says that rather than that the relay closed it.
    mem = MemRoom()
    relay = _FlakyRelay(mem)
    events = []
    board = await _board(mem, relay, events, auto_reconnect=False)
    relay.t._eof()   # the bytes end: no LEAVE before
    await settle(lambda: board.connection_state == "disconnected")
    assert board.last_error and "closed without a LEAVE" in board.last_error, board.last_error
    await board.disconnect()


async def test_a_second_joined_on_one_link_is_a_protocol_error_and_the_room_rejoins_as_itself():
    # A JOINED answers the JOIN once; a second one on the same link would have changed
    # the room's identity, name and max_frame and dropped everyone without an event.
    mem, relay, events, board, peer = await _board_and_host(_FlakyRelay)
    j = {"v": 1, "room": "other", "identity": "zz", "sid": "PA_zz", "max_frame": 100, "participants": []}
    _patched()   # (the backoff's wait returns at once)
    try:
        await relay.t._deliver(relayside.encode_control(link.JOINED, j))
        await settle(lambda: "reconnected" in events)
    finally:
        _restore()
    assert "a second JOINED on one link" in str(board.last_error), board.last_error
    assert events == ["reconnecting", "reconnected"], events
    assert (board.local_participant.identity, board.name, board.max_frame) == ("board", mem.name, mem.max_frame)
    assert "host" in board.remote_participants
    await board.disconnect()
    await peer.close()


class _SlowConnect(_FlakyRelay):
    """Connecting takes a while (a TCP handshake, DNS): a write meanwhile fails."""

    async def connect(self):
        self.t = None
        await asyncio.sleep(0.05)
        await _FlakyRelay.connect(self)

    async def write(self, data):
        if self.t is None:
            raise OSError("not connected (test)")
        await self.t.write(data)


async def test_an_application_sending_all_the_time_does_not_keep_the_rejoin_out():
    # Its sends used to reach the transport being connected, fail there and close it:
    # every attempt failed, for as long as the application kept sending.
    mem = MemRoom()
    relay = _SlowConnect(mem)
    events = []
    board = await _board(mem, relay, events)
    peer = await raw(mem, "host", client_protocol=2)
    await settle(lambda: "host" in board.remote_participants)
    failures = []

    async def chatter():
        while True:
            try:
                await board.local_participant.send_text("x", topic="t", destination_identities=["host"])
            except OSError as e:
                failures.append(str(e))
            await asyncio.sleep(0.001)
    task = asyncio.create_task(chatter())
    await mem.kick("board", link.LEAVE_SHUTDOWN, "relay restarting")
    await settle(lambda: "reconnected" in events, timeout=5)
    task.cancel()
    assert board.connection_state == "connected", (events, board.last_error)
    assert any("not connected to a relay" in f for f in failures), failures[:3]
    await close(board, peer)


async def test_disconnect_during_backoff_stops_reconnecting():
    mem = MemRoom()
    relay = _FlakyRelay(mem, fail=None)
    events = []
    board = await _board(mem, relay, events)
    _patched()
    try:
        await mem.kick("board", link.LEAVE_SHUTDOWN, "relay restarting")
        await settle(lambda: relay.connects >= 3)
        await board.disconnect()
        n = relay.connects
        for _ in range(20):
            await asyncio.sleep(0)
    finally:
        _restore()
    assert relay.connects == n, "kept reconnecting after disconnect(): %d -> %d" % (n, relay.connects)
    assert board.connection_state == "disconnected"
    assert "reconnected" not in events


async def test_calls_in_flight_fail_with_recipient_disconnected_when_the_link_is_lost():
    mem, relay, events, board, peer = await _board_and_host(_FlakyRelay, auto_reconnect=False)
    call = asyncio.create_task(board.local_participant.perform_rpc(
        destination_identity="host", method="slow", payload="x", response_timeout=30))
    await peer.wait_for(lambda p: "stream_header" in p or "rpc_request" in p)
    await mem.kick("board", link.LEAVE_SHUTDOWN, "relay restarting")
    try:
        await call
    except Exception as e:
        from lkedge.rpc import RpcError
        assert isinstance(e, RpcError) and e.code == RpcError.RECIPIENT_DISCONNECTED, repr(e)
        assert "link lost" in (e.data or ""), repr(e)
    else:
        raise AssertionError("the call succeeded after the link was lost")
    assert board.remote_participants == {}
    await peer.close()
    await board.disconnect()


async def test_between_failed_attempts_the_room_stays_reconnecting_and_refuses_connect():
    # A failed attempt must not leave "disconnected" during the next backoff: a
    # connect() accepted there would open a second link beside the retrying one.
    mem = MemRoom()
    relay = _FlakyRelay(mem, fail=None)
    events = []
    board = await _board(mem, relay, events)
    await mem.kick("board", link.LEAVE_SHUTDOWN, "relay restarting")
    await settle(lambda: relay.connects >= 2)   # an attempt failed: the room waits for the next
    assert board.connection_state == "reconnecting", board.connection_state
    e = await _refused(board.connect(mem.transport(), "board"))
    assert "already reconnecting" in str(e), e
    assert "board" not in mem.conns
    await board.disconnect()
    assert board.connection_state == "disconnected"


class _BlackHole(_FlakyRelay):
    """_FlakyRelay whose link can go silent without closing (a NAT or Wi-Fi gone):
    with `hole` set, writes and reads wait until the Room closes the transport."""

    def __init__(self, mem):
        _FlakyRelay.__init__(self, mem)
        self.hole = False
        self._cut = None

    async def connect(self):
        self.hole = False
        self._cut = asyncio.Event()
        await _FlakyRelay.connect(self)

    async def write(self, data):
        if self.hole:
            await self._cut.wait()
            raise OSError("black hole (test)")
        await self.t.write(data)

    async def read_into(self, buf):
        if not self.hole:
            n = await self.t.read_into(buf)
            if not self.hole:
                return n
        await self._cut.wait()
        return 0

    async def close(self):
        self._cut.set()
        await self.t.close()




async def test_a_link_gone_silent_without_closing_is_lost_and_rejoined():
    # Nothing closes a black-holed link: the Room must notice the unanswered PINGs,
    # fail what is pending (RPC.md: 1503) and rejoin, as after any loss.
    _, relay, events, board, peer = await _board_and_host(_BlackHole, ping_interval_ms=100)
    await asyncio.sleep(0.5)   # five answered PINGs: a live link is kept
    assert events == [] and relay.connects == 1, events
    call = asyncio.create_task(board.local_participant.perform_rpc(
        destination_identity="host", method="slow", payload="x", response_timeout=30))
    await peer.wait_for(lambda p: "stream_header" in p or "rpc_request" in p)
    relay.hole = True
    try:
        await asyncio.wait_for(call, 5)
    except Exception as e:
        from lkedge.rpc import RpcError
        assert isinstance(e, RpcError) and e.code == RpcError.RECIPIENT_DISCONNECTED, repr(e)
        assert "no PONG from the relay" in (e.data or ""), repr(e)
    else:
        raise AssertionError("the call succeeded on a dead link")
    await settle(lambda: "reconnected" in events)
    assert events[0] == "reconnecting" and relay.connects == 2, events
    await peer.close()
    await board.disconnect()


async def test_a_reader_cancelled_from_outside_starts_no_rejoin_of_its_own_and_the_timer_rejoins():
    # asyncio.run() ending cancels every task: the reader's finally started a rejoin
    # task then, which the closing loop destroyed ("Task was destroyed but it is
    # pending!" after every program that did not disconnect()). A loop that goes on
    # still has the timer, which finds the reader done and rejoins.
    _, relay, events, board, peer = await _board_and_host(_FlakyRelay, ping_interval_ms=100)
    spawned = len(board._tasks)
    board._reader_task.cancel()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert board._reader_task.done() and events == [] and len(board._tasks) == spawned, (events, board._tasks)
    await settle(lambda: "reconnected" in events, 5)
    assert events[0] == "reconnecting" and relay.connects == 2, events
    await peer.close()
    await board.disconnect()


async def test_a_link_that_stops_draining_does_not_stop_the_call_timers():
    # A write stuck on a full link must not hold up the timer: a call's own timeout
    # still fires (RPC.md: 1502), and the dead link is then dropped and rejoined.
    _, relay, events, board, peer = await _board_and_host(_BlackHole, ping_interval_ms=1000)
    relay.hole = True
    stuck = asyncio.create_task(board.local_participant.send_text("x" * 40000, topic="t"))
    await asyncio.sleep(0.05)
    from lkedge.rpc import RpcError
    try:
        await asyncio.wait_for(board.local_participant.perform_rpc(
            destination_identity="host", method="m", payload="x", response_timeout=0.3), 5)
    except RpcError as e:
        assert e.code in (RpcError.RESPONSE_TIMEOUT, RpcError.RECIPIENT_DISCONNECTED), repr(e)
    else:
        raise AssertionError("answered on a dead link")
    await settle(lambda: "reconnected" in events, timeout=10)
    try:
        await stuck
    except Exception:
        pass   # the stream failed with the link: what matters is that it ended
    await peer.close()
    await board.disconnect()


async def test_a_reader_busy_with_a_slow_handler_is_not_taken_for_a_dead_link():
    # The reader waits for the application (a handler not reading its stream): no bytes
    # are read, but the link answers PINGs; it must not be dropped.
    mem = MemRoom(queue_bytes=16384)
    relay = _FlakyRelay(mem)
    events = []
    board = await _board(mem, relay, events, ping_interval_ms=50, max_streams=1)
    gate = asyncio.Event()

    async def slow(reader, who):
        await gate.wait()
        async for _ in reader:
            pass
    board.register_text_stream_handler("t", slow)
    host = Room(RoomOptions())
    await host.connect(mem.transport(), "host")
    await settle(lambda: "board" in host.remote_participants)
    sent = asyncio.create_task(host.local_participant.send_text("y" * 60000, topic="t",
                                                                destination_identities=["board"]))
    await asyncio.sleep(0.5)   # ten PING intervals with the reader held up
    gate.set()
    await asyncio.wait_for(sent, 10)
    assert events == [] and relay.connects == 1, events
    await host.disconnect()
    await board.disconnect()


class _RefusingRelay(CannedRelay):
    """A transport that answers any JOIN with LEAVE `code` and closes (a relay refusing
    the token): the bytes a refusing relay sends, without one."""

    def __init__(self, code=link.LEAVE_UNAUTHORIZED, reason="token is not a JWT"):
        CannedRelay.__init__(self, link.encode_control(link.LEAVE, {"code": code, "reason": reason}))


async def test_a_connect_refused_with_a_leave_leaves_nothing_running():
    # A LEAVE before JOINED made the reader start a rejoin as for a lost link: right
    # after the failed connect() the room went "reconnecting" by itself (retrying the
    # next connect()'s URL for ever), or a good connect() made at once was pushed out
    # by that hidden rejoin (LEAVE 2).
    events = []
    board = Room(RoomOptions(reconnect_min_ms=10, reconnect_max_ms=20))
    for ev in ("disconnected", "reconnecting", "reconnected"):
        board.on(ev, (lambda name: lambda *a: events.append(name))(ev))
    e = await _refused(board.connect(_RefusingRelay(), "garbage"))
    assert e.leave_code == link.LEAVE_UNAUTHORIZED and "token is not a JWT" in str(e), e
    mem = MemRoom()
    relay = _FlakyRelay(mem)
    await board.connect(relay, "board")          # at once, as a retrying caller does
    await asyncio.sleep(0.1)
    assert board.connection_state == "connected" and relay.connects == 1, (board.connection_state, relay.connects)
    assert events == [], events
    await board.disconnect()
    # and after a refusal alone, nothing happens later either
    events.clear()
    board = Room(RoomOptions(reconnect_min_ms=10, reconnect_max_ms=20))
    board.on("reconnecting", lambda *a: events.append("reconnecting"))
    await _refused(board.connect(_RefusingRelay(), "garbage"))
    await asyncio.sleep(0.1)
    assert board.connection_state == "disconnected" and events == [], (board.connection_state, events)


async def test_an_expired_token_given_as_a_str_says_what_to_do_about_it():
    # "LEAVE 3 token expired" alone: a room given its token as a str rejoins with it, so
    # one that stays joined longer than the token lives ends so; the README's answer is
    # a token function, which the error now names
    board = Room(RoomOptions())
    e = await _refused(board.connect(_RefusingRelay(reason="token expired"), "a-token"))
    assert e.leave_code == link.LEAVE_UNAUTHORIZED, e
    assert str(e).startswith("the relay refused to join: LEAVE 3 token expired; connect(url, fn) takes a "
                             "function that returns a fresh token, called at every join"), e
    # not for a token function (it did return one) nor for another refusal
    e = await _refused(board.connect(_RefusingRelay(reason="token expired"), lambda: "a-token"))
    assert str(e) == "the relay refused to join: LEAVE 3 token expired" and e.leave_code == 3, e
    e = await _refused(board.connect(_RefusingRelay(), "a-token"))
    assert str(e) == "the relay refused to join: LEAVE 3 token is not a JWT" and e.leave_code == 3, e
    e = await _refused(board.connect(_RefusingRelay(link.LEAVE_FORBIDDEN, "token expired"), "a-token"))
    assert str(e) == "the relay refused to join: LEAVE 7 token expired", e


async def test_a_token_function_is_called_at_every_join_and_its_failure_is_said():
    # A long-lived participant that mints its own tokens (lkedge serve) rejoined with
    # the token of its first join: after a relay restart six hours later, LEAVE 3
    # "token expired", for good. Room.connect takes a function, called at each join.
    mem = MemRoom()
    relay = _FlakyRelay(mem)
    events = []
    calls = []

    def token():
        calls.append(1)
        return "board"

    board = Room(RoomOptions(reconnect_min_ms=10, reconnect_max_ms=20))
    board.on("reconnected", lambda *a: events.append("reconnected"))
    await board.connect(relay, token)
    assert board.local_participant.identity == "board" and len(calls) == 1
    await mem.kick("board", link.LEAVE_SHUTDOWN, "relay restarting")
    await settle(lambda: events == ["reconnected"])
    assert len(calls) == 2, calls
    await board.disconnect()

    def broken():
        raise ValueError("no API secret")

    board = Room(RoomOptions())
    e = await _refused(board.connect(MemRoom().transport(), broken))
    assert "the token function failed" in str(e) and "no API secret" in str(e), e
    assert board.connection_state == "disconnected"


class _JoinedThenLeave(_FlakyRelay):
    """_FlakyRelay whose links numbered in `bad` (1 = the first connect) end at once after
    JOINED: the relay's first read carries JOINED and, right behind it, LEAVE 5 (a
    relay stopping as it lets us in)."""

    def __init__(self, mem, bad):
        _FlakyRelay.__init__(self, mem)
        self.bad = bad
        self.first = False

    async def connect(self):
        await _FlakyRelay.connect(self)
        self.first = self.connects in self.bad

    async def read_into(self, buf):
        n = await self.t.read_into(buf)
        if self.first and n:
            self.first = False
            leave = link.encode_control(link.LEAVE, {"code": link.LEAVE_SHUTDOWN, "reason": "restarting"})
            buf[n:n + len(leave)] = leave
            n += len(leave)
        return n


async def test_a_link_lost_in_the_read_that_brought_joined_fails_that_join_alone():
    # connect() raised ConnectError while a rejoin it had started ran on behind it
    # (the room then "reconnecting", then "reconnected", on its own); in a rejoin, each
    # such attempt started a second rejoin loop beside the first, which pushed each
    # other out (LEAVE 2).
    events = []
    board = Room(RoomOptions(reconnect_min_ms=10, reconnect_max_ms=20))
    for ev in ("disconnected", "reconnecting", "reconnected"):
        board.on(ev, (lambda name: lambda *a: events.append(name))(ev))
    relay = _JoinedThenLeave(MemRoom(), bad=(1,))
    e = await _refused(board.connect(relay, "board"))
    assert e.leave_code == link.LEAVE_SHUTDOWN, e
    await asyncio.sleep(0.2)
    assert board.connection_state == "disconnected" and events == [] and relay.connects == 1, \
        (board.connection_state, events, relay.connects)
    # in a rejoin: one loop retries until a join holds
    mem = MemRoom()
    relay = _JoinedThenLeave(mem, bad=(2, 3, 4))   # the connect holds, three rejoins do not
    await board.connect(relay, "board")
    assert board.connection_state == "connected"
    await mem.kick("board", link.LEAVE_SHUTDOWN, "bye")
    await settle(lambda: "reconnected" in events)
    await asyncio.sleep(0.2)
    assert events == ["reconnecting", "reconnected"], events
    assert board.connection_state == "connected" and "board" in mem.conns
    await board.disconnect()


async def test_an_async_token_function_is_awaited_and_a_token_that_is_no_str_is_said():

    async def token():
        await asyncio.sleep(0)
        return "board"

    board = Room(RoomOptions())
    await board.connect(MemRoom().transport(), token)
    assert board.local_participant.identity == "board"
    await board.disconnect()
    # cancelled while its token function runs: the room is not left "connecting"
    async def slow():
        await asyncio.sleep(10)
        return "board"

    board = Room(RoomOptions())
    try:
        await asyncio.wait_for(board.connect(MemRoom().transport(), slow), 0.05)
    except asyncio.TimeoutError:
        pass
    assert board.connection_state == "disconnected", board.connection_state
    await board.connect(MemRoom().transport(), "board")
    await board.disconnect()
    for bad in (None, lambda: None):
        board = Room(RoomOptions())
        e = await _refused(board.connect(MemRoom().transport(), bad))
        assert "a token is a str" in str(e) and "NoneType" in str(e), e
        assert board.connection_state == "disconnected"
