"""`lkedge relay` as a child process, for tests, `make demo` and benchmarks.

    with RelayProcess() as relay:          # loopback, development keys, free ports
        token = relay.token("board-1")     # room "lkedge" unless said otherwise
        ... relay.url ...                  # tcp://127.0.0.1:PORT
        relay.restart()                    # same port again (reconnect tests)
"""
import os
import re
import subprocess
import sys
import time

from . import auth
from .metrics import series

_READY = re.compile(r"^lkedge relay: link (\S+)(.*)$")


class _Exited(Exception):
    pass


def _free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _lkedge_cmd():
    exe = os.path.join(os.path.dirname(sys.executable), "lkedge")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "lkedge_host.cli"]


class RelayProcess:
    def __init__(self, port=0, room="lkedge", extra_args=(), stderr=subprocess.DEVNULL, http=False):
        self.host = "127.0.0.1"
        self.port = port
        self.http = http
        self.room = room
        self.extra_args = list(extra_args)
        self.stderr = stderr
        self.proc = None
        self.url = None
        self.ws_url = None
        self.http_url = None
        self.key, self.secret = auth.resolve_keys(None, None, environ={})

    def start(self, timeout=20):
        # The HTTP port is picked here (for the relay, 0 turns HTTP off), so another
        # process may take it before the relay binds it (tests in parallel): then the
        # relay exits, and a fresh pick is tried, twice at most.
        for attempt in range(3 if self.http else 1):
            try:
                return self._start(_free_port() if self.http else 0, timeout)
            except _Exited as e:
                if attempt == (2 if self.http else 0):
                    raise RuntimeError(str(e))

    def _start(self, http_port, timeout):
        args = _lkedge_cmd() + ["relay", "--host", "127.0.0.1", "--port", str(self.port),
                                "--ws-port", "0", "--http-port", str(http_port)] + self.extra_args
        env = dict(os.environ)
        env.pop("LIVEKIT_API_KEY", None)
        env.pop("LIVEKIT_API_SECRET", None)
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env)
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            line = self.proc.stdout.readline()
            if not line:
                try:
                    code = self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    code = None
                raise _Exited("lkedge relay exited (code %s) before it was ready" % code)
            m = _READY.match(line.strip())
            if m:
                self.url = m.group(1)
                self.port = int(self.url.rsplit(":", 1)[1])
                rest = m.group(2).split()
                self.ws_url = next((u for u in rest if u.startswith("ws")), None)
                self.http_url = next((u for u in rest if u.startswith("http")), None)
                self._drain()
                return self
        raise RuntimeError("lkedge relay not ready within %d s" % timeout)

    def counter(self, name, **labels):
        """A counter's value from the relay's /metrics (0 while it has none); needs
        http=True. counter("lkedge_relay_frames_out_total", type="PING")."""
        import urllib.request
        if not self.http_url:
            raise RuntimeError("the relay was started without its HTTP port (RelayProcess(http=True))")
        with urllib.request.urlopen(self.http_url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        key = series(name, labels)
        for line in text.splitlines():
            if line.startswith(key + " "):
                return int(float(line.split()[-1]))
        return 0

    def _drain(self):
        """Keep reading the relay's stdout so a long run never blocks on a full pipe."""
        import threading
        out = self.proc.stdout

        def pump():
            try:
                for _ in iter(out.readline, ""):
                    pass
            except (OSError, ValueError):  # closed by stop()
                pass
        threading.Thread(target=pump, daemon=True).start()

    def stop(self, timeout=10):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.proc = None

    def kill(self):
        """Die without LEAVE frames, as a crashed relay or a pulled cable would."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc.stdout.close()
            self.proc = None

    def restart(self):
        """Stop and start again on the same port (participants reconnect to it)."""
        self.stop()
        return self.start()

    def health(self):
        """The relay's /healthz JSON (needs http=True)."""
        import json
        import urllib.request
        with urllib.request.urlopen(self.http_url + "/healthz", timeout=5) as r:
            return json.loads(r.read().decode().split("\n", 1)[1])

    def rss(self):
        """The relay process's resident memory in bytes (Linux /proc)."""
        with open("/proc/%d/status" % self.proc.pid) as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

    def token(self, identity, room=None, ttl_s=3600):
        return auth.mint_token(self.key, self.secret, identity=identity, room=room or self.room, ttl_s=ttl_s)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
