"""LocalParticipant (RPC and data stream API) and RemoteParticipant.

Names and signatures follow the LiveKit Python SDK (`perform_rpc`,
`register_rpc_method`, `send_text`, `stream_text`, `send_bytes`, `stream_bytes`,
`send_file`); the streaming RPC forms are this project's own bounded-memory extension.
"""
import asyncio

from . import rpc, streams
from .clock import now_ms
from .consts import (ATTR_RPC_REQUEST_ID, MAX_V1_PAYLOAD_BYTES, MIME_BYTES,
                     RPC_DEFAULT_TIMEOUT_MS, STREAM_CHUNK_SIZE_BYTES, TOPIC_RPC_REQUEST,
                     TOPIC_RPC_RESPONSE)
from .ids import uuid4
from .readers import PayloadReader
from .sender import ReadBlob

RpcError = rpc.RpcError
RpcInvocationData = rpc.RpcInvocationData


def _is_awaitable(x):
    return type(x).__name__ in ("generator", "coroutine") or hasattr(x, "__await__")


def _is_async_iterable(x):
    return hasattr(x, "__aiter__")


def _now_epoch_ms():
    import time
    try:
        return int(time.time() * 1000)
    except Exception:
        return 0


class RemoteParticipant:
    """Another participant of the room, as the relay announced it."""

    def __init__(self, info):
        self.identity = info["identity"]
        self._update(info)

    def _update(self, info):
        self.sid = info.get("sid", "")
        self.client_protocol = info.get("client_protocol", 0)
        self.capabilities = list(info.get("capabilities", ()))
        self.attributes = dict(info.get("attributes", {}))

    def __repr__(self):
        return "RemoteParticipant(%r, protocol=%d, caps=%r)" % (
            self.identity, self.client_protocol, self.capabilities)


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
        self.event.set()

    def attach_reader(self, reader, room):
        if self.streaming:
            self.reader = reader
            self.event.set()
        else:
            room._spawn(self._gather(reader, room))

    async def _gather(self, reader, room):
        try:
            payload = await reader.read_all(limit=room.options.max_rpc_payload)
            c = room._rpc_client.complete(reader.info.attributes.get(ATTR_RPC_REQUEST_ID, ""), payload=payload)
        except Exception as e:
            c = room._rpc_client.complete(reader.info.attributes.get(ATTR_RPC_REQUEST_ID, ""),
                                          error=_stream_failure(e))
        room._complete(c)


def _stream_failure(e):
    if isinstance(e, RpcError):
        return e
    return RpcError(RpcError.RECIPIENT_DISCONNECTED, None, "response stream failed: %s" % e)


class RpcResponseReader:
    """The response of a streaming call: iterate str pieces, or read_all().

    Raises RpcError (from the first iteration) when the call failed.
    """

    def __init__(self, room, waiter, request_id):
        self._room = room
        self._w = waiter
        self.request_id = request_id
        self._given = False

    def __aiter__(self):
        return self

    async def _ready(self):
        w = self._w
        await w.event.wait()
        if w.error is not None:
            self._room._calls.pop(self.request_id, None)
            raise w.error

    async def __anext__(self):
        await self._ready()
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
            return await w.reader.__anext__()
        except StopAsyncIteration:
            self._finish(None)
            raise
        except Exception as e:
            self._finish(_stream_failure(e))
            raise _stream_failure(e)

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
        """Stop waiting: the pending state is cleared and the rest is dropped."""
        self._room._rpc_client.cancel(self.request_id)
        self._room._calls.pop(self.request_id, None)
        if self._w.reader is not None:
            self._w.reader._abandon()


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
        w, req_id = await self._start_call(destination_identity, method, payload, response_timeout, False)
        try:
            await w.event.wait()
        finally:
            self._end_call(req_id, w)
        if w.error is not None:
            raise w.error
        return w.payload

    async def perform_rpc_stream(self, *, destination_identity, method, payload="", response_timeout=None):
        """Streaming call: `payload` may be a str or an async iterable of str pieces
        (sent as an incremental stream to a v2 destination; gathered up to 15360
        bytes for a v1 one). Returns an RpcResponseReader to iterate the response."""
        w, req_id = await self._start_call(destination_identity, method, payload, response_timeout, True)
        return RpcResponseReader(self._room, w, req_id)

    def _end_call(self, req_id, w):
        room = self._room
        room._calls.pop(req_id, None)
        if not w.done:
            room._rpc_client.cancel(req_id)

    async def _start_call(self, dest, method, payload, response_timeout, streaming):
        room = self._room
        timeout_ms = RPC_DEFAULT_TIMEOUT_MS if response_timeout is None else int(response_timeout * 1000)
        rp = room.remote_participants.get(dest)
        # We speak at most what we advertise: a participant configured as protocol 0
        # behaves as a v1-only SDK would, whatever the destination understands.
        proto_v = min(rp.client_protocol, room.options.client_protocol) if rp is not None else None
        source = None
        if _is_async_iterable(payload):
            if proto_v is not None and proto_v >= 1:
                source, data = payload, b""
            else:
                data = await _gather_text(payload, MAX_V1_PAYLOAD_BYTES,
                                          RpcError(RpcError.REQUEST_PAYLOAD_TOO_LARGE))
        else:
            data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        call = room._rpc_client.start(now_ms(), dest, proto_v, method, len(data), timeout_ms)
        w = _CallWaiter(streaming)
        room._calls[call.request_id] = w
        room._wake_timer()
        try:
            if call.version == 1:
                await room._send(call.request_packet(data.decode("utf-8") if isinstance(data, bytes) else data))
            elif source is not None:
                writer = await self._open_writer("text", TOPIC_RPC_REQUEST, [dest], call.stream_attributes(), None)
                async for piece in source:
                    await writer.write(piece)
                await writer.aclose()
            else:
                await self._send_finite("text", data, TOPIC_RPC_REQUEST, [dest], call.stream_attributes())
            room._rpc_client.sent(now_ms(), call.request_id)  # the response timer starts now
            room._wake_timer()
        except OSError as e:
            room._complete(room._rpc_client.complete(call.request_id, error=RpcError(RpcError.SEND_FAILED, None, str(e))))
        except BaseException:
            self._end_call(call.request_id, w)
            raise
        return w, call.request_id

    async def _invoke(self, inv, payload=None, reader=None):
        """Run a registered method for one request and send its answer."""
        room = self._room
        srv = room._rpc_server
        try:
            if inv.streaming:
                data = RpcInvocationData(inv.request_id, inv.caller_identity, None, inv.response_timeout)
                data.reader = reader if reader is not None else PayloadReader(None, payload.encode("utf-8"))
            else:
                if reader is not None:
                    payload = await reader.read_all(limit=room.options.max_rpc_payload)
                data = RpcInvocationData(inv.request_id, inv.caller_identity, payload, inv.response_timeout)
            result = inv.handler(data)
            if _is_awaitable(result):
                result = await result
            if result is None:
                result = ""
            await self._respond(inv, result)
        except Exception as e:
            try:
                await room._send(srv.error_response(inv, e))
            except Exception as e2:
                _log_send_failure(inv, e2)
        finally:
            if reader is not None:
                reader._abandon()

    async def _respond(self, inv, result):
        room = self._room
        srv = room._rpc_server
        if inv.transport == "stream":
            attrs = {ATTR_RPC_REQUEST_ID: inv.request_id}
            if _is_async_iterable(result):
                writer = await self._open_writer("text", TOPIC_RPC_RESPONSE, [inv.caller_identity], attrs, None)
                async for piece in result:
                    await writer.write(piece)
                await writer.aclose()
            else:
                await self._send_finite("text", result.encode("utf-8"), TOPIC_RPC_RESPONSE,
                                        [inv.caller_identity], attrs)
            return
        if _is_async_iterable(result):
            try:
                result = await _gather_text(result, MAX_V1_PAYLOAD_BYTES,
                                            RpcError(RpcError.RESPONSE_PAYLOAD_TOO_LARGE))
            except RpcError as e:
                await room._send(srv.error_response(inv, e))
                return
            result = result.decode("utf-8")
        await room._send_all(srv.response_packets(inv, result))

    # ========================================================= data streams
    async def send_text(self, text, *, destination_identities=None, topic="", attributes=None,
                        stream_id=None, reply_to_id=None, compress=None):
        """Send a whole text as one stream (inline/compressed/chunked as negotiated)."""
        opts = {"reply_to_stream_id": reply_to_id} if reply_to_id else None
        return await self._send_finite("text", text.encode("utf-8"), topic, destination_identities or [],
                                       attributes, stream_id=stream_id, compress=compress, text_options=opts)

    async def send_bytes(self, data, *, name="unknown", mime_type=MIME_BYTES, destination_identities=None,
                         topic="", attributes=None, stream_id=None, compress=None):
        return await self._send_finite("bytes", data, topic, destination_identities or [], attributes,
                                       stream_id=stream_id, compress=compress, name=name, mime_type=mime_type)

    async def send_file(self, file_path, *, topic="", name=None, mime_type=MIME_BYTES,
                        destination_identities=None, attributes=None, stream_id=None):
        """Send a file as a byte stream, read through one small buffer.

        Files that fit one packet go inline where negotiated; larger ones are chunked
        straight from the file (never compressed: that would need them in memory).
        """
        import os
        size = os.stat(file_path)[6]
        if name is None:
            name = file_path.split("/")[-1]
        dests = destination_identities or []
        if size <= STREAM_CHUNK_SIZE_BYTES // 2:
            with open(file_path, "rb") as f:
                return await self.send_bytes(f.read(), name=name, mime_type=mime_type,
                                             destination_identities=dests, topic=topic,
                                             attributes=attributes, stream_id=stream_id)
        sid = stream_id or uuid4()
        room = self._room
        await room._send(streams.header_packet(sid, "bytes", topic, dests, total_length=size,
                                               attributes=attributes, mime_type=mime_type, name=name,
                                               timestamp_ms=_now_epoch_ms()))
        index = 0
        left = size
        with open(file_path, "rb") as f:
            while left:
                n = min(left, STREAM_CHUNK_SIZE_BYTES)
                await room._send(streams.chunk_packet(sid, index, dests, ReadBlob(f.readinto, n)))
                index += 1
                left -= n
        await room._send(streams.trailer_packet(sid, dests))
        return sid

    async def stream_text(self, *, destination_identities=None, topic="", attributes=None,
                          stream_id=None, reply_to_id=None):
        """An incremental text stream: `await w.write(str)`, then `await w.aclose()`."""
        return await self._open_writer("text", topic, destination_identities or [], attributes, stream_id)

    async def stream_bytes(self, name="unknown", *, mime_type=MIME_BYTES, destination_identities=None,
                           topic="", attributes=None, stream_id=None, total_size=None):
        return await self._open_writer("bytes", topic, destination_identities or [], attributes, stream_id,
                                       name=name, mime_type=mime_type, total_size=total_size)

    async def _open_writer(self, kind, topic, dests, attributes, stream_id, name=None, mime_type=None,
                           total_size=None):
        out = streams.OutgoingStream(stream_id or uuid4(), kind, topic, dests, attributes=attributes,
                                     name=name, mime_type=mime_type, total_length=total_size,
                                     timestamp_ms=_now_epoch_ms())
        w = StreamWriter(self._room, out)
        await self._room._send(out.header())
        return w

    async def _send_finite(self, kind, data, topic, dests, attributes, stream_id=None, compress=None,
                           name=None, mime_type=None, text_options=None):
        room = self._room
        dests = dests or []
        want = room.options.compress if compress is None else compress
        inline_ok, compress_ok = streams.negotiate(room.recipients(dests), streams.can_compress(), want)
        sid = stream_id or uuid4()
        kw = {}
        if name is not None:
            kw["name"] = name
        if mime_type is not None:
            kw["mime_type"] = mime_type
        if text_options:
            kw.update(text_options)
        for pkt in streams.finite_packets(kind, data, topic, dests, inline_ok, compress_ok,
                                          stream_id=sid, attributes=attributes,
                                          timestamp_ms=_now_epoch_ms(), **kw):
            await room._send(pkt)
        return sid


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
        for pkt in self._out.write(data):
            await self._room._send(pkt)

    async def aclose(self, reason="", attributes=None):
        if self._closed:
            return
        self._closed = True
        await self._room._send(self._out.close(reason, attributes))

    close = aclose


async def _gather_text(source, cap, error):
    """Join an async iterable of str/bytes pieces into bytes, at most `cap` bytes."""
    parts = []
    total = 0
    async for piece in source:
        b = piece.encode("utf-8") if isinstance(piece, str) else bytes(piece)
        total += len(b)
        if total > cap:
            raise error
        parts.append(b)
    return b"".join(parts)


def _log_send_failure(inv, e):
    print("lkedge: could not answer RPC %s from %s: %r" % (inv.request_id, inv.caller_identity, e))
