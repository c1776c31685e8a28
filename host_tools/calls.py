"""`lkedge call`, `lkedge serve` and `lkedge room`: the host side of a room, on lib/.

All three join the room through the relay like any participant (the same lkedge
library the boards run), with a token minted from the relay's keys unless --token is
given.
"""
import argparse
import asyncio
import codecs
import hashlib
import importlib.util
import inspect
import itertools
import os
import shutil
import sys
import threading
import time

from lkedge import link
from lkedge.clock import wait_for   # (asyncio's before 3.12 can lose a cancel)
from lkedge.config import RoomOptions
from lkedge.consts import CLIENT_PROTOCOL_DATA_STREAM_RPC, MAX_V1_PAYLOAD_BYTES, RPC_ACK_TIMEOUT_MS
from lkedge.sending import _whole_request
from lkedge.readers import PayloadReader
from lkedge.room import ConnectError, Room
from lkedge.rpc import RpcError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_RPC, EXIT_CONNECT = 0, 1, 2, 3, 4
DEFAULT_URL = "tcp://127.0.0.1:7880"
DEFAULT_ROOM = "lkedge"
_PIECE = 65536   # bytes: payloads over this are streamed in pieces of about this size


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
    p.set_defaults(auto_identity=identity_default)  # an identity nobody chose: no one else has it


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
        import ssl
        try:
            ssl.create_default_context(cafile=args.cafile)
        except (ssl.SSLError, OSError, ValueError) as e:
            raise UsageError("--cafile %s holds no certificate to trust (%s): give the PEM certificate "
                             "the relay's --tls-cert uses, or its CA" % (args.cafile, e))
    if args.token == "":
        raise UsageError("--token (or LKEDGE_TOKEN) is empty: give a token, or neither to mint one "
                         "with the relay's keys")
    args.minted = not args.token
    args.join_token = args.token
    if args.token:
        return
    from lkedge_host.relay import auth
    try:
        key, secret = auth.resolve_keys(args.api_key, args.api_secret)
        args.token = auth.mint_token(key, secret, identity=args.identity, room=args.room)
    except (ValueError, auth.KeyConfigError) as e:
        raise UsageError("cannot mint a token: %s" % e)
    args.key = key
    # Minted here: every join mints afresh (Room.connect calls it at each rejoin), so a
    # `lkedge serve` running for days never rejoins with an expired token.
    args.join_token = lambda: auth.mint_token(key, secret, identity=args.identity, room=args.room)


def _expired_hint(args):
    """What to do about a token the relay refused as expired (LEAVE 3 "token expired")."""
    if getattr(args, "minted", False):
        from lkedge_host.relay import auth
        return ("the token was minted here a moment ago, valid for %d h: this machine's clock and the "
                "relay's disagree by more than that" % (auth.DEFAULT_TTL_S // 3600))
    return ("the --token (or LKEDGE_TOKEN) has expired: mint a fresh one (`lkedge token --identity ID "
            "--room ROOM --ttl 30d`), or give none: lkedge then mints one with the relay's keys at "
            "every join, as a room that stays joined needs")


def _join_failure(args, e, room=None):
    """The one-line reason a join failed, with what to do about it."""
    msg = str(e)
    if (getattr(e, "leave_code", None) == 3 and room is not None and "expired" in room.leave_reason):
        # the relay's words, and ours instead of the library's (its hint is for code)
        msg = "the relay refused to join: LEAVE 3 %s; %s" % (room.leave_reason, _expired_hint(args))
    elif getattr(e, "leave_code", None) == 3 and getattr(args, "minted", False) and any(
            w in msg for w in ("issuer", "signature")):   # not for a room the relay does not serve
        msg += ("; the token was minted here with API key %r: give the relay's keys (--api-key/"
                "--api-secret or LIVEKIT_API_KEY/LIVEKIT_API_SECRET) or a --token it accepts" % args.key)
    elif "CERTIFICATE_VERIFY_FAILED" in msg:
        if args.cafile is None:
            msg += "; to trust the relay's own (e.g. self-signed) certificate use --cafile CERT.pem"
    elif _tls_port(args.url, msg):
        scheme = "wss" if args.url.lower().startswith("ws:") else "tls"
        msg = ("%s speaks TLS: that is a relay's %s port; use %s://%s" % (
            args.url, scheme + "://", scheme, args.url.split("://", 1)[1]))
    elif _http_port(args.url, msg):
        # said instead of the link's own account ("closed without a LEAVE ... the relay
        # stopped"), which is not what happened
        msg = ("%s answers HTTP: that is a relay's WebSocket or HTTP port, not its link port "
               "(the one `lkedge relay` prints as \"link tcp://...\"; its WebSocket port takes "
               "ws://)" % args.url)
    elif args.url.lower().startswith("ws:") and "handshake" in msg:
        msg += ("; is %s a relay's WebSocket port? (`lkedge relay` prints it as \"ws://...\"; "
                "its link port takes tcp://)" % args.url)
    elif args.url.lower().startswith(("tls:", "wss:")) and any(
            t in msg for t in ("TLS handshake failed", "ConnectionResetError", "EOF")):
        msg += ("; %sthe relay may not speak TLS there (a relay without --tls-cert takes tcp:// "
                "on its link port and ws:// on its WebSocket port)" % (
                    "" if "TLS handshake failed" in msg else "the TLS handshake failed: "))
    return msg


def _tls_port(url, msg):
    """A tcp:// or ws:// join that failed at a port that speaks TLS (looked at only then)."""
    if not url.lower().startswith(("tcp:", "ws:")) or "refused" in msg.lower():
        return False
    from lkedge.transport import parse_url
    from lkedge_host import relayprobe
    _, host, port, _ = parse_url(url)
    return relayprobe.speaks_tls(host, port)


def _http_port(url, msg):
    """A tcp:// join that got no JOINED from a port that speaks HTTP (looked at only
    after such a failure: the probe would be a junk frame to a relay's link port)."""
    if not url.lower().startswith("tcp:") or not ("JOINED" in msg or "closed" in msg):
        return False
    from lkedge.transport import parse_url
    from lkedge_host import relayprobe
    _, host, port, _ = parse_url(url)
    return relayprobe.answers_http(host, port)


def room_options(args, auto_reconnect=False):
    opts = RoomOptions(client_protocol=args.protocol, read_buffer=65536, piece_size=65536,
                       auto_reconnect=auto_reconnect)
    if args.no_compression:
        opts.advertise_compression = False
        opts.compress = False
    if args.cafile is not None:
        opts.transport_options = {"cafile": args.cafile}
    return opts


def _claims(token):
    """What a token says (identity "sub", issuer "iss", room), read without verifying it (the
    relay does); {} when it is not a JWT."""
    try:
        import jwt
        return jwt.decode(token, options={"verify_signature": False})
    except Exception:
        return {}


def _refuse_taken(args, taken, whose):
    """UsageError when the identity our token names is in `taken`: joining with it would push
    that participant out of the room (the relay ends its link with LEAVE 2)."""
    ours = _claims(args.token).get("sub")
    if ours in taken:
        raise UsageError("%r, the identity we would join as, is %s: joining with it would push that "
                         "participant out of the room (LEAVE 2); %s" % (
                             ours, whose, "choose another --identity" if args.minted
                             else "use a token for another identity"))


def _probe_token(args):
    """A token for a throwaway identity in the room ours names, minted with the keys that
    signed ours; None for an identity nobody chose or keys that are not ours to use."""
    claims = _claims(args.token)
    room = (claims.get("video") or {}).get("room")
    if claims.get("sub") == args.auto_identity or not room:
        return None
    from lkedge_host.relay import auth
    try:
        key, secret = auth.resolve_keys(args.api_key, args.api_secret)
    except auth.KeyConfigError:
        return None
    if claims.get("iss") != key:
        return None
    return auth.mint_token(key, secret, identity="%s-probe" % args.auto_identity, room=room)


async def _check_identity_free(args, command):
    """Before joining under a chosen identity (--identity, --token), look at the room as a
    throwaway participant and refuse (UsageError) when that identity is already in it. False
    after saying why the room could not be joined."""
    token = _probe_token(args)
    if token is None:
        return True
    room = await _join(argparse.Namespace(**dict(vars(args), token=token, join_token=token)), command)
    if room is None:
        return False
    try:
        present = await _others(room)
    finally:
        await room.disconnect()
    _refuse_taken(args, {p.identity for p in present}, "already in room %s" % room.name)
    return True


async def _others(room):
    """The other participants, once those listed after JOINED (a big room) have come in."""
    await asyncio.sleep(0.1)
    return sorted(room.remote_participants.values(), key=lambda p: p.identity)


async def _join(args, command, auto_reconnect=False):
    """A joined Room, or None after saying on stderr why `lkedge <command>` could not join."""
    room = Room(room_options(args, auto_reconnect))
    try:
        await room.connect(args.url, args.join_token)   # set by prepare_connection
    except (ConnectError, OSError) as e:
        print("lkedge %s: cannot join: %s" % (command, _join_failure(args, e, room)), file=sys.stderr)
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

    def __init__(self, label, total=None, min_bytes=_PIECE, quiet=False):
        self.label = label
        self.total = total
        self.done = 0
        self.t0 = time.monotonic()
        self.shown = False
        self.min_bytes = min_bytes
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def add(self, n):
        self.done += n
        now = time.monotonic()
        if self.done >= self.min_bytes and (now - self._last > 0.2):
            self._last = now
            self._draw(False)

    def _draw(self, final):
        if self.quiet:
            return
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
            sys.stderr.write("\r" + line + "\033[K" + ("\n" if final else ""))
        elif final:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
        self.shown = True

    def finish(self, label=None):
        self.label = label or self.label
        if self.done >= self.min_bytes:
            self._draw(True)


class _Waiting:
    """On a terminal, once the request is out: a line counting the seconds until the answer
    starts (the relay may still be delivering the request, the handler working on it)."""

    def __init__(self, who, show):
        self.task = asyncio.ensure_future(self._tick(who)) if show else None

    async def _tick(self, who):
        t0 = time.monotonic()
        while True:
            await asyncio.sleep(0.25)
            sys.stderr.write("\rwaiting for %s's answer %.1f s\033[K" % (who, time.monotonic() - t0))
            sys.stderr.flush()

    def stop(self):
        if self.task is not None:
            self.task.cancel()
            self.task = None
            sys.stderr.write("\r\033[K")  # the line is cleared before the answer is written
            sys.stderr.flush()


class _Pieces:
    """str pieces as the async iterable perform_rpc_stream sends. A piece counts in `progress`
    once the link has written it: the next one is asked for only then."""

    def __init__(self, pieces, progress):
        self.pieces = pieces
        self.progress = progress
        self.held = 0

    def __aiter__(self):
        return self

    async def __anext__(self):
        self.progress.add(self.held)
        s = next(self.pieces, None)
        self.held = 0 if s is None else len(s.encode())
        if s is None:
            raise StopAsyncIteration
        return s


class _Request:
    """The request payload: `size` UTF-8 bytes of `text`, or of the file at `path` (a large
    @file, read again in pieces while it is sent: any size takes bounded memory)."""

    def __init__(self, text="", path=None, size=None):
        self.text = text
        self.path = path
        self.size = len(text.encode()) if path is None else size

    def payload(self, progress):
        """What perform_rpc_stream sends: a small request as one str, a larger one in pieces."""
        if self.path is not None:
            return _Pieces(_file_pieces(self.path), progress)
        if self.size <= _PIECE:
            return self.text
        t = self.text
        return _Pieces((t[i:i + _PIECE] for i in range(0, len(t), _PIECE)), progress)


_PAYLOAD_IS_TEXT = ": an RPC payload is text; encode binary data first, e.g. base64"


def _utf8_pieces(chunks, what, why=_PAYLOAD_IS_TEXT):
    """str pieces of an iterable of bytes, decoded as UTF-8 as they come; UsageError naming
    `what` and the offset of its first byte that is not UTF-8."""
    dec = codecs.getincrementaldecoder("utf-8")()
    at = 0
    for b in itertools.chain(chunks, (None,)):
        held = len(dec.getstate()[0])   # bytes of a character cut by the previous chunk
        try:
            s = dec.decode(b or b"", final=b is None)
        except UnicodeDecodeError as e:
            raise UsageError("%s is not UTF-8 text (byte %d: %s)%s" % (what, at - held + e.start, e.reason, why))
        at += len(b or b"")
        if s:
            yield s


def _chunks(f):
    return iter(lambda: f.read(_PIECE), b"")


def _file_pieces(path):
    """The text of payload file `path` in str pieces; UsageError naming the file."""
    try:
        with open(path, "rb") as f:
            yield from _utf8_pieces(_chunks(f), "payload file %s" % path)
    except FileNotFoundError:
        raise UsageError("payload file %s does not exist (@FILE reads a file; to send "
                         "text that starts with @, pipe it in with -)" % path)
    except IsADirectoryError:
        raise UsageError("payload file %s is a directory" % path)
    except OSError as e:
        raise UsageError("cannot read payload file %s: %s" % (path, e.strerror or e))


def _read_payload(arg):
    """The request (_Request), checked before joining: UsageError for an unreadable @file or
    a payload that is not UTF-8 text. A large regular @file is streamed from the file."""
    if arg is None:
        return _Request()
    if arg == "-":
        return _Request("".join(_utf8_pieces(_chunks(sys.stdin.buffer), "standard input")))
    if not arg.startswith("@"):
        return _Request("".join(_utf8_pieces([os.fsencode(arg)], "the payload argument")))
    path = arg[1:]
    if os.path.isfile(path) and os.path.getsize(path) > _PIECE:
        for _ in _file_pieces(path):  # all UTF-8 (one pass, in pieces)
            pass
        return _Request(path=path, size=os.path.getsize(path))
    return _Request("".join(_file_pieces(path)))


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


class OutputError(Exception):
    """The response could not be written (exit 1); the message names where and why."""


class _Sink:
    """Where the response goes, as bytes. A regular --output FILE is written as a temporary
    file beside it, renamed over FILE by commit() only: a failed or interrupted call leaves
    FILE as it was. Standard output, and a device or pipe given as FILE, are written as they
    are; only the default output on a terminal gets a newline after an answer without one."""

    f = None

    def __init__(self, path):
        self.tmp = None
        self.last = b""
        self.newline = path is None and sys.stdout.isatty()
        self.name = "standard output" if path in (None, "-") else path
        if path in (None, "-"):
            sys.stdout.flush()
            self.f = sys.stdout.buffer
            return
        self.target = os.path.realpath(path)
        if os.path.exists(self.target) and not os.path.isfile(self.target):
            self.f = self._do(open, self.target, "wb")   # /dev/null, a FIFO: nothing to rename
            return
        self.tmp = "%s.%d.part" % (os.path.join(os.path.dirname(self.target), "." +
                                                os.path.basename(self.target)), os.getpid())
        self.f = self._do(open, self.tmp, "xb")
        if os.path.exists(self.target):
            self._do(shutil.copymode, self.target, self.tmp)

    def _do(self, fn, *args):
        try:
            return fn(*args)
        except BrokenPipeError:
            raise   # stdout closed early (`| head`): cli.main stops quietly
        except OSError as e:
            if self.f is sys.stdout.buffer:
                from .cli import drop_stdout
                drop_stdout()   # no second error when Python flushes it at exit
            raise OutputError("cannot write the response to %s: %s" % (self.name, e.strerror or e))

    def write(self, b):
        self._do(self.f.write, b)
        self.last = b[-1:] or self.last

    def commit(self):
        if self.newline and self.last not in (b"", b"\n"):
            self.write(b"\n")
        self._do(self.f.flush)
        if self.f is not sys.stdout.buffer:
            self._do(self.f.close)
        if self.tmp is not None:
            self._do(os.replace, self.tmp, self.target)
            self.tmp = None

    def discard(self):
        """After a failure: drop the temporary file; True when there was one (FILE not written)."""
        if self.f is not None and self.f is not sys.stdout.buffer:
            try:
                self.f.close()
            except OSError:
                pass
        if self.tmp is None:
            return False
        try:
            os.unlink(self.tmp)
        except OSError:
            pass
        self.tmp = None
        return True


# ------------------------------------------------------------------ call
CALL_NOTES = """output:
  The response is written as received, byte for byte, to standard output or to
  -o FILE (- is standard output). Only when no -o is given and standard output is a
  terminal does a response that does not end in a newline get one. -o FILE is written
  to a temporary file beside FILE and renamed over it once the whole response is in:
  a failed or interrupted call leaves FILE as it was.

progress (on stderr, for more than 64 KiB; not with -q):
  "sending" counts what our link has written to the relay, which may still be delivering
  it when the bar ends ("sent to the relay"); then, on a terminal, "waiting for X's
  answer" counts the seconds until the answer starts; "receiving" counts the answer.
  A large @file is streamed from the file: it is never held whole in memory.

exit codes:
  0    ok
  1    no answer within --timeout, or the answer stopped that long (1502), or no
       acknowledgement within 7 s (1501);
       the response could not be written; any other error (the message says which)
  2    usage: bad arguments, a payload that is not UTF-8 text, or an identity to join as
       that is the destination's or already in the room
  3    RPC error: returned by the destination, or said here: not in the room (1401), a
       request too large for RPC v1 (1402), the destination left during the call (1503)
  4    connection failure: the relay unreachable or refusing us, or our own link lost
       or ended by the relay during the call (its LEAVE code and reason are shown)
  130  interrupted (Ctrl-C); 143 (SIGTERM) and 129 (SIGHUP) likewise, the same clean stop"""


def add_call_arguments(p):
    p.add_argument("destination", help="identity of the participant to call")
    p.add_argument("method", help="method name registered there")
    p.add_argument("payload", nargs="?", default=None,
                   help="request payload (UTF-8 text): text, @file to read a file (streamed when "
                        "large), - for stdin (default empty)")
    p.add_argument("--timeout", type=_timeout, default=15.0,
                   help="seconds to wait for the answer to start once the request is sent, and "
                        "at most between two pieces of it (a long answer may take longer in all; "
                        "default %(default)s)")
    p.add_argument("--wait", type=_wait, default=5.0,
                   help="seconds to wait for the destination to appear in the room (default %(default)s)")
    p.add_argument("--output", "-o", default=None,
                   help="write the response to this file (replaced only when the call succeeds) "
                        "instead of stdout; - for stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress or timing on stderr")
    add_connection_arguments(p, "cli-%d" % os.getpid())
    p.epilog = CALL_NOTES
    p.formatter_class = argparse.RawDescriptionHelpFormatter


async def _wait_for(room, identity, seconds):
    t_end = time.monotonic() + seconds
    while identity not in room.remote_participants and time.monotonic() < t_end:
        await asyncio.sleep(0.05)


def _say(code, msg):
    print("lkedge call: " + msg, file=sys.stderr)
    return code


async def _call(args, request):
    if not await _check_identity_free(args, "call"):
        return EXIT_CONNECT
    room = await _join(args, "call")
    if room is None:
        return EXIT_CONNECT
    sink = None
    try:
        sink = _Sink(args.output)
        code = await _exchange(args, room, request, sink)
    except RpcError as e:
        code = _rpc_failure(args, room, e, request)
    except OutputError as e:
        code = _say(EXIT_ERROR, str(e))
    except BaseException:
        _discard(args, sink)
        raise
    finally:
        await room.disconnect()
    if code != EXIT_OK:
        _discard(args, sink)
    return code


def _discard(args, sink):
    if sink is not None and sink.discard():
        _say(None, "--output %s not written: the call did not complete (a file already there "
                   "is left as it was)" % args.output)


async def _exchange(args, room, request, sink):
    await _wait_for(room, args.destination, args.wait)
    up = Progress("sending", request.size, quiet=args.quiet)
    t0 = time.monotonic()
    reader = await room.local_participant.perform_rpc_stream(
        destination_identity=args.destination, method=args.method,
        payload=request.payload(up), response_timeout=args.timeout)
    up.finish("sent to the relay")
    down, h = await _receive(args, reader, sink)
    sink.commit()
    down.finish()
    if not args.quiet:
        _say(None, "%s.%s ok in %.3f s (%s sent, %s received, sha256 %s)" % (
            args.destination, args.method, time.monotonic() - t0, _human(request.size),
            _human(down.done), h.hexdigest()[:16]))
    return EXIT_OK


async def _receive(args, reader, sink):
    """Write the answer to `sink` as it comes; -> (its Progress, its sha256)."""
    down = Progress("receiving", quiet=args.quiet)
    h = hashlib.sha256()
    waiting = _Waiting(args.destination, not args.quiet and sys.stderr.isatty())
    try:
        async for piece in reader:
            waiting.stop()
            args.answer_started = True   # a timeout from here on is a silence, not no answer
            b = piece.encode()
            sink.write(b)
            h.update(b)
            down.add(len(b))
    finally:
        waiting.stop()
    return down, h


def _rpc_failure(args, room, e, request):
    """Say why the call failed (what to do about it where we know); -> the exit code."""
    if e.code == RpcError.RECIPIENT_DISCONNECTED and room.connection_state != "connected":
        why = room.last_error if room.leave_code is None else "LEAVE %s %s" % (room.leave_code, room.leave_reason)
        hint = " (the token does not grant canPublishData: it was minted with --no-publish-data)" \
            if room.leave_code == link.LEAVE_FORBIDDEN else ""
        return _say(EXIT_CONNECT, "our own link to the relay ended during the call: %s%s" % (why, hint))
    if e.code == RpcError.RESPONSE_TIMEOUT and getattr(args, "answer_started", False):
        return _say(EXIT_ERROR, "the answer from %r to %s stopped for more than --timeout %g s (RPC error "
                                "1502): the answer is incomplete" % (args.destination, args.method, args.timeout))
    if e.code == RpcError.RESPONSE_TIMEOUT:
        return _say(EXIT_ERROR, "no answer from %r to %s within --timeout %g s (RPC error 1502); give a "
                                "longer --timeout if the method needs more time" % (
                                    args.destination, args.method, args.timeout))
    if e.code == RpcError.CONNECTION_TIMEOUT:
        return _say(EXIT_ERROR, "%r did not acknowledge the call within %d s (RPC error 1501): it may "
                                "be gone or too busy" % (args.destination, RPC_ACK_TIMEOUT_MS // 1000))
    _say(None, "RPC error %d: %s%s" % (e.code, e.message, (" (%s)" % e.data) if e.data else ""))
    if e.code == RpcError.RECIPIENT_NOT_FOUND:
        others = sorted(room.remote_participants)
        _say(None, "%r did not join room %s within --wait %g s; in the room: %s" % (
            args.destination, room.name, args.wait, ", ".join(others) if others else "nobody else"))
    elif e.code == RpcError.REQUEST_PAYLOAD_TOO_LARGE and request.size > MAX_V1_PAYLOAD_BYTES:
        _v1_hint(args, room, request.size)
    elif (e.code == RpcError.APPLICATION_ERROR and e.message == RpcError.ErrorMessage[RpcError.APPLICATION_ERROR]
          and not e.data):
        # the SDKs' handler failure says nothing more to the caller, by design. Where the
        # traceback is: `mpremote ... repl` shows a board's console from then on only
        _say(None, "the handler of %s on %r failed without saying why to callers; its traceback went where it "
                   "runs: lkedge serve's stderr, or a board's console (an emulated board keeps what it printed "
                   "while nothing read its port: `timeout 2 cat PTY`; on a real board open `mpremote connect PORT "
                   "repl` and call again; `lkedge names` turns the library's respelled names in it back)"
                   % (args.method, args.destination))
    return EXIT_RPC


def _v1_hint(args, room, size):
    """Say why a request of `size` bytes went as RPC v1 (at most 15360 bytes), if it did."""
    rp = room.remote_participants.get(args.destination)
    if args.protocol == 0:
        why = "--protocol 0 makes this call use RPC v1"
    elif rp is not None and rp.client_protocol == 0:
        why = "%r speaks RPC v1 only (client_protocol 0)" % args.destination
    else:
        return  # the destination's own limit: its message says which
    _say(None, "%s, which carries at most %d bytes of payload; this one is %d bytes. RPC v2 (the "
               "default --protocol 2) streams a request of any size" % (why, MAX_V1_PAYLOAD_BYTES, size))


def _stop_on_signals():
    """SIGTERM and SIGHUP (`timeout`, `kill`, a closed terminal) stop a command as Ctrl-C
    does (the call's temporary -o file removed, the link left with a LEAVE) instead of
    killing it on the spot. Returns the list the signals seen go to."""
    import signal
    seen = []

    def stop(signum, frame):
        seen.append(signum)
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    return seen


def _signalled(command, seen):
    """The exit code of a command that a signal of _stop_on_signals stopped (128 + it)."""
    import signal
    print("lkedge %s: stopped by %s" % (command, signal.Signals(seen[0]).name), file=sys.stderr)
    return 128 + seen[0]


def run_call(args):
    seen = _stop_on_signals()
    try:
        for what, text in (("the destination", args.destination), ("the method", args.method)):
            list(_utf8_pieces([os.fsencode(text)], what, ": identities and method names are text"))
        request = _read_payload(args.payload)
        _check_output(args.output)
        prepare_connection(args)
        _refuse_taken(args, {args.destination}, "the destination")
        return asyncio.run(_call(args, request))
    except UsageError as e:
        return _usage("call", e)
    except KeyboardInterrupt:
        if seen:
            return _signalled("call", seen)
        raise


# ------------------------------------------------------------------ room
def add_room_arguments(p):
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_connection_arguments(p, "cli-room-%d" % os.getpid())
    p.epilog = ("An --identity (or --token) already in the room is refused with exit 2: joining "
                "as it would push that participant out (call and serve do the same).")


async def _room(args):
    if not await _check_identity_free(args, "room"):
        return EXIT_CONNECT
    room = await _join(args, "room")
    if room is None:
        return EXIT_CONNECT
    try:
        ps = await _others(room)
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
    seen = _stop_on_signals()
    try:
        prepare_connection(args)
        return asyncio.run(_room(args))
    except UsageError as e:
        return _usage("room", e)
    except KeyboardInterrupt:
        if seen:
            return _signalled("room", seen)
        raise


# ------------------------------------------------------------------ serve
SERVE_THREADS = 8   # plain (def) methods running at once; later calls wait for a free one

SERVE_NOTES = """\
methods:
  Each public top-level function f(data) of FILE becomes a method named after it (an
  rpc_name attribute overrides); register(room), if FILE has one, may add more with
  room.local_participant.register_rpc_method. The line on stdout lists them all, and
  each call is logged on stderr once its answer is out (an answer in pieces once its
  last piece is; one that could not be sent, the link lost meanwhile, as failed). A
  method gets the request whole in data.payload and returns a str (None for an empty
  answer) or an async iterable of str (an async generator, say), whose pieces go out
  as they come: a stream to a v2 caller, gathered up to 15 KiB for a v1 one (1504
  beyond). It raises lkedge.rpc.RpcError(code, message, data) for an error the caller
  gets as it is. Any other exception, SystemExit and KeyboardInterrupt too, and an
  answer or a piece that is not a str, answers 1500 naming it (logged as failed), and
  serve goes on serving.
  A method still running when its caller's response_timeout has passed is answered
  1502 (a plain one's thread runs on to its end, holding its slot).

threads:
  A plain function (def) runs in a thread of its own, at most %d at once (later calls
  wait for one to finish), so a slow one holds up neither other calls nor the link's
  keepalive; it must not use the room or asyncio (make it async def for that). An async
  def method runs on serve's event loop: it must not block (no time.sleep, no blocking
  I/O). Ctrl-C or SIGTERM stops serve at once, even with plain methods still running.

exit codes:
  0    stopped by Ctrl-C or SIGTERM
  1    register(room) in FILE failed
  2    usage: bad arguments, a FILE that cannot be loaded or has no methods, a token
       without canPublishData (serve could never answer: the relay refuses data from it),
       an identity (--identity, --token) already in the room: joining would push that
       participant out (call and room refuse it too)
  4    cannot join, or dropped for good by the relay: its identity joined elsewhere
       (LEAVE 2), its token refused (LEAVE 3), data its token forbids (LEAVE 7)""" % SERVE_THREADS


def add_serve_arguments(p):
    p.add_argument("file", help="a Python file: each public top-level function f(data) becomes "
                               "an RPC method named after it (rpc_name attribute overrides); an "
                               "optional register(room) is called for anything else")
    add_connection_arguments(p, "host")
    # "host" is a name people choose too (a second serve without --identity): it is looked
    # for in the room as any --identity is, by a probe of serve's own
    p.set_defaults(auto_identity="serve-%d" % os.getpid())
    p.epilog = SERVE_NOTES
    p.formatter_class = argparse.RawDescriptionHelpFormatter


def load_methods(path):
    """(methods dict, register hook or None) from a handler file."""
    if not os.path.exists(path):
        raise FileNotFoundError("no such handler file: %s" % path)
    # its own folder first on sys.path, as `python FILE` has it: helpers beside it import
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:
        sys.path.insert(0, folder)
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


def _load(args):
    """(methods, hook) of args.file, or None after saying why it cannot be served."""
    try:
        methods, hook = load_methods(args.file)
    except Exception as e:
        _said("cannot load %s: %s" % (args.file, e))
        return None
    if not methods and hook is None:
        _said("%s defines no public functions" % args.file)
        return None
    return methods, hook


def _said(msg):
    print("lkedge serve: " + msg, file=sys.stderr, flush=True)


def _refuse_mute(args):
    """UsageError for a token without canPublishData: every answer is data the relay would
    refuse (LEAVE 7 at the first call). Read without verifying, as the relay reads it."""
    grant = (_claims(args.token).get("video") or {}).get("canPublishData")
    if grant not in (None, True):
        raise UsageError("the token does not grant canPublishData (minted with --no-publish-data?): "
                         "serve could never answer a call (the relay would drop it with LEAVE 7 at its "
                         "first answer); give a token that grants it")


class _EarlyStop:
    """Until serving begins, Ctrl-C, SIGTERM and SIGHUP stop serve: they are remembered
    (`seen`) and cancel the main task, again every 0.2 s while it is joining. Raised from
    a signal handler, a KeyboardInterrupt could land inside the joining task, which then
    kept it (a stop while connecting printed "Task exception was never retrieved"); and
    Python 3.11's wait_for loses a cancel that comes as the awaited step ends (a stop
    while connecting then waited for the join's 10 s timeout, or was not a stop at all)."""

    def __init__(self):
        import signal
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.seen = []
        self.joining = True
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            try:
                self.loop.add_signal_handler(sig, self._stop, sig)
            except (NotImplementedError, RuntimeError):
                pass

    def _stop(self, sig):
        self.seen.append(sig)
        if not self.task.done():
            self.task.cancel()
            self.loop.call_later(0.2, self._again)

    def _again(self):
        # only while joining: serve's own LEAVE after the join must not be cut short
        if self.joining and not self.task.done():
            self.task.cancel()
            self.loop.call_later(0.2, self._again)


async def _serve(args):
    stop = _EarlyStop()   # _until_stopped takes the signals over once serving
    loaded = _load(args)
    if loaded is None:
        return EXIT_USAGE
    if not await _check_identity_free(args, "serve"):   # UsageError: run_serve says it
        return EXIT_CONNECT
    # A server stays: after a link loss (relay restarted, network) it rejoins by itself.
    room = await _join(args, "serve", auto_reconnect=True)
    stop.joining = False
    if stop.seen:   # a stop whose cancels the join's steps all lost
        if room is not None:
            await room.disconnect()
        raise asyncio.CancelledError()
    if room is None:
        return EXIT_CONNECT
    room.on("reconnecting", lambda: _said("link lost: %s; rejoining %s ..." % (room.last_error, args.url)))
    room.on("reconnected", lambda: _said("rejoined room %s as %s" % (room.name, room.local_participant.identity)))
    names = await _register(args, room, *loaded)
    if names is None:
        await room.disconnect()
        return EXIT_ERROR
    if stop.seen:   # during register(room)
        await room.disconnect()
        raise asyncio.CancelledError()
    print("lkedge serve: %s in room %s serving %s" % (room.local_participant.identity, room.name,
                                                      ", ".join(names) or "no RPC method"), flush=True)
    code = await _until_stopped(room, args)
    await room.disconnect()
    if code == EXIT_OK:
        _said("stopped")
    return code


async def _register(args, room, methods, hook):
    """Register the file's methods, run its register(room), then log (_logged) what that
    added too: -> the sorted names of every method served, None if register(room) failed."""
    slots = asyncio.Semaphore(SERVE_THREADS)
    sent = _Sent(room)
    limit = room.options.max_rpc_payload
    for name, fn in methods.items():
        # streaming, so that an async iterable answer is streamed; _logged still hands fn
        # the request whole in data.payload, as a buffered handler gets it
        room.local_participant.register_rpc_method(name, _logged(name, fn, slots, sent, whole=limit), True)
    if hook is not None:
        try:
            r = hook(room)
            if inspect.isawaitable(r):
                await r
        except Exception as e:
            import traceback
            _said("register(room) in %s failed (its traceback follows); nothing served" % args.file)
            traceback.print_exception(type(e), e, e.__traceback__.tb_next, file=sys.stderr)
            return None
    return _log_all(room, slots, sent)


def _log_all(room, slots, sent):
    """Wrap (_logged) the methods register(room) added, as the file's own are: -> the sorted
    names of every method registered."""
    registered = room._rpc_server._methods   # name -> (handler, streaming): what is served
    for name, (fn, streaming) in list(registered.items()):
        if not getattr(fn, "_lkedge_serve", False):
            room.local_participant.unregister_rpc_method(name)
            room.local_participant.register_rpc_method(name, _logged(name, fn, slots, sent, streaming, room=room),
                                                       streaming)
    return sorted(registered)


async def _until_stopped(room, args):
    """Serve until Ctrl-C or SIGTERM (EXIT_OK) or a LEAVE the relay would only repeat (EXIT_CONNECT)."""
    stop = asyncio.Event()
    try:
        import signal
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, stop.set)
    except (NotImplementedError, RuntimeError):
        pass
    while not stop.is_set():
        try:
            await wait_for(stop.wait(), 0.25)
        except asyncio.TimeoutError:
            pass
        # The Room stops rejoining after a LEAVE that would only repeat (a duplicate
        # identity, a refused token, data forbidden): nothing would be served any more,
        # so say so and stop (between its own retries it is "reconnecting").
        if (room.connection_state == "disconnected" and room.leave_code in link.FINAL_LEAVE
                and not stop.is_set()):
            hint = ""
            if room.leave_code == 2:
                hint = " (another participant joined as %r: give each its own --identity)" % room.local_participant.identity
            elif room.leave_code == 3 and "expired" in room.leave_reason:
                hint = " (%s)" % _expired_hint(args)
            _said("stopped: the relay will not take us back: LEAVE %s %s%s" % (
                room.leave_code, room.leave_reason, hint))
            return EXIT_CONNECT
    return EXIT_OK


def _came_as_packet(room, data):
    """Whether this call's request came as an rpc_request packet (RPC v1), whose answer
    goes back as one (at most 15360 bytes): a streaming handler's reader says so; a
    buffered one's caller speaks v1 with us (v2 callers send requests as streams)."""
    if data.reader is not None:
        return isinstance(data.reader, PayloadReader)
    p = room.remote_participants.get(data.caller_identity) if room is not None else None
    return p is not None and min(p.client_protocol, room.options.client_protocol) < CLIENT_PROTOCOL_DATA_STREAM_RPC


def _logged(name, fn, slots, sent, streaming=False, whole=None, room=None):
    """fn as serve runs it: a plain function in a thread (_in_thread), every call logged
    (ok once its answer is out, _Sent), any exception but RpcError (a
    BaseException too) answered as 1500 naming it, as is an answer the library would
    refuse. `streaming`: registered so (register(room)'s choice), fn reads data.reader.
    `whole` (a file's method, registered streaming so that its async iterable answer is
    streamed): fn gets the request in data.payload as a buffered handler does, at most
    `whole` characters (else 1402), and runs within the caller's response_timeout (else
    1502), as the library bounds a buffered handler."""
    pieces_ok = streaming or whole is not None

    async def handler(data):
        t0 = time.monotonic()
        packet = _came_as_packet(room, data)   # then answered by one: 15360 bytes at most
        try:
            if whole is None:
                r = await _run(fn, data, slots)
            else:
                r = await _within(data, _with_payload(fn, data, slots, whole))
            if not (r is None or isinstance(r, str) or (pieces_ok and hasattr(r, "__aiter__"))):
                raise TypeError(_bad_answer(name, r))
        except asyncio.CancelledError:
            raise
        except BaseException as e:   # SystemExit, KeyboardInterrupt: the call's failure, not serve's
            _log_call(name, data, "failed: %r" % (e,))
            raise _answer(e) from None
        if r is not None and not isinstance(r, str):
            return _LoggedPieces(name, data, r, t0, sent)
        n = len(r.encode("utf-8", "surrogatepass")) if packet and r else 0
        if n > MAX_V1_PAYLOAD_BYTES:   # the library answers 1504 for it
            _log_call(name, data, "failed: its %d-byte answer is over the %d bytes an answer to a v1 "
                                  "request carries (1504 Response payload too large)" % (n, MAX_V1_PAYLOAD_BYTES))
            return r
        sent.log_at_end(name, data, t0)
        return r
    handler._lkedge_serve = True
    return handler


def _bad_answer(name, r):
    if hasattr(r, "__aiter__"):   # only from a method register(room) added without streaming=True
        return ("%s returned %s, not str: an answer in pieces needs register_rpc_method(..., streaming=True)"
                % (name, type(r).__name__))
    return ("%s returned %s, not str: return text (e.g. json.dumps(...)) or an async iterable of str"
            % (name, type(r).__name__))


async def _with_payload(fn, data, slots, limit):
    """Read a streaming handler's request whole into data.payload, then run fn(data)."""
    payload = await _whole_request(data.reader, limit, data.method)
    data.payload, data.reader = payload, None
    return await _run(fn, data, slots)


async def _within(data, aw):
    """aw's result, or 1502 once the caller's response_timeout has passed (aw cancelled):
    a method that hangs frees its handler slot, as the library does for buffered handlers."""
    deadline = asyncio.timeout(data.response_timeout)
    try:
        async with deadline:
            return await aw
    except TimeoutError:
        if not deadline.expired():
            raise   # the method's own
        raise RpcError(RpcError.RESPONSE_TIMEOUT, None,
                       "the method ran past the caller's response_timeout of %g s" % data.response_timeout)


class _LoggedPieces:
    """An answer in pieces as the library streams it: each piece checked to be a str, the
    call logged once the last piece is out (ok) or the pieces fail (1500 naming why)."""

    def __init__(self, name, data, source, t0, sent):
        self.name, self.data, self.t0, self.sent = name, data, t0, sent
        self.source = source.__aiter__()
        self.pieces = self.chars = 0
        self.over = False
        self.ok = None   # "ok ..." once the pieces have all come: said when they are out
        # The library sends the pieces in the task that ran the handler: when that task
        # ends with the pieces unfinished, the library stopped taking them (the caller
        # left, a v1 caller's answer outgrew 15 KiB: 1504); the call still gets its line.
        sent.watch(asyncio.current_task(), self._ended)

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            piece = await self.source.__anext__()
            if not isinstance(piece, str):
                raise TypeError("%s answered a piece of type %s, not str" % (self.name, type(piece).__name__))
        except StopAsyncIteration:
            self.ok = "ok %%.1f ms (%d pieces, %d characters)" % (self.pieces, self.chars)
            raise
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            self._log("failed: %r" % (e,))
            raise _answer(e) from None
        self.pieces += 1
        self.chars += len(piece)
        return piece

    def _log(self, outcome):
        if not self.over:
            self.over = True
            _log_call(self.name, self.data, outcome)

    def _ended(self, unsent):
        if unsent is not None:
            self._log("failed: its answer could not be sent after %d pieces (%d characters): %r"
                      % (self.pieces, self.chars, unsent))
        elif self.ok is not None:
            self._log(self.ok % ((time.monotonic() - self.t0) * 1000))
        else:
            self._log("failed: the answer stopped after %d pieces (%d characters)" % (self.pieces, self.chars))


class _Sent:
    """Whether a call's answer went out. The library sends it after the method returned,
    in the task that ran the method, and one that cannot go (the link lost meanwhile:
    "lkedge: could not answer RPC ...") ends that task all the same: a call logged "ok"
    when its method returned was then logged ok and never answered. So the room's sends
    are watched, and a call answered is logged when its task ends: ok, or failed with
    what its first failed send raised."""

    def __init__(self, room):
        self.watched = {}   # task -> [callback(unsent), the first exception a send raised]
        send = room._send

        def watched_send(pkt):   # Room._send: a function returning the awaitable that writes
            try:
                aw = send(pkt)
            except Exception as e:
                self._failed(e)
                raise
            return self._sending(aw)
        room._send = watched_send

    async def _sending(self, aw):
        try:
            return await aw
        except Exception as e:
            self._failed(e)
            raise

    def _failed(self, e):
        w = self.watched.get(asyncio.current_task())
        if w is not None and w[1] is None:
            w[1] = e

    def watch(self, task, callback):
        """From now on note the sends of `task` that fail; callback(the first one's
        exception, or None) once it has ended."""
        self.watched[task] = w = [callback, None]

        def ended(t):
            self.watched.pop(t, None)
            w[0](w[1])
        task.add_done_callback(ended)

    def log_at_end(self, name, data, t0):
        """Log the call whose method answered (a str) once its answer is out, or not."""
        def ended(unsent):
            if unsent is None:
                _log_call(name, data, "ok %.1f ms" % ((time.monotonic() - t0) * 1000))
            else:
                _log_call(name, data, "failed: its answer could not be sent: %r" % (unsent,))
        self.watch(asyncio.current_task(), ended)


def _log_call(name, data, outcome):
    print("call %s from %s %s" % (name, data.caller_identity, outcome), file=sys.stderr, flush=True)


def _answer(e):
    """What the caller gets for a method's exception e: an RpcError as it is, anything else
    as 1500 with the exception named."""
    if isinstance(e, RpcError):
        return e
    what = "%s: %s" % (type(e).__name__, e) if str(e) else type(e).__name__
    return RpcError(RpcError.APPLICATION_ERROR, None, what)


async def _run(fn, data, slots):
    """fn(data)'s result: an async def on the loop, anything else in a thread (what that
    returns is awaited here, on the loop, when it is awaitable)."""
    on_loop = inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)
    r = fn(data) if on_loop else await _in_thread(fn, data, slots)
    if inspect.isawaitable(r):
        r = await r
    return r


async def _in_thread(fn, data, slots):
    """fn(data) in a daemon thread of its own once a slot is free (a daemon: one still running
    does not hold up serve's exit). The slot is given back when fn returns, even if the call
    was cancelled meanwhile, so that at most SERVE_THREADS run."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    await slots.acquire()

    def run():
        try:
            out = (fn(data), None)
        except BaseException as e:
            out = (None, e)
        try:
            loop.call_soon_threadsafe(_settle, done, slots, out)
        except RuntimeError:
            pass   # the loop is closed: serve has stopped
    try:
        threading.Thread(target=run, name="lkedge-serve", daemon=True).start()
    except BaseException:
        slots.release()
        raise
    r, e = await done
    if e is not None:
        raise e
    return r


def _settle(done, slots, out):
    slots.release()
    if not done.cancelled():
        done.set_result(out)


def run_serve(args):
    try:
        prepare_connection(args)
        _refuse_mute(args)
    except UsageError as e:
        return _usage("serve", e)
    _stop_on_signals()   # until the loop runs: then _EarlyStop's, and once serving _until_stopped's
    try:
        return asyncio.run(_serve(args))
    except UsageError as e:   # the identity is in the room already
        return _usage("serve", e)
    except (KeyboardInterrupt, asyncio.CancelledError):   # Ctrl-C, SIGTERM or SIGHUP while joining: a stop too
        _said("stopped before serving began")
        return EXIT_OK


# CLI frame protocol (host_tools/cli.py): one module serves three commands.
COMMANDS = {
    "call": (add_call_arguments, run_call),
    "room": (add_room_arguments, run_room),
    "serve": (add_serve_arguments, run_serve),
}
