"""LocalParticipant (RPC and data stream API) and RemoteParticipant.

Names and signatures follow the LiveKit Python SDK (`perform_rpc`,
`register_rpc_method`, `send_text`, `stream_text`, `send_bytes`, `stream_bytes`,
`send_file`); the streaming RPC forms are this project's own bounded-memory extension.

What only some participants use is imported on first use, so a board pays for what it
runs: calling (lkedge.calls, lkedge.rpc_caller) and sending whole payloads
(lkedge.sending, lkedge.finite). Answering calls and incremental streams are here.
"""
import asyncio
import sys

from . import load, rpc, streams
from .clock import now_ms
from .consts import ATTR_RPC_REQUEST_ID, MAX_V1_PAYLOAD_BYTES, MIME_BYTES, TOPIC_RPC_RESPONSE
from .ids import uuid4
from .readers import PayloadReader
from .utf8 import Utf8Error, encoded_text

_MP = sys.implementation.name == "micropython"
RpcError = rpc.RpcError
RpcInvocationData = rpc.RpcInvocationData


def is_awaitable(x):
    return type(x).__name__ in ("generator", "coroutine") or hasattr(x, "__await__")


def _is_async_iterable(x):
    return hasattr(x, "__aiter__")


def _awaiting(x):
    """`await _awaiting(x)` is `await x` for a handler's coroutine on MicroPython, where an
    async def with yield is a plain generator too: awaited as is, its first piece
    would leave the task waiting for ever; here it is a TypeError saying why (asyncio
    coroutines only ever yield None)."""
    send = exc = None
    while True:
        try:
            v = x.send(send) if exc is None else x.throw(exc)
        except StopIteration as e:
            return e.value
        if v is not None:
            x.close()
            raise load("misuse")._async_generator(v)
        try:
            send = yield v
            exc = None
        except BaseException as e:  # a cancellation, thrown on into the handler
            exc = e
            send = None


def _now_epoch_ms():
    """A stream header's timestamp: ms since 1970, as LiveKit's (a board's port may
    count time.time() in whole seconds, and from 2000)."""
    import time
    try:
        return time.time_ns() // 1000000 + (946684800000 if time.gmtime(0)[0] == 2000 else 0)
    except Exception:
        return 0


class RemoteParticipant:
    """Another participant of the room, as the relay announced it: identity, sid,
    client_protocol, capabilities (these decide how calls and streams to it are sent),
    attributes (dict of str to str) and attributes_dropped.

    attributes_dropped is True when the participant's announcement would have held
    more than RoomOptions.max_values (bytes plus 32 per value; 8 KiB with a board
    profile), or the board had no heap to read them, and its attributes were therefore
    not read: `attributes` is then empty although the participant has some. Everything
    else about it is as announced, so calls and streams to it work. A later
    announcement that fits clears it.
    """

    _attributes_cost = 0   # what its attributes count in Room's max_attributes (Room._upsert)

    def __init__(self, info):
        self.identity = info["identity"]
        self._update(info)

    def _update(self, info):
        caps = list(info.get("capabilities", ()))   # allocated first: no heap for them
        attrs = dict(info.get("attributes", {}))    # leaves it as it was, not half updated
        self.sid = info.get("sid", "")
        self.client_protocol = info.get("client_protocol", 0)
        self.capabilities = caps
        self.attributes = attrs
        self.attributes_dropped = bool(info.get("attributes_dropped", False))

    def __repr__(self):
        return "RemoteParticipant(%r, protocol=%d, caps=%r)" % (
            self.identity, self.client_protocol, self.capabilities)


class LocalParticipant:
    def __init__(self, room):
        self._room = room
        self.identity = ""
        self.sid = ""

    # ================================================================== RPC
    def register_rpc_method(self, method_name, handler=None, streaming=False):
        """Register `handler(data: RpcInvocationData)` (sync or async) for a method.

        Usable as a decorator: `@lp.register_rpc_method("echo")`. With
        `streaming=True`, `data.payload` is None and `data.reader` yields the request
        in str pieces; the handler may return a str or an async iterable of str
        pieces (sent as an incremental stream to a v2 caller).
        """
        srv = self._room._rpc_server

        def reg(fn):
            srv.register(method_name, fn, streaming)
            return fn
        return reg(handler) if handler is not None else reg

    def unregister_rpc_method(self, method):
        self._room._rpc_server.unregister(method)

    async def perform_rpc(self, *, destination_identity, method, payload="", response_timeout=None):
        """Call `method` on `destination_identity`; returns the response payload (str).

        `response_timeout` is in seconds (default 15). Raises RpcError.
        """
        calls = load("calls")
        w, req_id = await calls.start_call(self, destination_identity, method, payload, response_timeout, False)
        try:
            await w.event.wait()
        finally:
            calls.end_call(self._room, req_id, w)
        if w.error is not None:
            raise w.error
        return w.payload

    async def perform_rpc_stream(self, *, destination_identity, method, payload="", response_timeout=None):
        """Streaming call: `payload` may be a str or an async iterable of str pieces
        (sent as an incremental stream to a v2 destination; gathered up to 15360
        bytes for a v1 one). Returns an RpcResponseReader to iterate the response."""
        calls = load("calls")
        w, req_id = await calls.start_call(self, destination_identity, method, payload, response_timeout, True)
        return calls.RpcResponseReader(self._room, w, req_id)

    async def _invoke(self, inv, payload=None, reader=None):
        """Run a registered method for one request and send its answer."""
        room = self._room
        try:
            if not inv.streaming:
                # Room's timer cancels it past the caller's timeout, counted from the
                # request: a request trickled in must not hold a handler slot for longer
                room._deadlines[inv] = (now_ms() + int(inv.response_timeout * 1000), asyncio.current_task())
            if inv.streaming:
                data = inv.data()
                data.payload = None
                data.reader = reader if reader is not None else PayloadReader(None, payload.encode("utf-8"))
            else:
                if reader is not None:   # (a v2 caller, whose answer loads sending too)
                    payload = await load("sending")._whole_request(reader, room.options.max_rpc_payload, inv.method)
                data = inv.data()
                data.payload = payload
            result = inv.handler(data)
            if is_awaitable(result):
                result = await (_awaiting(result) if _MP else result)
            # here and below, before anything is sent: the timer must not cancel a task
            # in the middle of a frame (that would end the link)
            room._deadlines.pop(inv, None)
            inv.payload = payload = data = None   # the request: garbage while the answer goes, unless kept
            if result is None:
                result = ""
            elif not isinstance(result, str) and not (inv.streaming and _is_async_iterable(result)):
                raise load("misuse")._bad_answer(inv, result)
            try:
                await self._respond(inv, result)
            except OSError as e:
                # Not the handler's failure: its answer could not go (the link is gone;
                # the caller got 1503 from that loss). Said once, no 1500 to try.
                _log_send_failure(inv, e)
        except Exception as e:
            room._deadlines.pop(inv, None)
            inv.payload = payload = data = result = None
            try:
                if isinstance(e, MemoryError):
                    # No heap (gathering the request, in the handler, answering): what
                    # those held is garbage now (an allocation that fails collects it),
                    # and the answer loads nothing: not misuse, nor a board build's
                    # msgtext for a moved text (a local's text stays in the bytecode)
                    oom = "out of memory: %s" % (e,)
                    e = RpcError(RpcError.APPLICATION_ERROR, None, oom)
                    print("lkedge: RPC", inv.method, oom)
                elif reader is not None and (e is reader._error or isinstance(e, Utf8Error)):
                    # the caller's request stream failed (cut short, too long, not UTF-8):
                    # not the handler's fault, and livekit-client's answer to it
                    e = _unreadable(e)
                elif not isinstance(e, RpcError):  # the caller gets 1500; the details belong here
                    load("misuse")._handler_failed(inv, e)
            except MemoryError:
                pass   # (the text, the report or its module): the caller still gets 1500
            await self._send_error(inv, e)
        except asyncio.CancelledError:
            room._deadlines.pop(inv, None)
            if not await load("misuse")._handler_cancelled(self, inv):
                raise
        finally:
            # Room keeps finished tasks until its next spawn: their coroutines must not
            # pin the request (a v1 payload is up to 15 KB, held twice) in a board's heap.
            inv.payload = payload = data = result = None
            room._invoking.discard(inv)   # admitted by Room._admit
            room._timed_out.discard(inv)  # past its deadline, it may have ended on its own
            room._lingering.discard(inv)  # or no longer counted there (Room._linger)
            if reader is not None:
                reader._abandon()

    async def _send_error(self, inv, e):
        srv = self._room._rpc_server
        try:
            await self._room._send(srv.error_response(inv, e))
            return
        except ValueError as e2:
            # The error's text cannot go (not valid UTF-8, e.g. a path from a JSON
            # "\ud800" escape, or too large for a frame): the caller still gets its code,
            # with a message that says why the text is missing.
            code = e.code if isinstance(e, RpcError) else RpcError.APPLICATION_ERROR
            e = RpcError(code, "error message not sent: %s" % (e2,))
        except Exception as e2:
            _log_send_failure(inv, e2)
            return
        try:
            await self._room._send(srv.error_response(inv, e))
        except Exception as e2:
            _log_send_failure(inv, e2)

    async def _respond(self, inv, result):
        room = self._room
        srv = room._rpc_server
        if inv.transport == "stream":
            attrs = {ATTR_RPC_REQUEST_ID: inv.request_id}
            if _is_async_iterable(result):
                writer = await self._open_writer("text", TOPIC_RPC_RESPONSE, [inv.caller_identity], attrs, None)
                try:
                    async for piece in result:
                        await writer.write(piece)
                        if inv._gone:   # its caller left (Room._participant_left)
                            break
                except Exception as e:
                    # The caller is already reading this stream. The error packet first
                    # (it fails the call with the handler's error), then an abnormal end
                    # so no reader of the stream waits for the rest.
                    await self._send_error(inv, e)
                    await writer._cut("handler failed: %r" % (e,))
                    return
                if inv._gone:
                    print("lkedge: RPC handler for %r stopped: its caller %r left the room"
                          % (inv.method, inv.caller_identity))
                    await writer._cut("caller left")
                    return
                await writer.aclose()
            else:
                await load("sending").send_finite(room, "text", encoded_text(result), TOPIC_RPC_RESPONSE,
                                                  [inv.caller_identity], attrs)
            return
        if _is_async_iterable(result):
            try:
                result = await load("sending").gather_text(
                    result, MAX_V1_PAYLOAD_BYTES, RpcError(RpcError.RESPONSE_PAYLOAD_TOO_LARGE))
            except RpcError as e:
                await self._send_error(inv, e)
                return
            result = result.decode("utf-8")
        await room._send_all(srv.response_packets(inv, result))

    # ========================================================= data streams
    async def send_text(self, text, *, destination_identities=None, topic="", attributes=None,
                        stream_id=None, reply_to_id=None, compress=None):
        """Send a whole text as one stream (inline/compressed/chunked as negotiated);
        returns its StreamInfo (LiveKit's TextStreamInfo: .stream_id, .topic, ...)."""
        if not isinstance(text, str):
            raise load("misuse")._wrong_type("send_text sends a str (send_bytes sends bytes)", text)
        opts = {"reply_to_stream_id": reply_to_id} if reply_to_id else None
        return await load("sending").send_finite(
            self._room, "text", encoded_text(text), topic, destination_identities, attributes,
            stream_id=stream_id, compress=compress, text_options=opts)

    async def send_bytes(self, data, *, name="unknown", mime_type=MIME_BYTES, destination_identities=None,
                         topic="", attributes=None, stream_id=None, compress=None):
        """Send bytes as one byte stream; returns its StreamInfo (as send_text does)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise load("misuse")._wrong_type("send_bytes sends bytes (send_text sends a str)", data)
        return await load("sending").send_finite(
            self._room, "bytes", data, topic, destination_identities, attributes,
            stream_id=stream_id, compress=compress, name=name, mime_type=mime_type)

    async def send_file(self, file_path, *, topic="", name=None, mime_type=None,
                        destination_identities=None, attributes=None, stream_id=None, compress=None):
        """Send a file as a byte stream, read through one small buffer (lkedge.sending)."""
        return await load("sending").send_file(self, file_path, topic, name, mime_type,
                                               destination_identities, attributes, stream_id, compress)

    async def stream_text(self, *, destination_identities=None, topic="", attributes=None,
                          stream_id=None, reply_to_id=None, total_size=None):
        """An incremental text stream: `await w.write(str)`, then `await w.aclose()`."""
        return await self._open_writer("text", topic, destination_identities or [], attributes, stream_id,
                                       total_size=total_size, reply_to_stream_id=reply_to_id or "")

    async def stream_bytes(self, name="unknown", *, mime_type=MIME_BYTES, destination_identities=None,
                           topic="", attributes=None, stream_id=None, total_size=None):
        return await self._open_writer("bytes", topic, destination_identities or [], attributes, stream_id,
                                       name=name, mime_type=mime_type, total_size=total_size)

    async def _open_writer(self, kind, topic, dests, attributes, stream_id, name=None, mime_type=None,
                           total_size=None, **text_options):
        try:
            out = streams.OutgoingStream(stream_id or uuid4(), kind, topic, dests, attributes=attributes,
                                         name=name, mime_type=mime_type, total_length=total_size,
                                         timestamp_ms=_now_epoch_ms(), max_frame=self._room.max_frame,
                                         **text_options)
            hdr = out.header()   # sized: proto has checked every field
        except (TypeError, ValueError) as e:   # the application's mistake, said in its words
            raise load("misuse")._stream_args(e, (topic, stream_id, name, mime_type, text_options.get(
                "reply_to_stream_id")), dests, attributes, total_size)
        w = StreamWriter(self._room, out)
        try:
            await self._room._send(hdr)
        except BaseException as e:
            if self._room._sender._went_out(e):   # cancelled once the header was out
                await w._cut("sender stopped: %r" % (e,))
            raise
        return w

class StreamWriter:
    """Writer of an incremental stream (stream_text / stream_bytes)."""

    def __init__(self, room, out):
        self._room = room
        self._out = out
        self.info = out
        self.stream_id = out.stream_id
        self._closed = False

    async def write(self, data):
        if self._closed:
            raise ValueError("stream %s is closed" % self.stream_id)
        for pkt in self._out.write(data):   # (a write it refuses raises before any)
            try:
                await self._room._send(pkt)
            except BaseException as e:
                # cut short (cancelled, a handler past its deadline, a failed link): its
                # receivers end it as abnormal instead of waiting for the rest
                await self._cut("sender stopped: %r" % (e,))
                raise

    async def _cut(self, reason):
        """End the stream as abnormal with `reason`, unless it has ended; never raises."""
        if not self._closed:
            try:
                await self.aclose(reason=reason[:200])
            except Exception:
                pass  # the link itself failed: its loss ends the stream for the receivers

    async def aclose(self, reason="", attributes=None):
        if self._closed:
            return
        self._closed = True
        out = self._out
        await self._room._send(out.close(reason, attributes))
        if out.total_length is not None and out._written < out.total_length and not reason:
            raise streams.StreamError("stream %s closed after %d of the %d bytes its total_size announced: "
                                      "its receivers get an incomplete stream"
                                      % (self.stream_id, out._written, out.total_length))

    close = aclose


def _unreadable(e):
    """The answer to a request whose stream could not be read: livekit-client's data
    ("Error reading RPC request payload"), and why."""
    return RpcError(RpcError.APPLICATION_ERROR, None, "Error reading RPC request payload: %s" % (e,))


def _log_send_failure(inv, e):
    try:
        print("lkedge: could not answer RPC %s from %s: %r" % (inv.request_id, inv.caller_identity, e))
    except MemoryError:
        pass   # a handler's task must end all the same (a board's firmware may reset for one that dies)
