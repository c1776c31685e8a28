"""`lkedge relay`: run the LINK.md relay (rooms in memory) until SIGINT/SIGTERM.

Once every listener is bound it prints ONE line on stdout, flushed, that tests and
`make demo` wait for:

    lkedge relay: link tcp://127.0.0.1:7880 ws://127.0.0.1:7881 http://127.0.0.1:7882

(tls:// and wss:// with --tls-cert, serial:DEVICE with --serial; real ports when 0 was
asked). With no keys configured it first prints the development keys, which work only
on loopback. Logs go to stderr, one key=value line per join/leave/error.
"""
import asyncio
import errno
import math
import os
import signal
import socket
import ssl
import sys

from .. import units
from . import auth

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2

# --max-frame bounds. At least a 15000-byte stream chunk plus headers. At most 16 MiB: the
# wire allows ~4 GiB (the length varint may not exceed 32 bits), but the relay holds up to
# max_frame of every connection that has not joined and of every control frame it reads,
# so --max-connections times this is memory a stranger can make it take; a board holds
# frames of tens of KiB, and 16 MiB is far above anything a participant needs.
MIN_FRAME, MAX_FRAME = 16384, 16 << 20
_DURATIONS = ("idle_timeout", "join_timeout", "send_timeout")
# File descriptors the relay needs besides one per link connection and per HTTP
# connection: stdio, the event loop's, the listeners, a serial line, and connections
# the relay holds briefly beyond --max-connections (refused ones until their LEAVE 5
# is written, WebSocket and TLS handshakes not yet counted as connections).
FD_RESERVE = 64


class _DefaultInt(int):
    """An option's default, told apart from the same number given on the command line."""


def fd_budget(max_connections, http_connections, explicit, limits=None):
    """-> (connections to serve, warning or None). Each connection holds a file
    descriptor, so the soft RLIMIT_NOFILE is raised (toward the hard limit) to what
    max_connections + http_connections + FD_RESERVE need. When the limit stays below
    that, accept() would fail with EMFILE instead of answering LEAVE 5 "relay full":
    a --max-connections given explicitly is then a usage error (ValueError naming both
    numbers); the default is lowered to what fits, with the warning to log.
    `limits` = (getrlimit, setrlimit) for tests; None: the resource module (no limit
    to manage where it does not exist)."""
    if limits is None:
        try:
            import resource
        except ImportError:
            return max_connections, None
        limits = (lambda: resource.getrlimit(resource.RLIMIT_NOFILE),
                  lambda soft, hard: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))
        infinity = resource.RLIM_INFINITY
    else:
        infinity = -1
    getlimit, setlimit = limits
    other = http_connections + FD_RESERVE
    need = max_connections + other
    soft, hard = getlimit()
    if soft != infinity and soft < need:
        target = need if hard == infinity else min(need, hard)
        if target > soft:
            try:
                setlimit(target, hard)
                soft = target
            except (ValueError, OSError):    # e.g. macOS caps it below the hard limit
                pass
    if soft == infinity or soft >= need:
        return max_connections, None
    fit = soft - other
    what = ("%d link + %d HTTP connections + %d in reserve"
            % (max_connections, http_connections, FD_RESERVE))
    limit = "the open-file limit (RLIMIT_NOFILE) is %d and cannot be raised (hard limit %s)" % (
        soft, "unlimited" if hard == infinity else hard)
    if fit < 1:
        raise ValueError("%s: too low for any link connection (the relay needs %d file "
                         "descriptors besides them); raise the limit (ulimit -n %d)"
                         % (limit, other, need))
    if explicit:
        raise ValueError("--max-connections %d needs %d file descriptors (%s), but %s: use "
                         "--max-connections %d or less, or raise the limit (ulimit -n %d)"
                         % (max_connections, need, what, limit, fit, need))
    return fit, ("%s, below the %d file descriptors --max-connections %d needs (%s): serving "
                 "at most %d connections (more get LEAVE 5 relay full); raise the limit "
                 "(ulimit -n %d) or set --max-connections" % (limit, need, max_connections,
                                                             what, fit, need))


def add_arguments(p):
    a = p.add_argument
    a("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    a("--port", type=int, default=7880, help="TCP (or TLS) link port; 0 picks a free one (default %(default)s)")
    a("--ws-port", type=int, default=7881, help="WebSocket link port; 0 picks a free one (default %(default)s)")
    a("--no-ws", action="store_true", help="no WebSocket listener")
    a("--http-port", type=int, default=7882, help="HTTP /healthz and /metrics port; 0 disables (default %(default)s)")
    a("--http-host", default="127.0.0.1",
      help="address of the HTTP port, which names rooms and identities without a token: "
           "loopback unless you expose it on purpose (default %(default)s)")
    a("--max-frame", type=units.size, default=65536,
      help="largest link frame in bytes (or with K, M: 64K), announced in JOINED; "
           "16K..16M (default %(default)s)")
    a("--idle-timeout", type=units.seconds, default=30.0,
      help="seconds (or with ms, s, m, h: 30s, 2m) of silence before a connection is closed "
           "with LEAVE 6; a participant quiet for half of it gets a PING from the relay, and "
           "its PONG counts (default %(default)s)")
    a("--join-timeout", type=units.seconds, default=5.0,
      help="seconds (or with ms, s, m, h) a new connection has to send JOIN (default %(default)s)")
    a("--queue-bytes", type=units.size, default=1 << 20,
      help="per-connection send queue limit in bytes (or with K, M: 1M), at least --max-frame; "
           "senders to a full queue are paused (default %(default)s)")
    a("--max-connections", type=int, default=_DefaultInt(10000),
      help="connections open at once; one more gets LEAVE 5 \"relay full\". Each needs a file "
           "descriptor: the relay raises its open-file limit as needed, and refuses to start "
           "if it cannot (without this option it serves fewer, with a warning) "
           "(default %(default)s)")
    a("--socket-buffer", type=units.size, default=64 * 1024,
      help="kernel send and receive buffer of each link socket in bytes (or with K, M: 64K); "
           "bounds what a connection holds beyond --queue-bytes, so the stuck rule sees a slow "
           "receiver's progress; one connection's throughput is at most about twice this per "
           "round trip; 0 leaves the OS's autotuned buffers (default %(default)s)")
    a("--send-timeout", type=units.seconds, default=10.0,
      help="seconds (or with ms, s, m, h) a receiver may keep its queue full before LEAVE 6 "
           "(default %(default)s)")
    a("--api-key", default=None,
      help="LiveKit API key (default: env LIVEKIT_API_KEY, else the development key %r)" % auth.DEV_API_KEY)
    a("--api-secret", default=None,
      help="LiveKit API secret (default: env LIVEKIT_API_SECRET, else the development secret)")
    a("--room", action="append", default=None, metavar="ROOM",
      help="serve only this room (repeatable; default: any room a valid token names)")
    a("--tls-cert", default=None, help="PEM certificate: TCP becomes TLS and WebSocket wss (default none)")
    a("--tls-key", default=None, help="PEM private key for --tls-cert (default: in the cert file)")
    a("--serial", default=None, metavar="DEVICE",
      help="also bridge this serial line as a link connection (default none)")
    a("--serial-baud", type=int, default=115200, help="baud rate for --serial (default %(default)s)")


def _say(msg):
    print("lkedge relay: " + msg, flush=True)


def _fail(msg, code=EXIT_USAGE):
    print("lkedge relay: error: " + msg, file=sys.stderr, flush=True)
    return code


def _tls(args):
    if args.tls_key and not args.tls_cert:
        raise ValueError("--tls-key needs --tls-cert")
    if not args.tls_cert:
        return None
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path is not None and not os.path.isfile(path):
            raise ValueError("%s %s: no such file" % (flag, path))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)

    def no_passphrase():
        # instead of OpenSSL's prompt on the terminal (a relay started by a service
        # manager has none, and it printed the prompt twice and then "Invalid argument")
        raise ValueError("encrypted")
    try:
        ctx.load_cert_chain(args.tls_cert, args.tls_key, password=no_passphrase)
    except ValueError as e:
        if str(e) != "encrypted":
            raise
        raise ValueError("the TLS private key in %s is encrypted (it asks for a passphrase, which the relay "
                         "cannot be given): decrypt it, e.g. `openssl pkey -in KEY -out KEY.plain`"
                         % (args.tls_key or args.tls_cert)) from None
    except (OSError, ssl.SSLError) as e:
        raise ValueError("cannot load TLS certificate %s%s: %s" % (
            args.tls_cert, " with key " + args.tls_key if args.tls_key else "", _tls_why(args, e)))
    return ctx


def _tls_why(args, e):
    """What is wrong with the TLS files, from what they hold (OpenSSL says "PEM lib")."""
    def holds(path):
        try:
            with open(path, "rb") as f:
                text = f.read(1 << 20)
        except OSError:
            return set()
        return {w for w, mark in (("cert", b"-----BEGIN CERTIFICATE"), ("key", b"PRIVATE KEY-----"))
                if mark in text}
    cert = holds(args.tls_cert)
    key = holds(args.tls_key) if args.tls_key else cert
    if "cert" not in cert:
        return "%s holds no PEM certificate (-----BEGIN CERTIFICATE-----)%s" % (
            args.tls_cert, ": it is a private key; give the certificate to --tls-cert and the key to --tls-key"
            if "key" in cert else "")
    if "key" not in key:
        return ("no private key: give --tls-key, or a --tls-cert file holding the key too" if not args.tls_key
                else "%s holds no PEM private key" % args.tls_key)
    return ("the certificate and key do not load together (%s); is the key the certificate's own?" % (e,))


def _check_limits(args):
    """Sizes, durations and counts, each error naming its option and allowed range;
    --max-frame first, as --queue-bytes is judged against it."""
    if not MIN_FRAME <= args.max_frame <= MAX_FRAME:
        raise ValueError("--max-frame %d is out of range: use %d..%d (16K..16M; a 15000-byte "
                         "stream chunk plus headers needs 16K)" % (args.max_frame, MIN_FRAME, MAX_FRAME))
    for name in _DURATIONS:
        value = getattr(args, name)
        if not (math.isfinite(value) and value >= 0.001):
            raise ValueError("--%s %s is out of range: use 1ms or more" % (name.replace("_", "-"), value))
    if args.max_connections < 1:
        raise ValueError("--max-connections %d is out of range: use 1 or more" % args.max_connections)
    for room in args.room or ():
        if not room.strip():
            raise ValueError("--room %r names no room (every token names one: this relay would refuse "
                             "them all)" % room)
    if args.socket_buffer and not 64 << 10 <= args.socket_buffer <= 64 << 20:
        # under 64K a loopback link (64 KiB segments) stalls: 1.8 MB/s at 32K
        raise ValueError("--socket-buffer %d is out of range: use 0 (the OS's) or 64K..64M"
                         % args.socket_buffer)
    if args.queue_bytes < args.max_frame:
        raise ValueError("--queue-bytes %d is out of range: use at least --max-frame %d"
                         % (args.queue_bytes, args.max_frame))


def _check_ports(args):
    ports = {}
    for flag, port in (("--port", args.port), ("--ws-port", None if args.no_ws else args.ws_port),
                       ("--http-port", args.http_port)):
        if port is None:
            continue
        if not 0 <= port <= 65535:
            raise ValueError("%s %d is not a port: use 1..65535, or 0 %s" % (
                flag, port, "for no HTTP listener" if flag == "--http-port" else "for a free one"))
        if port and port in ports:
            raise ValueError("%s and %s are both %d: each listener needs its own port"
                             % (ports[port], flag, port))
        ports[port] = flag


# lkedge.config.RoomOptions.ping_interval_ms's default, in seconds: JOINED does not
# announce the idle timeout (LINK.md), so participants cannot adapt to a shorter one.
PARTICIPANT_PING_S = 10


def build(args):
    """-> (RelayServer, dev_keys: bool); ValueError/KeyConfigError on bad settings."""
    from .router import Router
    from .server import HTTP_MAX_CONNECTIONS, RelayServer
    key, secret = auth.resolve_keys(args.api_key, args.api_secret)
    auth.check_listen_keys(args.host, key, secret)
    _check_limits(args)
    _check_ports(args)
    verifier = auth.Verifier(key, secret, rooms=args.room)
    max_connections, warning = fd_budget(
        args.max_connections, 2 * HTTP_MAX_CONNECTIONS if args.http_port else 0,
        explicit=not isinstance(args.max_connections, _DefaultInt))
    router = Router(verifier.verify, max_frame=args.max_frame,
                    join_timeout_ms=int(args.join_timeout * 1000),
                    idle_timeout_ms=int(args.idle_timeout * 1000),
                    queue_bytes=args.queue_bytes, stuck_ms=int(args.send_timeout * 1000),
                    max_connections=max_connections)
    srv = RelayServer(router, host=args.host, port=args.port,
                      ws_port=None if args.no_ws else args.ws_port,
                      http_port=args.http_port or None, http_host=args.http_host, ssl=_tls(args),
                      serial=args.serial, serial_baud=args.serial_baud,
                      socket_buffer=args.socket_buffer)
    if warning:
        srv.warnings.append(warning)
    weak = auth.short_secret_warning(secret)
    if weak:
        srv.warnings.append(weak)
    if args.idle_timeout < 2 * PARTICIPANT_PING_S:
        srv.warnings.append(
            "--idle-timeout %gs is under twice the %d s at which lkedge participants PING "
            "(RoomOptions.ping_interval_ms): an idle participant then stays joined only by "
            "answering the relay's PINGs (one after %gs of quiet), and one that does not answer "
            "them is dropped (LEAVE 6) and rejoins, failing what it had pending; use at least %d s"
            % (args.idle_timeout, PARTICIPANT_PING_S, args.idle_timeout / 2, 2 * PARTICIPANT_PING_S))
    if args.send_timeout >= 2 * PARTICIPANT_PING_S:
        srv.warnings.append(
            "--send-timeout %gs is not under twice the %d s at which lkedge participants PING: "
            "one paused behind a receiver that stopped reading hears nothing (not even its "
            "PONGs) until that receiver is dropped, and after %d s of silence it takes its "
            "link for dead and rejoins, failing what it had pending; use under %d s"
            % (args.send_timeout, PARTICIPANT_PING_S, 2 * PARTICIPANT_PING_S, 2 * PARTICIPANT_PING_S))
    return srv, auth.is_dev_keys(key, secret)


async def _main(args):
    try:
        srv, dev = build(args)
    except (ValueError, auth.KeyConfigError) as e:
        return _fail(str(e))
    from .server import log_line
    for warning in srv.warnings:
        log_line(srv.log, "warning", {"reason": warning})
    try:
        await srv.start()
    except (OSError, ImportError) as e:
        await srv.stop()
        hint = ""
        if isinstance(e, socket.gaierror):
            bad = _unresolved([("--host", args.host)] + ([("--http-host", args.http_host)]
                                                         if args.http_port else []))
            hint = " (%s is not an address of this machine)" % (" nor ".join(bad) or "--host")
        elif getattr(e, "errno", None) == errno.EADDRINUSE:
            hint = (" (another relay, or another program, has that port: stop it or choose "
                    "--port/--ws-port/--http-port; 0 picks a free one for --port and --ws-port, "
                    "and turns the HTTP port off)")
        return _fail("cannot start listening: %s%s" % (e, hint), EXIT_ERROR)
    loop = asyncio.get_running_loop()
    # SIGHUP too (its terminal closed): stop as for the others, LEAVE 5 to everyone,
    # instead of dying without a word to the boards or the log
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, srv.request_stop)
    if dev:
        _say("development keys api_key=%s api_secret=%s (accepted on loopback only; set "
             "LIVEKIT_API_KEY/LIVEKIT_API_SECRET or --api-key/--api-secret for real keys)"
             % (auth.DEV_API_KEY, auth.DEV_API_SECRET))
    _say("link " + " ".join(srv.urls))
    await srv.serve()
    _say("stopped")
    return EXIT_OK


def _unresolved(hosts):
    """The `--flag 'host'` of each of (flag, host) whose name does not resolve."""
    out = []
    for flag, host in hosts:
        try:
            if host:
                socket.getaddrinfo(host, None)
        except socket.gaierror:
            out.append("%s %r" % (flag, host))
    return out


def run(args):
    return asyncio.run(_main(args))
