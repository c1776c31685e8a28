"""The caller side of RPC v1/v2 (shared/spec/RPC.md) as a sans-I/O state machine.

Imported on a participant's first perform_rpc: a board that only answers calls does not
pay for it. Time comes in as `now_ms`; packets in and out are DataPacket dicts. The
choices where the spec is open are listed in lkedge.rpc.

Caller: RpcClient(new_id=uuid4)          new_id: request id factory (tests pass their own)
    start(now_ms, destination, dest_client_protocol, method, payload_len,
          response_timeout_ms=15000, sending=False) -> PendingCall
        dest_client_protocol None (not in the room) -> raises RpcError 1401;
        payload_len (UTF-8 bytes) > 15360 to a v1 destination -> raises RpcError 1402.
        Nothing is registered when it raises. Otherwise the ack AND response state are
        registered before it returns, so the adapter sends afterwards. The ack timer
        runs from start(). The response timer runs from start() too, unless
        sending=True: then it is not armed until sent(), as client-sdk-js arms it only
        once the request is published (a long request stream cannot time out while
        it is still going out; acks and responses are taken meanwhile).
    sent(now_ms, request_id)            the request's last byte went out: the response
                                        timer (re)starts from here.
    on_ack(now_ms, sender, request_id) -> bool             True when it cleared an ack
    on_response(now_ms, sender, rpc_response_dict) -> Completion or None
        An ack or response handled at or after a deadline the call has reached is too
        late: the ack is ignored (handle_timer then completes the call), the response
        completes it with the timeout instead, whether or not handle_timer ran first.
    _heard(request_id, now_ms)            a streaming call's answer is coming: its
                                        response timer restarts
    accept_response_stream(sender, request_id, now_ms=None) -> PendingCall or None
        a `lk.rpc_response` stream header: the adapter reads the payload, then calls
        complete(); None = ignore the stream (unknown id, not from the destination, a
        second response stream for a call that already has one, or, given now_ms, a
        call that has reached a deadline: handle_timer completes it).
    on_refused_stream(sender, request_id, why) -> Completion or None
        a response stream of ours the adapter could not take: 1500 "Response stream
        refused" (why as data) for a call from that sender, else None.
    complete(request_id, payload=None, error=None) -> Completion or None
    handle_timer(now_ms) -> [Completion]     1501 (no ack 7000 ms after start), 1502
    next_deadline() -> int ms or None
    on_participant_left(identity) -> [Completion]     1503 for calls to that identity
    fail_all(error) -> [Completion]                   every pending call, with `error`
    cancel(request_id) -> bool                        drops the state, no completion
    get(request_id) -> PendingCall or None;  len(client) = pending calls

    PendingCall: .request_id .destination .method .version (1 or 2) .timeout_ms
        .wire_timeout_ms (= max(timeout_ms, 8000)) .acked;
        request_packet(payload) -> DataPacket dict (v1 only; payload a str or a Blob);
        stream_attributes() -> the four lk.rpc_request_* attributes (v2 only).
    Completion: .request_id, .payload (str or None), .error (RpcError or None).

    Every pending call yields exactly one Completion (or is cancelled); anything late
    or unknown (ack, response, stream, timer) returns None / [] and never raises.
"""
from .consts import (ATTR_RPC_METHOD, ATTR_RPC_REQUEST_ID, ATTR_RPC_TIMEOUT,
                     ATTR_RPC_VERSION, CLIENT_PROTOCOL_DATA_STREAM_RPC, MAX_V1_PAYLOAD_BYTES,
                     RPC_ACK_TIMEOUT_MS, RPC_DEFAULT_TIMEOUT_MS, RPC_MIN_WIRE_TIMEOUT_MS)
from .ids import uuid4
from .rpc import RpcError, _check_method

_UINT32_MAX = 0xFFFFFFFF


class Completion:
    """A call's one and only outcome: payload (success) or error (RpcError)."""

    def __init__(self, request_id, payload=None, error=None):
        self.request_id = request_id
        self.payload = payload
        self.error = error

    def __repr__(self):
        return "Completion(%r, payload=%r, error=%r)" % (self.request_id, self.payload, self.error)


class PendingCall:
    """One outgoing call between start() and its Completion."""

    def __init__(self, request_id, destination, version, method, timeout_ms, now_ms):
        self.request_id = request_id
        self.destination = destination
        self.version = version
        self.method = method
        self.timeout_ms = timeout_ms
        self.wire_timeout_ms = max(timeout_ms, RPC_MIN_WIRE_TIMEOUT_MS)
        self.acked = False
        self.responding = False   # a response stream was accepted: no second one
        self.ack_deadline = now_ms + RPC_ACK_TIMEOUT_MS
        self.response_deadline = now_ms + timeout_ms
        self.sending = False      # the response timer waits for sent()

    def request_packet(self, payload):
        """The v1 rpc_request DataPacket; `payload` a str or a Blob of UTF-8 bytes."""
        if self.version != 1:
            raise ValueError("call %s goes to a v2 destination: send a lk.rpc_request text stream "
                             "with stream_attributes(), not an rpc_request packet" % self.request_id)
        return {"destination_identities": [self.destination],
                "rpc_request": {"id": self.request_id, "method": self.method, "payload": payload,
                                "response_timeout_ms": self.wire_timeout_ms, "version": 1}}

    def stream_attributes(self):
        """Attributes of the v2 `lk.rpc_request` text stream to the destination."""
        if self.version != 2:
            raise ValueError("call %s goes to a v1 destination: send request_packet(), not a stream"
                             % self.request_id)
        return {ATTR_RPC_REQUEST_ID: self.request_id, ATTR_RPC_METHOD: self.method,
                ATTR_RPC_TIMEOUT: str(self.wire_timeout_ms), ATTR_RPC_VERSION: "2"}

    def deadline(self):
        """The next timer of this call, or None when none is armed."""
        if self.sending:
            return None if self.acked else self.ack_deadline
        if self.acked:
            return self.response_deadline
        return min(self.ack_deadline, self.response_deadline)

    def __repr__(self):
        return "PendingCall(%r to %r, v%d, %r)" % (self.request_id, self.destination, self.version, self.method)


class RpcClient:
    """The caller side: pending acks and responses, their timers, exactly-once outcomes."""

    def __init__(self, new_id=uuid4):
        self._calls = {}
        self._new_id = new_id

    def __len__(self):
        return len(self._calls)

    def get(self, request_id):
        return self._calls.get(request_id)

    def start(self, now_ms, destination, dest_client_protocol, method, payload_len,
              response_timeout_ms=RPC_DEFAULT_TIMEOUT_MS, sending=False):
        _check_method(method)
        if not isinstance(response_timeout_ms, int) or not 0 < response_timeout_ms <= _UINT32_MAX:
            raise ValueError("response timeout must be a positive int of ms (uint32), got %r"
                             % (response_timeout_ms,))
        if dest_client_protocol is None:
            raise RpcError(RpcError.RECIPIENT_NOT_FOUND, None,
                           "no participant %r in the room" % (destination,))
        version = 2 if dest_client_protocol >= CLIENT_PROTOCOL_DATA_STREAM_RPC else 1
        if version == 1 and payload_len > MAX_V1_PAYLOAD_BYTES:
            raise RpcError(RpcError.REQUEST_PAYLOAD_TOO_LARGE, None,
                           "%d bytes by RPC v1 (client_protocol %d, the lower of the caller's and the "
                           "destination's); the limit is %d"
                           % (payload_len, dest_client_protocol, MAX_V1_PAYLOAD_BYTES))
        rid = self._new_id()
        while rid in self._calls:  # ids are random UUIDs; never reuse a pending one
            rid = self._new_id()
        call = PendingCall(rid, destination, version, method, response_timeout_ms, now_ms)
        call.sending = sending
        self._calls[rid] = call
        return call

    def sent(self, now_ms, request_id):
        call = self._calls.get(request_id)
        if call is not None:
            call.sending = False
            call.response_deadline = now_ms + call.timeout_ms

    def _mine(self, sender, request_id):
        call = self._calls.get(request_id)
        if call is None or call.destination != sender:
            return None
        return call

    def on_ack(self, now_ms, sender, request_id):
        call = self._mine(sender, request_id)
        if call is None or call.acked or _due(call, now_ms):
            return False  # unknown, repeated, or after a deadline: handle_timer decides
        call.acked = True
        return True

    def on_response(self, now_ms, sender, resp):
        call = self._mine(sender, resp.get("request_id", ""))
        if call is None:
            return None
        code = _due(call, now_ms)
        if code:
            # The deadline passed before this response was handled: the call timed out,
            # whether or not handle_timer ran first (the outcome depends on the times
            # given, not on the order the adapter happens to call in).
            return self.complete(call.request_id, error=RpcError(code))
        if "error" in resp:
            return self.complete(resp.get("request_id", ""), error=RpcError.from_proto(resp["error"]))
        if "payload" in resp:
            return self.complete(resp.get("request_id", ""), payload=resp["payload"])
        return None  # compressed_payload only (never sent by SDKs) or no value: ignored

    def accept_response_stream(self, sender, request_id, now_ms=None):
        call = self._mine(sender, request_id)
        if call is None or call.responding or (now_ms is not None and _due(call, now_ms)):
            return None  # unknown, foreign, a second response stream, or too late
        call.acked = True  # a response is arriving: the handler got the request
        call.responding = True
        return call

    def _heard(self, request_id, now_ms):
        """A streaming call's answer is coming (its stream opened, a piece arrived or was
        read): its response timer restarts, so for perform_rpc_stream response_timeout
        bounds the wait for the answer to start and each silence in it, not the whole
        transfer (perform_rpc, as livekit-client, bounds the whole answer)."""
        call = self._calls.get(request_id)
        if call is not None:
            call.response_deadline = now_ms + call.timeout_ms

    def on_refused_stream(self, sender, request_id, why):
        """A `lk.rpc_response` stream this participant could not take (no stream slot,
        cannot inflate): the call fails now rather than at its response timer."""
        if self.accept_response_stream(sender, request_id) is None:
            return None
        return self.complete(request_id, error=RpcError(RpcError.APPLICATION_ERROR,
                                                        "Response stream refused", why))

    def complete(self, request_id, payload=None, error=None):
        call = self._calls.pop(request_id, None)
        if call is None:
            return None
        if error is None and payload is None:
            payload = ""
        return Completion(request_id, None if error is not None else payload, error)

    def cancel(self, request_id):
        return self._calls.pop(request_id, None) is not None

    def next_deadline(self):
        best = None
        for call in self._calls.values():
            d = call.deadline()
            if d is not None and (best is None or d < best):
                best = d
        return best

    def handle_timer(self, now_ms):
        due = []
        for call in self._calls.values():
            code = _due(call, now_ms)
            if code == RpcError.CONNECTION_TIMEOUT:
                due.append((call.ack_deadline, call.request_id, code))
            elif code:
                due.append((call.response_deadline, call.request_id, code))
        due.sort()
        return [self.complete(rid, error=RpcError(code)) for _, rid, code in due]

    def on_participant_left(self, identity):
        ids = [rid for rid, c in self._calls.items() if c.destination == identity]
        return [self.complete(rid, error=RpcError(RpcError.RECIPIENT_DISCONNECTED)) for rid in ids]

    def fail_all(self, error):
        ids = list(self._calls)
        return [self.complete(rid, error=error) for rid in ids]


def _due(call, now_ms):
    """The timeout a call has reached at now_ms (CONNECTION_TIMEOUT when no ack came by
    its deadline, RESPONSE_TIMEOUT), or 0. When both have passed the earlier deadline
    decides; on a tie CONNECTION_TIMEOUT (client-sdk-js arms the ack timer first)."""
    ack_due = not call.acked and now_ms >= call.ack_deadline
    if ack_due and (call.sending or now_ms < call.response_deadline
                    or call.ack_deadline <= call.response_deadline):
        return RpcError.CONNECTION_TIMEOUT
    if not call.sending and now_ms >= call.response_deadline:
        return RpcError.RESPONSE_TIMEOUT
    return 0
