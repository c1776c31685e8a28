"""RPC v1 and v2 (shared/spec/RPC.md) as sans-I/O state machines.

Nothing here reads a clock, sleeps, or touches asyncio or sockets: time comes in as
`now_ms` (an ever-growing int, lkedge.clock.now_ms), packets come in as decoded
DataPacket dicts (lkedge.proto field names) and go out as DataPacket dicts, and data
streams are only *named* ("send a lk.rpc_request text stream with these attributes");
the asyncio adapter (room.py, participant.py) moves the bytes.

Errors
    RpcError(code, message=None, data=None)      Exception; .code .message .data
        code: uint32; message None -> the built-in default message ("" for own codes);
        message cut to 256 UTF-8 bytes, data to 15360, on a character boundary.
        Codes as class constants (RpcError.APPLICATION_ERROR == 1500) and in the nested
        class RpcError.ErrorCode (as in the LiveKit Python SDK); RpcError.ErrorMessage.
        .to_proto() -> dict (RPC_ERROR schema); RpcError.from_proto(dict) -> RpcError;
        str(e) == "RpcError 1500: Application error in method handler".
    RpcInvocationData(request_id, caller_identity, payload, response_timeout, method="")
        what a method handler receives; response_timeout in seconds (float). The
        adapter may set .reader (streaming handlers; None otherwise).

Caller: lkedge.rpc_caller (RpcClient, PendingCall, Completion), imported only by
participants that call: a board that only answers never loads it.

Handler: RpcServer()
    register(method, handler, streaming=False)   ValueError if `method` already has one
        (or is ""), TypeError if it is not a str or `handler` is not callable
    unregister(method);  lookup(method) -> handler or None
    on_request_packet(sender, rpc_request_dict, payload=None) -> (packets, Invocation|None)
    on_request_stream(sender, attributes) -> (packets, Invocation|None)
    on_refused_stream(sender, attributes, why) -> [error packet] (none without an id)
    response(invocation, payload) -> [packets] ("packet") or StreamResponse ("stream")
        payload: a str, or a Blob (.size = UTF-8 byte length); the stream path does
        not look at it (any size, or None for an incremental stream: never capped);
        the packet path answers 1504 instead when it is over 15360 bytes.
    response_packets(invocation, payload) -> [packets]        the packet path only
    error_response(invocation, exc) -> packet
    last_rejection: why the last request was dropped without any answer (or None).

    Invocation: .request_id .caller_identity .method .handler .streaming
        .transport ("packet" | "stream") .response_timeout (s) .payload (v1 str, else None)
    StreamResponse: .request_id .kind ("text") .topic ("lk.rpc_response")
        .destination_identities .attributes ({lk.rpc_request_id: id})

    Invocation.data() -> RpcInvocationData for a buffered handler.
    response_packets() raises TypeError when the payload is neither a str nor a Blob
    (a handler returned e.g. an int): the adapter answers that with error_response().

Packet builders: ack_packet(dest, request_id), response_packet(dest, request_id,
payload), error_packet(dest, request_id, rpc_error). truncate_utf8(s, limit) cuts a
str to `limit` UTF-8 bytes on a character boundary.

Choices where the spec is open (checked against client-sdk-js RpcClientManager.ts and
RpcServerManager.ts):
- An ack or response counts only from the call's destination identity (js checks the
  identity for response streams only; the relay stamps the sender, so a packet from
  anyone else cannot belong to the call).
- A response that arrives before the ack completes the call and clears the ack timer
  (js: "RPC response received before ack", then clears it). An ack does not stop the
  response timer.
- The response timer covers reading a response stream too (js rejects with
  RESPONSE_TIMEOUT while readAll() is still running). Accepting a response stream
  clears the ack timer: the handler evidently got the request.
- When the ack and response deadlines have both passed, the earlier one decides; on a
  tie CONNECTION_TIMEOUT wins (js arms the ack timer first).
- An rpc_response holding neither payload nor error (only compressed_payload) is
  ignored; the call stays pending until its timers.
- v2 requests: validate -> ack -> version -> method, all on the stream header (js
  looks the method up after reading the payload; the packets sent are the same, and
  the adapter need not read a payload nobody will handle). The timeout and version
  attributes are read like js parseInt(x, 10) (leading integer, e.g. "8000.5" -> 8000).
- A v1 request without an id, or a malformed v2 stream without an id, cannot be
  answered: nothing is sent (last_rejection says why).
- On v1 a non-RpcError failure carries "ExcType: text" in `data`; on v2 no data.
"""
from .consts import (ATTR_RPC_METHOD, ATTR_RPC_REQUEST_ID, ATTR_RPC_TIMEOUT,
                     ATTR_RPC_VERSION, MAX_ERROR_DATA_BYTES, MAX_ERROR_MESSAGE_BYTES,
                     MAX_V1_PAYLOAD_BYTES, TOPIC_RPC_RESPONSE)
from .utf8 import cut

_UINT32_MAX = 0xFFFFFFFF


# ---------------------------------------------------------------- UTF-8 sizes
def _over(payload, limit):
    """True when the payload is over `limit` UTF-8 bytes (avoids encoding when it can)."""
    if isinstance(payload, str):
        n = len(payload)
        if n > limit:
            return True
        if n * 4 <= limit:
            return False
        return len(payload.encode("utf-8")) > limit
    return payload.size > limit


def truncate_utf8(s, limit):
    """`s` cut to at most `limit` UTF-8 bytes on a character boundary (None stays None)."""
    if s is None or not _over(s, limit):
        return s
    b = s.encode("utf-8")
    return b[:cut(b, limit)].decode("utf-8")


# --------------------------------------------------------------------- errors
class _Codes:
    APPLICATION_ERROR = 1500
    CONNECTION_TIMEOUT = 1501
    RESPONSE_TIMEOUT = 1502
    RECIPIENT_DISCONNECTED = 1503
    RESPONSE_PAYLOAD_TOO_LARGE = 1504
    SEND_FAILED = 1505
    UNSUPPORTED_METHOD = 1400
    RECIPIENT_NOT_FOUND = 1401
    REQUEST_PAYLOAD_TOO_LARGE = 1402
    UNSUPPORTED_SERVER = 1403
    UNSUPPORTED_VERSION = 1404


_MESSAGES = {
    1500: "Application error in method handler",
    1501: "Connection timeout",
    1502: "Response timeout",
    1503: "Recipient disconnected",
    1504: "Response payload too large",
    1505: "Failed to send",
    1400: "Method not supported at destination",
    1401: "Recipient not found",
    1402: "Request payload too large",
    1403: "RPC not supported by server",
    1404: "Unsupported RPC version",
}


class RpcError(Exception):
    """An RPC failure: raised to callers, raised by handlers to answer with an error.

    Codes 1001-1999 are reserved for the built-ins; applications use their own.
    """

    ErrorCode = _Codes
    ErrorMessage = _MESSAGES
    MAX_MESSAGE_BYTES = MAX_ERROR_MESSAGE_BYTES
    MAX_DATA_BYTES = MAX_ERROR_DATA_BYTES

    def __init__(self, code, message=None, data=None):
        if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= _UINT32_MAX:
            raise ValueError("RpcError code must be an int in 0..4294967295 (uint32 on the wire), got %r" % (code,))
        if message is None:
            message = _MESSAGES.get(code, "")
        if not isinstance(message, str) or not (data is None or isinstance(data, str)):
            raise TypeError("RpcError message and data must be str (data may be None), got %r, %r"
                            % (type(message).__name__, type(data).__name__))
        message = truncate_utf8(message, MAX_ERROR_MESSAGE_BYTES)
        data = truncate_utf8(data, MAX_ERROR_DATA_BYTES)
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def __str__(self):
        return "RpcError %d: %s" % (self.code, self.message)

    def __repr__(self):
        return "RpcError(%d, %r, %r)" % (self.code, self.message, self.data)

    def to_proto(self):
        """The RpcError message dict (lkedge.proto.RPC_ERROR); data only when set."""
        d = {"code": self.code, "message": self.message}
        if self.data is not None:
            d["data"] = self.data
        return d

    @classmethod
    def from_proto(cls, d):
        """An RpcError from a decoded RpcError message dict (remote code kept as is)."""
        return cls(d.get("code", 0), d.get("message", ""), d.get("data"))


# The codes also as RpcError.APPLICATION_ERROR etc., from the one table above.
for _name in dir(_Codes):
    if not _name.startswith("_"):
        setattr(RpcError, _name, getattr(_Codes, _name))


class RpcInvocationData:
    """What a registered method receives (names as in the LiveKit Python SDK)."""

    def __init__(self, request_id, caller_identity, payload, response_timeout, method=""):
        self.request_id = request_id
        self.caller_identity = caller_identity
        self.payload = payload
        self.response_timeout = response_timeout  # seconds
        self.method = method
        self.reader = None  # streaming handlers: an async iterator of str pieces

    def __repr__(self):
        return "RpcInvocationData(%r, %r, %r, %r)" % (
            self.request_id, self.caller_identity, self.payload, self.response_timeout)


# -------------------------------------------------------------- packet builders
def ack_packet(destination, request_id):
    return {"destination_identities": [destination], "rpc_ack": {"request_id": request_id}}


def response_packet(destination, request_id, payload):
    """A success rpc_response; payload a str or a Blob. "" is a success with ""."""
    return {"destination_identities": [destination],
            "rpc_response": {"request_id": request_id, "payload": payload}}


def error_packet(destination, request_id, error):
    return {"destination_identities": [destination],
            "rpc_response": {"request_id": request_id, "error": error.to_proto()}}


# --------------------------------------------------------------------- handler
class Invocation:
    """A request the adapter must run: the handler, and how the answer travels."""

    _gone = False   # set by the adapter when the caller left: the answer stops

    def __init__(self, request_id, caller_identity, method, handler, streaming, transport,
                 response_timeout, payload=None):
        self.request_id = request_id
        self.caller_identity = caller_identity
        self.method = method
        self.handler = handler
        self.streaming = streaming
        self.transport = transport          # "packet" (v1 request) or "stream" (v2)
        self.response_timeout = response_timeout  # seconds
        self.payload = payload

    def data(self):
        """The RpcInvocationData for a buffered handler (v1: the payload is known)."""
        return RpcInvocationData(self.request_id, self.caller_identity, self.payload,
                                 self.response_timeout, self.method)

    def __repr__(self):
        return "Invocation(%r %r from %r via %s)" % (self.request_id, self.method,
                                                     self.caller_identity, self.transport)


class StreamResponse:
    """Instruction: send the payload as a `lk.rpc_response` text stream to the caller."""

    kind = "text"
    topic = TOPIC_RPC_RESPONSE

    def __init__(self, request_id, caller_identity):
        self.request_id = request_id
        self.destination_identities = [caller_identity]
        self.attributes = {ATTR_RPC_REQUEST_ID: request_id}


def _parse_int(s):
    """Like JavaScript parseInt(s, 10): the leading integer of `s`, None when it has none."""
    if not isinstance(s, str):
        return None
    s = s.strip()
    i = 1 if s and s[0] in "+-" else 0
    j = i
    while j < len(s) and "0" <= s[j] <= "9":
        j += 1
    if j == i:
        return None
    digits = s[i:j].lstrip("0")
    # Beyond 18 digits it is past any timeout or version alike (and CPython's int()
    # refuses over 4300 digits, which would drop the request unanswered).
    n = int(digits or "0") if len(digits) <= 18 else 10 ** 18
    return -n if s[0] == "-" else n


def _check_method(method):
    """An RPC method name as the API takes it (register_rpc_method, perform_rpc...):
    TypeError for what is no str, ValueError for ""."""
    if not isinstance(method, str):
        raise TypeError("an RPC method name is a str, got %s" % type(method).__name__)
    if not method:
        raise ValueError("RPC method name must be a non-empty str, got %r" % (method,))


class RpcServer:
    """The handler side: registered methods, acks, and the answers' transport."""

    def __init__(self):
        self._methods = {}
        self.last_rejection = None

    def register(self, method, handler, streaming=False):
        _check_method(method)
        if not callable(handler):
            raise TypeError("RPC handler for %r must be callable, got %r" % (method, handler))
        if method in self._methods:
            raise ValueError("an RPC handler is already registered for method %r; "
                             "unregister it before registering another" % method)
        self._methods[method] = (handler, bool(streaming))

    def unregister(self, method):
        _check_method(method)
        self._methods.pop(method, None)

    def lookup(self, method):
        entry = self._methods.get(method)
        return entry[0] if entry is not None else None

    def _dispatch(self, sender, rid, method, timeout_ms, transport, payload):
        entry = self._methods.get(method)
        if entry is None:
            return error_packet(sender, rid, RpcError(RpcError.UNSUPPORTED_METHOD)), None
        return None, Invocation(rid, sender, method, entry[0], entry[1], transport,
                                timeout_ms / 1000, payload)

    def on_request_packet(self, sender, req, payload=None):
        """A v1 rpc_request packet: ack first, then version, then the method."""
        rid = req.get("id", "")
        if not rid:
            self.last_rejection = "rpc_request from %r without an id: cannot be answered" % (sender,)
            return [], None
        packets = [ack_packet(sender, rid)]
        if req.get("version", 0) != 1:
            packets.append(error_packet(sender, rid, RpcError(
                RpcError.UNSUPPORTED_VERSION, None,
                "rpc_request packet with version %r; packets carry version 1" % (req.get("version", 0),))))
            return packets, None
        if payload is None:
            payload = req.get("payload", "")
        err, inv = self._dispatch(sender, rid, req.get("method", ""),
                                  req.get("response_timeout_ms", 0), "packet", payload)
        if err is not None:
            packets.append(err)
        return packets, inv

    def on_request_stream(self, sender, attributes):
        """A `lk.rpc_request` stream header: validate, ack, version, then the method."""
        attrs = attributes or {}
        rid = attrs.get(ATTR_RPC_REQUEST_ID, "")
        method = attrs.get(ATTR_RPC_METHOD, "")
        timeout_ms = _parse_int(attrs.get(ATTR_RPC_TIMEOUT))
        version = _parse_int(attrs.get(ATTR_RPC_VERSION))
        problem = _malformed(rid, method, timeout_ms, version, attrs)
        if problem is not None:
            if not rid:
                self.last_rejection = "RPC request stream from %r dropped: %s" % (sender, problem)
                return [], None
            # as livekit-client: the built-in message, "RPC data stream malformed" in data
            return [error_packet(sender, rid, RpcError(RpcError.APPLICATION_ERROR, None,
                                                       "RPC data stream malformed: " + problem))], None
        packets = [ack_packet(sender, rid)]
        if version != 2:
            packets.append(error_packet(sender, rid, RpcError(
                RpcError.UNSUPPORTED_VERSION, None,
                "lk.rpc_request stream with version %d; streams carry version 2" % version)))
            return packets, None
        err, inv = self._dispatch(sender, rid, method, timeout_ms, "stream", None)
        if err is not None:
            packets.append(err)
        return packets, inv

    def on_refused_stream(self, sender, attributes, why):
        """A `lk.rpc_request` stream this participant could not take (too many open
        streams, cannot inflate): the error packet for its caller, if it has an id."""
        rid = (attributes or {}).get(ATTR_RPC_REQUEST_ID, "")
        if not rid:
            return []
        return [error_packet(sender, rid, RpcError(RpcError.APPLICATION_ERROR, None,
                                                   "RPC request stream refused: " + why))]

    def response(self, inv, payload):
        if inv.transport == "stream":
            return StreamResponse(inv.request_id, inv.caller_identity)
        return self.response_packets(inv, payload)

    def response_packets(self, inv, payload):
        if inv.transport != "packet":
            raise ValueError("request %s came as a stream: its answer is a lk.rpc_response stream "
                             "(use response())" % inv.request_id)
        if payload is None:
            payload = ""
        if not isinstance(payload, str) and not hasattr(payload, "size"):
            raise TypeError("RPC method %r returned %s; the response payload must be a str"
                            % (inv.method, type(payload).__name__))
        if _over(payload, MAX_V1_PAYLOAD_BYTES):
            return [error_packet(inv.caller_identity, inv.request_id, RpcError(
                RpcError.RESPONSE_PAYLOAD_TOO_LARGE, None,
                "response over %d UTF-8 bytes to a v1 request" % MAX_V1_PAYLOAD_BYTES))]
        return [response_packet(inv.caller_identity, inv.request_id, payload)]

    def error_response(self, inv, exc):
        """The rpc_response error packet for a handler failure (errors never go by stream)."""
        if isinstance(exc, RpcError):
            err = exc
        else:
            data = None
            if inv.transport == "packet":
                data = "%s: %s" % (type(exc).__name__, exc)
            err = RpcError(RpcError.APPLICATION_ERROR, None, data)
        return error_packet(inv.caller_identity, inv.request_id, err)


def _malformed(rid, method, timeout_ms, version, attrs):
    """Why the four lk.rpc_request_* attributes are unusable, or None."""
    if not rid:
        return "%s missing" % ATTR_RPC_REQUEST_ID
    if not method:
        return "%s missing" % ATTR_RPC_METHOD
    if timeout_ms is None:
        return "%s is not a number: %r" % (ATTR_RPC_TIMEOUT, attrs.get(ATTR_RPC_TIMEOUT))
    if version is None:
        return "%s is not a number: %r" % (ATTR_RPC_VERSION, attrs.get(ATTR_RPC_VERSION))
    return None
