"""Telemetry of firmware/ on the emulated ESP32 through the real relay, as docs/firmware.md
("Telemetry") tells a user to set it up: deployed with `lkedge deploy --telemetry-to`
(the guide's command), received by the guide's receiver.py (taken from the guide as
written and run as a program). Also: a redeploy keeps the telemetry settings; a
participant that joins with the receiver's identity but does not take telemetry (1400)
makes the board keep its samples; a Wi-Fi that is down at boot is retried without a
reset while the board samples on.
"""
import asyncio
import json
import os
import re
import subprocess
import sys
import time

import pytest

from lkedge_host import board as board_mod
from lkedge_host import demo, deploy
from lkedge_host.relay import auth
from lkedge_host.relay.process import RelayProcess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUIDE = os.path.join(ROOT, "docs", "firmware.md")
ROOM = "lkedge"          # the guide's commands use the default room
BOARD = "my-board"
COLLECTOR = "collector"
ABSENT_AP = "absent-ap"  # the emulated board never finds this access point


def telemetry_section():
    with open(GUIDE, encoding="utf-8") as f:
        text = f.read()
    return text[text.index("\n## Telemetry\n"):]


def guide_receiver():
    m = re.search(r"<!-- telemetry receiver: receiver.py -->\n```python\n(.*?)```", telemetry_section(), re.S)
    assert m, "docs/firmware.md has no receiver.py block in its Telemetry section"
    return m.group(1)


def guide_deploy():
    cmds = [line for block in re.findall(r"```sh\n(.*?)```", telemetry_section(), re.S)
            for line in block.splitlines() if line.startswith("lkedge deploy ")]
    assert len(cmds) == 1, cmds
    return cmds[0]


class Rig:
    def __init__(self, tmp):
        self.tmp = tmp
        self.relay = RelayProcess().start()
        self.url = self.relay.url
        self.flash = os.path.join(tmp, "flash")
        # emulation/network.py: the board never finds this access point
        self.board, self.pty = board_mod.launch("esp32", self.flash, env={"LKEDGE_EMULATED_NO_AP": ABSENT_AP})
        os.symlink(self.pty, os.path.join(tmp, "board.pty"))  # the guide's ./board.pty
        self.env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
        for k in ("LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
            self.env.pop(k, None)

    def deploy(self, line):
        """A `lkedge deploy ...` command line, run in the rig's folder (the relay's URL added)."""
        exe = os.path.join(os.path.dirname(sys.executable), "lkedge")
        r = subprocess.run(exe + line[len("lkedge"):] + " --relay " + self.url, shell=True, cwd=self.tmp,
                           env=self.env, capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stderr
        return r.stderr

    def flash_json(self, name):
        try:
            with open(os.path.join(self.flash, name)) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return None

    def flash_text(self, name):
        try:
            with open(os.path.join(self.flash, name)) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self):
        demo._stop(self.board)
        self.relay.stop()


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = Rig(str(tmp_path_factory.mktemp("tel")))
    yield r
    r.stop()


class Receiver:
    """The guide's receiver.py, run as a program; its JSON lines collected."""

    def __init__(self, rig):
        path = os.path.join(rig.tmp, "receiver.py")
        with open(path, "w") as f:
            f.write(guide_receiver())
        key, secret = auth.resolve_keys(None, None)
        env = dict(rig.env, LKEDGE_URL=rig.url,
                   LKEDGE_TOKEN=auth.mint_token(key, secret, identity=COLLECTOR, room=ROOM))
        self.proc = subprocess.Popen([sys.executable, "-u", path], cwd=rig.tmp, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines = []
        import threading
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def seqs(self):
        return [r["seq"] for r in list(self.lines)]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        err = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return err


async def _until(pred, timeout, what):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "timed out after %s s waiting for %s" % (timeout, what)
        await asyncio.sleep(0.1)


_DEPLOY = "lkedge deploy --port ./board.pty --profile esp32 --identity %s" % BOARD


async def _host(rig, identity="tel-host"):
    """Join as `identity` once the board sends telemetry to COLLECTOR every 0.2 s (each
    test may run alone: it deploys so when the board does not already)."""
    cfg = rig.flash_json("config.json") or {}
    if cfg.get("telemetry_to") != COLLECTOR or cfg.get("telemetry_interval_s") != 0.2:
        rig.deploy(_DEPLOY + " --telemetry-to %s --telemetry-interval 0.2" % COLLECTOR)
    room = await demo.join(rig.url, identity=identity, room=ROOM)
    await demo.wait_for_participant(room, BOARD, 60)
    return room


async def _call(room, method, payload=""):
    return await room.local_participant.perform_rpc(destination_identity=BOARD, method=method,
                                                    payload=payload, response_timeout=10)


def _contiguous(seqs):
    return seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_deploy_turns_telemetry_on_and_a_redeploy_keeps_it(rig):
    out = rig.deploy(guide_deploy())  # the guide's command: --telemetry-to collector --telemetry-interval 10
    assert "telemetry to collector every 10 s" in out, out
    cfg = rig.flash_json("config.json")
    assert cfg["telemetry_to"] == COLLECTOR and cfg["telemetry_interval_s"] == 10, cfg
    out = rig.deploy(_DEPLOY)  # a plain redeploy (to renew the token, say): telemetry stays on
    assert "telemetry to collector every 10 s (telemetry_to kept from the board's config.json)" in out, out
    cfg = rig.flash_json("config.json")
    assert cfg["telemetry_to"] == COLLECTOR and cfg["telemetry_interval_s"] == 10, cfg


# What a redeploy writes, from its options and the board's current config.json (read
# by the deploy's query of the board): the combinations the two real deploys above skip.
@pytest.mark.parametrize("to, interval, old, want_to, want_interval, said", [
    (None, 0.2, {"telemetry_to": "collector", "telemetry_interval_s": 10}, "collector", 0.2,
     "telemetry to collector every 0.2 s (telemetry_to kept from the board's config.json)"),
    ("", None, {"telemetry_to": "collector", "telemetry_interval_s": 10}, "", 10, "telemetry is off"),
    (None, None, None, "", deploy.TELEMETRY_INTERVAL_S, "--telemetry-to IDENTITY"),
    ("other", 5, {"telemetry_to": "collector", "telemetry_interval_s": 10}, "other", 5, "telemetry to other every 5 s"),
])
def test_a_redeploy_takes_the_options_else_the_boards_telemetry_settings(to, interval, old, want_to,
                                                                         want_interval, said):
    o = type("Options", (), {"telemetry_to": to, "telemetry_interval": interval})()
    got_to, got_interval, say = deploy.telemetry_settings(o, {"cfg": old})
    assert (got_to, got_interval) == (want_to, want_interval) and said in say, (got_to, got_interval, say)


async def test_the_guides_receiver_and_a_cli_that_joins_as_the_receiver(rig):
    # no receiver yet: the board queues. Then a participant joins as "collector" that
    # does not take telemetry (the reviewer's CLI): its 1400 must not count as delivered
    room = await _host(rig)
    try:
        await asyncio.sleep(1.5)
        impostor = await demo.join(rig.url, identity=COLLECTOR, room=ROOM)
        await asyncio.sleep(3)
        taken = rig.flash_json("telemetry.st")
        await impostor.disconnect()
        assert taken["seq"] > taken["first"], taken  # samples pending, none taken by the impostor
        rx = Receiver(rig)
        try:
            await _until(lambda: rx.seqs() and rx.seqs()[-1] >= taken["seq"] + 10, 30, "the backlog and new samples")
        finally:
            err = rx.stop()
        seqs = rx.seqs()
        assert _contiguous(seqs), seqs
        assert seqs[0] <= taken["first"], (seqs[:3], taken)
        rec = rx.lines[-1]
        assert rec["device"] == BOARD and isinstance(rec["boot"], int) and isinstance(rec["ms"], int), rec
        assert isinstance(rec["t"], int) and abs(rec["t"] - time.time()) < 60, rec  # the host's clock
        assert {"chip_temp_c", "light_v", "button"} <= set(rec["v"]), rec
        info = json.loads(await _call(room, "device.info"))
        assert info["telemetry"]["dropped"] == 0, info
        log = rig.flash_text("log.txt")
        assert log.count("does not take telemetry") == 1, log[-3000:]
        assert "Traceback" not in err, err
    finally:
        await room.disconnect()


async def test_sampling_goes_on_while_the_wifi_is_down_at_boot_and_it_is_retried_without_a_reset(rig):
    room = await _host(rig)
    try:
        # 0.25 s apart: the ~10 s offline fit the esp32 profile's 8 KiB queue
        patch = {"wifi": {"ssid": ABSENT_AP, "password": "pw"}, "revert_after_s": 8, "wifi_timeout_s": 2,
                 "telemetry_interval_s": 0.25}
        r = json.loads(await _call(room, "config.update", json.dumps(patch)))
        assert r["on_trial"] is True
        boot0 = int(rig.flash_text("telemetry.boot") or 0)
        assert json.loads(await _call(room, "reboot"))["rebooting"] is True
        await _until(lambda: BOARD not in room.remote_participants, 10, "the board to leave")
        await _until(lambda: int(rig.flash_text("telemetry.boot") or 0) == boot0 + 1, 15, "the reboot")
        seq0 = rig.flash_json("telemetry.st")["seq"]
        # two Wi-Fi attempts (2 s each, 5 s apart) fail; then the config is reverted
        # (the second, 7 s of trying past the first's 2, reverts the config: the flash log
        # has the first failure only, a repeat is counted, not written)
        await _until(lambda: "resetting into the last good config" in rig.flash_text("log.txt"), 60,
                     "a second Wi-Fi attempt")
        assert rig.flash_text("log.txt").count("trying again with backoff") == 1
        assert int(rig.flash_text("telemetry.boot")) == boot0 + 1, "the board reset between attempts"
        offline = rig.flash_json("telemetry.st")["seq"]
        assert offline - seq0 >= 20, (seq0, offline)  # sampled while the Wi-Fi is down
        await demo.wait_for_participant(room, BOARD, 60)  # back on the last good config
    finally:
        await room.disconnect()
    rx = Receiver(rig)
    try:
        await _until(lambda: rx.seqs() and rx.seqs()[-1] >= offline, 60, "the samples taken offline")
    finally:
        rx.stop()
    seqs = rx.seqs()
    assert _contiguous(seqs) and seqs[0] <= seq0, (seqs[:3], seq0)
    boots = set(r["boot"] for r in rx.lines if seq0 <= r["seq"] < offline)
    assert boots == {boot0 + 1}, boots


async def test_file_list_pages_fit_the_heap_that_telemetry_leaves(rig):
    # docs/firmware.md, "Its heap": with the receiver taking batches ~22 KB stay free on
    # the esp32 profile; file.list built a dict per entry, and a page of lib/lkedge (40
    # entries) failed there with MemoryError (1500)
    room = await _host(rig)
    rx = Receiver(rig)
    try:
        await _until(lambda: len(rx.seqs()) >= 5, 30, "the receiver to take samples")
        for _ in range(5):
            names, start = [], 0
            while start is not None:
                page = json.loads(await _call(room, "file.list", json.dumps({"path": "lib/lkedge", "start": start})))
                names += [e["name"] for e in page["entries"]]
                start = page["next"]
            assert "room.mpy" in names and len(names) == len(os.listdir(os.path.join(rig.flash, "lib", "lkedge")))
        info = json.loads(await _call(room, "device.info"))
        assert info["telemetry"]["sent"] > 0, info
    finally:
        rx.stop()
        await room.disconnect()
