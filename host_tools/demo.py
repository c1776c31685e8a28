"""`make demo`: the whole product on one machine, nothing to configure.

    python -m lkedge_host.demo [--profile esp32] [--size BYTES] [--keep DIR]

1. starts the relay (`lkedge relay`, ephemeral ports, development keys, loopback);
2. starts an emulated board (`lkedge board --profile esp32`, flash in a temp folder);
3. puts a deterministic test file (1 MiB) on the board's flash with the real mpremote;
4. deploys the firmware (`lkedge deploy`: mpy-cross, mpremote, config.json with a
   token for the relay), which resets the board into the app;
5. joins the room from the host and waits for the board's identity;
6. calls device.info, sensors.read, file.get (the 1 MiB file, streamed), file.put (a
   different 1 MiB file, streamed) and file.stat, checks SHA-256 both ways, and
   prints each result with its timing and the board's free heap after the step;
7. stops everything (also on Ctrl-C and on failure: no process is left behind).

Exits 0 when every check passed, 1 with a message naming the failed step otherwise.

Library use: `run_demo(profile="esp32", size=1 << 20, out=sys.stdout, workdir=None)
-> DemoResult` (raises DemoError); tests call it exactly as `make demo` does.
"""
import argparse
import asyncio
import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from lkedge_host import board as board_mod
from lkedge_host import profiles
from lkedge_host.relay.process import RelayProcess

ROOM = "lkedge-demo"
HOST_IDENTITY = "demo-host"
BOARD_IDENTITY = "demo-board"
FILE_ON_BOARD = "demo.bin"
FILE_PUT = "upload.bin"
START_TIMEOUT_S = 20
JOIN_TIMEOUT_S = 30
CALL_TIMEOUT_S = 60
B64_PIECE = 48 * 1024  # characters per piece of the streamed upload (a multiple of 4)


class DemoError(RuntimeError):
    """A demo step failed; the message names the step and the cause."""


class DemoResult:
    """What the demo measured: steps (name, seconds, mem_free after, lowest mem_free
    sampled during the step or None, summary) and the
    facts the checks used."""

    def __init__(self):
        self.steps = []
        self.info = None
        self.sensors = None
        self.file_size = 0
        self.sha_local = None      # the test file as written on the host
        self.sha_pulled = None     # what file.get delivered
        self.sha_board_get = None  # file.stat of the test file on the board
        self.sha_pushed = None     # the upload as sent from the host
        self.sha_put = None        # what file.put wrote, by the board's count
        self.sha_board_put = None  # file.stat of the upload on the board
        self.heap = 0              # the profile's heap
        self.interpreter_heap = 0  # -X heapsize of the emulated board
        self.profile_name = ""
        self.mem_free_start = 0    # device.info right after the board joined


def test_bytes(size, seed=b"lkedge-demo"):
    """Deterministic pseudo-random bytes: SHA-256 in counter mode."""
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha256(seed + b":%d" % i).digest()
        i += 1
    return bytes(out[:size])


def _say(out, msg):
    print(msg, file=out, flush=True)


# ----------------------------------------------------------------- processes
def _stop(proc, timeout=5):
    """SIGTERM, then SIGKILL; always reaps the process."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _run(cmd, what, timeout=120):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DemoError("%s: timed out after %d s" % (what, timeout)) from None
    if r.returncode != 0:
        raise DemoError("%s failed (exit %d): %s" % (what, r.returncode, (r.stderr or r.stdout).strip()[-800:]))
    return r


def put_file(port, local, remote):
    mpremote = os.path.join(os.path.dirname(sys.executable), "mpremote")
    if not os.access(mpremote, os.X_OK):
        mpremote = shutil.which("mpremote") or "mpremote"
    _run([mpremote, "connect", port, "fs", "cp", local, ":" + remote], "mpremote fs cp %s" % remote)


def deploy(port, profile, url, identity=BOARD_IDENTITY, room=ROOM):
    """`lkedge deploy` with a token for the relay's keys (the same ones the relay uses)."""
    from lkedge_host.relay import auth
    key, secret = auth.resolve_keys(None, None)
    _run([sys.executable, "-m", "lkedge_host.deploy", "--port", port, "--profile", profile,
          "--relay", url, "--identity", identity, "--room", room,
          "--api-key", key, "--api-secret", secret], "lkedge deploy")


# ----------------------------------------------------------------- the host side
async def join(url, identity=HOST_IDENTITY, room=ROOM, **options):
    """A host participant (RoomOptions: big buffers, no reconnect unless `options` say)."""
    from lkedge.config import RoomOptions
    from lkedge.room import Room
    from lkedge_host.relay import auth
    key, secret = auth.resolve_keys(None, None)
    opts = dict(read_buffer=65536, piece_size=65536, auto_reconnect=False)
    opts.update(options)
    r = Room(RoomOptions(**opts))
    await r.connect(url, auth.mint_token(key, secret, identity=identity, room=room))
    return r


async def wait_for_participant(room, identity, timeout):
    deadline = time.monotonic() + timeout
    while identity not in room.remote_participants:
        if time.monotonic() > deadline:
            raise DemoError("the board %r did not join room %r within %d s" % (identity, room.name, timeout))
        await asyncio.sleep(0.05)


async def call(room, method, payload=""):
    return await room.local_participant.perform_rpc(
        destination_identity=BOARD_IDENTITY, method=method, payload=payload, response_timeout=CALL_TIMEOUT_S)


async def pull_b64(room, path):
    """file.get: the streamed base64 answer decoded piece by piece -> (bytes, sha256)."""
    reader = await room.local_participant.perform_rpc_stream(
        destination_identity=BOARD_IDENTITY, method="file.get", payload=json.dumps({"path": path}),
        response_timeout=CALL_TIMEOUT_S)
    h = hashlib.sha256()
    carry = ""
    n = 0
    async for piece in reader:
        text = carry + piece
        cut = len(text) - len(text) % 4
        data = base64.b64decode(text[:cut])
        carry = text[cut:]
        h.update(data)
        n += len(data)
    if carry:
        raise DemoError("file.get answer ends in a partial base64 quad %r" % carry)
    return n, h.hexdigest()


class _Upload:
    """file.put's request: the header line, then the data as base64 in pieces. At each
    quarter it awaits `probe()` (the board's free heap in the middle of the upload)."""

    def __init__(self, path, data, probe=None):
        self.parts = [json.dumps({"path": path}) + "\n"]
        text = base64.b64encode(data).decode()
        self.parts += [text[i:i + B64_PIECE] for i in range(0, len(text), B64_PIECE)]
        n = len(self.parts)
        self.probe_at = set((n * k) // 4 for k in (1, 2, 3)) if probe else set()
        self.probe = probe
        self.sent = 0

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.sent >= len(self.parts):
            raise StopAsyncIteration
        if self.sent in self.probe_at:
            await self.probe()
        self.sent += 1
        return self.parts[self.sent - 1]


async def push(room, path, data, during=None):
    async def probe():
        during.append(await mem_free(room))
    reader = await room.local_participant.perform_rpc_stream(
        destination_identity=BOARD_IDENTITY, method="file.put",
        payload=_Upload(path, data, probe if during is not None else None), response_timeout=CALL_TIMEOUT_S)
    return json.loads(await reader.read_all())


async def mem_free(room):
    return json.loads(await call(room, "device.info"))["mem_free"]


async def _sample_heap(room, into, period_s=0.1):
    """device.info's mem_free, again and again while a transfer runs."""
    while True:
        await asyncio.sleep(period_s)
        into.append(await mem_free(room))


async def steps(room, res, size, upload, out):
    """The calls of the demo, each timed and followed by the board's free heap."""
    async def step(name, coro, summary, sample=False, during=None):
        t0 = time.monotonic()
        during = [] if during is None else during
        sampler = asyncio.ensure_future(_sample_heap(room, during)) if sample else None
        try:
            value = await coro
        except Exception as e:
            raise DemoError("step %s failed: %s" % (name, e)) from e
        finally:
            if sampler is not None:
                sampler.cancel()
        dt = time.monotonic() - t0
        free = await mem_free(room)
        text = summary(value, dt)
        low = min(during) if during else None
        res.steps.append((name, dt, free, low, text))
        _say(out, "  %-12s %7.3f s  mem_free %6d%s  %s" % (
            name, dt, free, "" if low is None else " (lowest during %d)" % low, text))
        return value

    res.info = json.loads(await step("device.info", call(room, "device.info"), lambda v, dt: _info_line(json.loads(v))))
    res.sensors = json.loads(await step("sensors.read", call(room, "sensors.read"), lambda v, dt: v))
    n, res.sha_pulled = await step("file.get", pull_b64(room, FILE_ON_BOARD),
                                   lambda v, dt: "%d bytes, %.2f MiB/s, sha256 %s" % (v[0], v[0] / dt / 1048576, v[1][:16]),
                                   sample=True)
    res.file_size = n
    during = []
    put = await step("file.put", push(room, FILE_PUT, upload, during),
                     lambda v, dt: "%d bytes, %.2f MiB/s, sha256 %s (board's count)"
                     % (v["size"], v["size"] / dt / 1048576, v["sha256"][:16]), during=during)
    res.sha_put = put["sha256"]
    stat = await step("file.stat", call(room, "file.stat", json.dumps({"path": FILE_ON_BOARD})),
                      lambda v, dt: "%s sha256 %s" % (FILE_ON_BOARD, json.loads(v)["sha256"][:16]))
    res.sha_board_get = json.loads(stat)["sha256"]
    stat = await step("file.stat", call(room, "file.stat", json.dumps({"path": FILE_PUT})),
                      lambda v, dt: "%s sha256 %s" % (FILE_PUT, json.loads(v)["sha256"][:16]))
    res.sha_board_put = json.loads(stat)["sha256"]


def _info_line(i):
    return "%s on %s, firmware %s, MicroPython %s, reset cause %s" % (
        i.get("identity"), i.get("board"), i.get("firmware"), i.get("micropython"), i.get("reset_cause"))


def check(res, size):
    """Every comparison the demo promises; DemoError names the first that fails."""
    if res.info.get("board") != res.profile_name:
        raise DemoError("the board reports profile %r, expected %r" % (res.info.get("board"), res.profile_name))
    if res.file_size != size:
        raise DemoError("file.get delivered %d bytes, the file has %d" % (res.file_size, size))
    if not res.sha_local == res.sha_board_get == res.sha_pulled:
        raise DemoError("file.get SHA-256 mismatch: host file %s, on the board %s, received %s"
                        % (res.sha_local, res.sha_board_get, res.sha_pulled))
    if not res.sha_pushed == res.sha_put == res.sha_board_put:
        raise DemoError("file.put SHA-256 mismatch: sent %s, board wrote %s, on the board %s"
                        % (res.sha_pushed, res.sha_put, res.sha_board_put))


# ----------------------------------------------------------------- the whole demo
def run_demo(profile="esp32", size=1 << 20, out=sys.stdout, workdir=None):
    """Run the demo; returns a DemoResult, raises DemoError. Cleans up in all cases."""
    prof = profiles.load(profile)
    res = DemoResult()
    res.profile_name = prof["name"]
    res.heap = prof["heap"]
    res.interpreter_heap = board_mod.interpreter_heapsize(prof["heap"], prof.get("frozen", []))
    tmp = tempfile.mkdtemp(prefix="lkedge-demo-", dir=workdir)
    relay = board = None
    try:
        t_start = time.monotonic()
        relay = RelayProcess()
        try:
            relay.start(timeout=START_TIMEOUT_S)
        except RuntimeError as e:
            raise DemoError(str(e))
        url = relay.url
        _say(out, "relay      %s (development keys, loopback)" % url)
        flash = os.path.join(tmp, "flash")
        board, port = board_mod.launch(profile, flash)
        _say(out, "board      %s emulated on %s, heap %d bytes (-X heapsize=%d), flash %s"
             % (profile, port, res.heap, res.interpreter_heap, flash))
        data = test_bytes(size)
        res.sha_local = hashlib.sha256(data).hexdigest()
        local = os.path.join(tmp, FILE_ON_BOARD)
        with open(local, "wb") as f:
            f.write(data)
        t0 = time.monotonic()
        put_file(port, local, FILE_ON_BOARD)
        _say(out, "flash      %s: %d bytes copied with mpremote in %.1f s, sha256 %s"
             % (FILE_ON_BOARD, size, time.monotonic() - t0, res.sha_local[:16]))
        t0 = time.monotonic()
        deploy(port, profile, url)
        _say(out, "deploy     firmware and library compiled and copied in %.1f s; board reset" % (time.monotonic() - t0))
        upload = test_bytes(size, seed=b"lkedge-demo-upload")
        res.sha_pushed = hashlib.sha256(upload).hexdigest()
        asyncio.run(_host(url, res, size, upload, out))
        check(res, size)
        _say(out, "ok         SHA-256 matches both ways (get %s, put %s); %.1f s in all"
             % (res.sha_local[:16], res.sha_pushed[:16], time.monotonic() - t_start))
        return res
    finally:
        _stop(board)
        if relay is not None:
            relay.stop()
        shutil.rmtree(tmp, ignore_errors=True)


async def _host(url, res, size, upload, out):
    room = await join(url)
    try:
        t0 = time.monotonic()
        await wait_for_participant(room, BOARD_IDENTITY, JOIN_TIMEOUT_S)
        waited = time.monotonic() - t0
        res.mem_free_start = await mem_free(room)
        _say(out, "join       %s joined room %s (seen after %.1f s); mem_free %d"
             % (BOARD_IDENTITY, ROOM, waited, res.mem_free_start))
        await steps(room, res, size, upload, out)
    finally:
        await room.disconnect()


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m lkedge_host.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="esp32", help="board profile to emulate (default %(default)s)")
    p.add_argument("--size", type=int, default=1 << 20, help="size of the test files (default %(default)s)")
    args = p.parse_args(argv)
    out = sys.stdout

    def terminated(*_):
        raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C
    signal.signal(signal.SIGTERM, terminated)
    _say(out, "lkedge demo: relay + emulated %s board + deploy + calls" % args.profile)
    try:
        run_demo(args.profile, args.size, out)
    except DemoError as e:
        _say(sys.stderr, "lkedge demo: FAILED: %s" % e)
        return 1
    except KeyboardInterrupt:
        _say(sys.stderr, "lkedge demo: interrupted; everything stopped")
        return 130
    _say(out, "lkedge demo: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
