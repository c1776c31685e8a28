"""`lkedge call`, `lkedge serve` and `lkedge room`: the host side of a room, on lib/.

All three join the room through the relay like any participant (the same lkedge
library the boards run), with a token minted from the relay's keys unless --token is
given.
"""
import argparse
import asyncio
import hashlib
import importlib.util
import inspect
import os
import sys
import time

from lkedge import link
from lkedge.config import RoomOptions
from lkedge.room import ConnectError, Room
from lkedge.rpc import RpcError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_RPC, EXIT_CONNECT = 0, 1, 2, 3, 4
DEFAULT_URL = "tcp://127.0.0.1:7880"
DEFAULT_ROOM = "lkedge"




class UsageError(Exception):
    """Bad arguments found before joining (exit 2); the message says what and what to do."""


def _number(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number of seconds" % text)
    if v != v:
        raise argparse.ArgumentTypeError("%r is not a number of seconds" % text)
    return v


def _timeout(text):
    """--timeout: it travels as whole milliseconds in a uint32."""
    v = _number(text)
    if not 0.001 <= v <= _TIMEOUT_MAX_S:
        raise argparse.ArgumentTypeError("%r must be between 0.001 and %d seconds" % (text, _TIMEOUT_MAX_S))
    return v


def _wait(text):
    v = _number(text)
    if v < 0:
        raise argparse.ArgumentTypeError("%r must be 0 or more" % text)
    return v


_TIMEOUT_MAX_S = 0xFFFFFFFF // 1000   # response_timeout_ms is a uint32


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
    p.add_argument("--cafile", default=os.environ.get("LKEDGE_CAFILE"), metavar="PEM",
                   help="CA certificate(s) to trust for tls:// and wss://, e.g. the relay's own "
                        "--tls-cert when it is self-signed (env LKEDGE_CAFILE; default: the system's)")


def prepare_connection(args):
    """Check the connection arguments and mint the token before any network use: sets
    args.token (minted unless given) and args.minted. Raises UsageError."""
    from lkedge.transport import TransportError, parse_url
    try:
        scheme = parse_url(args.url)[0]
    except TransportError as e:
        hint = ""
        if args.url.lower().startswith(("http://", "https://")):
            hint = " (http:// is the relay's /healthz and /metrics port; the link is tcp://HOST:7880 or ws://HOST:7881)"
        raise UsageError("bad --url (or LKEDGE_URL): %s%s" % (e, hint))
    if args.cafile is not None:
        if scheme not in ("tls", "wss"):
            raise UsageError("--cafile (or LKEDGE_CAFILE) is for tls:// and wss:// URLs, not %s" % args.url)
        if not os.path.isfile(args.cafile):
            raise UsageError("--cafile %s: no such file (give the PEM certificate the relay's "
                             "--tls-cert uses, or its CA)" % args.cafile)
    args.minted = not args.token
    if args.token:
        return
    from lkedge_host.relay import auth
    try:
        key, secret = auth.resolve_keys(args.api_key, args.api_secret)
        args.token = auth.mint_token(key, secret, identity=args.identity, room=args.room)
    except (ValueError, auth.KeyConfigError) as e:
        raise UsageError("cannot mint a token: %s" % e)
    args.key = key


def _join_failure(args, e):
    """The one-line reason a join failed, with what to do about it."""
    msg = str(e)
    if getattr(e, "leave_code", None) == 3 and getattr(args, "minted", False):
        msg += ("; the token was minted here with API key %r: give the relay's keys (--api-key/"
                "--api-secret or LIVEKIT_API_KEY/LIVEKIT_API_SECRET) or a --token it accepts" % args.key)
    elif "CERTIFICATE_VERIFY_FAILED" in msg and args.cafile is None:
        msg += "; to trust the relay's own (e.g. self-signed) certificate use --cafile CERT.pem"
    return msg


def room_options(args, auto_reconnect=False):
    opts = RoomOptions(client_protocol=args.protocol, read_buffer=65536, piece_size=65536,
                       auto_reconnect=auto_reconnect)
    if args.no_compression:
        opts.advertise_compression = False
        opts.compress = False
    if args.cafile is not None:
        opts.transport_options = {"cafile": args.cafile}
    return opts


async def _join(args, command, auto_reconnect=False):
    """A joined Room, or None after saying on stderr why `lkedge <command>` could not join."""
    room = Room(room_options(args, auto_reconnect))
    try:
        await room.connect(args.url, args.token)
    except (ConnectError, OSError) as e:
        print("lkedge %s: cannot join: %s" % (command, _join_failure(args, e)), file=sys.stderr)
        return None
    return room


def _usage(command, e):
    print("lkedge %s: error: %s" % (command, e), file=sys.stderr)
    return EXIT_USAGE


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
    """The request payload (text); UsageError naming the file for an unreadable @file."""
    if arg is None:
        return ""
    if arg == "-":
        try:
            return sys.stdin.read()
        except UnicodeDecodeError as e:
            raise UsageError("standard input is not UTF-8 text (%s): an RPC payload is text; "
                             "encode binary data first, e.g. base64" % e.reason)
    if arg.startswith("@"):
        path = arg[1:]
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            raise UsageError("payload file %s does not exist (@FILE reads a file; to send "
                             "text that starts with @, pipe it in with -)" % path)
        except IsADirectoryError:
            raise UsageError("payload file %s is a directory" % path)
        except UnicodeDecodeError as e:
            raise UsageError("payload file %s is not UTF-8 text (byte %d: %s): an RPC payload is "
                             "text; encode binary data first, e.g. base64" % (path, e.start, e.reason))
        except OSError as e:
            raise UsageError("cannot read payload file %s: %s" % (path, e.strerror or e))
    return arg


def _check_output(path):
    """UsageError unless `path` can be written (checked before the call, not after it)."""
    if path is None or path == "-":
        return
    if os.path.isdir(path):
        raise UsageError("--output %s is a directory" % path)
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise UsageError("--output %s: folder %s does not exist" % (path, folder))
    if not os.access(path if os.path.exists(path) else folder, os.W_OK):
        raise UsageError("--output %s is not writable" % path)


# ------------------------------------------------------------------ call
def add_call_arguments(p):
    p.add_argument("destination", help="identity of the participant to call")
    p.add_argument("method", help="method name registered there")
    p.add_argument("payload", nargs="?", default=None,
                   help="request payload: text, @file to read a file, - for stdin (default empty)")
    p.add_argument("--timeout", type=_timeout, default=15.0,
                   help="response timeout in seconds (default %(default)s)")
    p.add_argument("--wait", type=_wait, default=5.0,
                   help="seconds to wait for the destination to appear in the room (default %(default)s)")
    p.add_argument("--output", "-o", default=None, help="write the response to this file instead of stdout (- for stdout)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress or timing on stderr")
    add_connection_arguments(p, "cli-%d" % os.getpid())


async def _wait_for(room, identity, seconds):
    t_end = time.monotonic() + seconds
    while identity not in room.remote_participants and time.monotonic() < t_end:
        await asyncio.sleep(0.05)


async def _call(args, payload):
    room = await _join(args, "call")
    if room is None:
        return EXIT_CONNECT
    try:
        if room.local_participant.identity == args.destination:
            print("lkedge call: error: %r is our own identity in room %s (the token's): give --identity "
                  "or --token of another participant" % (args.destination, room.name), file=sys.stderr)
            return EXIT_USAGE
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
        to_file = args.output not in (None, "-")
        try:
            out = open(args.output, "w", encoding="utf-8") if to_file else sys.stdout
        except OSError as e:
            reader.cancel()
            print("lkedge call: error: cannot write --output %s: %s" % (args.output, e.strerror or e),
                  file=sys.stderr)
            return EXIT_ERROR
        h = hashlib.sha256()
        try:
            async for piece in reader:
                out.write(piece)
                b = piece.encode()
                h.update(b)
                down.add(len(b))
        finally:
            if to_file:
                out.close()
        if not to_file:
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
        if e.code == RpcError.RECIPIENT_NOT_FOUND:
            others = sorted(room.remote_participants)
            print("lkedge call: %r did not join room %s within --wait %g s; in the room: %s" % (
                args.destination, room.name, args.wait, ", ".join(others) if others else "nobody else"),
                file=sys.stderr)
        elif e.code == RpcError.RECIPIENT_DISCONNECTED and room.leave_code is not None:
            print("lkedge call: the relay ended our own link: LEAVE %s %s" % (room.leave_code, room.leave_reason),
                  file=sys.stderr)
        return EXIT_RPC
    finally:
        await room.disconnect()


def _token_identity(token):
    """The identity (sub) a token names, read without verifying it (the relay does), or None."""
    try:
        import jwt
        return jwt.decode(token, options={"verify_signature": False}).get("sub")
    except Exception:
        return None


def run_call(args):
    try:
        given = bool(args.token)
        payload = _read_payload(args.payload)
        _check_output(args.output)
        prepare_connection(args)
        ours = _token_identity(args.token) if given else args.identity
        if args.destination == ours:
            raise UsageError("destination %r is the identity this call would join as (joining "
                             "with it would replace that participant): %s" % (
                                 args.destination, "use a token for another identity" if given
                                 else "choose another --identity"))
    except UsageError as e:
        return _usage("call", e)
    return asyncio.run(_call(args, payload))


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
    try:
        prepare_connection(args)
    except UsageError as e:
        return _usage("room", e)
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
    # A server stays: after a link loss (relay restarted, network) it rejoins by itself.
    room = await _join(args, "serve", auto_reconnect=True)
    if room is None:
        return EXIT_CONNECT

    def say(msg):
        print("lkedge serve: " + msg, file=sys.stderr, flush=True)

    room.on("disconnected", lambda why: say("link lost: %s" % why))
    room.on("reconnecting", lambda: say("rejoining %s ..." % args.url))
    room.on("reconnected", lambda: say("rejoined room %s as %s" % (room.name, room.local_participant.identity)))
    for name, fn in methods.items():
        room.local_participant.register_rpc_method(name, _logged(name, fn))
    if hook is not None:
        try:
            r = hook(room)
            if inspect.isawaitable(r):
                await r
        except Exception as e:
            import traceback
            say("register(room) in %s failed (its traceback follows); nothing served" % args.file)
            traceback.print_exception(type(e), e, e.__traceback__.tb_next, file=sys.stderr)
            await room.disconnect()
            return EXIT_ERROR
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
    code = EXIT_OK
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 0.25)
        except asyncio.TimeoutError:
            pass
        # The Room stops rejoining after a LEAVE that would only repeat (a duplicate
        # identity, a refused token, data forbidden): nothing would be served any more,
        # so say so and stop (between its own retries it is "reconnecting").
        if (room.connection_state == "disconnected" and room.leave_code in link.FINAL_LEAVE
                and not stop.is_set()):
            why = "LEAVE %s %s" % (room.leave_code, room.leave_reason)
            hint = ""
            if room.leave_code == 2:
                hint = " (another participant joined as %r: give each its own --identity)" % room.local_participant.identity
            say("stopped: the relay will not take us back: %s%s" % (why, hint))
            code = EXIT_CONNECT
            break
    await room.disconnect()
    if code == EXIT_OK:
        say("stopped")
    return code


def _logged(name, fn):
    async def handler(data):
        t0 = time.monotonic()
        try:
            r = fn(data)
            if inspect.isawaitable(r):
                r = await r
            if r is not None and not isinstance(r, str):
                # The caller gets the standard 1500 "Application error in method handler".
                raise TypeError("%s returned %s, not str: return text (e.g. json.dumps(...))"
                                % (name, type(r).__name__))
            print("call %s from %s ok %.1f ms" % (name, data.caller_identity, (time.monotonic() - t0) * 1000),
                  file=sys.stderr, flush=True)
            return r
        except Exception as e:
            print("call %s from %s failed: %r" % (name, data.caller_identity, e), file=sys.stderr, flush=True)
            raise
    return handler


def run_serve(args):
    try:
        prepare_connection(args)
    except UsageError as e:
        return _usage("serve", e)
    return asyncio.run(_serve(args))


# CLI frame protocol (host_tools/cli.py): one module serves three commands.
COMMANDS = {
    "call": (add_call_arguments, run_call),
    "room": (add_room_arguments, run_room),
    "serve": (add_serve_arguments, run_serve),
}
