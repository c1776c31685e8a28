"""`lkedge deploy` against the emulated board: real mpy-cross, real mpremote, real
MicroPython. A tiny test firmware in a temp folder stands in for firmware/."""
import json
import os
import pty
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from lkedge_host import board, boardbuild, deploy, profiles
from lkedge_host.relay import auth

MPREMOTE = os.path.join(os.path.dirname(sys.executable), "mpremote")
REAL_LIB = os.path.join(deploy.ROOT, "lib", "lkedge")


def mpremote_out(port, *args):
    r = subprocess.run([MPREMOTE, "connect", port] + list(args), capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, (r.stdout, r.stderr)
    return r.stdout.replace("\r\n", "\n")


def deploy_cmd(port, firmware, lib, *extra, timeout=120):
    return subprocess.run([sys.executable, "-m", "lkedge_host.cli", "deploy", "--port", port,
                           "--firmware", firmware, "--lib", lib] + list(extra),
                          capture_output=True, text=True, timeout=timeout)


def run_deploy(port, profile, firmware, lib, *extra):
    r = deploy_cmd(port, firmware, lib, "--profile", profile, *extra)
    assert r.returncode == 0, r.stderr
    m = re.search(r"deploy: (\d+) copied, (\d+) unchanged, (\d+) removed", r.stderr)
    assert m, r.stderr
    return [int(x) for x in m.groups()], r.stderr


def _write(d, name, text):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "w") as f:
        f.write(text)


@pytest.fixture
def firmware(tmp_path):
    d = str(tmp_path / "firmware")
    _write(d, "boot.py", "# test firmware boot.py\n")
    # main.py records that it ran and returns, so the board reaches its REPL
    _write(d, "main.py", "import app\napp.started()\n")
    _write(d, "app.py", "def answer():\n    return 42\n\ndef started():\n    open('main_ran', 'w').close()\n")
    _write(d, "helper.py", "VALUE = 'helper'\n")
    return d


@pytest.fixture
def lib(tmp_path):
    d = str(tmp_path / "lib")
    _write(d, "__init__.py", "__version__ = 'test'\n")
    _write(d, "alpha.py", "def name():\n    return 'alpha'\n")
    return d


def _board(profile, tmp_path):
    proc, port = board.launch(profile, str(tmp_path / "flash"))
    return proc, port


@pytest.fixture
def unix_board(tmp_path):
    proc, port = _board("unix", tmp_path)
    yield port
    proc.terminate()
    proc.wait(5)


def _after_reset():
    time.sleep(0.1 + board.BOOT_TIME_S + 0.3)  # mpremote's reset sleeps 100 ms on the board


def test_first_deploy_copies_everything_then_only_what_changed(unix_board, firmware, lib, tmp_path):
    # 2 lib modules + the rename table (the board build's _lkmsg in __init__) + boot.py,
    # main.py, app.mpy, helper.mpy + profile.json, and config.json (copied every time,
    # with its fresh token: counted as copied)
    counts, log = run_deploy(unix_board, "unix", firmware, lib)
    assert counts == [9, 0, 0], log
    assert "deploy: to copy: /config.json" in log
    _after_reset()
    counts, log = run_deploy(unix_board, "unix", firmware, lib)
    assert counts == [1, 8, 0], log
    assert log.count("deploy: to copy: ") == 1 and "deploy: to copy: /config.json" in log  # only the config
    _write(firmware, "app.py", "def answer():\n    return 43\n\ndef started():\n    pass\n")
    _after_reset()
    counts, log = run_deploy(unix_board, "unix", firmware, lib)
    assert counts == [2, 7, 0] and "deploy: to copy: /app.mpy" in log, log
    _after_reset()
    assert mpremote_out(unix_board, "exec", "import app; print(app.answer())") == "43\n"


def test_compiled_mpy_is_what_the_board_imports(unix_board, firmware, lib, tmp_path):
    run_deploy(unix_board, "unix", firmware, lib)
    _after_reset()
    flash = str(tmp_path / "flash")
    assert os.path.exists(os.path.join(flash, "main_ran"))  # the reset ran main.py
    assert sorted(os.listdir(os.path.join(flash, "lib", "lkedge"))) == ["__init__.mpy", "alpha.mpy", "renames.txt"]
    assert not os.path.exists(os.path.join(flash, "app.py"))
    got = mpremote_out(unix_board, "exec",
                       "import app, helper, lkedge.alpha, lkedge\n"
                       "print(app.__file__, helper.__file__, lkedge.alpha.__file__)\n"
                       "print(app.answer(), helper.VALUE, lkedge.alpha.name(), lkedge.__version__)")
    assert got == "app.mpy helper.mpy /lib/lkedge/alpha.mpy\n42 helper alpha test\n"


def test_stale_py_files_that_would_shadow_mpy_are_removed(unix_board, firmware, lib, tmp_path):
    old = tmp_path / "old_app.py"
    old.write_text("def answer():\n    return 'stale source'\n")
    mpremote_out(unix_board, "fs", "cp", str(old), ":app.py")
    mpremote_out(unix_board, "fs", "mkdir", ":lib")
    mpremote_out(unix_board, "fs", "mkdir", ":lib/lkedge")
    mpremote_out(unix_board, "fs", "cp", str(old), ":lib/lkedge/gone.py")  # no longer in the library
    counts, log = run_deploy(unix_board, "unix", firmware, lib)
    assert counts[2] == 2, log
    assert "deploy: remove /app.py (stale)" in log and "deploy: remove /lib/lkedge/gone.py (stale)" in log
    _after_reset()
    assert mpremote_out(unix_board, "exec", "import app; print(app.answer())") == "42\n"


def test_a_deploy_starts_the_last_good_config_afresh(unix_board, firmware, lib, tmp_path):
    # firmware/lastgood.py: the deployed config.json must not be on trial against (and
    # reverted to) the config the board joined with before
    note = tmp_path / "note.json"
    note.write_text('{"token": "old"}')
    for name in ("config.good.json", "config.trial.json", "config.rejected.json"):
        mpremote_out(unix_board, "fs", "cp", str(note), ":" + name)
    counts, log = run_deploy(unix_board, "unix", firmware, lib)
    for name in ("config.good.json", "config.trial.json", "config.rejected.json"):
        assert "deploy: remove /%s (the deployed config.json starts afresh" % name in log, log
        assert not os.path.exists(str(tmp_path / "flash" / name)), name
    assert counts[2] == 3, log


def test_config_and_profile_json_are_written_for_the_firmware(unix_board, firmware, lib, tmp_path):
    run_deploy(unix_board, "unix", firmware, lib, "--relay", "tcp://10.0.0.5:7880",
               "--identity", "pump-7", "--room", "plant")
    flash = str(tmp_path / "flash")
    with open(os.path.join(flash, "profile.json"), "rb") as f:
        assert f.read() == profiles.board_json(profiles.load("unix"))
    with open(os.path.join(flash, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["relay"] == "tcp://10.0.0.5:7880" and cfg["wifi"] == {"ssid": "", "password": ""}
    from livekit import api
    claims = api.TokenVerifier(auth.DEV_API_KEY, auth.DEV_API_SECRET).verify(cfg["token"])
    assert claims.identity == "pump-7" and claims.video.room == "plant" and claims.video.room_join


def test_default_identity_comes_from_the_boards_unique_id(unix_board, firmware, lib):
    _, log = run_deploy(unix_board, "unix", firmware, lib, "--no-reset")
    uid = mpremote_out(unix_board, "exec", "import machine, binascii; print(binascii.hexlify(machine.unique_id()).decode())")
    assert "config.json written for lkedge-%s in room lkedge" % uid.strip()[:8] in log


def test_real_library_compiles_for_xtensawin_and_runs_on_the_esp32_board(tmp_path, firmware):
    proc, port = _board("esp32", tmp_path)
    try:
        counts, log = run_deploy(port, "esp32", firmware, REAL_LIB)
        assert "-march=xtensawin" in log
        sources = [f for f in os.listdir(REAL_LIB) if f.endswith(".py") and f not in deploy.HOST_ONLY]
        with_texts = [f for f in sources
                      if boardbuild.board_source(open(os.path.join(REAL_LIB, f)).read(), f[:-3])[1]]
        # .mpy + .msg + the private-name table + firmware + config.json
        assert counts == [len(sources) + len(with_texts) + 1 + 5 + 1, 0, 0], log
        assert "to copy: /lib/lkedge/rpc.msg" in log and "to copy: /lib/lkedge/renames.txt" in log
        assert "relayside" not in log and "memroom" not in log   # relays' and tests' only
        _after_reset()
        got = mpremote_out(port, "exec", "import lkedge.consts as c; print(c.__file__, c.CAP_COMPRESSION_DEFLATE_RAW)")
        assert got == "/lib/lkedge/consts.mpy 2\n"
        # An error's text comes from the deployed message file, word for word.
        got = mpremote_out(port, "exec", "from lkedge.rpc import RpcServer\ntry:\n    RpcServer().register('', print)\n"
                                         "except ValueError as e:\n    print(e)")
        assert got == "RPC method name must be a non-empty str, got ''\n"
        # Private names are respelled on the board (the table says how), public ones not.
        on_board = tmp_path / "renames.txt"
        on_board.write_text(mpremote_out(port, "exec", "print(open('/lib/lkedge/renames.txt').read())").strip() + "\n")
        table = {old: new for new, old in boardbuild.read_table(str(on_board)).items()}
        got = mpremote_out(port, "exec", "import lkedge.room as r\nprint(hasattr(r.Room, %r), hasattr(r.Room, '_emit'),"
                                         " hasattr(r.Room, 'disconnect'))" % table["_emit"])
        assert got == "True False True\n"
    finally:
        proc.terminate()
        proc.wait(5)


def test_a_bad_port_fails_with_a_clear_message(firmware, lib, tmp_path):
    r = subprocess.run([sys.executable, "-m", "lkedge_host.deploy", "--port", str(tmp_path / "no-such-tty"),
                        "--profile", "unix", "--firmware", firmware, "--lib", lib],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "lkedge deploy: no serial port %s: is the board plugged in" % (tmp_path / "no-such-tty") in r.stderr
    assert "deploy: compiling" not in r.stderr  # said before any work


@pytest.mark.parametrize("extra, said", [
    (["--profile", "esp8266"], "no board profile 'esp8266'"),
    (["--api-key", "only-a-key"], "cannot mint the board's token: API key given without API secret"),
    (["--relay", "127.0.0.1:7880"], "bad --relay: 127.0.0.1:7880: not a URL"),
    (["--room", ""], "--room must not be empty"),
    (["--token-ttl", "5x"], "bad duration '5x'"),
    (["--token-ttl", "1e20"], "at most 3650d"),
    (["--token-ttl", "99999999999999999999"], "at most 3650d"),
    (["--identity", "i" * 300], "bad --identity: identity is 300 bytes of UTF-8, over 256"),
    (["--identity", "\u00e9" * 129], "bad --identity: identity is 258 bytes of UTF-8, over 256"),
])
def test_option_mistakes_are_usage_errors_said_before_any_work(firmware, lib, tmp_path, extra, said):
    r = subprocess.run([sys.executable, "-m", "lkedge_host.cli", "deploy", "--port", str(tmp_path / "tty"),
                        "--firmware", firmware, "--lib", lib] + extra, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert said in r.stderr and "Traceback" not in r.stderr and "deploy: compiling" not in r.stderr


def test_token_ttl_takes_durations_like_lkedge_token():
    import argparse
    p = argparse.ArgumentParser()
    deploy.add_arguments(p)
    assert p.parse_args(["--port", "x"]).token_ttl == 30 * 86400
    assert p.parse_args(["--port", "x", "--token-ttl", "12h"]).token_ttl == 12 * 3600
    assert p.parse_args(["--port", "x", "--token-ttl", "600"]).token_ttl == 600


def test_a_syntax_error_names_the_file(unix_board, firmware, lib):
    _write(firmware, "broken.py", "def (:\n")
    r = subprocess.run([sys.executable, "-m", "lkedge_host.deploy", "--port", unix_board, "--profile", "unix",
                        "--firmware", firmware, "--lib", lib], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "mpy-cross failed on" in r.stderr and "broken.py" in r.stderr


def _make(path, text=b""):
    fd = os.open(path, os.O_CREAT | os.O_WRONLY)
    os.write(fd, text)
    os.close(fd)


def test_file_names_that_are_not_utf8_are_left_alone(unix_board, firmware, lib, tmp_path):
    # A board can make such names; deploy must neither crash on them nor touch them.
    flash = os.fsencode(str(tmp_path / "flash"))
    os.makedirs(os.path.join(flash, b"lib", b"lkedge"))
    _make(os.path.join(flash, b"lib", b"lkedge", b"\xed\xa0\x80.py"), b"x = 1\n")  # listed, not UTF-8
    _make(os.path.join(flash, b"lib", b"lkedge", b"gone.py"))                     # really stale
    _make(os.path.join(flash, b"\xff.py"))  # the emulated board cannot list / at all with this
    counts, log = run_deploy(unix_board, "unix", firmware, lib)
    assert "Traceback" not in log and counts[2] == 1, log
    assert "deploy: remove /lib/lkedge/gone.py (stale)" in log
    assert "deploy: leave /lib/lkedge/\\xed\\xa0\\x80.py alone (its name is not UTF-8" in log
    assert "deploy: warning: cannot list / (a name there is not UTF-8)" in log
    assert os.path.exists(os.path.join(flash, b"lib", b"lkedge", b"\xed\xa0\x80.py"))
    assert os.path.exists(os.path.join(flash, b"\xff.py"))
    assert not os.path.exists(os.path.join(flash, b"lib", b"lkedge", b"gone.py"))


def _main_ran(flash, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.exists(os.path.join(flash, "main_ran")):
            return True
        time.sleep(0.1)
    return False


def _marking_board(profile, tmp_path):
    """A board whose main.py marks each boot with the file main_ran (removed after the first)."""
    flash = str(tmp_path / "flash")
    _write(flash, "main.py", "open('main_ran', 'w').close()\n")
    proc, port = _board(profile, tmp_path)
    assert _main_ran(flash), "the board did not boot"
    os.remove(os.path.join(flash, "main_ran"))
    return proc, port, flash


@pytest.mark.parametrize("profile_args, said", [
    ([], "the board is a MicroPython esp32 board but profile unix is for unix boards: use --profile esp32\n"),
    (["--profile", "picow"], "but profile picow is for rp2 boards: use --profile esp32\n"),
    # same port, same .mpy: only the chip tells an ESP32 from an ESP32-S3 (other pins, heap)
    (["--profile", "esp32s3"], "the board's chip is ESP32 but profile esp32s3 is for ESP32S3 boards "
                               "(other pins and heap): use --profile esp32\n"),
])
def test_a_profile_for_another_port_is_refused_and_the_board_reset(tmp_path, firmware, lib, profile_args, said):
    # The emulated board says its profile's port (its sys.platform is the unix port's).
    proc, port, flash = _marking_board("esp32", tmp_path)
    try:
        r = deploy_cmd(port, firmware, lib, *profile_args)
        assert r.returncode == 2 and said in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert "deploy: to copy" not in r.stderr
        # mpremote interrupted the firmware: a failure must not leave the board at its REPL
        assert "deploy: board reset after the failure" in r.stderr
        assert _main_ran(flash), "the board was not reset"
    finally:
        proc.terminate()
        proc.wait(5)


def test_no_reset_leaves_the_board_at_its_repl_after_a_failure(tmp_path, firmware, lib):
    proc, port, flash = _marking_board("unix", tmp_path)
    try:
        r = deploy_cmd(port, firmware, lib, "--profile", "esp32", "--no-reset")
        assert r.returncode == 2 and "profile esp32 is for esp32 boards: use --profile unix" in r.stderr
        assert "the board is left at its REPL (--no-reset)" in r.stderr
        assert not _main_ran(flash, 1.0)
    finally:
        proc.terminate()
        proc.wait(5)


class FakePty:
    """A pty that is no MicroPython board: silent, or echoing what it is sent."""

    def __init__(self, echo):
        self.master, self.slave = pty.openpty()
        self.path = os.ttyname(self.slave)
        self.done = False
        self.thread = threading.Thread(target=self._echo, daemon=True) if echo else None
        if self.thread:
            self.thread.start()

    def _echo(self):
        import select
        while not self.done:
            if select.select([self.master], [], [], 0.1)[0]:
                try:
                    os.write(self.master, os.read(self.master, 4096))
                except OSError:
                    time.sleep(0.1)

    def close(self):
        self.done = True
        if self.thread:
            self.thread.join(5)
        os.close(self.master)
        os.close(self.slave)


def test_a_pty_that_is_no_micropython_repl_fails_in_one_line(firmware, lib, tmp_path):
    fake = FakePty(echo=True)
    try:
        # a link: mpremote then polls and gives up entering the raw REPL after 10 s
        link = str(tmp_path / "ttyFAKE")
        os.symlink(fake.path, link)
        r = deploy_cmd(link, firmware, lib, timeout=90)
    finally:
        fake.close()
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1] == ("lkedge deploy: no MicroPython REPL answered on %s (is it a "
                                                 "MicroPython board? is its firmware stuck? is another program, "
                                                 "a terminal or a `cat`, reading the port? close it and try "
                                                 "again)" % link)
    assert "Traceback" not in r.stderr and "reset" not in r.stderr


def test_a_silent_pty_fails_in_one_line_after_the_query_timeout(firmware, lib, monkeypatch, capsys):
    # mpremote waits for ever on a /dev/pts pty that never answers: deploy's query timeout ends it
    monkeypatch.setattr(deploy, "QUERY_TIMEOUT_S", 3)
    fake = FakePty(echo=False)
    try:
        code = deploy.main(["--port", fake.path, "--firmware", firmware, "--lib", lib])
    finally:
        fake.close()
    err = capsys.readouterr().err
    assert code == 1 and ("lkedge deploy: no MicroPython REPL answered on %s in 2 tries of 3 s (is it"
                          % fake.path) in err, err
    assert ("deploy: no REPL answered on %s yet (a board restarting misses mpremote's Ctrl-C): trying again"
            % fake.path) in err, err
    assert "reset" not in err


@pytest.mark.parametrize("kind", ["plain file", "/dev/null"])
def test_a_port_that_is_no_serial_port_fails_in_one_line(firmware, lib, tmp_path, kind):
    port = "/dev/null" if kind == "/dev/null" else str(tmp_path / "not-a-tty")
    if kind == "plain file":
        _write(str(tmp_path), "not-a-tty", "text\n")
    r = deploy_cmd(port, firmware, lib)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == \
        "lkedge deploy: %s is not a serial port or pty" % port, r.stderr
    assert "Traceback" not in r.stderr and "it may be in use" not in r.stderr


def test_a_loopback_relay_that_does_not_listen_is_warned_about(unix_board, firmware, lib):
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(1)
    url = "tcp://127.0.0.1:%d" % listening.getsockname()[1]
    try:
        _, log = run_deploy(unix_board, "unix", firmware, lib, "--relay", url, "--no-reset")
        assert "warning: no relay" not in log, log
    finally:
        listening.close()
    _, log = run_deploy(unix_board, "unix", firmware, lib, "--relay", url, "--no-reset")
    assert "deploy: warning: no relay answers at %s (Connection refused): the board cannot join until one " \
        "listens there" % url in log, log
    assert "will retry" not in log  # only some firmware does
    # another host's relay may be reachable from the board only: not checked
    _, log = run_deploy(unix_board, "unix", firmware, lib, "--relay", "tcp://192.0.2.1:7880", "--no-reset")
    assert "warning: no relay" not in log, log


def test_package_json_lists_every_library_module_for_mip():
    with open(os.path.join(deploy.ROOT, "package.json")) as f:
        pkg = json.load(f)
    lib_files = sorted(f for f in os.listdir(REAL_LIB) if f.endswith(".py") and f not in deploy.HOST_ONLY)
    assert pkg["urls"] == [["lkedge/" + f, "lib/lkedge/" + f] for f in lib_files], \
        "package.json must list exactly lib/lkedge/*.py but deploy.HOST_ONLY (add new modules to it)"
    assert pkg["deps"] == []  # lkedge needs only MicroPython built-ins


def test_mip_installs_the_package_onto_a_board(unix_board, tmp_path):
    r = subprocess.run([MPREMOTE, "connect", unix_board, "mip", "install",
                        os.path.join(deploy.ROOT, "package.json")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    installed = os.path.join(str(tmp_path / "flash"), "lib", "lkedge")
    for f in os.listdir(REAL_LIB):
        if f.endswith(".py") and f not in deploy.HOST_ONLY:
            with open(os.path.join(REAL_LIB, f), "rb") as a, open(os.path.join(installed, f), "rb") as b:
                assert a.read() == b.read(), f
    assert not any(os.path.exists(os.path.join(installed, f)) for f in deploy.HOST_ONLY)
    assert mpremote_out(unix_board, "exec", "import lkedge.cbor as c; print(c.loads(c.dumps([1, 'a'])))") == "[1, 'a']\n"


def test_manifest_freezes_the_library_and_the_app_modules():
    # micropython's tools/manifestfile.py is not installed here (it lives in the
    # MicroPython source tree), so this runs manifest.py with a RECORDING STAND-IN for
    # its API that follows manifestfile's documented semantics: the manifest runs
    # with its own folder as the working directory.
    calls = []
    api = dict((name, (lambda name: lambda *a, **k: calls.append((name, a, k)))(name))
               for name in ("metadata", "include", "require", "package", "module"))
    cwd = os.getcwd()
    os.chdir(deploy.ROOT)
    try:
        with open("manifest.py") as f:
            exec(f.read(), api)
        board_lib = sorted(f for f in os.listdir("lib/lkedge") if f.endswith(".py") and f not in deploy.HOST_ONLY)
        assert ("package", ("lkedge",), {"files": board_lib, "base_path": "lib"}) in calls
        assert os.path.isdir(os.path.join("lib", "lkedge"))
        modules = [a[0] for name, a, k in calls if name == "module"]
        for name, a, k in calls:
            if name == "module":
                assert os.path.exists(os.path.join(k["base_path"], a[0])), a[0]
        if os.path.isdir("firmware"):
            expected = sorted(f for f in os.listdir("firmware") if f.endswith(".py") and f not in ("boot.py", "main.py"))
            assert modules == expected
        assert ("include", ("$(PORT_DIR)/boards/manifest.py",), {}) in calls
    finally:
        os.chdir(cwd)


# A real board's build names its chip last in sys.implementation._machine; the probe's
# _chip reads it there when the board has no emulated machine._board.
@pytest.mark.parametrize("machine_text, chip", [
    ("Generic ESP32S3 module with ESP32S3", "ESP32S3"),
    ("Generic ESP32 module with ESP32", "ESP32"),
    ("Raspberry Pi Pico W with RP2040", "RP2040"),
    ("linux [GCC 14.2.1] version", ""),
])
def test_the_probe_reads_the_chip_from_the_board_build(machine_text, chip):
    src = deploy._QUERY
    body = src[src.index("def _chip():"):src.index("def _uid():")]
    ns = {"sys": type("S", (), {"implementation": type("I", (), {"_machine": machine_text})})}
    exec(body, ns)
    assert ns["_chip"]() == chip


def _probe(port, chip):
    return {"port": port, "chip": chip, "mpy": 6, "uid": "", "hash": {}, "ls": {}}


def test_a_profile_for_another_chip_of_the_same_port_is_refused():
    with pytest.raises(deploy.UsageError) as e:
        deploy.check_board(profiles.load("esp32"), _probe("esp32", "ESP32S3"), 6)
    assert str(e.value) == ("the board's chip is ESP32S3 but profile esp32 is for ESP32 boards "
                            "(other pins and heap): use --profile esp32s3")


def test_a_chip_no_profile_is_for_says_how_to_make_one():
    with pytest.raises(deploy.UsageError) as e:
        deploy.check_board(profiles.load("esp32"), _probe("esp32", "ESP32C3"), 6)
    assert "no profile is for it: copy %s to a file of your own, set its \"chip\" to \"ESP32C3\"" \
        % profiles.path_of("esp32") in str(e.value)


def test_a_board_that_does_not_name_its_chip_is_judged_by_its_port():
    deploy.check_board(profiles.load("esp32s3"), _probe("esp32", ""), 6)
    deploy.check_board(profiles.load("unix"), _probe("linux", ""), 6)


def test_a_profile_chip_must_be_one_word(tmp_path):
    p = dict(profiles.load("esp32"), chip="ESP32 S3")
    f = tmp_path / "esp32.json"
    f.write_text(json.dumps(p))
    with pytest.raises(profiles.ProfileError, match="'chip' must be one word"):
        profiles.load(str(f))


# ------------------------------------------------------------------ your own firmware
def test_a_missing_firmware_folder_is_a_usage_error_unless_lib_only(unix_board, lib, tmp_path):
    missing = str(tmp_path / "no-such-firmware")
    r = deploy_cmd(unix_board, missing, lib)
    assert r.returncode == 2, r.stderr
    assert "lkedge deploy: --firmware %s is not a folder" % missing in r.stderr and "--lib-only" in r.stderr
    assert "deploy: compiling" not in r.stderr and "Traceback" not in r.stderr
    # the library alone, asked for
    r = subprocess.run([sys.executable, "-m", "lkedge_host.cli", "deploy", "--port", unix_board, "--lib", lib,
                        "--lib-only", "--no-reset"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    flash = str(tmp_path / "flash")
    assert os.path.exists(os.path.join(flash, "lib", "lkedge", "alpha.mpy"))
    assert not os.path.exists(os.path.join(flash, "main.py"))  # not this checkout's firmware either
    r = deploy_cmd(unix_board, missing, lib, "--lib-only")
    assert r.returncode == 2 and "--lib-only deploys no firmware: leave out --firmware" in r.stderr, r.stderr


def test_a_firmware_folder_without_main_py_is_deployed_with_a_warning(unix_board, firmware, lib, tmp_path):
    # it deployed silently (and removed the main.py an earlier deploy put there): the
    # board then sat at its REPL and never joined
    r = deploy_cmd(unix_board, firmware, lib, "--no-reset")
    assert r.returncode == 0 and "no main.py" not in r.stderr, r.stderr
    os.remove(os.path.join(firmware, "main.py"))
    r = deploy_cmd(unix_board, firmware, lib, "--no-reset")
    assert r.returncode == 0, r.stderr
    assert "deploy: warning: --firmware %s has no main.py: the board will run its boot.py, if any, and stop " \
        "at its REPL" % firmware in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(str(tmp_path / "flash"), "main.py"))


def test_subfolders_and_data_files_are_deployed_and_junk_is_skipped(unix_board, firmware, lib, tmp_path):
    _write(os.path.join(firmware, "drivers"), "__init__.py", "KIND = 'drivers'\n")
    _write(os.path.join(firmware, "drivers"), "bme.py", "def read():\n    return 21.5\n")
    _write(firmware, "settings.json", '{"interval": 5}\n')
    _write(os.path.join(firmware, "web"), "index.html", "<p>hi</p>\n")
    _write(os.path.join(firmware, "__pycache__"), "app.cpython-311.pyc", "junk")
    _write(firmware, ".env", "SECRET=1\n")
    _write(firmware, "old.pyc", "junk")
    _write(firmware, "config.json", '{"mine": 1}\n')
    counts, log = run_deploy(unix_board, "unix", firmware, lib, "--no-reset")
    assert "deploy: skip .env, __pycache__/, old.pyc (not deployed" in log, log
    assert "deploy: skip config.json: deploy writes /config.json itself" in log
    for path in ("/drivers/__init__.mpy", "/drivers/bme.mpy", "/settings.json", "/web/index.html"):
        assert "deploy: to copy: %s " % path in log, log
    flash = str(tmp_path / "flash")
    assert not os.path.exists(os.path.join(flash, ".env")) and not os.path.exists(os.path.join(flash, "__pycache__"))
    with open(os.path.join(flash, "settings.json")) as f:
        assert f.read() == '{"interval": 5}\n'
    got = mpremote_out(unix_board, "exec", "import drivers, drivers.bme, json\n"
                                           "print(drivers.__file__, drivers.bme.__file__, drivers.bme.read())\n"
                                           "print(json.load(open('settings.json'))['interval'])")
    assert got == "drivers/__init__.mpy drivers/bme.mpy 21.5\n5\n", got


def test_files_an_earlier_deploy_put_there_are_removed_and_no_others(unix_board, firmware, lib, tmp_path):
    flash = str(tmp_path / "flash")
    _write(os.path.join(firmware, "drivers"), "bme.py", "X = 1\n")
    _write(firmware, "settings.json", "{}\n")
    _write(firmware, "notes.txt", "deployed\n")
    run_deploy(unix_board, "unix", firmware, lib, "--no-reset")
    with open(os.path.join(flash, ".lkedge-deployed")) as f:
        manifest = f.read()
    assert " /helper.mpy\n" in manifest and " /drivers/bme.mpy\n" in manifest and " /config.json\n" in manifest
    _write(flash, "data.log", "the firmware's own data\n")        # never deploy's
    _write(flash, "notes.txt", "changed on the board\n")          # deploy's, but changed since
    for gone in ("helper.py", "settings.json", "notes.txt", os.path.join("drivers", "bme.py")):
        os.remove(os.path.join(firmware, gone))
    os.rmdir(os.path.join(firmware, "drivers"))
    counts, log = run_deploy(unix_board, "unix", firmware, lib, "--no-reset")
    for path in ("/helper.mpy", "/settings.json", "/drivers/bme.mpy"):
        assert "deploy: remove %s (an earlier deploy put it there; no longer in the build)" % path in log, log
    assert "deploy: leave /notes.txt: an earlier deploy put it there, but it changed on the board" in log
    assert counts[2] == 3 and "/.lkedge-deployed records what deploy put on the board" in log, log
    assert sorted(os.listdir(flash)) == [".lkedge-deployed", "app.mpy", "boot.py", "config.json", "data.log",
                                         "lib", "main.py", "notes.txt", "profile.json"]
    with open(os.path.join(flash, ".lkedge-deployed")) as f:
        manifest = f.read()
    assert "/helper.mpy" not in manifest and " /app.mpy\n" in manifest
    assert "ImportError" in subprocess.run([MPREMOTE, "connect", unix_board, "exec", "import helper"],
                                           capture_output=True, text=True, timeout=20).stdout


@pytest.mark.parametrize("name", ["main.py", "boot.py"])
def test_a_syntax_error_in_main_or_boot_py_fails_the_deploy(firmware, lib, name):
    _write(firmware, name, "import sys\nif True\n    pass\n")
    fake = FakePty(echo=False)  # the build fails before the board is asked anything
    try:
        r = deploy_cmd(fake.path, firmware, lib, timeout=60)
    finally:
        fake.close()
    assert r.returncode == 1, r.stderr
    assert "mpy-cross failed on %s" % os.path.join(firmware, name) in r.stderr and "line 2" in r.stderr, r.stderr
    assert "deploy: to copy" not in r.stderr


def test_an_interrupted_copy_says_the_deploy_is_incomplete(unix_board, firmware, lib, monkeypatch, capsys):
    real = deploy._mpremote

    def interrupted(mpremote, port, args, what, *more):
        if what == "copying files":
            raise KeyboardInterrupt  # Ctrl-C while mpremote copies: some files new, some old
        return real(mpremote, port, args, what, *more)

    monkeypatch.setattr(deploy, "_mpremote", interrupted)
    with pytest.raises(KeyboardInterrupt):
        deploy.to_board(unix_board, "unix", firmware, lib=lib)
    err = capsys.readouterr().err
    assert "deploy: incomplete: it stopped while changing the board's files" in err, err
    assert "run `lkedge deploy` again" in err
    assert "deploy: board reset after the failure: it runs whatever firmware it now holds" in err
    assert "its firmware runs again" not in err


def test_a_copy_cut_short_leaves_the_old_firmware_whole_and_the_next_deploy_finishes(
        unix_board, firmware, lib, monkeypatch, capsys, tmp_path):
    # Ctrl-C while mpremote copied left /lib/lkedge/proto.mpy truncated, and MicroPython
    # loops for ever importing a truncated .mpy: the board hung at every boot, out of
    # reach of the REPL a second deploy needs. Copies now go beside the old files and
    # are renamed into place once all are there.
    run_deploy(unix_board, "unix", firmware, lib)
    _after_reset()
    # a module the user copied by hand as source, which the build's .mpy replaces (the
    # deploy removes such a shadowing .py: only once the new files are in place), and a
    # copy an earlier interrupted deploy left of a file this build no longer has
    src = os.path.join(str(tmp_path), "helper.py")
    with open(src, "w") as f:
        f.write("VALUE = 'old helper source'\n")
    mpremote_out(unix_board, "fs", "cp", src, ":/helper.py", "+", "exec",
                 "open('/lib/gone.mpy%s', 'w').write('x')" % deploy.PART)
    _write(firmware, "app.py", "def answer():\n    return 43\n\ndef started():\n    pass\n")
    real = deploy._mpremote

    def cut_short(mpremote, port, args, what, *more):
        if what == "copying files":
            # mpremote runs the commands up to the renames, then the line is cut: the
            # new app.mpy is on the board beside the old, cut to 10 bytes as by a
            # copy stopped halfway
            at = next(i for i, a in enumerate(args) if a == "exec" and "os.rename" in args[i + 1])
            cut = ("f = open('/app.mpy{0}', 'rb'); d = f.read(10); f.close(); "
                   "f = open('/app.mpy{0}', 'wb'); f.write(d); f.close()").format(deploy.PART)
            real(mpremote, port, args[:at] + ["exec", cut], what, *more)
            raise KeyboardInterrupt
        return real(mpremote, port, args, what, *more)

    monkeypatch.setattr(deploy, "_mpremote", cut_short)
    with pytest.raises(KeyboardInterrupt):
        deploy.to_board(unix_board, "unix", firmware, lib=lib)
    monkeypatch.setattr(deploy, "_mpremote", real)
    _after_reset()
    # the board runs its old firmware: every module it imports is whole, its files kept
    assert mpremote_out(unix_board, "exec", "import app; print(app.answer())") == "42\n"
    assert mpremote_out(unix_board, "exec", "import helper; print(helper.VALUE)") == "old helper source\n"
    listing = mpremote_out(unix_board, "fs", "ls", "/")
    assert "app.mpy" + deploy.PART in listing, listing       # the cut copy, not imported
    counts, log = run_deploy(unix_board, "unix", firmware, lib)
    _after_reset()
    assert mpremote_out(unix_board, "exec", "import app; print(app.answer())") == "43\n"
    assert mpremote_out(unix_board, "exec", "import helper; print(helper.VALUE)") == "helper\n"
    listing = mpremote_out(unix_board, "fs", "ls", "/", "+", "fs", "ls", "/lib", "+", "fs", "ls", "/lib/lkedge")
    assert deploy.PART not in listing and "helper.py" not in listing, listing   # leftovers removed


def test_a_relay_url_naming_an_http_port_is_warned_about(unix_board, firmware, lib):
    import http.server
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = "tcp://127.0.0.1:%d" % server.server_address[1]
    try:
        _, log = run_deploy(unix_board, "unix", firmware, lib, "--relay", url, "--no-reset")
    finally:
        server.shutdown()
        server.server_close()
    assert "deploy: warning: %s answers HTTP: that is a relay's WebSocket or HTTP port, not its link port" % url \
        in log, log


# ------------------------------------------------------------------ a full flash
# The emulated board's flash has the host disk's size unless LKEDGE_EMULATED_FLASH_SIZE
# gives it one (emulation/rom.py): statvfs then reports it, in 4096-byte blocks, and a
# write past it fails with ENOSPC as on a full LittleFS.
FLASH_BLOCKS = 64


@pytest.fixture
def small_board(tmp_path):
    flash = str(tmp_path / "flash")
    proc, port = board.launch("unix", flash, env={"LKEDGE_EMULATED_FLASH_SIZE": str(FLASH_BLOCKS * 4096)})
    yield port, flash
    proc.terminate()
    proc.wait(5)


def _files(flash):
    """Every file of the flash folder with its content, but filler.bin and main_ran
    (the test firmware's mark that main.py ran: it comes when the board has restarted,
    which a loaded machine may reach before the test looks)."""
    out = {}
    for d, _, names in os.walk(flash):
        for n in names:
            path = os.path.join(d, n)
            with open(path, "rb") as f:
                out[os.path.relpath(path, flash)] = f.read()
    out.pop("filler.bin", None)
    out.pop("main_ran", None)
    return out


def _free_blocks(port):
    return int(mpremote_out(port, "exec", "import os; print(os.statvfs('/')[4])"))


def _fill(flash, port, leave_blocks):
    """Write filler.bin into the flash so that `leave_blocks` blocks stay free."""
    filler = os.path.join(flash, "filler.bin")
    if os.path.exists(filler):
        os.remove(filler)
    size = (_free_blocks(port) - leave_blocks) * 4096
    with open(os.path.join(flash, "filler.bin"), "wb") as f:
        f.write(b"\xff" * size)


def test_the_emulated_flash_size_is_what_statvfs_reports_and_a_write_past_it_fails(small_board):
    port, flash = small_board
    assert mpremote_out(port, "exec", "import os; print(os.statvfs('/')[:5])") == \
        "(4096, 4096, %d, %d, %d)\n" % (FLASH_BLOCKS, FLASH_BLOCKS, FLASH_BLOCKS)
    got = mpremote_out(port, "exec", "f = open('a.bin', 'wb')\ntry:\n    for i in range(100):\n"
                                     "        f.write(bytes(4096))\nexcept OSError as e:\n    print(e.errno, i)\n"
                                     "f.close()\nimport os\nprint(os.stat('a.bin')[6], os.statvfs('/')[4])")
    assert got == "28 %d\n%d 0\n" % (FLASH_BLOCKS, FLASH_BLOCKS * 4096), got   # ENOSPC, what fit kept
    # two files written at once share the free blocks (counted at each new block, not
    # at open: each took all of them, and together they wrote twice what was free)
    mpremote_out(port, "exec", "import os; os.remove('a.bin')")
    _fill(flash, port, 4)
    got = mpremote_out(port, "exec", "f1 = open('a.bin', 'wb')\nf2 = open('b.bin', 'wb')\n"
                                     "f1.write(bytes(3 * 4096))\ntry:\n    f2.write(bytes(3 * 4096))\n"
                                     "    print('both')\nexcept OSError as e:\n    print(e.errno)\n"
                                     "f1.close()\nf2.close()\nimport os\nprint(os.statvfs('/')[4])")
    assert got == "28\n1\n", got


def test_a_deploy_that_does_not_fit_stops_before_copying_anything(small_board, firmware, lib):
    port, flash = small_board
    run_deploy(port, "unix", firmware, lib, "--no-reset")
    before = _files(flash)
    _write(firmware, "app.py", "def answer():\n    return 43\n\ndef started():\n    pass\n" + "X = 1\n" * 500)
    _fill(flash, port, 2)
    r = deploy_cmd(port, firmware, lib, "--profile", "unix")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    said = r.stderr.strip().splitlines()[-1]
    # app.mpy, config.json and the manifest's two versions, in whole blocks
    assert said.startswith("lkedge deploy: the board's flash is too full for this deploy: it needs 16 KiB "
                           "free, the board has 8 KiB free; nothing was copied. The deploy copies 2 files "
                           "(largest: /app.mpy "), said
    assert "each beside its old version until all are renamed into place at the end" in said
    assert "Free at least 8 KiB on the board and deploy again: `mpremote connect %s fs tree -s :`" % port in said
    assert "`mpremote connect %s rm :PATH`" % port in said and "--lib-only" in said
    assert "deploy: to copy" not in r.stderr and "run `lkedge deploy` again" not in r.stderr
    assert "deploy: board reset after the failure: its files are unchanged" in r.stderr
    assert _files(flash) == before                          # not one file copied, no .lkedge-part
    os.remove(os.path.join(flash, "filler.bin"))            # space freed: the same deploy goes through
    counts, _ = run_deploy(port, "unix", firmware, lib, "--no-reset")
    assert counts == [2, 7, 0]


def _leave_parts(flash, *names):
    for name in names:
        with open(os.path.join(flash, name + deploy.PART), "wb") as f:
            f.write(b"\0" * 5000)                            # 2 blocks each


def test_copies_an_interrupted_deploy_left_count_as_free_and_go_when_it_does_not_fit(small_board, firmware, lib):
    # A deploy that stopped on a full flash (before this check) left .lkedge-part copies
    # holding its last free space: the check counts them as free (the deploy removes
    # them first), and a deploy that still does not fit removes them all the same.
    port, flash = small_board
    run_deploy(port, "unix", firmware, lib, "--no-reset")
    _write(firmware, "app.py", "def answer():\n    return 43\n\ndef started():\n    pass\n")
    # app.mpy, config.json and the manifest's two versions: 4 blocks, all in the copies' space
    _leave_parts(flash, "app.mpy", os.path.join("lib", "lkedge", "alpha.mpy"))
    _fill(flash, port, 0)
    counts, log = run_deploy(port, "unix", firmware, lib, "--no-reset")
    assert counts == [2, 7, 0], log
    assert deploy.PART not in "".join(_files(flash)), sorted(_files(flash))
    _leave_parts(flash, "app.mpy")
    _fill(flash, port, 0)
    r = deploy_cmd(port, firmware, lib, "--profile", "unix", "--no-reset")
    assert r.returncode == 1, r.stderr
    # config.json (the app is the same) and the manifest's two versions
    assert ("it needs 12 KiB free, the board has 8 KiB free (with 8 KiB of .lkedge-part copies an interrupted "
            "deploy left, removed now); nothing was copied. The deploy copies 1 file (largest: /config.json ")\
        in r.stderr, r.stderr
    assert deploy.PART not in "".join(_files(flash)), sorted(_files(flash))
    assert _free_blocks(port) == 2


def test_a_flash_that_fills_up_during_the_copies_is_said_and_the_board_keeps_its_space(
        small_board, firmware, lib, monkeypatch, capsys):
    # Something takes the space between the check and the copies (or the filesystem
    # needs more than whole blocks): the copy fails with ENOSPC. Not "run it again",
    # which would stop at the same place: the flash is full, and the deploy's copies
    # and the folder it made are removed, leaving the board as it was.
    port, flash = small_board
    run_deploy(port, "unix", firmware, lib, "--no-reset")
    before, free = _files(flash), _free_blocks(port)
    _write(firmware, "app.py", "def answer():\n    return 43\n\ndef started():\n    pass\n")
    _write(os.path.join(firmware, "drivers"), "bme.py", "X = 1\n")
    real = deploy._mpremote

    def filled(mpremote, port_, args, what, *more):
        if what == "copying files":
            _fill(flash, port, 3)   # the manifest's two versions and one copy fit, not the others
        return real(mpremote, port_, args, what, *more)

    monkeypatch.setattr(deploy, "_mpremote", filled)
    with pytest.raises(deploy.NoSpace) as e:
        deploy.to_board(port, "unix", firmware, lib=lib)
    # the board restarts after the failure: look once its main.py has run (the emulated
    # board's boot is not what this test is about; see board.py's Ctrl-C delivery)
    deadline = time.monotonic() + 30
    while not os.path.exists(os.path.join(flash, "main_ran")) and time.monotonic() < deadline:
        time.sleep(0.05)
    err = capsys.readouterr().err
    said = str(e.value)
    assert said.startswith("the board's flash is full: a copy failed (cp: /") and \
        ".lkedge-part: No space left on device.) before any file was replaced: the copies are removed, the " \
        "board keeps its old firmware, whole, and the space it had; the check before the copies found " in said
    assert "`mpremote connect %s fs tree -s :`" % port in said, said
    assert "incomplete" not in err and "run `lkedge deploy` again" not in err + said, err
    assert "deploy: board reset after the failure: its files are as they were" in err, err
    os.remove(os.path.join(flash, "filler.bin"))
    assert _files(flash) == before and not os.path.exists(os.path.join(flash, "drivers"))
    assert _free_blocks(port) == free
    monkeypatch.setattr(deploy, "_mpremote", real)
    _after_reset()
    assert mpremote_out(port, "exec", "import app; print(app.answer())") == "42\n"


def test_the_free_space_comes_with_the_query_not_another_round_trip(unix_board, firmware, lib, monkeypatch):
    calls = []
    real = deploy._mpremote

    def counted(mpremote, port, args, what, *more):
        calls.append(what)
        return real(mpremote, port, args, what, *more)

    monkeypatch.setattr(deploy, "_mpremote", counted)
    deploy.to_board(unix_board, "unix", firmware, lib=lib, no_reset=True)
    assert calls == ["reading the board's files", "copying files"]


@pytest.mark.parametrize("sizes, new_dirs, block, needed", [
    ([1, 4096, 4097], [], 4096, (1 + 1 + 2) * 4096),
    ([0], ["/drivers"], 4096, 2 * 4096),               # a new folder: a LittleFS metadata pair
    ([100, 100], [], 512, 2 * 512),                     # a FAT card's 512-byte clusters
])
def test_space_needed_counts_whole_blocks(sizes, new_dirs, block, needed):
    assert deploy.space_needed(sizes, new_dirs, block) == needed


def test_a_board_that_cannot_say_its_free_flash_is_not_checked(tmp_path, capsys):
    assert deploy.check_space({"fs": None}, [], [], "PORT") is None
    assert "warning: the board does not report its free flash (os.statvfs failed): not checked" \
        in capsys.readouterr().err


def test_a_flash_that_fills_up_during_the_renames_does_not_claim_the_old_firmware_is_whole():
    e = deploy.DeployError("mpremote failed while copying files on P: Traceback (most recent call last):\n"
                           "OSError: [Errno 28] ENOSPC")
    e.out = deploy.RENAMING + "\n"
    got = deploy._filled(e, "P", (8192, 4096), {"/"}, ["/drivers"])
    assert got.renaming and "while the new files were put in place: the board may hold part of each" in str(got)
    assert "OSError: [Errno 28] ENOSPC" in str(got) and "keeps its old firmware" not in str(got)
    assert "rmdir" not in got.cleanup[1]   # only the copies go: the new files may be in those folders


@pytest.mark.parametrize("where, name, says", [
    ("", "app.mpy", "another file of the firmware also is"),          # beside app.py: both /app.mpy
    ("lib/lkedge", "alpha.py", "the library is"),                     # the library's /lib/lkedge/alpha.mpy
])
def test_two_files_that_would_be_one_path_on_the_board_are_refused_before_anything_is_copied(
        firmware, lib, tmp_path, where, name, says):
    _write(os.path.join(firmware, where), name, "X = 1\n")
    with pytest.raises(deploy.UsageError) as e:
        deploy.plan_build(profiles.load("unix"), lib, firmware, str(tmp_path / "out"),
                          deploy.find_tool("mpy-cross", None))
    said = str(e.value)
    on_board = "/" + "/".join(p for p in (where, name[:-3] + ".mpy" if name.endswith(".py") else name) if p)
    assert " would be %s on the board, which %s" % (on_board, says) in said, said


def test_the_file_query_is_tried_again_when_no_repl_answered_but_not_on_what_is_no_serial_port(monkeypatch, capsys):
    # a board in a reset loop misses a Ctrl-C that comes while it restarts, and mpremote
    # sends one: the query goes again (CI once lost a deploy so: tests/host_tools/
    # test_deploy_romfs.py, the Pico W whose firmware fails at every boot)
    calls = []

    def fake(mpremote, port, args, what, timeout=0):
        calls.append(port)
        if port == "/dev/not-a-tty":
            raise deploy.NoRepl(deploy.NOT_A_TTY % port)
        if len(calls) == 1:
            raise (deploy._TimedOut("mpremote timed out") if port == "/dev/pts/98" else
                   deploy._failure(port, "reading", "could not enter raw repl"))
        raise deploy.DeployError("second try reached the board")
    monkeypatch.setattr(deploy, "_mpremote", fake)
    for port in ("/dev/pts/98", "/dev/ttyUSB9"):
        calls.clear()
        with pytest.raises(deploy.DeployError, match="second try reached the board"):
            deploy.query_board("mpremote", port, ["/main.py"], {"/"})
        assert calls == [port, port]
        assert "no REPL answered on %s yet" % port in capsys.readouterr().err
    calls.clear()
    with pytest.raises(deploy.NoRepl, match="is not a serial port"):
        deploy.query_board("mpremote", "/dev/not-a-tty", ["/main.py"], {"/"})
    assert calls == ["/dev/not-a-tty"]
