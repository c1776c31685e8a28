"""Drive the Node interop peer (livekit-client's real RPC and data-stream managers on a
LINK.md connection, tests/interop/node) and the project's relay from pytest.

    relay = RelayProcess(room=...).start()      # lkedge_host.relay.process: `lkedge relay` on loopback
    with NodePeer(relay.host, relay.port, relay.token("alice"), client_protocol=2,
                  capabilities=(2,)) as alice:
        alice.call("register_rpc", method="echo", behaviour="echo")
        reply = bob.call("perform_rpc", destination="alice", method="echo", payload="hi")
        event = alice.wait_event("stream", topic="chat")

Protocol with the peer (tests/interop/node/src/main.ts, commands.ts): one JSON object per
line on stdin ({"id", "cmd", ...}); replies {"id", "ok": true, ...} or {"id", "ok": false,
"error": {"code", "message", "data"}} in any order; unsolicited lines are events
({"event": ...}). The first line is the "joined" (or "join_failed") event.

Build the bundle first (`make setup` does): `npm ci --prefix clients/browser && node
tests/interop/node/build.mjs` (the peer is built from the browser client's packages).
"""
import functools
import json
import os
import shutil
import subprocess
import threading
import time
from collections import deque

HERE = os.path.dirname(os.path.abspath(__file__))
NODE_DIR = os.path.join(HERE, "node")
BUNDLE = os.path.join(NODE_DIR, "build", "peer.cjs")
SELFTEST = os.path.join(NODE_DIR, "build", "selftest.cjs")
BUILD_HINT = "npm ci --prefix clients/browser && node tests/interop/node/build.mjs"


class NodePeerError(Exception):
    """The peer process misbehaved: it died, did not answer in time, or failed to join."""


class CommandFailed(Exception):
    """A command answered {"ok": false}; `error` holds its error map (code/message/data)."""

    def __init__(self, cmd, error):
        self.cmd = cmd
        self.error = error
        self.code = error.get("code")
        super().__init__("%s failed: %s" % (cmd, json.dumps(error)))


def node_executable():
    node = shutil.which("node")
    if node is None:
        raise NodePeerError("`node` (Node.js 20) is not on PATH; the interop peer needs it")
    return node


@functools.lru_cache(maxsize=None)
def websocket_flags():
    """Node's own WebSocket (what the browser client uses there) is on from Node 22;
    Node 20 needs a flag for it."""
    out = subprocess.run([node_executable(), "--version"], capture_output=True, text=True).stdout
    major = int(out.strip().lstrip("v").split(".")[0] or 0)
    return ("--experimental-websocket",) if major < 22 else ()


def require_bundle(path=BUNDLE):
    if not os.path.exists(path):
        raise NodePeerError("interop peer bundle %s is missing; build it with: %s"
                            % (os.path.relpath(path), BUILD_HINT))
    return path


class NodePeer:
    """One Node peer process joined to a relay. Thread-safe request/reply and event waits."""

    def __init__(self, host, port, token, client_protocol=2, capabilities=(2,), ping_ms=5000,
                 name="node", raw_remote_protocol=False, verbose=False, ws_url=None,
                 token_file=None):
        self.name = name
        self.argv = [node_executable()] + list(websocket_flags() if ws_url else ()) + [
                     require_bundle(), "--host", str(host), "--port",
                     str(port), "--token", token, "--client-protocol", str(client_protocol),
                     "--capabilities", ",".join(str(c) for c in capabilities) or "none",
                     "--ping-ms", str(ping_ms)]
        if raw_remote_protocol:
            self.argv.append("--raw-remote-protocol")
        if ws_url:   # the browser client's Room over the relay's WebSocket port
            self.argv += ["--ws-url", ws_url]
        if token_file:   # read at every join instead of the token (which may then be "")
            i = self.argv.index("--token")
            self.argv[i:i + 2] = ["--token-file", token_file]
        if verbose:
            self.argv.append("--verbose")
        self.proc = None
        self.joined = None
        self._cond = threading.Condition()
        self._replies = {}
        self._events = []
        self._stderr = deque(maxlen=200)
        self._next_id = 1
        self._eof = False

    # -- life cycle ---------------------------------------------------------------------

    def start(self, timeout=15.0):
        """Start the process and wait for its "joined" event (returned)."""
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, bufsize=0)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        first = self.wait_event(lambda e: e["event"] in ("joined", "join_failed"),
                                timeout=timeout)
        if first["event"] == "join_failed":
            self.close()
            raise NodePeerError("%s could not join: %s" % (self.name, first["error"]))
        self.joined = first
        return first

    def close(self, timeout=5.0):
        """Ask the peer to quit (LEAVE), then make sure the process is gone."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(timeout)
            except (OSError, subprocess.TimeoutExpired, NodePeerError):
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass

    def __enter__(self):
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def stderr_text(self):
        """The last lines the peer logged (livekit-client warnings), for failure messages."""
        with self._cond:
            return "\n".join(self._stderr)

    # -- commands -------------------------------------------------------------------------

    def send(self, cmd, **fields):
        """Send a command without waiting; returns its id (see wait_reply)."""
        with self._cond:
            cid = self._next_id
            self._next_id += 1
        line = json.dumps(dict(fields, id=cid, cmd=cmd)) + "\n"
        try:
            self.proc.stdin.write(line.encode("utf-8"))
            self.proc.stdin.flush()
        except (OSError, ValueError) as e:
            raise NodePeerError("%s: cannot send %s: %s\n%s"
                                % (self.name, cmd, e, self.stderr_text))
        return cid

    def wait_reply(self, cid, timeout=30.0):
        deadline = time.monotonic() + timeout
        with self._cond:
            while cid not in self._replies:
                left = deadline - time.monotonic()
                if self._eof:
                    raise NodePeerError("%s exited (code %s) before answering command %d\n%s"
                                        % (self.name, self.proc.poll(), cid, self.stderr_text))
                if left <= 0:
                    raise NodePeerError("%s: no reply to command %d within %.1f s\n%s"
                                        % (self.name, cid, timeout, self.stderr_text))
                self._cond.wait(left)
            return self._replies.pop(cid)

    def request(self, cmd, timeout=30.0, **fields):
        """Send a command and return its reply, ok or not."""
        return self.wait_reply(self.send(cmd, **fields), timeout)

    def call(self, cmd, timeout=30.0, **fields):
        """Send a command and return its reply; raise CommandFailed when ok is false."""
        reply = self.request(cmd, timeout, **fields)
        if not reply.get("ok"):
            raise CommandFailed(cmd, reply.get("error") or {})
        return reply

    # -- events -----------------------------------------------------------------------------

    def wait_event(self, event, timeout=10.0, **match):
        """Remove and return the first event that matches: `event` is a name (and `match`
        fields must be equal) or a predicate over the event dict."""
        if callable(event):
            pred = event
        else:
            def pred(e):
                return e.get("event") == event and all(e.get(k) == v for k, v in match.items())
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, e in enumerate(self._events):
                    if pred(e):
                        return self._events.pop(i)
                left = deadline - time.monotonic()
                if self._eof:
                    raise NodePeerError("%s exited (code %s) while waiting for %r\n%s"
                                        % (self.name, self.proc.poll(), event, self.stderr_text))
                if left <= 0:
                    raise NodePeerError("%s: no %r event within %.1f s; events seen: %s\n%s"
                                        % (self.name, event, timeout, self._events,
                                           self.stderr_text))
                self._cond.wait(left)

    def events(self):
        with self._cond:
            return list(self._events)

    # -- reader threads ---------------------------------------------------------------------

    def _read_stdout(self):
        for raw in self.proc.stdout:
            try:
                obj = json.loads(raw.decode("utf-8"))
            except ValueError:
                obj = {"event": "bad_line", "line": raw.decode("utf-8", "replace")}
            with self._cond:
                if "event" in obj:
                    self._events.append(obj)
                else:
                    self._replies[obj.get("id")] = obj
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _read_stderr(self):
        for raw in self.proc.stderr:
            with self._cond:
                self._stderr.append(raw.decode("utf-8", "replace").rstrip())


