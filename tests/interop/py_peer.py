"""Our participants for the interop suites, driven like the Node peer (nodepeer.NodePeer).

    PyPeer(host, port, token, client_protocol=2, compression=True, name="py",
           ping_interval_ms=None)
        the CPython library in THIS process: a Room on its own asyncio loop in a thread,
        commands run by mp_peer.Commands in buffered mode (perform_rpc / whole-string
        handlers / send_text / send_bytes, the LiveKit-style API).
        .crash(): drops the TCP connection without LEAVE (a participant that died).
    MpPeer(host, port, token, client_protocol=2, compression=True, name="mp",
           heapsize="256K", ping_interval_ms=None)
        tests/interop/mp_peer.py (mpy-compiled, run as `micropython -m mp_peer`) under
        the MicroPython unix port, with the mpy-compiled library (tests/mpybuild.py),
        board-sized RoomOptions and the bounded-memory (streaming) API for payloads
        over 64 KiB. .crash(): SIGKILL.

Both inherit NodePeer's thread-safe call()/request()/wait_event()/close(), so one test
body drives any of the three kinds. `compression` is whether the peer advertises
CAP_COMPRESSION_DEFLATE_RAW.

The suites' shared parts live here too (conftest.py only holds the fixtures):
    Pool(relay, ours, root, mp_heap="256K")   peers by (side "node" | "ours",
        (client_protocol, cap)), started on first use with the methods() RPC methods
        and stream handlers (text topic "t", bytes topic "b") registered;
        .peer(side, cfg), .fresh(side, cfg, tag), .pair(a, b), .ends(direction, c, h)
    Payloads                  n-byte multi-byte UTF-8 payload files (make_text)
    expected_rpc(), expected_compressed()   the RPC.md / STREAMS.md expectation model
"""
import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
from nodepeer import NodePeer, NodePeerError  # noqa: E402

MP_PEER = os.path.join(HERE, "mp_peer.py")
PEER_OUT = os.path.join(os.path.dirname(os.path.dirname(HERE)), "build", "mpy-interop")


def compiled_peer():
    """mp_peer.py compiled by mpy-cross (directory for MICROPYPATH). Compiling a 500-line
    source inside a 256 KiB heap fragments it badly enough that the 32 KiB inflate window
    no longer fits; a board would run the .mpy too."""
    from mpybuild import mpy_cross
    dst = os.path.join(PEER_OUT, "mp_peer.mpy")
    if not os.path.exists(dst) or os.path.getmtime(dst) < os.path.getmtime(MP_PEER):
        os.makedirs(PEER_OUT, exist_ok=True)
        subprocess.run(mpy_cross() + ["-march=host", "-o", dst, "-s", "mp_peer.py", MP_PEER],
                       check=True, capture_output=True, text=True)
    return PEER_OUT


def micropython_executable():
    exe = os.path.join(os.path.dirname(sys.executable), "micropython")
    if os.path.exists(exe):
        return exe
    found = shutil.which("micropython")
    if found is None:
        raise NodePeerError("`micropython` (unix port) is neither next to %s nor on PATH"
                            % sys.executable)
    return found


class MpPeer(NodePeer):
    """mp_peer.py in a MicroPython process; same JSON-lines protocol as the Node peer."""

    def __init__(self, host, port, token, client_protocol=2, compression=True, name="mp",
                 heapsize="256K", ping_interval_ms=None):
        NodePeer.__init__(self, host, port, token, name=name)
        from mpybuild import compiled_lib
        self.mpypath = compiled_lib()
        # `env` execs micropython (same pid, so crash() kills it) with the library path
        # and the token (too long for the unix port's command line, see mp_peer.py).
        self.argv = ["env", "MICROPYPATH=%s:%s:.frozen" % (self.mpypath, compiled_peer()),
                     "LKEDGE_TOKEN=" + token, micropython_executable(),
                     "-X", "heapsize=" + heapsize, "-m", "mp_peer",
                     "--url", "tcp://%s:%d" % (host, port),
                     "--client-protocol", str(client_protocol),
                     "--compression", "1" if compression else "0", "--board", "1"]
        if ping_interval_ms is not None:
            self.argv += ["--ping-interval", str(ping_interval_ms)]

    def send(self, cmd, **fields):
        # Raw UTF-8, no \u escapes: MicroPython's json.loads turns an escaped surrogate
        # pair ("\ud83d\ude00") into two lone surrogates, not the one character.
        with self._cond:
            cid = self._next_id
            self._next_id += 1
        line = json.dumps(dict(fields, id=cid, cmd=cmd), ensure_ascii=False) + "\n"
        try:
            self.proc.stdin.write(line.encode("utf-8"))
            self.proc.stdin.flush()
        except (OSError, ValueError) as e:
            raise NodePeerError("%s: cannot send %s: %s\n%s" % (self.name, cmd, e, self.stderr_text))
        return cid

    def crash(self):
        """SIGKILL: the relay sees the TCP connection drop, no LEAVE."""
        self.proc.kill()
        self.proc.wait()


class _FakeProc:
    """What NodePeer's waits look at when the peer is in-process."""

    def __init__(self):
        self.returncode = None

    def poll(self):
        return self.returncode


class PyPeer(NodePeer):
    """The CPython library in this process, on a private event loop thread."""

    def __init__(self, host, port, token, client_protocol=2, compression=True, name="py",
                 ping_interval_ms=None):
        NodePeer.__init__(self, host, port, token, name=name)
        self.ping_interval_ms = ping_interval_ms
        self.url = "tcp://%s:%d" % (host, port)
        self.token = token
        self.client_protocol = client_protocol
        self.compression = compression
        self.loop = None
        self.room = None
        self.commands = None
        self.transport = None

    def start(self, timeout=15.0):
        self.proc = _FakeProc()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        try:
            self._run(self._join(), timeout)
        except Exception as e:
            self._stop_loop()
            raise NodePeerError("%s could not join: %s" % (self.name, e))
        self.joined = self.wait_event("joined", timeout=timeout)
        return self.joined

    def _run(self, coro, timeout=30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _join(self):
        from mp_peer import Commands, joined_event, room_options
        from lkedge.room import Room
        from lkedge.transport import open_transport
        self.room = Room(room_options(self.client_protocol, self.compression, False, self.ping_interval_ms))
        self.commands = Commands(self.room, self._emit, streaming=False,
                                 finite_limit=1 << 62)
        # Our own transport object, so crash() can drop it without a LEAVE.
        self.transport = open_transport(self.url)
        await self.room.connect(self.transport, self.token)
        self._emit(joined_event(self.room))

    def _emit(self, obj):
        # Round-trip through JSON: replies/events look exactly like a process's lines.
        obj = json.loads(json.dumps(obj))
        with self._cond:
            if "event" in obj:
                self._events.append(obj)
            else:
                self._replies[obj.get("id")] = obj
            self._cond.notify_all()

    def send(self, cmd, **fields):
        if self.proc is None or self.proc.returncode is not None:
            raise NodePeerError("%s is not running; cannot send %s" % (self.name, cmd))
        with self._cond:
            cid = self._next_id
            self._next_id += 1
        line = json.dumps(dict(fields, id=cid, cmd=cmd))
        asyncio.run_coroutine_threadsafe(self.commands.run(line), self.loop)
        return cid

    def crash(self):
        """Close the TCP connection without LEAVE (auto_reconnect is off)."""
        self._run(self.transport.close(), 10)
        self._finish()

    def close(self, timeout=5.0):
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            self._run(self.room.disconnect(), timeout)
        except Exception:
            pass
        self._finish()

    def _finish(self):
        self.proc.returncode = 0
        with self._cond:
            self._eof = True
            self._cond.notify_all()
        self._stop_loop()

    def _stop_loop(self):
        # What asyncio.run does at its end: the tasks still there (cancelled by
        # disconnect(), or a crash's) are cancelled and awaited, so that none is destroyed
        # pending when the loop goes ("Task was destroyed but it is pending!").
        loop = self.loop
        try:
            asyncio.run_coroutine_threadsafe(_end_tasks(), loop).result(5)
        except Exception:
            pass
        loop.call_soon_threadsafe(loop.stop)


async def _end_tasks():
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# ================================================================ suite helpers
MAX_V1 = 15360
MIB = 1 << 20
PATTERN = "é€😀"            # 9 bytes: pattern responses never align with 15000-byte chunks
FAIL = {"code": 3001, "message": "refused ü", "data": "why ✓"}
SLOW_MS = 1200
RESPONSE_SIZES = (0, MAX_V1, MAX_V1 + 1, MIB)
ATTRS = {"k": "v", "ü": "😀"}

# (client_protocol, advertises CAP_COMPRESSION_DEFLATE_RAW)
ALL_CONFIGS = [(p, c) for p in (0, 1, 2) for c in (False, True)]
PROTO_CONFIGS = [(0, True), (1, True), (2, True)]


def cfg_id(cfg):
    return "p%d%s" % (cfg[0], "c" if cfg[1] else "")


def methods():
    """register_rpc commands every pooled peer runs."""
    out = [dict(method="echo", behaviour="echo"),
           dict(method="sha", behaviour="echo_sha256"),
           dict(method="fail", behaviour="fail", **FAIL),
           dict(method="throw", behaviour="throw", message="boom"),
           dict(method="slow", behaviour="echo", sleep_ms=SLOW_MS)]
    for n in RESPONSE_SIZES:
        out.append(dict(method="pattern_%d" % n, behaviour="pattern", pattern=PATTERN, n_bytes=n))
    return out


# ------------------------------------------------------------------ payloads
_ALPHABET = "aé€😀ç中𝄞"  # 19 bytes per cycle: byte 15000 (a chunk edge) falls inside "😀"


def make_text(n):
    """Exactly n bytes of UTF-8 mixing 1-4 byte characters, "." padded at the end."""
    return pattern_text("".join(_ALPHABET), n)


def pattern_text(pattern, n):
    """The Node peer's patternText (and mp_peer.PatternText) in Python."""
    unit = len(pattern.encode())
    text = pattern * (n // unit)
    left = n - len(text.encode())
    for ch in pattern:
        k = len(ch.encode())
        if k > left:
            break
        text += ch
        left -= k
    return text + "." * left


def sha(b):
    return hashlib.sha256(b).hexdigest()


class Payloads:
    """Text payload files by size, written once per module."""

    def __init__(self, root):
        self.root = root
        self._files = {}

    def file(self, n):
        if n not in self._files:
            path = os.path.join(self.root, "text_%d.txt" % n)
            data = make_text(n).encode()
            assert len(data) == n
            with open(path, "wb") as f:
                f.write(data)
            self._files[n] = (path, data)
        return self._files[n]

    def fields(self, n):
        """Command fields carrying an n-byte text payload (a file when it matters)."""
        path, data = self.file(n)
        if n <= 4096:
            return {"payload": data.decode()}, data
        return {"payload_file": path}, data


# ------------------------------------------------------------------ expectations
def rpc_version(caller_p, handler_p):
    """RPC.md transport table: v2 only when both ends speak it (a v1 caller sends packets)."""
    return 2 if min(caller_p, handler_p) >= 1 else 1


def expected_rpc(caller_p, handler_p, request_len, response_len):
    """None for success, else the RpcError code the caller must see."""
    if rpc_version(caller_p, handler_p) == 1:
        if request_len > MAX_V1:
            return 1402
        if response_len > MAX_V1:
            return 1504
    return None


def expected_compressed(sender, sender_p, recv_cfg, n, via):
    """Whether a finite stream arrives DEFLATE_RAW-compressed (STREAMS.md negotiation):
    both ends at protocol 2 (a sender speaks at most the protocol it advertises), the
    recipient advertises the capability, and the sender can compress (MicroPython's
    DeflateIO is read-only). Incremental writers and send_file never compress; tiny
    payloads go inline uncompressed (deflate would not shrink them)."""
    if via in ("stream_text", "stream_bytes", "send_file") or sender == "mp":
        return False
    recv_p, recv_cap = recv_cfg
    return min(sender_p, recv_p) >= 2 and recv_cap and n > 64


# ------------------------------------------------------------------ the pool
class Pool:
    """Peers by (side, cfg): side "node" or "ours". Started on first use, kept for the
    module; a peer crashed by a test is never pooled (see fresh())."""

    def __init__(self, relay, ours, root, mp_heap="256K", theirs="node"):
        self.relay = relay
        self.ours = ours
        self.theirs = theirs  # the other side: "node" (livekit-client) or "py" (our CPython lib)
        self.mp_heap = mp_heap
        self.payloads = Payloads(root)
        self.root = root
        self._peers = {}
        self._extra = []
        self._seen = set()

    def identity(self, side, cfg):
        return "%s-%s" % (self.ours if side == "ours" else self.theirs, cfg_id(cfg))

    def peer(self, side, cfg):
        key = (side, cfg)
        if key not in self._peers:
            self._peers[key] = self._start(side, cfg, self.identity(side, cfg))
        return self._peers[key]

    def fresh(self, side, cfg, tag):
        """A new, unpooled peer (for tests that kill it)."""
        p = self._start(side, cfg, "%s-%s" % (self.identity(side, cfg), tag))
        self._extra.append(p)
        return p

    def _start(self, side, cfg, identity):
        proto, cap = cfg
        token = self.relay.token(identity)
        host, port = self.relay.host, self.relay.port
        kind = self.theirs if side == "node" else self.ours
        if kind == "node":
            p = NodePeer(host, port, token, client_protocol=proto,
                         capabilities=(2,) if cap else (), name=identity)
        elif kind == "py":
            p = PyPeer(host, port, token, client_protocol=proto, compression=cap, name=identity)
        else:
            p = MpPeer(host, port, token, client_protocol=proto, compression=cap, name=identity,
                       heapsize=self.mp_heap)
        p.start()
        for m in methods():
            p.call("register_rpc", **m)
        p.call("register_stream_handler", kind="text", topic="t")
        p.call("register_stream_handler", kind="bytes", topic="b")
        return p

    def pair(self, a, b):
        """Make sure peer a knows peer b (and b knows a) before they talk."""
        for x, y in ((a, b), (b, a)):
            if (x.name, y.name) in self._seen:
                continue
            deadline = time.monotonic() + 10
            while True:
                seen = {q["identity"]: q for q in x.call("participants")["participants"]}
                if y.name in seen:
                    break
                if time.monotonic() > deadline:
                    raise NodePeerError("%s never saw %s join" % (x.name, y.name))
                time.sleep(0.02)
            self._seen.add((x.name, y.name))

    def ends(self, direction, caller_cfg, handler_cfg):
        """(caller, handler, caller_kind, handler_kind) for "node->ours" / "ours->node"."""
        if direction == "node->ours":
            a, b = self.peer("node", caller_cfg), self.peer("ours", handler_cfg)
            kinds = (self.theirs, self.ours)
        else:
            a, b = self.peer("ours", caller_cfg), self.peer("node", handler_cfg)
            kinds = (self.ours, self.theirs)
        self.pair(a, b)
        return a, b, kinds[0], kinds[1]

    def close(self):
        for p in list(self._peers.values()) + self._extra:
            try:
                p.close()
            except Exception:
                pass
