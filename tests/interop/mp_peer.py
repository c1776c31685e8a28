"""An lkedge participant driven by JSON lines: the MicroPython half of the interop suites.

Run on the unix port with the mpy-compiled library on MICROPYPATH (tests/mpybuild.py):

    LKEDGE_TOKEN=JWT micropython -X heapsize=256K tests/interop/mp_peer.py \
        --url tcp://127.0.0.1:PORT [--client-protocol 0|1|2] [--compression 0|1] [--board 0|1]

The token comes from the environment: the unix port (1.29) aborts with "FATAL: uncaught
NLR" on any command-line argument longer than about 255 characters, and a JWT is longer.

The command protocol is the Node interop peer's (tests/interop/node/src/commands.ts), so
nodepeer.NodePeer drives both: one JSON object per line on stdin ({"id", "cmd", ...}),
replies {"id", "ok": true, ...} or {"id", "ok": false, "error": {"code", "message",
"data"}} on stdout in any order (commands run concurrently), events {"event": ...}.
The first line is "joined" (or "join_failed"). Large payloads travel as file paths.

Commands (fields as in commands.ts):
  register_rpc      method, behaviour (echo | echo_sha256 | fail | fail_with | throw |
                    pattern), code/message/data (fail), message (throw), pattern/n_bytes
                    (pattern), sleep_ms (any), streaming (bool, default: the peer's)
  unregister_rpc    method
  perform_rpc       destination, method, payload | payload_file, response_file,
                    timeout_ms, streaming (default: a streaming call when the payload
                    file is over finite_limit) -> request_id (streaming calls), payload_len, payload_sha256,
                    payload (<= 4096 bytes)
  send_text         topic, payload | payload_file, attributes, destination, compress
  send_bytes        topic, payload | payload_hex | payload_file, attributes, destination,
                    compress, name, mime_type
  stream_text / stream_bytes   the same, sent through the incremental writer in
                    piece_bytes pieces
  register_stream_handler      kind (text | bytes), topic, save_dir
  participants, mem (heap free/alloc after gc.collect()), quit
Events: joined, participant_joined, participant_left, rpc_invoked (method, request_id,
caller, response_timeout (ms), payload_len/payload_sha256 once read), stream (kind,
topic, sender, stream_id, attributes, len, sha256, pieces, text | hex when <= 4096
bytes, file, info {mime_type, total_length, name, compression}), stream_error.

"Streaming" mode (the default here, as on a board) uses the library's bounded-memory
forms: streaming RPC handlers and calls, the incremental writer / send_file for
payloads over `finite_limit` bytes. The same Commands class runs in-process on CPython
(tests/interop/py_peer.py) in buffered mode, exercising the LiveKit-style whole-string
API.
"""
import asyncio
import binascii
import hashlib
import json
import os
import sys

from lkedge.config import RoomOptions
from lkedge.room import Room
from lkedge.rpc import RpcError
from lkedge.utf8 import Utf8Decoder
# This peer calls and sends whole payloads in nearly every test: it loads those optional
# parts up front, as a long-running application should, so their bytecode sits at the
# bottom of the heap instead of among the buffers of whichever test first needs them.
from lkedge import calls, sending  # noqa: E402,F401

INLINE_REPORT_LIMIT = 4096
PIECE_BYTES = 2048
BEHAVIOURS = ("echo", "echo_sha256", "fail", "fail_with", "throw", "pattern")


def _sleep_ms(ms):
    return asyncio.sleep(ms / 1000)


def _file_size(path):
    return os.stat(path)[6]


class Digest:
    """Length, sha256 and (while small) the bytes themselves of a payload seen in pieces.

    Small pieces are kept in a list, never in a growing buffer: on a board's fragmented
    heap, regrowing a bytearray needs ever larger contiguous blocks."""

    def __init__(self):
        self.h = hashlib.sha256()
        self.len = 0
        self.pieces = 0
        self._kept = []
        self.out = None
        self.hex = None

    def update(self, b):
        self.h.update(b)
        self.len += len(b)
        self.pieces += 1
        if self._kept is not None:
            if self.len <= INLINE_REPORT_LIMIT:
                self._kept.append(bytes(b))
            else:
                self._kept = None
        if self.out is not None:
            self.out.write(b)

    def kept(self):
        """The whole payload when it was at most INLINE_REPORT_LIMIT bytes, else None."""
        return b"".join(self._kept) if self._kept is not None else None

    def hexdigest(self):
        # MicroPython's sha256 is final after digest(): compute once, then remember.
        if self.hex is None:
            self.hex = binascii.hexlify(self.h.digest()).decode()
        return self.hex


def digest_of(b):
    d = Digest()
    d.update(b)
    return d


class FileText:
    """Async iterable of str pieces (cut on character boundaries) read from a file."""

    def __init__(self, path, piece=PIECE_BYTES):
        self._f = open(path, "rb")
        self._buf = bytearray(piece)
        self._dec = Utf8Decoder()

    def __aiter__(self):
        return self

    async def __anext__(self):
        while True:
            n = self._f.readinto(self._buf)
            if not n:
                self._f.close()
                self._dec.finish()
                raise StopAsyncIteration
            s = self._dec.decode(memoryview(self._buf)[:n])
            if s:
                return s


class FileBytes:
    """Async iterable of bytes pieces read from a file."""

    def __init__(self, path, piece=PIECE_BYTES):
        self._f = open(path, "rb")
        self._piece = piece

    def __aiter__(self):
        return self

    async def __anext__(self):
        b = self._f.read(self._piece)
        if not b:
            self._f.close()
            raise StopAsyncIteration
        return b


class PatternText:
    """Exactly n_bytes of UTF-8: `pattern` repeated, then as many of its characters as
    fit, then "." padding (the Node peer's patternText), produced in str pieces."""

    def __init__(self, pattern, n_bytes, piece=PIECE_BYTES):
        if not pattern:
            raise ValueError("pattern must not be empty")
        unit = len(pattern.encode())
        self._pattern = pattern
        self._whole = n_bytes // unit
        self._per_piece = max(1, piece // unit)
        left = n_bytes - self._whole * unit
        tail = ""
        for ch in pattern:
            k = len(ch.encode())
            if k > left:
                break
            tail += ch
            left -= k
        self._tail = tail + "." * left

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self._whole:
            k = min(self._whole, self._per_piece)
            self._whole -= k
            return self._pattern * k
        if self._tail:
            s, self._tail = self._tail, ""
            return s
        raise StopAsyncIteration

    async def text(self):
        parts = []
        async for s in self:
            parts.append(s)
        return "".join(parts)


class EchoText:
    """The request reader's pieces, passed straight back as the response."""

    def __init__(self, reader):
        self._reader = reader

    def __aiter__(self):
        return self

    def __anext__(self):
        return self._reader.__anext__()


def error_map(e):
    if isinstance(e, RpcError):
        return {"code": e.code, "message": e.message, "data": e.data}
    return {"code": None, "message": "%s: %s" % (type(e).__name__, e), "data": None}


def _destinations(cmd):
    d = cmd.get("destination")
    if d is None:
        return None
    return d if isinstance(d, list) else [d]


def _text_payload(cmd):
    if cmd.get("payload_file"):
        with open(cmd["payload_file"], "rb") as f:
            return f.read().decode("utf-8")
    return cmd.get("payload") or ""


def _bytes_payload(cmd):
    if cmd.get("payload_file"):
        with open(cmd["payload_file"], "rb") as f:
            return f.read()
    if cmd.get("payload_hex") is not None:
        return binascii.unhexlify(cmd["payload_hex"])
    return (cmd.get("payload") or "").encode()


class Commands:
    """The command interface over one connected Room. `emit(dict)` writes a line."""

    def __init__(self, room, emit, streaming=True, finite_limit=65536):
        self.room = room
        self.emit = emit
        self.streaming = streaming
        # Finite sends hold the whole payload; above this, incremental writer / send_file.
        self.finite_limit = finite_limit
        self.quit = asyncio.Event()
        room.on("participant_connected", self._joined)
        room.on("participant_disconnected", self._left)

    def _joined(self, p):
        self.emit({"event": "participant_joined", "identity": p.identity,
                   "client_protocol": p.client_protocol, "capabilities": p.capabilities})

    def _left(self, p):
        self.emit({"event": "participant_left", "identity": p.identity})

    async def run(self, line):
        """Run one command line; never raises (failures become ok: false replies)."""
        try:
            cmd = json.loads(line)
        except ValueError as e:
            self.emit({"id": None, "ok": False,
                       "error": {"code": None, "message": "command is not JSON: %s" % e}})
            return
        cid = cmd.get("id")
        try:
            fn = getattr(self, "cmd_" + str(cmd.get("cmd")), None)
            if fn is None:
                raise ValueError("unknown command %r" % (cmd.get("cmd"),))
            result = await fn(cmd)
            reply = {"id": cid, "ok": True}
            reply.update(result or {})
        except Exception as e:
            reply = {"id": cid, "ok": False, "error": error_map(e)}
        self.emit(reply)

    # ------------------------------------------------------------------ RPC
    async def cmd_register_rpc(self, cmd):
        behaviour = cmd.get("behaviour", "echo")
        if behaviour not in BEHAVIOURS:
            raise ValueError("unknown behaviour %r; one of %s" % (behaviour, ", ".join(BEHAVIOURS)))
        streaming = cmd.get("streaming", self.streaming)
        method = cmd["method"]

        async def handler(data):
            return await self._serve(cmd, behaviour, streaming, data)
        self.room.local_participant.register_rpc_method(method, handler, streaming=streaming)
        return {}

    async def cmd_unregister_rpc(self, cmd):
        self.room.local_participant.unregister_rpc_method(cmd["method"])
        return {}

    def _invoked(self, cmd, data, digest):
        ev = {"event": "rpc_invoked", "method": cmd["method"], "request_id": data.request_id,
              "caller": data.caller_identity,
              "response_timeout": int(data.response_timeout * 1000 + 0.5)}
        if digest is not None:
            ev["payload_len"] = digest.len
            ev["payload_sha256"] = digest.hexdigest()
        self.emit(ev)

    async def _serve(self, cmd, behaviour, streaming, data):
        digest = None
        if not streaming:
            digest = digest_of(data.payload.encode())
        elif behaviour != "echo":
            digest = Digest()
            async for s in data.reader:  # the request is read (and hashed) first
                digest.update(s.encode())
        self._invoked(cmd, data, digest)
        if cmd.get("sleep_ms"):
            await _sleep_ms(cmd["sleep_ms"])
        if behaviour == "echo":
            return EchoText(data.reader) if streaming else data.payload
        if behaviour == "echo_sha256":
            return json.dumps({"len": digest.len, "sha256": digest.hexdigest()})
        if behaviour in ("fail", "fail_with"):
            raise RpcError(cmd.get("code", 2000), cmd.get("message", "failed"), cmd.get("data"))
        if behaviour == "throw":
            raise ValueError(cmd.get("message", "handler threw"))
        source = PatternText(cmd.get("pattern", "é"), cmd.get("n_bytes", 0))
        return source if streaming else await source.text()

    async def cmd_perform_rpc(self, cmd):
        lp = self.room.local_participant
        timeout = cmd["timeout_ms"] / 1000 if cmd.get("timeout_ms") else None
        out = open(cmd["response_file"], "wb") if cmd.get("response_file") else None
        digest = Digest()
        digest.out = out
        request_id = None
        # Streaming calls only for payloads a board could not hold: small ones go through
        # the buffered perform_rpc, as an application would write them.
        streaming = cmd.get("streaming", self.streaming and self._payload_size(cmd) > self.finite_limit)
        try:
            if streaming:
                payload = FileText(cmd["payload_file"]) if cmd.get("payload_file") else cmd.get("payload", "")
                reader = await lp.perform_rpc_stream(destination_identity=cmd["destination"],
                                                     method=cmd["method"], payload=payload,
                                                     response_timeout=timeout)
                request_id = reader.request_id
                async for s in reader:
                    digest.update(s.encode())
            else:
                resp = await lp.perform_rpc(destination_identity=cmd["destination"],
                                            method=cmd["method"], payload=_text_payload(cmd),
                                            response_timeout=timeout)
                digest.update(resp.encode())
        finally:
            if out is not None:
                out.close()
        reply = {"request_id": request_id, "payload_len": digest.len,
                 "payload_sha256": digest.hexdigest()}
        if digest.len <= INLINE_REPORT_LIMIT:
            reply["payload"] = digest.kept().decode()
        return reply

    # -------------------------------------------------------------- streams
    def _payload_size(self, cmd):
        if cmd.get("payload_file"):
            return _file_size(cmd["payload_file"])
        return 0

    async def cmd_send_text(self, cmd):
        if self._payload_size(cmd) > self.finite_limit:
            return await self.cmd_stream_text(cmd)
        sid = (await self.room.local_participant.send_text(
            _text_payload(cmd), topic=cmd.get("topic", ""), attributes=cmd.get("attributes"),
            destination_identities=_destinations(cmd), compress=cmd.get("compress"))).stream_id
        return {"info": {"id": sid}, "via": "send_text"}

    async def cmd_send_bytes(self, cmd):
        lp = self.room.local_participant
        kw = {"topic": cmd.get("topic", ""), "attributes": cmd.get("attributes"),
              "destination_identities": _destinations(cmd),
              "mime_type": cmd.get("mime_type") or "application/octet-stream"}
        if self._payload_size(cmd) > self.finite_limit:
            sid = (await lp.send_file(cmd["payload_file"], name=cmd.get("name") or "unknown", **kw)).stream_id
            return {"info": {"id": sid}, "via": "send_file"}
        sid = (await lp.send_bytes(_bytes_payload(cmd), name=cmd.get("name") or "unknown",
                                  compress=cmd.get("compress"), **kw)).stream_id
        return {"info": {"id": sid}, "via": "send_bytes"}

    async def cmd_stream_text(self, cmd):
        piece = cmd.get("piece_bytes", 1024)
        source = FileText(cmd["payload_file"], piece) if cmd.get("payload_file") else None
        w = await self.room.local_participant.stream_text(
            topic=cmd.get("topic", ""), attributes=cmd.get("attributes"),
            destination_identities=_destinations(cmd))
        if source is None:
            text = cmd.get("payload", "")
            if text:
                await w.write(text)  # inline command payloads are small: one write
        else:
            async for s in source:
                await w.write(s)
        await w.aclose()
        return {"info": {"id": w.stream_id}, "via": "stream_text"}

    async def cmd_stream_bytes(self, cmd):
        piece = cmd.get("piece_bytes", 1024)
        w = await self.room.local_participant.stream_bytes(
            cmd.get("name") or "unknown", topic=cmd.get("topic", ""),
            attributes=cmd.get("attributes"), destination_identities=_destinations(cmd),
            mime_type=cmd.get("mime_type") or "application/octet-stream")
        if cmd.get("payload_file"):
            async for b in FileBytes(cmd["payload_file"], piece):
                await w.write(b)
        else:
            data = _bytes_payload(cmd)
            for at in range(0, len(data), piece):
                await w.write(data[at:at + piece])
        await w.aclose()
        return {"info": {"id": w.stream_id}, "via": "stream_bytes"}

    async def cmd_register_stream_handler(self, cmd):
        kind = cmd.get("kind", "text")
        topic = cmd.get("topic", "")
        save_dir = cmd.get("save_dir")
        if kind not in ("text", "bytes"):
            raise ValueError('kind must be "text" or "bytes", got %r' % (kind,))

        async def handler(reader, sender):
            await self._consume(reader, sender, kind, save_dir)
        if kind == "text":
            self.room.register_text_stream_handler(topic, handler)
        else:
            self.room.register_byte_stream_handler(topic, handler)
        return {}

    async def _consume(self, reader, sender, kind, save_dir):
        info = reader.info
        base = {"kind": kind, "topic": info.topic, "sender": sender, "stream_id": info.stream_id}
        digest = Digest()
        path = None
        if save_dir:
            path = save_dir.rstrip("/") + "/" + info.stream_id
            digest.out = open(path, "wb")
        try:
            if kind == "bytes":
                buf = bytearray(1024)
                mv = memoryview(buf)
                while True:
                    n = await reader.readinto(buf)
                    if not n:
                        break
                    digest.update(mv[:n])
            else:
                async for s in reader:
                    digest.update(s.encode())
        except Exception as e:
            base.update(event="stream_error", len=digest.len, error=error_map(e))
            self.emit(base)
            return
        finally:
            if digest.out is not None:
                digest.out.close()
        base.update(event="stream", attributes=dict(info.attributes), len=digest.len,
                    sha256=digest.hexdigest(), pieces=digest.pieces, file=path,
                    info={"mime_type": info.mime_type, "total_length": info.total_length,
                          "name": info.name, "compression": info.compression,
                          "timestamp": info.timestamp})
        if digest.len <= INLINE_REPORT_LIMIT:
            kept = digest.kept()
            if kind == "text":
                base["text"] = kept.decode()
            else:
                base["hex"] = binascii.hexlify(kept).decode()
        self.emit(base)

    # ---------------------------------------------------------------- misc
    async def cmd_participants(self, cmd):
        room = self.room
        return {"connected": room.connection_state == "connected",
                "local": {"identity": room.local_participant.identity,
                          "server_version": room.server_version},
                "participants": [{"identity": p.identity, "client_protocol": p.client_protocol,
                                  "capabilities": p.capabilities}
                                 for p in room.remote_participants.values()]}

    async def cmd_mem(self, cmd):
        """Heap after a collection (MicroPython; null on CPython)."""
        import gc
        gc.collect()
        free = gc.mem_free() if hasattr(gc, "mem_free") else None
        alloc = gc.mem_alloc() if hasattr(gc, "mem_alloc") else None
        return {"free": free, "alloc": alloc}

    async def cmd_quit(self, cmd):
        await self.room.disconnect()
        self.quit.set()
        return {}


def joined_event(room):
    return {"event": "joined", "identity": room.local_participant.identity,
            "sid": room.local_participant.sid, "room": room.name, "server_version": room.server_version,
            "participants": [p.identity for p in room.remote_participants.values()]}


def room_options(client_protocol, compression, board, ping_interval_ms=None):
    kw = {"client_protocol": client_protocol, "advertise_compression": bool(compression),
          "auto_reconnect": False}
    if ping_interval_ms is not None:
        kw["ping_interval_ms"] = ping_interval_ms
    if board:
        # The matrix echoes payloads of up to 20480 bytes through buffered calls and
        # handlers; the board profile gathers at most 16 KiB (max_rpc_payload, UTF-8
        # bytes: tests/device/test_room_rpc.py checks that cap).
        kw["max_rpc_payload"] = 24 * 1024
        # The matrix's text is a short pattern repeated (the Node peer's patternText):
        # deflated it shrinks 405 times, past a board's max_inflate_ratio of 100, which
        # tests/device/test_room_streams.py and test_inflate.py check
        kw["max_inflate_ratio"] = None
    return RoomOptions.for_board(**kw) if board else RoomOptions(**kw)


# ------------------------------------------------------------ the program
def _args(argv):
    opts = {"--client-protocol": "2", "--compression": "1", "--board": "1"}
    i = 1
    while i < len(argv):
        if argv[i] not in ("--url", "--client-protocol", "--compression", "--board", "--ping-interval"):
            raise SystemExit("mp_peer: unknown argument %r" % argv[i])
        opts[argv[i]] = argv[i + 1]
        i += 2
    opts["token"] = os.getenv("LKEDGE_TOKEN")
    if "--url" not in opts or not opts["token"]:
        raise SystemExit("mp_peer: --url and the LKEDGE_TOKEN environment variable are required")
    return opts


def _write_line(obj):
    sys.stdout.write(json.dumps(obj) + "\n")


async def main(argv):
    o = _args(argv)
    ping = o.get("--ping-interval")
    room = Room(room_options(int(o["--client-protocol"]), o["--compression"] == "1",
                             o["--board"] == "1", None if ping is None else int(ping)))
    cmds = Commands(room, _write_line, streaming=True)
    try:
        await room.connect(o["--url"], o["token"])
    except Exception as e:
        _write_line({"event": "join_failed", "error": error_map(e)})
        return
    _write_line(joined_event(room))
    asyncio.create_task(_read_commands(room, cmds))
    await cmds.quit.wait()
    await _sleep_ms(20)  # the quit reply goes out after the command returns


async def _read_commands(room, cmds):
    stdin = asyncio.StreamReader(sys.stdin)  # polled by the loop: never blocks it
    while True:
        line = await stdin.readline()
        if not line:  # the test runner went away: leave the room
            await room.disconnect()
            cmds.quit.set()
            return
        asyncio.create_task(cmds.run(line.decode()))


if __name__ == "__main__":
    asyncio.run(main(sys.argv))
