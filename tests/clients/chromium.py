"""Headless Chromium driven over its DevTools protocol, for tests of pages in a real browser.

    with Chromium.start(url) as page:             # None when no Chromium is installed
        page.wait_for("document.readyState === 'complete'")
        answer = page.evaluate("fetch('/x').then((r) => r.status)")   # promises are awaited

Chromium is Debian's `chromium` package (`.ci/run` installs it in CI) or whatever
LKEDGE_CHROMIUM names. The protocol is JSON over the WebSocket Chromium opens with
--remote-debugging-port; `websockets` (a test dependency already) is the client, so no
npm package and no browser download is needed.
"""
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

from websockets.sync.client import connect

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# The flags a root user on a closed network needs: without the sandbox (root), and with
# nothing that phones home (its refused connections pile up otherwise); shared memory in
# /tmp, as a container's /dev/shm may be tiny.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-dev-shm-usage", "--remote-debugging-port=0")


class PageError(AssertionError):
    """JavaScript evaluated in the page threw, or a wait ran out; says what the page logged."""


def executable():
    """The Chromium to run, or None."""
    named = os.environ.get("LKEDGE_CHROMIUM")
    if named:
        return named
    return next((p for p in map(shutil.which, NAMES) if p), None)


class Chromium:
    def __init__(self, ws, closing):
        self.ws, self.closing = ws, closing   # closing: the socket, then Chromium and its profile
        self.next_id = 0
        self.console = []   # "type: text" of every console call and uncaught exception

    @classmethod
    def start(cls, url, flags=(), timeout=30):
        exe = executable()
        if exe is None:
            return None
        profile = tempfile.mkdtemp(prefix="lkedge-chromium-")
        proc = subprocess.Popen([exe, *FLAGS, *flags, "--user-data-dir=" + profile, url],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        stack = contextlib.ExitStack()
        stack.callback(_stop, proc, profile)
        with stack:
            port = _devtools_port(proc, profile, timeout)
            ws = stack.enter_context(connect(_page_target(port, timeout), max_size=None, open_timeout=timeout))
            page = cls(ws, stack.pop_all())
        # console calls and exceptions (Runtime), and the browser's own errors, such as a
        # module script that failed to load (Log); both replay what came before
        page._send("Runtime.enable", {})
        page._send("Log.enable", {})
        return page

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.closing.close()

    def evaluate(self, expression, timeout=30):
        """The value of a JavaScript expression in the page (a promise is awaited)."""
        reply = self._send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True, "userGesture": True}, timeout)
        if "exceptionDetails" in reply:
            d = reply["exceptionDetails"]
            text = d.get("exception", {}).get("description") or d.get("text")
            raise PageError("%s threw: %s%s" % (expression[:200], text, self._console_tail()))
        return reply["result"].get("value")

    def hide(self):
        """Put another tab in front: this page is then hidden (document.visibilityState),
        as a tab the user left is."""
        self._send("Target.createTarget", {"url": "about:blank", "newWindow": False, "background": False})

    def set_files(self, selector, paths):
        """Choose files in an <input type=file>, as a user picking them would."""
        root = self._send("DOM.getDocument", {"depth": 0})["root"]["nodeId"]
        node = self._send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        if not node:
            raise PageError("no %s in the page" % selector)
        self._send("DOM.setFileInputFiles", {"nodeId": node, "files": [os.path.abspath(p) for p in paths]})

    def wait_for(self, expression, timeout=20, what=None):
        """Poll a JavaScript expression until it is truthy; its value."""
        end = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > end:
                raise PageError("no %s within %s s (%s)%s" % (what or "change", timeout, expression[:200],
                                                              self._console_tail()))
            time.sleep(0.05)

    def _send(self, method, params, timeout=30):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise PageError("Chromium did not answer %s within %s s%s" % (method, timeout,
                                                                               self._console_tail()))
            try:
                msg = json.loads(self.ws.recv(timeout=left))
            except TimeoutError:
                continue
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise PageError("%s: %s" % (method, msg["error"]))
                return msg["result"]
            self._event(msg)

    def _event(self, msg):
        p = msg.get("params", {})
        if msg.get("method") == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            self.console.append("%s: %s" % (p.get("type"), text[:500]))
        elif msg.get("method") == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.console.append("uncaught: %s" % (d.get("exception", {}).get("description") or d.get("text")))
        elif msg.get("method") == "Log.entryAdded":
            e = p.get("entry", {})
            self.console.append("%s (browser): %s %s" % (e.get("level"), e.get("text", "")[:500], e.get("url", "")))

    def _console_tail(self):
        return ("\npage console:\n  " + "\n  ".join(self.console[-20:])) if self.console else ""


def _devtools_port(proc, profile, timeout):
    # Chromium writes the port it took into the profile once it listens.
    path = os.path.join(profile, "DevToolsActivePort")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError("Chromium exited with %s before it listened" % proc.returncode)
        try:
            with open(path) as f:
                first = f.readline().strip()
            if first:
                return int(first)
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise RuntimeError("Chromium did not open its DevTools port within %s s" % timeout)


def _page_target(port, timeout):
    end = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % port, timeout=timeout) as r:
            pages = [t for t in json.load(r) if t.get("type") == "page"]
        if pages:
            return pages[0]["webSocketDebuggerUrl"]
        if time.monotonic() > end:
            raise RuntimeError("Chromium opened no page within %s s" % timeout)
        time.sleep(0.05)


def _stop(proc, profile):
    try:
        os.killpg(proc.pid, 15)
    except ProcessLookupError:
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait(10)
    shutil.rmtree(profile, ignore_errors=True)
