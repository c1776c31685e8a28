"""The caller side of the participant API: perform_rpc and perform_rpc_stream.

Imported on the first call (LocalParticipant.perform_rpc*), so a board that only
answers calls keeps neither this module nor lkedge.rpc_caller in its heap.
"""
import asyncio

from .clock import now_ms
from .consts import (ATTR_RPC_REQUEST_ID, MAX_V1_PAYLOAD_BYTES, RPC_DEFAULT_TIMEOUT_MS,
                     TOPIC_RPC_REQUEST)
from .participant import _is_async_iterable
from .rpc import RpcError
from .rpc_caller import RpcClient
from .sending import gather_text, send_finite
from .streams import StreamError
from .utf8 import encoded_text


class _CallWaiter:
    """Where a pending perform_rpc waits: completion by packet, or a response stream."""

    def __init__(self, streaming=False):
        self.event = asyncio.Event()
        self.done = False
        self.payload = None
        self.error = None
        self.reader = None
        self.streaming = streaming

    def finish(self, payload, error):
        if self.done:
            return
        self.done = True
        self.payload = payload
        self.error = error
        if error is not None and self.reader is not None:
            # Failed while its response stream is being read (timeout, error packet,
            # link lost): the reader raises that error instead of waiting for more.
            self.reader._abandon()
            self.reader._end(error)
        self.event.set()

    def attach_reader(self, reader, room):
        self.reader = reader  # finish() with an error ends it: nothing gathers for a dead call
        if self.streaming:
            # response_timeout bounds each silence of a streamed answer from here on
            # (Room refreshes it per piece it offers, RpcResponseReader per piece read)
            reader._rid = reader.info.attributes.get(ATTR_RPC_REQUEST_ID, "")
            room._rpc_client._heard(reader._rid, now_ms())
            self.event.set()
        else:
            room._spawn(self._gather(reader, room))

    async def _gather(self, reader, room):
        try:
            payload = await reader.read_all(limit=room.options.max_rpc_payload)
            c = room._rpc_client.complete(reader.info.attributes.get(ATTR_RPC_REQUEST_ID, ""), payload=payload)
        except Exception as e:
            if type(e) is ValueError:  # read_all's limit (stream errors are subclasses)
                err = RpcError(RpcError.RESPONSE_PAYLOAD_TOO_LARGE, None,
                               "%s: over this participant's max_rpc_payload "
                               "(perform_rpc_stream reads a response of any size)" % e)
            else:
                err = stream_failure(e)
            c = room._rpc_client.complete(reader.info.attributes.get(ATTR_RPC_REQUEST_ID, ""), error=err)
        room._complete(c)


def stream_failure(e):
    # A response stream that breaks (abnormal end, wrong length) while its sender stays
    # is the handler side's failure: 1500 as livekit-client says it (1503 is for a
    # destination that left, which fails the call before its stream does).
    if isinstance(e, RpcError):
        return e
    return RpcError(RpcError.APPLICATION_ERROR, None, "Error reading RPC response payload: %s" % e)


# A v1 request carries the timeout as uint32 milliseconds.
_MAX_TIMEOUT_S = 4294967


def _timeout_ms(t):
    """response_timeout (seconds) -> ms, or a clear error for what cannot be one."""
    if t is None:
        return RPC_DEFAULT_TIMEOUT_MS
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise TypeError("response_timeout must be a number of seconds, got %s" % type(t).__name__)
    if not 0 < t <= _MAX_TIMEOUT_S:  # NaN fails both comparisons
        raise ValueError("response_timeout must be over 0 and at most %d seconds, got %r" % (_MAX_TIMEOUT_S, t))
    return max(1, int(t * 1000))


class RpcResponseReader:
    """The response of a streaming call: iterate str pieces, or read_all().

    Raises RpcError (from the first iteration) when the call failed. cancel() (or
    `await aclose()`, as the stream readers have) drops the call and the rest of its
    answer; a later read raises StreamError "... abandoned", as a stream reader's does.
    """

    def __init__(self, room, waiter, request_id):
        self._room = room
        self._w = waiter
        self.request_id = request_id
        self._given = False
        self._cancel_called = False

    def __aiter__(self):
        return self

    async def _ready(self):
        w = self._w
        await w.event.wait()
        if w.error is not None:
            self._room._calls.pop(self.request_id, None)
            raise w.error

    def _abandoned_error(self):
        # our own doing, said as a stream reader says it: not the handler's failure (1500)
        return StreamError("the response to RPC %s was abandoned (cancel() or aclose() was called, or a read "
                           "of it cancelled) before this read: the rest was dropped" % self.request_id)

    async def __anext__(self):
        try:
            await self._ready()   # (cancel() sets its event; an error that came first says itself)
        except asyncio.CancelledError:
            self.cancel()  # the task reading the response was cancelled: so is the call
            raise
        if self._cancel_called:
            raise self._abandoned_error()
        w = self._w
        if w.reader is None:
            # Answered by a packet: the call is over, hand the payload out once and let
            # go of it (and of the room's entry) so nothing outlives the call.
            self._room._calls.pop(self.request_id, None)
            payload, w.payload = w.payload, None
            if self._given or not payload:
                self._given = True
                raise StopAsyncIteration
            self._given = True
            return payload
        try:
            piece = await w.reader.__anext__()
            self._room._rpc_client._heard(self.request_id, now_ms())  # a slow reader is no silent sender
            return piece
        except StopAsyncIteration:
            self._finish(None)
            raise
        except asyncio.CancelledError:
            self.cancel()
            raise
        except Exception as e:
            if self._cancel_called:   # cancel() from another task while this one waited
                raise self._abandoned_error()
            self._finish(stream_failure(e))
            raise stream_failure(e)

    def _finish(self, error):
        c = self._room._rpc_client.complete(self.request_id, payload="" if error is None else None, error=error)
        self._room._calls.pop(self.request_id, None)
        return c

    async def read_all(self):
        parts = []
        async for s in self:
            parts.append(s)
        return "".join(parts)

    def cancel(self):
        """Stop waiting: the pending state is cleared and the rest is dropped (a later
        read raises StreamError). Again, or once the call is over, it does nothing more."""
        self._cancel_called = True
        self._room._rpc_client.cancel(self.request_id)
        self._room._calls.pop(self.request_id, None)
        w = self._w
        w.payload = None   # an answer that came whole is let go of too
        if w.reader is not None:
            w.reader._abandon()
        w.event.set()   # a read waiting for the answer to start learns it

    close = cancel   # the stream readers' names for it

    async def aclose(self):
        """cancel(), awaitable, as a stream reader's aclose()."""
        self.cancel()


def end_call(room, req_id, w):
    """The caller stopped waiting: forget the waiter, drop the call if still pending
    (and stop reading its response stream)."""
    room._calls.pop(req_id, None)
    if not w.done:
        room._rpc_client.cancel(req_id)
        w.finish(None, RpcError(RpcError.APPLICATION_ERROR, "call cancelled"))


def caller(room):
    """The room's RpcClient, made on the first call (a board that never calls skips it)."""
    if room._rpc_client is None:
        room._rpc_client = RpcClient()
    return room._rpc_client


async def start_call(lp, dest, method, payload, response_timeout, streaming):
    """Start a call: returns (waiter, request_id) once the request is sent (or failed)."""
    room = lp._room
    client = caller(room)
    timeout_ms = _timeout_ms(response_timeout)
    if room.connection_state != "connected":
        raise RpcError(RpcError.SEND_FAILED, None, "not connected to a room (%s)%s" % (
            room.connection_state, ": connect() first" if room.connection_state == "disconnected" else ""))
    if not isinstance(dest, str) or not dest:
        raise TypeError("destination_identity must be a participant's identity (a non-empty str), got %r" % (dest,))
    if dest == lp.identity:
        raise RpcError(RpcError.RECIPIENT_NOT_FOUND, None, "%r is this participant: it cannot call itself" % (dest,))
    rp = room.remote_participants.get(dest)
    # We speak at most what we advertise: a participant configured as protocol 0
    # behaves as a v1-only SDK would, whatever the destination understands.
    proto_v = min(rp.client_protocol, room.options.client_protocol) if rp is not None else None
    source = None
    if _is_async_iterable(payload):
        if proto_v is None or proto_v >= 1:
            source, data = payload, b""  # not in the room: start() says so (1401), unread
        else:
            data = await gather_text(payload, MAX_V1_PAYLOAD_BYTES,
                                      RpcError(RpcError.REQUEST_PAYLOAD_TOO_LARGE))
            if dest not in room.remote_participants:
                raise RpcError(RpcError.RECIPIENT_DISCONNECTED, None,
                               "%r left while the request was being gathered" % (dest,))
    elif isinstance(payload, str):
        data = bytes(encoded_text(payload))
    else:
        raise TypeError("payload must be a str (perform_rpc_stream also takes an async iterable "
                        "of str pieces), got %s" % type(payload).__name__)
    call = client.start(now_ms(), dest, proto_v, method, len(data), timeout_ms, sending=True)
    w = _CallWaiter(streaming)
    room._calls[call.request_id] = w
    room._wake_timer()
    try:
        if call.version == 1:
            await room._send(call.request_packet(data.decode("utf-8") if isinstance(data, bytes) else data))
        elif source is not None:
            writer = await lp._open_writer("text", TOPIC_RPC_REQUEST, [dest], call.stream_attributes(), None)
            try:
                async for piece in source:
                    await writer.write(piece)
                    if call.request_id not in room._calls:
                        # The call is over (its destination left, the link was lost, an
                        # error came back): the rest of the request would go to nobody.
                        await writer._cut("the call ended")
                        break
                else:
                    await writer.aclose()
            except BaseException as e:  # the handler's reader ends instead of waiting for the rest
                await writer._cut("sender stopped: %r" % (e,))
                raise
        else:
            await send_finite(room, "text", data, TOPIC_RPC_REQUEST, [dest], call.stream_attributes())
        client.sent(now_ms(), call.request_id)  # the response timer starts now, not during the send
        room._wake_timer()
    except OSError as e:
        room._complete(client.complete(call.request_id, error=RpcError(RpcError.SEND_FAILED, None, str(e))))
    except BaseException:
        end_call(room, call.request_id, w)
        raise
    return w, call.request_id

