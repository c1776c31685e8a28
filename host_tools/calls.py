"""`lkedge call`, `lkedge serve` and `lkedge room`: the host side of a room, on lib/.

All three join the room through the relay like any participant (the same lkedge
library the boards run), with a token minted from the relay's keys unless --token is
given.
"""
import asyncio
import hashlib
import importlib.util
import inspect
import os
import sys
import time

from lkedge.config import RoomOptions
from lkedge.room import ConnectError, Room
from lkedge.rpc import RpcError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_RPC, EXIT_CONNECT = 0, 1, 2, 3, 4
DEFAULT_URL = "tcp://127.0.0.1:7880"
DEFAULT_ROOM = "lkedge"


def add_connection_arguments(p, identity_default):
    p.add_argument("--url", default=os.environ.get("LKEDGE_URL", DEFAULT_URL),
                   help="relay link URL: tcp://, tls://, ws://, wss:// (env LKEDGE_URL; default %(default)s)")
    p.add_argument("--room", default=os.environ.get("LKEDGE_ROOM", DEFAULT_ROOM),
                   help="room to join when minting a token (env LKEDGE_ROOM; default %(default)s)")
    p.add_argument("--identity", default=identity_default,
                   help="our identity when minting a token (default %(default)s)")
    p.add_argument("--token", default=os.environ.get("LKEDGE_TOKEN"),
                   help="access token to use instead of minting one (env LKEDGE_TOKEN)")
    p.add_argument("--api-key", default=None, help="API key for minting (else LIVEKIT_API_KEY, else dev key)")
    p.add_argument("--api-secret", default=None, help="API secret for minting (else LIVEKIT_API_SECRET)")
    p.add_argument("--protocol", type=int, default=2, choices=(0, 1, 2),
                   help="client_protocol to advertise (default %(default)s)")
    p.add_argument("--no-compression", action="store_true",
                   help="do not advertise or use DEFLATE_RAW compression")


def _token(args):
    if args.token:
        return args.token
    from lkedge_host.relay import auth
    key, secret = auth.resolve_keys(args.api_key, args.api_secret)
    return auth.mint_token(key, secret, identity=args.identity, room=args.room)


async def _join(args, command):
    """A joined Room, or None after saying on stderr why `lkedge <command>` could not join."""
    opts = RoomOptions(client_protocol=args.protocol, read_buffer=65536, piece_size=65536,
                       auto_reconnect=False)
    if args.no_compression:
        opts.advertise_compression = False
        opts.compress = False
    room = Room(opts)
    try:
        await room.connect(args.url, _token(args))
    except (ConnectError, OSError) as e:
        print("lkedge %s: cannot join: %s" % (command, e), file=sys.stderr)
        return None
    return room


def _human(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0


class Progress:
    """A progress line on stderr for large transfers (redrawn in place on a tty)."""

    def __init__(self, label, total=None, min_bytes=65536):
        self.label = label
        self.total = total
        self.done = 0
        self.t0 = time.monotonic()
        self.shown = False
        self.min_bytes = min_bytes
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def add(self, n):
        self.done += n
        now = time.monotonic()
        if self.done >= self.min_bytes and (now - self._last > 0.2):
            self._last = now
            self._draw(False)

    def _draw(self, final):
        rate = self.done / max(time.monotonic() - self.t0, 1e-6)
        if self.total:
            pct = 100.0 * self.done / self.total
            width = 30
            fill = int(width * self.done / self.total)
            line = "%s [%s%s] %5.1f%% %s/%s %s/s" % (self.label, "#" * fill, "." * (width - fill), pct,
                                                  _human(self.done), _human(self.total), _human(rate))
        else:
            line = "%s %s %s/s" % (self.label, _human(self.done), _human(rate))
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if final else ""))
        elif final:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
        self.shown = True

    def finish(self):
        if self.done >= self.min_bytes:
            self._draw(True)


class _TextPieces:
    """The request payload as an async iterable of str pieces, counting progress."""

    def __init__(self, text, progress, piece=65536):
        self.text = text
        self.pos = 0
        self.progress = progress
        self.piece = piece

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.pos >= len(self.text):
            raise StopAsyncIteration
        s = self.text[self.pos:self.pos + self.piece]
        self.pos += len(s)
        self.progress.add(len(s.encode()))
        return s


def _read_payload(arg):
    if arg is None:
        return ""
    if arg == "-":
        return sys.stdin.read()
    if arg.startswith("@"):
        with open(arg[1:], encoding="utf-8") as f:
            return f.read()
    return arg


# ------------------------------------------------------------------ call
def add_call_arguments(p):
    p.add_argument("destination", help="identity of the participant to call")
    p.add_argument("method", help="method name registered there")
    p.add_argument("payload", nargs="?", default=None,
                   help="request payload: text, @file to read a file, - for stdin (default empty)")
    p.add_argument("--timeout", type=float, default=15.0, help="response timeout in seconds (default %(default)s)")
    p.add_argument("--wait", type=float, default=5.0,
                   help="seconds to wait for the destination to appear in the room (default %(default)s)")
    p.add_argument("--output", "-o", default=None, help="write the response to this file instead of stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress or timing on stderr")
    add_connection_arguments(p, "cli-%d" % os.getpid())


async def _wait_for(room, identity, seconds):
    t_end = time.monotonic() + seconds
    while identity not in room.remote_participants and time.monotonic() < t_end:
        await asyncio.sleep(0.05)


async def _call(args):
    payload = _read_payload(args.payload)
    room = await _join(args, "call")
    if room is None:
        return EXIT_CONNECT
    try:
        await _wait_for(room, args.destination, args.wait)
        size = len(payload.encode())
        up = Progress("sending", size)
        t0 = time.monotonic()
        reader = await room.local_participant.perform_rpc_stream(
            destination_identity=args.destination, method=args.method,
            payload=_TextPieces(payload, up) if size > 65536 else payload,
            response_timeout=args.timeout)
        if not args.quiet:
            up.finish()
        down = Progress("receiving")
        out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
        h = hashlib.sha256()
        try:
            async for piece in reader:
                out.write(piece)
                b = piece.encode()
                h.update(b)
                down.add(len(b))
        finally:
            if args.output:
                out.close()
        if not args.output:
            out.write("\n")
            out.flush()
        if not args.quiet:
            down.finish()
            print("lkedge call: %s.%s ok in %.3f s (%s sent, %s received, sha256 %s)" % (
                args.destination, args.method, time.monotonic() - t0, _human(size),
                _human(down.done), h.hexdigest()[:16]), file=sys.stderr)
        return EXIT_OK
    except RpcError as e:
        print("lkedge call: RPC error %d: %s%s" % (e.code, e.message, (" (%s)" % e.data) if e.data else ""),
              file=sys.stderr)
        return EXIT_RPC
    finally:
        await room.disconnect()


def run_call(args):
    return asyncio.run(_call(args))


# ------------------------------------------------------------------ room
def add_room_arguments(p):
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_connection_arguments(p, "cli-room-%d" % os.getpid())


async def _room(args):
    room = await _join(args, "room")
    if room is None:
        return EXIT_CONNECT
    try:
        await asyncio.sleep(0.1)
        ps = sorted(room.remote_participants.values(), key=lambda p: p.identity)
        if args.json:
            import json
            print(json.dumps({"room": room.name, "participants": [
                {"identity": p.identity, "sid": p.sid, "client_protocol": p.client_protocol,
                 "capabilities": p.capabilities, "attributes": p.attributes} for p in ps]}))
        else:
            print("room %s: %d other participant(s)" % (room.name, len(ps)))
            print("%-24s %-20s %-9s %s" % ("IDENTITY", "SID", "PROTOCOL", "CAPABILITIES"))
            for p in ps:
                caps = ",".join({1: "packet_trailer", 2: "deflate_raw"}.get(c, str(c)) for c in p.capabilities) or "-"
                print("%-24s %-20s %-9d %s" % (p.identity, p.sid, p.client_protocol, caps))
        return EXIT_OK
    finally:
        await room.disconnect()


def run_room(args):
    return asyncio.run(_room(args))


# ------------------------------------------------------------------ serve
def add_serve_arguments(p):
    p.add_argument("file", help="a Python file: each public top-level function f(data) becomes "
                               "an RPC method named after it (rpc_name attribute overrides); an "
                               "optional register(room) is called for anything else")
    add_connection_arguments(p, "host")


def load_methods(path):
    """(methods dict, register hook or None) from a handler file."""
    if not os.path.exists(path):
        raise FileNotFoundError("no such handler file: %s" % path)
    spec = importlib.util.spec_from_file_location("lkedge_serve_methods", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    methods = {}
    for name, fn in vars(mod).items():
        if name.startswith("_") or name == "register" or not inspect.isfunction(fn):
            continue
        if fn.__module__ != mod.__name__:
            continue  # imported helpers are not methods
        methods[getattr(fn, "rpc_name", name)] = fn
    return methods, getattr(mod, "register", None)


async def _serve(args):
    try:
        methods, hook = load_methods(args.file)
    except Exception as e:
        print("lkedge serve: cannot load %s: %s" % (args.file, e), file=sys.stderr)
        return EXIT_USAGE
    if not methods and hook is None:
        print("lkedge serve: %s defines no public functions" % args.file, file=sys.stderr)
        return EXIT_USAGE
    room = await _join(args, "serve")
    if room is None:
        return EXIT_CONNECT
    for name, fn in methods.items():
        room.local_participant.register_rpc_method(name, _logged(name, fn))
    if hook is not None:
        r = hook(room)
        if inspect.isawaitable(r):
            await r
    print("lkedge serve: %s in room %s serving %s" % (room.local_participant.identity, room.name,
                                                      ", ".join(sorted(methods)) or "(register hook)"), flush=True)
    stop = asyncio.Event()
    try:
        import signal
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    except (NotImplementedError, RuntimeError):
        pass
    await stop.wait()
    await room.disconnect()
    return EXIT_OK


def _logged(name, fn):
    async def handler(data):
        t0 = time.monotonic()
        try:
            r = fn(data)
            if inspect.isawaitable(r):
                r = await r
            print("call %s from %s ok %.1f ms" % (name, data.caller_identity, (time.monotonic() - t0) * 1000),
                  file=sys.stderr, flush=True)
            return r
        except Exception as e:
            print("call %s from %s failed: %r" % (name, data.caller_identity, e), file=sys.stderr, flush=True)
            raise
    return handler


def run_serve(args):
    return asyncio.run(_serve(args))


# CLI frame protocol (host_tools/cli.py): one module serves three commands.
COMMANDS = {
    "call": (add_call_arguments, run_call),
    "room": (add_room_arguments, run_room),
    "serve": (add_serve_arguments, run_serve),
}
