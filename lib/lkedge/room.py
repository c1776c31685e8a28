"""The asyncio adapter: a Room joined through a LINK.md transport.

All protocol logic lives in the sans-I/O cores (link, proto, rpc, streams); this module
only moves bytes and events between them and the application:

    transport.read_into(one buffer) -> link.FrameReader -> proto.PacketDecoder
        -> rpc_caller.RpcClient / rpc.RpcServer / streams.IncomingStreams -> readers, handlers

Two tasks run per connection: the link reader (everything incoming, in order) and
the timer (RPC deadlines and keepalive PINGs). Both run on MicroPython's asyncio and
CPython's; waits are Events, never Futures.
"""
import asyncio
import gc

from . import cbor, link, load, proto, rpc, streams, utf8
from .clock import now_ms, wait_for
from .config import RoomOptions
from .consts import (ATTR_RPC_REQUEST_ID, CAP_COMPRESSION_DEFLATE_RAW, COMPRESSION_DEFLATE_RAW,
                     TOPIC_RPC_REQUEST, TOPIC_RPC_RESPONSE)
from .participant import _MP, LocalParticipant, RemoteParticipant, _awaiting, is_awaitable
from .readers import ByteStreamReader, TextStreamReader
from .sender import HEADER_ROOM, PacketSender

class ConnectError(Exception):
    """connect() failed: transport error, refused token (LEAVE code), or no JOINED."""

    def __init__(self, message, leave_code=None):
        super().__init__(message)
        self.leave_code = leave_code


_UNREGISTER = object()
_NO_HEAP = object()   # attributes_dropped: not for max_values, for want of heap (_announced_leanly)
# Free heap advertise_compression=None wants beside the inflate window at Room(): joining
# takes ~12 KiB on a board, a call or stream ~5 KiB more.
_HEADROOM = 24576
_UNTRACKED_MAX = 64   # participants not held whose leaving is still told apart


_EVENTS = ("participant_connected", "participant_disconnected", "participant_updated", "reconnecting",
           "reconnected", "disconnected")


def _dropped_warn(reader, sender):
    _warn("stream %s from %r dropped %s (read it to its end there or in a task that starts at once; "
          "reader.cancel() drops one on purpose)"
          % (reader.info.stream_id, sender, "part-read: its handler returned before its end"
             if reader._claimed else "unread: its handler returned without reading it"))


def _warn(msg):
    print("lkedge:", msg)


def _cost_of(attrs):
    """What a participant's attributes count against max_attributes: their UTF-8
    bytes plus 32 per key and per value, as max_values counts."""
    n = 0
    for k in attrs:
        n += len(utf8.encoded(k)) + len(utf8.encoded(attrs[k])) + 64   # no copy on a board
    return n


class Room:
    """A participant's view of one room (names follow the LiveKit Python SDK)."""

    def __init__(self, options=None):
        self.options = options or RoomOptions()
        o = self.options
        self.name = ""
        self.sid = ""
        self.server_version = ""
        self.max_frame = o.max_frame
        self.remote_participants = {}
        self._attributes_held = 0   # what remote_participants' attributes cost (max_attributes)
        # hashes of participants announced past max_participants, not held (small ints:
        # no string kept); past _UNTRACKED_MAX, None stands for "some more", till a rejoin
        self._untracked = set()
        self._before_loss = None    # remote_participants when the link was lost (_joined_anew)
        self.local_participant = LocalParticipant(self)
        self.connection_state = "disconnected"
        self.leave_code = None
        self.leave_reason = ""
        self._text_handlers = {}
        self._byte_handlers = {}
        self._listeners = {}
        self._sender = PacketSender(min(o.piece_size, 4096) + HEADER_ROOM)
        self._rpc_client = None  # rpc_caller.RpcClient, made by the first call (lkedge.calls)
        self._rpc_server = rpc.RpcServer()
        adv = o.advertise_compression
        inf = None   # lkedge.inflate, imported only by a Room that may advertise inflating
        if adv is not False:
            try:
                inf = load("inflate")
            except ImportError:  # a board may ship without the inflater
                pass
        can_inflate = inf is not None and inf.available()
        if adv is None:
            adv = can_inflate
        # LINK.md: advertise the capability only with the memory to inflate. Left to
        # the Room (None), also with room to spare beside the window: a board that
        # advertised with 4.7 KiB left dropped packets and lost its link reader.
        can_inflate = adv and can_inflate and inf.reserve(o.piece_size)
        if can_inflate and o.advertise_compression is None and hasattr(gc, "mem_free"):
            gc.collect()
            if gc.mem_free() < _HEADROOM:
                inf._release()
                can_inflate = False
        self.can_inflate = bool(can_inflate)
        self._incoming = streams.IncomingStreams(
            self._has_handler, max_streams=o.max_streams, can_inflate=self.can_inflate,
            max_inflated=o.max_inflated, piece_size=o.piece_size, evict_idle_ms=o.evict_idle_ms,
            max_inflate_ratio=o.max_inflate_ratio)
        self._readers = {}
        self._invoking = set()  # Invocations being handled (at most max_rpc_handlers)
        self._deadlines = {}    # buffered handler's inv -> (ms its caller gives up, its task)
        self._timed_out = set()  # invs the timer cancelled for that (LocalParticipant._invoke)
        self._handling = set()  # readers whose stream handler runs (at most max_streams)
        self._lingering = set()  # the two above, of evicted streams still running (_linger)
        self._calls = {}
        self._tasks = []
        self._url = None
        self._token = None
        self._opening = False   # _open_link waits for JOINED
        self._transport = None
        self._joined = asyncio.Event()
        self._timer_wake = asyncio.Event()
        self._closing = False
        self._reader_task = None
        self._timer_task = None
        self._pinger = None  # the last PING's task (_keepalive)
        self._mute = 0       # PING intervals running through which the reader heard nothing
        self._idle = 0       # 1: the reader waits for bytes; 2: it did at the last PING too
        self._dead = None    # why the timer ended a silent link (the reader reports it)
        self._acc = None
        self._acc_n = 0
        self._acc_key = None
        self._skip_frame = False
        self._events = None  # generator of the stream events of the current chunk piece
        self._inline = None  # [stream_id, sender, all in]: compressed inline content as it comes
        self._waited_ms = 0  # the reader task's time waiting for the application (_link_ms)
        self.last_error = None

    # ------------------------------------------------------------------ events
    def on(self, event, callback=None):
        """Register a listener: `room.on("participant_connected", fn)` or as decorator.

        Events: participant_connected(p) (one who joins after us: those already in
        the room are in remote_participants once connect() returns),
        participant_disconnected(p) (one who left, no longer in remote_participants),
        participant_updated(p) (its attributes, capabilities or protocol changed),
        reconnecting() (the link was lost, why in room.last_error; the room rejoins),
        reconnected(), disconnected(reason) (for good: disconnect(), a final LEAVE, or a
        loss without auto_reconnect). Another name (one of the LiveKit SDK's many others,
        such as connection_state_changed) is refused: its listener would never run.
        """
        if event not in _EVENTS:
            raise ValueError("no event %r here: a Room emits %s" % (event, ", ".join(_EVENTS)))

        def reg(fn):
            self._listeners.setdefault(event, []).append(fn)
            return fn
        return reg(callback) if callback is not None else reg

    def off(self, event, callback):
        """Remove a listener on() added (ValueError if it is not one)."""
        self._listeners.get(event, []).remove(callback)

    def _emit(self, event, *args):
        for fn in self._listeners.get(event, ()):
            try:
                r = fn(*args)
                if is_awaitable(r):
                    self._spawn(self._listening(r, event))
            except Exception as e:
                _warn("listener for %s failed: %r" % (event, e))

    async def _listening(self, aw, event):
        """An async listener, its failure reported as a sync one's (not left in a task)."""
        try:
            await aw
        except Exception as e:
            _warn("listener for %s failed: %r" % (event, e))

    def _spawn(self, coro):
        # Finished tasks are dropped at every spawn: each holds ~3 KB on a board.
        self._tasks = [x for x in self._tasks if not x.done()]
        t = asyncio.create_task(coro)
        self._tasks.append(t)
        return t

    # ---------------------------------------------------------- stream handlers
    def register_text_stream_handler(self, topic, handler):
        """`handler(reader, participant_identity)`; sync or async. One per topic."""
        self._stream_handler(self._text_handlers, topic, handler)

    def register_byte_stream_handler(self, topic, handler):
        self._stream_handler(self._byte_handlers, topic, handler)

    def unregister_text_stream_handler(self, topic):
        self._stream_handler(self._text_handlers, topic, _UNREGISTER)

    def unregister_byte_stream_handler(self, topic):
        self._stream_handler(self._byte_handlers, topic, _UNREGISTER)

    @staticmethod
    def _stream_handler(table, topic, handler):
        """Register `handler` for `topic` in `table`, or unregister (_UNREGISTER)."""
        if not isinstance(topic, str):
            raise load("misuse")._wrong_type("a stream topic is a str", topic)
        if topic in (TOPIC_RPC_REQUEST, TOPIC_RPC_RESPONSE):
            raise ValueError("topic %r is reserved for RPC; it cannot be (un)registered" % topic)
        if handler is _UNREGISTER:
            table.pop(topic, None)
        elif not callable(handler):
            raise load("misuse")._wrong_type("a stream handler must be callable", handler)
        elif topic in table:
            raise ValueError("a stream handler for topic %r is already registered" % topic)
        else:
            table[topic] = handler

    def _has_handler(self, kind, topic):
        if topic in (TOPIC_RPC_REQUEST, TOPIC_RPC_RESPONSE):
            return kind == "text"
        return topic in (self._text_handlers if kind == "text" else self._byte_handlers)

    # -------------------------------------------------------------- connection
    async def connect(self, url, token, options=None):
        """Join the room at `url` (tcp://, tls://, ws://, wss://, or a Transport).

        `token`: a str, or a function returning one, called at every join (this one and
        each rejoin after a link loss), so that a long-lived participant that can mint
        tokens never rejoins with an expired one.
        Raises ConnectError with the relay's LEAVE code when the token is refused.
        """
        if self.connection_state != "disconnected":
            raise ConnectError("already %s: disconnect() first" % self.connection_state)
        if options is not None:
            self.options = options
        if self._timer_task is not None:
            self._timer_task.cancel()  # the last connection's, ended by a final LEAVE
        self._url = url
        self._token = token
        self._closing = False
        self._before_loss = None  # a fresh room: its first JOINED announces nobody
        await self._open_link()
        self._timer_task = asyncio.create_task(self._timer_loop())

    def _make_transport(self):
        if not isinstance(self._url, str):
            return self._url  # a ready Transport object (tests, memroom)
        return load("transport").open_transport(self._url, **self.options.transport_options)

    async def _open_link(self):
        self.connection_state = "connecting"
        self.leave_code = None
        token = self._token
        try:
            if callable(token):
                token = token()
                if is_awaitable(token):   # an async def minting function
                    token = await (_awaiting(token) if _MP else token)
        except BaseException as e:   # cancelled too: a room left "connecting" refuses connect()
            self.connection_state = "disconnected"
            if not isinstance(e, Exception):
                raise
            raise ConnectError("the token function failed: %r" % (e,))
        if not isinstance(token, str):
            self.connection_state = "disconnected"
            raise ConnectError("a token is a str (or a function returning one), not %s" % type(token).__name__)
        try:
            t = self._make_transport()
        except Exception as e:  # a malformed URL: nothing was opened
            self.connection_state = "disconnected"
            raise ConnectError("bad relay URL: %s" % (e,))
        self._transport = t
        self._sender.transport = t
        self._joined = asyncio.Event()
        self._dead = None
        self._mute = self._idle = 0
        join = {"v": link.LINK_VERSION, "token": token,
                "client_protocol": self.options.client_protocol,
                "capabilities": [CAP_COMPRESSION_DEFLATE_RAW] if self.can_inflate else [],
                "sdk": self.options.sdk, "sdk_version": _version()}
        waiting = False
        # While set, a link that ends is this attempt's failure, reported below, even
        # after JOINED (a JOINED and a LEAVE in one read): no rejoin starts behind it.
        self._opening = True
        try:
            await t.connect()   # bounded by the transport's own timeout_ms
            waiting = True
            await wait_for(self._join_link(t, join), self.options.join_timeout_ms / 1000)
        except BaseException as e:
            # Also when cancelled: no link may stay open behind us, and a room left
            # "connecting" would refuse every later connect().
            self._opening = False
            self.connection_state = "disconnected"
            await self._drop_transport()
            if waiting and isinstance(e, asyncio.TimeoutError):
                raise ConnectError("no JOINED from the relay within %d ms" % self.options.join_timeout_ms)
            if isinstance(e, MemoryError):   # not the relay's doing (the transport passes it on)
                raise ConnectError("out of memory while joining: %s" % (e,))
            if isinstance(e, Exception):  # connecting or writing the JOIN failed
                raise ConnectError("cannot reach the relay at %s: %s" % (self._url, _cause(e)))
            raise
        self._opening = False
        if self.connection_state != "connected" or self._reader_task.done():
            code = self.leave_code
            self.connection_state = "disconnected"
            await self._drop_transport()
            if code is None:
                raise ConnectError("the link closed while joining: %s" % self.last_error)
            if code == 3 and not callable(self._token):   # LEAVE_UNAUTHORIZED, "token expired" say
                raise load("misuse")._token_refused(self.leave_reason)
            raise ConnectError("the relay refused to join: LEAVE %s %s" % (code, self.leave_reason), code)

    async def _join_link(self, t, join):
        # Under join_timeout_ms with the wait for JOINED: a relay that never reads its
        # link may not take even the JOIN, and connect() must still end.
        # The reader's buffers here: a MemoryError is this attempt's, said as such (in the
        # reader's task it was lost, and connect() waited for the JOINED that had come)
        o = self.options
        buf, dec = memoryview(bytearray(o.read_buffer)), proto.PacketDecoder(o.max_field, o.max_values)
        await self._sender.send_frame(link.JOIN, cbor.dumps(join))
        self._reader_task = asyncio.create_task(self._reader_loop(t, buf, dec))
        await self._joined.wait()

    async def disconnect(self, *, reason=None):
        """Leave the room: LEAVE 1 to the relay, pending calls fail, tasks stop.
        `reason` (as in the LiveKit SDK, which takes its enum) is the LEAVE's reason
        text and the disconnected event's; default "client initiated"."""
        reason = "client initiated" if reason is None else str(reason)
        self._closing = True
        was = self.connection_state
        t = self._transport
        # Cancelled meanwhile, it still leaves (the link closed, tasks stopped, calls
        # failed), then the cancel goes on: a Room half left would refuse connect().
        old = None
        try:
            if t is not None and self.connection_state == "connected":
                try:  # also finishing the LEAVE if the bound below cuts it: ~4 s in all
                    old, t._timeout_ms = t._timeout_ms, 2000
                except AttributeError:   # a transport of one's own
                    pass
                try:  # bounded: on a link that does not drain, disconnect() must still end
                    await wait_for(self._sender.send_frame(
                        link.LEAVE, cbor.dumps({"code": link.LEAVE_CLIENT, "reason": reason[:200]})), 2)
                except Exception:
                    pass
        finally:
            if old is not None:
                t._timeout_ms = old   # (a transport passed in may be connected again)
            try:
                await self._drop_transport()
            finally:
                # Taken before _fail_everything: the listeners it starts must run, not be cancelled.
                tasks = [self._timer_task, self._reader_task, self._pinger] + self._tasks
                self._tasks = []
                self._fail_everything("disconnected")
                self._before_loss = None
                me = asyncio.current_task()  # a handler calling disconnect() goes on (MicroPython
                for task in tasks:           # cannot cancel the running task: RuntimeError)
                    if task is not None and task is not me and not task.done():
                        task.cancel()
                self._invoking = set()  # a task cancelled before it started never says it ended
                self._deadlines = {}
                self._timed_out = set()
                self._handling = set()
                self._lingering = set()
                self.connection_state = "disconnected"
                if was != "disconnected":
                    self._emit("disconnected", reason)

    async def _drop_transport(self):
        t = self._transport
        self._transport = None
        self._sender.transport = None
        if t is not None:
            try:
                await t.close()
            except Exception:
                pass

    def _fail_everything(self, why):
        if self._rpc_client is not None:
            err = rpc.RpcError(rpc.RpcError.RECIPIENT_DISCONNECTED, None, "link lost: " + why)
            for c in self._rpc_client.fail_all(err):
                self._complete(c)
        for ev in self._incoming.close_all("link lost: " + why):
            self._stream_ended(ev)
        for r in list(self._readers.values()):
            r._end(streams.StreamError("abnormal end: link lost"))
        self._readers = {}
        # No event per participant here (as in the LiveKit SDKs): the rejoin's JOINED
        # tells who left and who came meanwhile (_joined_anew).
        self._before_loss = self.remote_participants
        self.remote_participants = {}
        self._attributes_held = 0
        self._untracked = set()

    async def _link_lost(self, why):
        if self._closing:
            return
        self.connection_state = "reconnecting"
        self.last_error = why
        await self._drop_transport()
        self._fail_everything(why)
        # As in the LiveKit SDKs: "disconnected" only when the room is gone for good; a
        # link loss it rejoins after is "reconnecting" (why: room.last_error).
        if not self.options.auto_reconnect or self.leave_code in link.FINAL_LEAVE:
            self.connection_state = "disconnected"
            self._before_loss = None
            self._emit("disconnected", why)
            return
        self._emit("reconnecting")
        delay = self.options.reconnect_min_ms
        while not self._closing:
            await asyncio.sleep_ms(_jitter(delay)) if hasattr(asyncio, "sleep_ms") else await asyncio.sleep(_jitter(delay) / 1000)
            try:
                await self._open_link()
                self._emit("reconnected")
                return
            except Exception as e:   # MemoryError too: the loop must go on retrying
                self.last_error = str(e)
                if getattr(e, "leave_code", None) in link.FINAL_LEAVE:
                    self.connection_state = "disconnected"
                    self._emit("disconnected", str(e))
                    return
                # _open_link left "disconnected": still trying, so connect() is refused
                self.connection_state = "reconnecting"
            delay = min(delay * 2, self.options.reconnect_max_ms)

    # ----------------------------------------------------------- reader task
    async def _reader_loop(self, t, buf, dec):
        why = "the link closed without a LEAVE (the relay stopped, or the connection was cut)"
        self._events = None  # _decoded's pending stream events belong to this task
        self._inline = None
        first = True
        cancelled = False
        try:
            fr = link.FrameReader(max(self.options.max_frame, 16384))
            while True:
                self._idle = 1
                n = await t.read_into(buf)
                self._idle = 0
                if not n:
                    break
                if first and bytes(buf[:5]) == b"HTTP/":
                    # an HTTP server's answer to our JOIN frame: said as such, not as a
                    # relay that closed the link (a board's log is all its user sees)
                    why = "%s answers HTTP: a web (HTTP or WebSocket) port, not a relay's link port" % self._url
                    break
                first = False
                fr.receive(buf[:n])
                while True:
                    ev = fr.next_event()
                    if ev == link.NEED_DATA:
                        break
                    kind = ev[0]
                    if kind == link.DATA_PIECE:
                        if not self._skip_frame:
                            dec.receive(ev[1])
                            # Here, not in a coroutine of its own: this runs for every
                            # piece, and on a board every coroutine is garbage to collect.
                            while True:
                                try:
                                    aw = self._decoded(dec)
                                    if aw is None:
                                        break
                                    w0, t0 = self._waited_ms, now_ms()
                                    try:
                                        await aw
                                    finally:   # nested counts (_stream_events) are inside this
                                        self._waited_ms = w0 + now_ms() - t0
                                        # A finished coroutine keeps its locals (a v1
                                        # request's 15 KB payload, twice) until dropped:
                                        # not until the next packet comes.
                                        aw = None
                                except (ValueError, MemoryError) as err:
                                    # ProtoError, bad UTF-8, a bad header, or no heap
                                    # for this packet: it alone is dropped
                                    self._skip_frame = True  # this packet only
                                    self._events = None
                                    self._acc = None
                                    await self._dropped(dec.msg, err)
                                    break
                    elif kind == link.DATA_START:
                        if self.connection_state != "connected":
                            raise link.LinkError("DATA before JOINED")
                        self._skip_frame = False
                        self._acc_key = None
                        self._acc = None
                        dec.start(ev[1])
                    elif kind == link.FRAME:
                        try:
                            await self._on_control(ev[1], ev[2])
                        except MemoryError:
                            if ev[1] != link.JOINED and ev[1] != link.PARTICIPANT:
                                raise
                            # The link stays: a rejoin would meet the same frame.
                            gc.collect()
                            self._announced_leanly(ev[1], ev[2])
                        if ev[1] == link.JOINED:
                            # DATA is streamed, so any frame the relay forwards fits:
                            # up to its max_frame plus the sender stamp it adds.
                            fr.max_frame = max(fr.max_frame, self.max_frame + link.STAMP_ROOM)
                        elif ev[1] == link.LEAVE:
                            why = "LEAVE %s %s" % (self.leave_code, self.leave_reason)
                            return
        except asyncio.CancelledError:
            if self._dead is None:
                # from outside (asyncio.run ending, a shutdown): no rejoin task behind
                # it, which the closing loop would destroy pending
                cancelled = True
                raise
            why = self._dead  # the timer ended a link that went silent (_timer_loop)
        except Exception as e:
            why = "link error: %r" % (e,)
        finally:
            if self._transport is t:
                # Still joining (a LEAVE before JOINED sets _joined too; or JOINED and a
                # LEAVE came in one read): connect() reports it; a rejoin task started
                # here would outlive the failed connect(), or run beside the rejoin loop.
                if self._opening or self.connection_state != "connected":
                    self.last_error = why
                    self._joined.set()  # wake connect(): it reports the failure
                elif cancelled:
                    pass   # a loop going on has the timer: its _keepalive finds this task done
                else:
                    self._reader_task = None   # the rejoin is this task's: not _keepalive's
                    try:
                        self._spawn(self._link_lost(why))
                    except MemoryError:
                        # The heap ran out (what ended the link, often): this task's
                        # frames are garbage by now, so collect and try once more, or
                        # the Room would stay "connected" with nobody reading the link.
                        gc.collect()
                        self._spawn(self._link_lost(why))

    def _decoded(self, dec):
        """What the reader task awaits next for the packet being decoded, or None when
        the decoder needs data. Synchronous: chunk content goes to its reader here and
        only the reader's Event is awaited. Raises ValueError to drop the packet."""
        while True:
            events = self._events
            if events is not None:  # a generator of one chunk piece's stream events
                try:
                    ev = next(events)   # (next() has no default argument on every port)
                except StopIteration:
                    self._events = None
                    continue
                aw = self._stream_event(ev)
                if aw is not None:
                    return aw
                continue
            e = dec.next_event()   # ProtoError: the reader task drops the packet
            if e == proto.NEED_DATA:
                return None
            if e[0] != proto.PIECE:
                return self._on_packet(e[1])
            if e[1] == proto.K_CHUNK_CONTENT:
                msg = dec.msg
                ch = msg.get("stream_chunk") or {}
                if self._acc_key == e[1] or "stream_id" not in ch or "chunk_index" not in ch and self._late_index(ch):
                    # content before its stream_id, or before a chunk_index that cannot
                    # be the 0 it would be when absent (WIRE.md: fields come in any
                    # order; no official serializer does this): held, within max_frame,
                    # and routed at the packet's end (_on_packet)
                    self._gather(dec, e[1], e[2], e[3])
                    continue
                evs = self._incoming.chunk(msg.get("participant_identity", ""), ch["stream_id"],
                                           ch.get("chunk_index", 0), e[2], e[3], self._link_ms())
            elif e[1] == proto.K_INLINE_CONTENT and self._acc_key != e[1] and self._inline_streams(dec):
                evs = self._inline_piece(dec, e[2], e[3])
            else:
                if e[1] != proto.K_USER_PAYLOAD:  # UserPackets are not part of this SDK
                    self._gather(dec, e[1], e[2], e[3])
                continue
            if type(evs) is not tuple:
                self._events = evs
            elif evs:  # the usual answer, no event or one: no iterator needed
                aw = self._stream_event(evs[0])
                if aw is not None:
                    return aw

    # A stream header's compressed inline content (up to ~15 KB inflating to up to
    # total_length) goes to its stream as it comes, as chunk content does, instead of
    # being gathered whole beside the 32 KiB window (a board needed ~15 KiB more for a
    # 64 KiB payload sent inline than for 1 MiB sent in chunks). The header's
    # compression field comes after its content on the wire (field 12 after 11), so
    # compression is told from the content being shorter than total_length (a sender
    # compresses inline content only when that makes it shorter); the field itself is
    # checked at the packet's end (_inline_end). Fields may come in any order and the
    # last occurrence wins (WIRE.md), so the stream opens at the content only when
    # nothing can follow it in the header but that field: 0 bytes, or the 2 of
    # compression = 1 when it did not come before (a later topic, kind or stream_id
    # would have routed it elsewhere; official serializers write in field order); and
    # at most 7 bytes of the packet's own after the header: the `sequence` (field 16: 2
    # bytes of tag, up to 5 of value) livekit-client writes there on reliable packets,
    # which changes nothing here (gathering made a board need ~8 KiB more heap for a
    # browser's 64 KiB request deflated to 10 KB than for ours). Anything else there that
    # changed the header (a second stream_header merges into the first) is found at the
    # packet's end and ends the stream with an error (_inline_end).
    # Otherwise, and uncompressed inline content (small), it is gathered.
    def _inline_streams(self, dec):
        """Whether this inline_content piece goes to its stream as it comes: it is the
        stream's (_inline), or the first of a compressed one whose stream can open (not
        a duplicate of an open one: gathered, its header is refused whole, and its
        content never reaches the open stream) and whose header is complete."""
        if self._inline is not None:
            return True
        msg = dec.msg
        h = msg.get("stream_header") or {}
        t = dec._ends[0] - dec._ends[1]   # the packet's own bytes after the header
        n = dec._packet_left() - t
        return ("participant_identity" in msg and "stream_id" in h and dec.big_len < h.get("total_length", 0)
                and (n == 0 or n == 2 and "compression" not in h) and t < 8
                and h.get("compression", COMPRESSION_DEFLATE_RAW) == COMPRESSION_DEFLATE_RAW
                and len(self._incoming.open) < self.options.max_streams and h["stream_id"] not in self._incoming.open)

    def _inline_piece(self, dec, piece, final):
        """The stream events of a piece of compressed inline content (_inline_streams)."""
        st = self._inline
        if st is None:
            msg = dec.msg
            h = dict(msg["stream_header"])
            h["compression"] = COMPRESSION_DEFLATE_RAW
            self._inline = [h["stream_id"], msg["participant_identity"], final, h]
            return self._inline_open(h, msg["participant_identity"], piece, final)
        if st[2]:
            raise ValueError("inline_content twice in one stream header")
        st[2] = final
        return self._incoming.chunk(st[1], st[0], 0, piece, final, self._link_ms())

    def _inline_open(self, h, sender, piece, final):
        yield from self._incoming.header(sender, h, None, self._link_ms())
        yield from self._incoming.chunk(sender, h["stream_id"], 0, piece, final, self._link_ms())

    def _inline_end(self, h):
        """The stream events that end a stream fed from its header's inline content, at
        the packet's end: as its trailer would (the content inflated to the end, its
        length checked, the header's attributes merged), or with an error when the
        header does not say the content is compressed after all, or changed after it."""
        sid, sender, _, opened = self._inline
        self._inline = None
        if h is None or h.get("compression") != COMPRESSION_DEFLATE_RAW:
            return self._incoming.end(sid, streams.StreamError(
                "inline content shorter than total_length but not compressed (DEFLATE_RAW)"))
        if h != opened:   # (its attributes dict is the same object: merged, as they may be)
            return self._incoming.end(sid, streams.StreamError("the stream header changed after its inline content"))
        return self._incoming.trailer(sender, {"stream_id": sid, "attributes": h.get("attributes")})

    def _late_index(self, msg):   # (parameter names are interned on a board: an existing one)
        """Content of the stream_chunk `msg` whose chunk_index is not read yet: absent,
        it is 0, which it cannot be past the stream's first chunk but as a duplicate of
        it (then held too, and found a duplicate at the end): a chunk_index that comes
        after its content."""
        st = self._incoming.open.get(msg["stream_id"])
        return st is not None and st.cur_index == -1 and st.last_index >= 0

    def _stream_event(self, ev):
        """The awaitable for one stream event, or None: data goes to its reader, which
        the reader task then waits on until the application has read it."""
        if isinstance(ev, streams.StreamData):
            r = self._readers.get(ev.info.stream_id)
            if r is not None and r._put(ev.data):
                if r._rid is not None:
                    self._rpc_client._heard(r._rid, now_ms())
                return r._taken.wait()
            if r is not None and r._drop_warn is not None:
                _dropped_warn(r, r._drop_warn)
                r._drop_warn = None
            return None
        return self._on_stream_event(ev)

    def _gather(self, dec, key, mv, final):
        # Small big-fields (v1 payloads <= 15360, inline content <= 15000, error data):
        # gathered once per packet, bounded by the frame size the link accepted.
        # The field's length is known at its first piece: one allocation, no regrowth
        # (growing a bytearray piece by piece fragments a board's heap). A field that
        # occurs again starts over: the last occurrence wins, as in protobuf.
        if self._acc_key != key or self._acc_final:
            if dec.big_len > self.options.max_frame:
                # the relay may forward bigger frames than we hold whole (they stream)
                raise ValueError("a %d-byte field to hold whole, over max_frame %d"
                                 % (dec.big_len, self.options.max_frame))
            self._acc_key = key
            # a byte more than the field: the hole it leaves once taken then fits the
            # bytes (its content plus the terminating zero) a read_all joins it into
            self._acc = bytearray(dec.big_len + 1)
            self._acc_n = 0
        n = self._acc_n
        self._acc[n:n + len(mv)] = mv
        self._acc_n = n + len(mv)
        self._acc_final = final

    def _take_acc(self, key):
        if self._acc_key != key:
            return None
        data = self._acc
        if self._acc_n != len(data):
            data = memoryview(data)[:self._acc_n]
        self._acc = None
        self._acc_key = None
        return data

    async def _on_packet(self, msg):
        sender = msg.get("participant_identity", "")
        if self._inline is not None:   # a header whose content went out as it came
            await self._stream_events(self._inline_end(msg.get("stream_header")))
            return
        if "stream_chunk" in msg:   # its content went out piece by piece, as it came, unless
            ch = msg["stream_chunk"]
            data = self._take_acc(proto.K_CHUNK_CONTENT)
            if data is not None:   # it came before the stream_id: held until now
                await self._stream_events(self._incoming.chunk(
                    sender, ch.get("stream_id", ""), ch.get("chunk_index", 0), memoryview(data), True,
                    self._link_ms()))
            return
        if "stream_header" in msg:
            inline = self._take_acc(proto.K_INLINE_CONTENT)
            await self._stream_events(self._incoming.header(sender, msg["stream_header"], inline,
                                                            self._link_ms()))
        elif "stream_trailer" in msg:
            await self._stream_events(self._incoming.trailer(sender, msg["stream_trailer"]))
        elif "rpc_ack" in msg:
            if self._rpc_client is not None:  # no client: we never called, nothing to ack
                self._rpc_client.on_ack(now_ms(), sender, msg["rpc_ack"].get("request_id", ""))
        elif "rpc_response" in msg:
            resp = msg["rpc_response"]
            data = self._take_acc(proto.K_RPC_RESPONSE_PAYLOAD)
            edata = self._take_acc(proto.K_RPC_ERROR_DATA)
            if self._rpc_client is None:
                return
            # a compressed_payload after the payload is the oneof's case now (the
            # decoder keeps the payload out of msg, so it could not clear it): ignored
            if data is not None and "compressed_payload" not in resp:
                resp["payload"] = _utf8(data)
            if edata is not None and "error" in resp:
                resp["error"]["data"] = _utf8(edata)
            self._complete(self._rpc_client.on_response(now_ms(), sender, resp))
            resp.pop("payload", None)  # the decoder keeps its last msg: do not pin 15 KB
        elif "rpc_request" in msg:
            data = self._take_acc(proto.K_RPC_REQUEST_PAYLOAD)
            payload = _utf8(data) if data is not None else ""
            packets, inv = self._rpc_server.on_request_packet(sender, msg["rpc_request"], payload)
            inv = await self._admit(inv, packets)
            await self._send_all(packets)
            if inv is not None:
                self._invoke(inv, payload)

    async def _dropped(self, msg, err):
        """A packet dropped for `err`: warn, and answer the RPC request it carried (when
        its id was read before the fault) with an error rather than leave the caller to
        time out."""
        sender = msg.get("participant_identity", "")
        why = "DataPacket dropped: %s" % (err,)
        _warn("%s from %r" % (why, sender))
        if self._inline is not None:   # the stream its inline content went to ends with it
            sid = self._inline[0]
            self._inline = None
            await self._stream_events(self._incoming.end(sid, streams.StreamError("abnormal end: %s" % why)))
            return   # (its end answers a call it carried)
        req = msg.get("rpc_request")
        hdr = msg.get("stream_header")
        try:
            if req and req.get("id"):
                await self._send_all([rpc.ack_packet(sender, req["id"]), rpc.error_packet(
                    sender, req["id"], rpc.RpcError(rpc.RpcError.APPLICATION_ERROR, None, why))])
            elif hdr and hdr.get("topic") == TOPIC_RPC_REQUEST:
                await self._send_all(self._rpc_server.on_refused_stream(sender, hdr.get("attributes"), why))
        except MemoryError:
            pass  # no heap even for the answer: the caller's timer will tell it

    # --------------------------------------------------------- stream events
    async def _stream_events(self, events):
        """The stream events of a header or trailer, in order (once per packet; chunk
        pieces take the synchronous path in _decoded)."""
        for ev in events:
            aw = self._stream_event(ev)
            if aw is not None:
                w0, t0 = self._waited_ms, now_ms()
                try:
                    await aw
                finally:
                    self._waited_ms = w0 + now_ms() - t0

    async def _on_stream_event(self, ev):
        """A stream event other than data (see _stream_event)."""
        if isinstance(ev, streams.StreamOpened):
            await self._stream_opened(ev.info)
        elif isinstance(ev, streams.StreamEnded):
            self._stream_ended(ev)
        else:
            hdr = ev.header
            topic = hdr.get("topic") if hdr is not None else None
            if topic == TOPIC_RPC_REQUEST:
                # a request the caller waits for: it gets an error, not a timeout
                await self._send_all(self._rpc_server.on_refused_stream(ev.sender, hdr.get("attributes"), ev.reason))
            elif topic == TOPIC_RPC_RESPONSE and self._rpc_client is not None:
                # the answer to our own call, which we cannot take: the call fails now
                self._complete(self._rpc_client.on_refused_stream(
                    ev.sender, (hdr.get("attributes") or {}).get(ATTR_RPC_REQUEST_ID, ""), ev.reason))
            _warn("stream %s ignored: %s" % (ev.stream_id, ev.reason))

    def _stream_ended(self, ev):
        r = self._readers.pop(ev.info.stream_id, None)
        if r is not None:
            r._end(ev.error)
            if ev.evicted:
                self._linger(r)

    def _link_ms(self):
        """The clock of stream silence (evict_idle_ms): now_ms() less the time the link
        reader waited for the application to take what it had read. Meanwhile nothing
        is read, so no sender can be heard: a slow handler must not make the streams
        queued behind it look silent."""
        return now_ms() - self._waited_ms

    def _linger(self, r):
        """Reader r's stream gave way to a new one (evict_idle_ms): its handler or RPC
        call learns it at its next read, and until it returns it lingers, no longer
        counted in max_streams or max_rpc_handlers, so that what evicted it can run
        now. At most max_streams linger at once (handlers that ignore the error); past
        that the slot stays taken and the new stream or request is refused."""
        if len(self._lingering) >= self.options.max_streams:
            return
        for slots, item in ((self._handling, r), (self._invoking, r._inv)):
            if item is not None and item in slots:
                slots.discard(item)
                self._lingering.add(item)

    async def _stream_opened(self, info):
        topic = info.topic
        sender = info.sender_identity
        if topic == TOPIC_RPC_REQUEST:
            packets, inv = self._rpc_server.on_request_stream(sender, info.attributes)
            inv = await self._admit(inv, packets)
            await self._send_all(packets)
            if inv is not None:
                self._invoke(inv, None, self._new_reader(info))
            return
        if topic == TOPIC_RPC_RESPONSE:
            req_id = info.attributes.get(ATTR_RPC_REQUEST_ID, "")
            c = self._rpc_client
            call = c.accept_response_stream(sender, req_id, now_ms()) if c is not None else None
            waiter = self._calls.get(req_id) if call is not None else None
            if waiter is not None:
                waiter.attach_reader(self._new_reader(info), self)
            return
        table = self._text_handlers if info.kind == "text" else self._byte_handlers
        handler = table.get(topic)
        if handler is None:
            return
        n = self.options.max_streams
        # Handlers whose streams have ended need nothing more from the link. Those done
        # but for their last steps get a few loop turns to return (this task takes
        # packets from its buffer without yielding); while one whose stream ended well
        # holds a slot (writing what it read to flash, say), a stream arriving waits up
        # to 2 s for a slot, as the link waits for a slow reader, rather than be dropped
        # (a sender of files one after another would lose all but max_streams). Not for
        # handlers still reading (their data may be behind this header), nor for long
        # for those of failed or evicted streams (which may ignore the error).
        t = now_ms() + 2000
        i = 0
        while len(self._handling) >= n and now_ms() < t:
            for r in self._handling:
                if r._ended and (i < 4 or r._error is None):
                    break
            else:
                break
            await asyncio.sleep(0 if i < 4 else 0.01)
            i += 1
        if len(self._handling) >= n and len(self._lingering) < n:
            # one sender's streams holding most handler slots give one up (_evict_hog;
            # only while it can linger, or the slot would not be freed)
            for ev in self._incoming._evict_hog(sender, [r.info.stream_id for r in self._handling]):
                self._stream_ended(ev)
        if len(self._handling) >= n:
            # A handler holds its stream's memory until it returns: inline streams and
            # slow handlers must not add up past max_streams. Its data is dropped.
            _warn("stream %s from %r dropped: %d stream handlers still running (max_streams)"
                  % (info.stream_id, sender, n))
            return
        reader = self._new_reader(info)
        self._handling.add(reader)
        try:
            self._spawn(self._run_stream_handler(handler, reader, sender))
        except BaseException:
            self._handling.discard(reader)
            raise

    async def _admit(self, inv, packets):
        """inv if a handler may run it now, else None with the error answer added to
        packets: every request costs a task and its state, so a flood of calls must
        not take a board's memory. (The reader task alone admits, one packet at a
        time, so counting at _invoke, after the ack went out, cannot overshoot.)"""
        if inv is None:
            return None
        n = self.options.max_rpc_handlers
        # Handlers done but for their last steps end first: this task takes packets
        # from its buffer without yielding, so a burst of quick calls would otherwise
        # be refused by handlers that only wait for their turn to run.
        for _ in range(4):
            if len(self._invoking) < n:
                break
            await asyncio.sleep(0)
        if len(self._invoking) >= n and len(self._lingering) < self.options.max_streams:
            # request streams that went silent give way, as streams do for stream slots
            # (only those that hold a slot: ending another frees nothing)
            held = [sid for sid, r in self._readers.items() if r._inv in self._invoking]
            for ev in self._incoming.evict_idle(self._link_ms(), held, "%d RPC handler slots" % n):
                self._stream_ended(ev)
            if len(self._invoking) >= n:   # or one caller's, holding most of them
                for ev in self._incoming._evict_hog(inv.caller_identity, held, n):
                    self._stream_ended(ev)
        if len(self._invoking) >= n:
            packets.append(self._rpc_server.error_response(inv, rpc.RpcError(
                rpc.RpcError.APPLICATION_ERROR, "Too many concurrent RPC requests",
                "%d requests are being handled (RoomOptions.max_rpc_handlers)" % n)))
            return None
        return inv

    def _invoke(self, inv, payload, reader=None):
        """Run inv's handler as a task, counted in _invoking until it ends."""
        self._invoking.add(inv)
        if reader is not None:
            reader._inv = inv   # an eviction of its stream frees the slot (_linger)
        try:
            self._spawn(self.local_participant._invoke(inv, payload, reader))
        except BaseException:
            self._invoking.discard(inv)   # the task never ran: nobody else would
            raise

    def _new_reader(self, info):
        r = TextStreamReader(info) if info.kind == "text" else ByteStreamReader(info)
        self._readers[info.stream_id] = r
        return r

    async def _run_stream_handler(self, handler, reader, sender):
        try:
            r = handler(reader, sender)
            if is_awaitable(r):
                await (_awaiting(r) if _MP else r)
            else:
                # The LiveKit SDK idiom: a sync handler hands the reader to a task it
                # creates, which runs before this one goes on. If that task has begun to
                # read, the reader is its own until the stream ends or it cancels; the
                # stream keeps its slot meanwhile. Else it is abandoned, as an async
                # handler's is when it returns.
                await asyncio.sleep(0)
                task = reader._claimed
                if task is not None and task is not asyncio.current_task():
                    reader._done = done = asyncio.Event()
                    while not (reader._abandoned or reader._ended or task.done()):
                        try:  # a task that died without ending its read frees the link too
                            await wait_for(done.wait(), 1)
                        except asyncio.TimeoutError:
                            pass
        except Exception as e:
            try:   # with its traceback, as an RPC handler's failure
                load("misuse")._stream_handler_failed(reader.info.topic, sender, e)
            except MemoryError:   # no heap to load that: the line alone
                _warn("stream handler for %r failed: %r" % (reader.info.topic, e))
            reader._abandon()
        finally:
            self._handling.discard(reader)
            self._lingering.discard(reader)
            # LiveKit's readers queue what comes; ours hand it over when read, so what
            # nobody read is gone: said, not silent (cancel() says "on purpose")
            if not (reader._abandoned or reader._ended and reader._data is None):
                if reader._claimed and reader._data is None:
                    reader._drop_warn = sender   # read up to now: more may come, or not
                else:
                    _dropped_warn(reader, sender)
            reader._abandon()

    # ------------------------------------------------------------ control
    async def _on_control(self, ftype, body):
        if ftype == link.PING:
            await self._sender.send_frame(link.PONG, body)
            return
        if ftype == link.PONG:
            return
        if ftype == link.JOINED and self._joined.is_set():   # (a new Event per link)
            # before decoding: the low-heap path (_announced_leanly) must not take it
            # either; it would change our identity and drop everyone without an event
            raise link.LinkError("a second JOINED on one link")
        # Participant maps are budgeted as DataPackets are (their attributes come from
        # operators' tokens): one over max_values is announced without its attributes.
        d = link.decode_control(body, self.options.max_values, self.options.max_attributes)
        if ftype == link.JOINED:
            self._on_joined(link.check_joined(d))
        elif ftype == link.PARTICIPANT:
            self._upsert(link.participant_info(d))
        elif ftype == link.PARTICIPANT_LEFT:
            # its identity a text string, as PARTICIPANT's: a list or a map was a
            # TypeError that ended the link, a number was taken for nobody
            self._participant_left(link._get(d, "PARTICIPANT_LEFT", "identity", "text"))
        elif ftype == link.LEAVE:
            self.leave_code = d.get("code")
            self.leave_reason = d.get("reason", "")
            if not self._joined.is_set():
                self._joined.set()

    def _announced_leanly(self, ftype, body):
        """JOINED or PARTICIPANT that the heap could not hold as read: read again
        without attributes (walked, not built: each participant kept as past max_values);
        if that fails too, the participants are not held (as past max_participants:
        streams go to everyone as to v1 peers, calls to them fail 1401 until the relay
        announces them again), and JOINED joins all the same."""
        try:
            d = link.decode_control(body, 0)
            if ftype == link.JOINED:
                d = link.check_joined(d)
                for p in d["participants"]:
                    p["attributes_dropped"] = _NO_HEAP
                self._on_joined(d)
            else:
                d = link.participant_info(d)
                d["attributes_dropped"] = _NO_HEAP
                self._upsert(d)
            return
        except MemoryError:
            gc.collect()
        if ftype == link.JOINED:
            self.remote_participants = {}   # freed before reading again: what the tries before made
            d = cbor.loads(body, 0, "participants")
            d["participants"] = []
            self._on_joined(link.check_joined(d))
        self._untracked.add(None)
        _warn("a participant announcement dropped: no heap to read it")

    def _on_joined(self, d):
        self.name = d["room"]   # (LINK.md's JOINED has no room sid: Room.sid stays "")
        self.server_version = d.get("server_version", "")
        self.max_frame = d.get("max_frame", self.max_frame)
        self._sender.max_frame = self.max_frame
        lp = self.local_participant
        lp.identity = d["identity"]
        lp.sid = d.get("sid", "")
        self.remote_participants = {}
        self._attributes_held = 0
        self._untracked = set()
        for p in d["participants"]:   # normalised by check_joined
            self._upsert(p, False)
        self._joined_anew()
        self.connection_state = "connected"
        self._joined.set()

    def _joined_anew(self):
        """After a rejoin: participant_disconnected for those gone meanwhile,
        participant_connected for those new (the ones still here were never gone)."""
        before, self._before_loss = self._before_loss, None
        if before is not None:
            for ident, p in before.items():
                if ident not in self.remote_participants:
                    self._emit("participant_disconnected", p)
            for ident, p in self.remote_participants.items():
                if ident not in before:
                    self._emit("participant_connected", p)

    def _upsert(self, info, _announce=True):
        ident = info["identity"]
        if ident == self.local_participant.identity:
            # LINK.md announces everyone else: a relay that announced us too would make
            # us a remote participant of our own (LiveKit's SDKs never list themselves)
            _warn("the relay announced this participant, %r, as another: ignored" % ident)
            return
        p = self.remote_participants.get(ident)
        old = p._attributes_cost if p is not None else 0
        cost = 0
        why = info.get("attributes_dropped")
        if why is _NO_HEAP:
            _warn("participant %r kept without its attributes: no heap to read them" % ident)
        elif why:   # while decoding: one, or all of JOINED's
            _warn("participant %r kept without its attributes (dropped): with them it "
                  "would hold over %d bytes of values (RoomOptions.max_values; 32 more "
                  "per value), or the frame's participants over max_attributes %r"
                  % (ident, self.options.max_values, self.options.max_attributes))
        else:
            cost = _cost_of(info["attributes"])
            cap = self.options.max_attributes
            if cap is not None and self._attributes_held - old + cost > cap:
                _warn("participant %r kept without its attributes (dropped): the room's "
                      "participants would hold over %d bytes of attributes "
                      "(RoomOptions.max_attributes; 32 more per key and value)" % (ident, cap))
                info = dict(info, attributes={}, attributes_dropped=True)
                cost = 0
        if p is None:
            if self._crowded(ident):
                return
            p = RemoteParticipant(info)   # allocated before anything is counted: a
            self.remote_participants[ident] = p   # MemoryError leaves the counts right
            self._untracked.discard(hash(ident))   # held now, if it was not before
            self._attributes_held += cost
            if _announce:
                self._emit("participant_connected", p)
        else:
            p._update(info)
            self._attributes_held += cost - old
            if _announce:
                self._emit("participant_updated", p)
        p._attributes_cost = cost   # as counted: later edits of p.attributes change nothing

    def _crowded(self, identity):
        """True when a newcomer would pass max_participants: it is not held (its calls
        and streams are served all the same; recipients() counts it as a v1 peer)."""
        cap = self.options.max_participants
        if cap is None or len(self.remote_participants) < cap:
            return False
        if not self._untracked:
            _warn("participant %r not held: the room has more than max_participants=%d others "
                  "(calls to such a participant fail with 1401; streams to everyone go uncompressed)"
                  % (identity, cap))
        # again on a change: a set counts it once; past counting, None (never discarded)
        self._untracked.add(hash(identity) if len(self._untracked) < _UNTRACKED_MAX else None)
        return True

    def _participant_left(self, identity):
        for inv in self._invoking:
            if inv.caller_identity == identity:
                # Its answer can reach nobody: a streamed answer stops at its next piece
                # (LocalParticipant._respond), freeing the slot and the link. Not a
                # cancel: one inside a frame write would end the link for everyone.
                inv._gone = True
        p = self.remote_participants.pop(identity, None)
        if p is None:
            self._untracked.discard(hash(identity))
        if p is not None:
            self._attributes_held -= p._attributes_cost
        if self._rpc_client is not None:
            for c in self._rpc_client.on_participant_left(identity):
                self._complete(c)
        for ev in self._incoming.participant_left(identity):
            self._stream_ended(ev)
        if p is not None:
            self._emit("participant_disconnected", p)

    # -------------------------------------------------------------- timers
    async def _timer_loop(self):
        last_ping = now_ms()
        interval = self.options.ping_interval_ms
        soon = False
        while not self._closing:
            now = now_ms()
            client = self._rpc_client
            deadline = client.next_deadline() if client is not None else None
            wake = last_ping + interval
            if deadline is not None and deadline < wake:
                wake = deadline
            if soon and now + 100 < wake:
                wake = now + 100  # a handler's cancel waits for a frame to be whole (each wait is garbage on a board)
            if wake > now:
                self._timer_wake.clear()
                try:
                    await wait_for(self._timer_wake.wait(), (wake - now) / 1000)
                except asyncio.TimeoutError:
                    pass
            now = now_ms()
            if client is not None:
                for c in client.handle_timer(now):
                    self._complete(c)
            soon = False
            if self._deadlines:  # checked at least every ping interval: late is fine
                s = self._sender
                for inv, (at, task) in list(self._deadlines.items()):
                    if at is None and s._stop_after_frame is not task:
                        del self._deadlines[inv]   # stopped at its next frame (or ended)
                    elif at is None or now >= at:
                        self._timed_out.add(inv)
                        # A transport that says what it wrote (t.sent: tcp, tls, ws)
                        # lets the sender finish a frame a cancel lands in. On others,
                        # never while a frame is being written: the cancel would land
                        # in it (the handler's own write, or a sub-task's it awaits via
                        # wait_for/gather) and half a frame ends the link for everyone.
                        # The handler's own: it stops at the start of its next frame
                        # (PacketSender), where its sender knows what went out; if it
                        # sends no more, the cancel comes once no frame is under way.
                        if s._in_frame is not None and getattr(s.transport, "sent", None) is None:
                            if s._in_frame is task:
                                s._stop_after_frame = task
                                self._deadlines[inv] = (None, task)
                            soon = True
                            continue
                        del self._deadlines[inv]
                        if s._stop_after_frame is task:
                            s._stop_after_frame = None
                        task.cancel()
            if now - last_ping >= interval:
                last_ping = now
                if self.connection_state == "connected":
                    self._keepalive()

    def _keepalive(self):
        """One PING per interval, in a task of its own: the timer must not wait on a link
        that does not drain. The relay answers every PING, so the link is dead (a NAT or
        Wi-Fi gone without a close, the relay's host down) when the reader waited for
        bytes through two whole intervals and none came (LINK.md: losing the link fails
        everything pending, then rejoin). A reader held up by the application (a handler
        not reading its stream) is no sign: the relay judges that one (LEAVE 6)."""
        rt = self._reader_task
        if rt is not None and rt.done():
            # It ended without starting the rejoin (no heap left even for that task):
            # "connected" with nobody reading the link would be for good.
            self._spawn(self._link_lost(self.last_error or "the link reader stopped"))
            return
        silent = self._idle == 2
        if self._idle:
            self._idle = 2
        self._mute = self._mute + 1 if silent else 0
        if self._mute >= 2 and rt is not None:
            self._mute = 0
            self._dead = "no PONG from the relay in %d ms: the link is dead" % (2 * self.options.ping_interval_ms)
            rt.cancel()
        elif self._pinger is None or self._pinger.done():
            self._pinger = asyncio.create_task(self._ping())

    async def _ping(self):
        try:
            await self._sender.send_frame(link.PING, b"k")
        except Exception:
            pass  # the link failed: the reader reports it

    def _wake_timer(self):
        self._timer_wake.set()

    # -------------------------------------------------------------- sending
    def _send(self, pkt):
        # Only once JOINED: DATA before it is a protocol error for the relay, and a send
        # racing a rejoin would fail on the transport being connected and close it, over
        # and over: an application that sends all the time never got back in.
        if self.connection_state != "connected":
            raise OSError("not connected to a relay (%s)" % self.connection_state)
        return self._sender.send(pkt)  # the awaitable (see PacketSender.send)

    async def _send_all(self, packets):
        for p in packets or ():
            await self._send(p)

    def _complete(self, completion):
        if completion is None:
            return
        w = self._calls.pop(completion.request_id, None)  # the call is over
        if w is not None:
            w.finish(completion.payload, completion.error)

    def recipients(self, destination_identities):
        """(client_protocol, capabilities) of each recipient, for negotiation. An
        identity not (yet) in the room counts as protocol 0 with no capabilities, as in
        livekit-client: nothing says it could read an inline or compressed stream."""
        mine = self.options.client_protocol
        if not destination_identities:
            out = [(min(p.client_protocol, mine), p.capabilities) for p in self.remote_participants.values()]
            if self._untracked:
                out.append((0, ()))   # someone not held (max_participants): assume the least
            return out
        out = []
        for i in destination_identities:
            p = self.remote_participants.get(i)
            out.append((0, ()) if p is None else (min(p.client_protocol, mine), p.capabilities))
        return out


def _utf8(data):
    try:
        return utf8.text(data)
    except UnicodeError:
        raise proto.ProtoError("payload is not valid UTF-8")


def _cause(e):
    """What went wrong, without the URL a TransportError already names."""
    return getattr(e, "cause", None) or e


def _jitter(ms):
    import os
    r = os.urandom(2)
    return ms // 2 + (r[0] << 8 | r[1]) % (ms // 2 + 1)


def _version():
    from . import __version__
    return __version__
