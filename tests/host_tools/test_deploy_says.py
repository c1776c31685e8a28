"""What `lkedge deploy` says that is not an error: a development-key token for a relay
that is not on loopback (a relay listening beyond loopback has real keys and refuses
it, LEAVE 3), and the telemetry settings, said only for this checkout's firmware/ (the
one that reads them), not for a firmware of your own."""
import argparse
import json
import os
import subprocess
import sys

import pytest

from lkedge_host import deploy
from test_deploy import firmware, lib, run_deploy, unix_board  # noqa: F401 (fixtures)

DEV_KEYS_WARNING = "warning: the board's token is signed with the development keys"


def _options(*argv):
    p = argparse.ArgumentParser()
    deploy.add_arguments(p)
    # "u0" is an mpremote shortcut: check_options looks only at paths
    return p.parse_args(["--port", "u0", "--lib-only"] + list(argv))


@pytest.fixture
def no_keys(monkeypatch):
    monkeypatch.delenv("LIVEKIT_API_KEY", raising=False)
    monkeypatch.delenv("LIVEKIT_API_SECRET", raising=False)


@pytest.mark.parametrize("relay, keys, warned", [
    ("tcp://192.0.2.1:7880", [], True),
    ("ws://relay.example.com:7881", [], True),
    ("tcp://192.0.2.1:7880", ["--api-key", "prodkey", "--api-secret", "s" * 40], False),
    ("tcp://127.0.0.1:7880", [], False),
    ("tcp://localhost:7880", [], False),
    ("tcp://[::1]:7880", [], False),
])
def test_development_keys_for_a_relay_beyond_loopback_are_warned_about(no_keys, capsys, relay, keys, warned):
    deploy.check_options(_options("--relay", relay, *keys))
    err = capsys.readouterr().err
    assert (DEV_KEYS_WARNING in err) == warned, err
    if warned:
        assert "loopback only" in err and "LEAVE 3" in err and "relay's keys" in err


def test_keys_from_the_environment_are_not_warned_about(monkeypatch, capsys):
    monkeypatch.setenv("LIVEKIT_API_KEY", "prodkey")
    monkeypatch.setenv("LIVEKIT_API_SECRET", "s" * 40)
    deploy.check_options(_options("--relay", "tcp://192.0.2.1:7880"))
    assert DEV_KEYS_WARNING not in capsys.readouterr().err


def test_the_warning_comes_before_any_work(tmp_path):
    env = dict(os.environ)
    env.pop("LIVEKIT_API_KEY", None)
    env.pop("LIVEKIT_API_SECRET", None)
    r = subprocess.run([sys.executable, "-m", "lkedge_host.cli", "deploy", "--port", str(tmp_path / "tty"),
                        "--profile", "esp32", "--relay", "tcp://192.0.2.1:7880"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1 and "no serial port" in r.stderr, r.stderr
    assert "deploy: " + DEV_KEYS_WARNING in r.stderr and "deploy: compiling" not in r.stderr


def test_this_checkouts_firmware_is_recognised_however_it_is_spelled(tmp_path, monkeypatch):
    monkeypatch.chdir(deploy.ROOT)
    assert deploy._ours(os.path.join(deploy.ROOT, "firmware"))
    assert deploy._ours("firmware") and deploy._ours("./firmware/")
    assert not deploy._ours(str(tmp_path)) and not deploy._ours(None)


def test_telemetry_is_not_said_for_a_firmware_of_your_own(unix_board, firmware, lib, tmp_path):  # noqa: F811
    _, log = run_deploy(unix_board, "unix", firmware, lib, "--no-reset")
    assert "telemetry" not in log, log
    # asked for: what config.json gets is said, not whether the firmware sends anything
    _, log = run_deploy(unix_board, "unix", firmware, lib, "--no-reset", "--telemetry-to", "collector")
    assert "deploy: config.json telemetry_to 'collector', telemetry_interval_s 10" in log, log
    assert "telemetry to collector every" not in log and "telemetry is off" not in log, log
    cfg = json.loads(subprocess.run([deploy.find_tool("mpremote"), "connect", unix_board, "fs", "cat", ":/config.json"],
                                    capture_output=True, text=True, timeout=30).stdout)
    assert cfg["telemetry_to"] == "collector"


@pytest.mark.parametrize("argv, said", [
    (["--telemetry-interval", "0.09"], "--telemetry-interval must be between 0.1 and 86400 seconds, got 0.09"),
    (["--telemetry-interval", "86400.5"], "--telemetry-interval must be between 0.1 and 86400 seconds, got 86400.5"),
    (["--telemetry-interval", "nan"], "--telemetry-interval must be between 0.1 and 86400 seconds, got nan"),
    (["--telemetry-to", "x" * 257], "bad --telemetry-to: "),
    (["--telemetry-to", "a\udcffb"], "bad --telemetry-to: "),
])
def test_telemetry_options_the_board_would_refuse_are_refused_before_any_work(argv, said):
    with pytest.raises(deploy.UsageError) as e:
        deploy.check_options(_options(*argv))
    assert str(e.value).startswith(said), str(e.value)


@pytest.mark.parametrize("argv", [["--telemetry-interval", "0.1"], ["--telemetry-interval", "86400"],
                                  ["--telemetry-to", "x" * 256], ["--telemetry-to", "collector"]])
def test_telemetry_options_at_their_bounds_are_taken(argv):
    deploy.check_options(_options(*argv))


def test_stale_files_are_the_lib_files_no_longer_built_and_sources_shadowing_a_deployed_mpy(tmp_path):
    built = tmp_path / "built"
    built.write_bytes(b"")
    arts = [deploy.Artifact(p, str(built)) for p in ("/lib/lkedge/room.mpy", "/lib/lkedge/room.msg", "/app.mpy",
                                              "/drivers/bme.mpy", "/main.py")]
    listing = {"/": ["app.py", "app.mpy", "main.py", "data.txt"],
               "/drivers": ["bme.py", "notes.txt"],
               "/lib/lkedge": ["room.mpy", "room.msg", "old.mpy", "old.msg", "old.py", "renames.txt", "readme.txt"]}
    assert deploy._stale(arts, listing) == ["/app.py", "/drivers/bme.py", "/lib/lkedge/old.mpy",
                                            "/lib/lkedge/old.msg", "/lib/lkedge/old.py"]
