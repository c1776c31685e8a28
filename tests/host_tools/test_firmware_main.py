"""firmware/main.py on the emulated board: an app that fails is logged to flash as
"fatal" and the board resets 5 s later (so it recovers without a person); a Ctrl-C in
those 5 s leaves it at the REPL instead (so mpremote can get in to deploy a fix)."""
import os
import shutil
import time

import pytest

from lkedge_host import ROOT
from lkedge_host import board as board_mod

FAILING_APP = "def main():\n    raise RuntimeError('the app failed at start')\n"


@pytest.fixture
def failing_board(tmp_path):
    flash = tmp_path / "flash"
    os.makedirs(str(flash / "lib"))
    shutil.copytree(os.path.join(ROOT, "lib", "lkedge"), str(flash / "lib" / "lkedge"))
    for name in ("main.py", "flashlog.py"):
        shutil.copy(os.path.join(ROOT, "firmware", name), str(flash / name))
    (flash / "app.py").write_text(FAILING_APP)
    proc, port = board_mod.launch("unix", str(flash))
    yield port, str(flash)
    proc.terminate()
    proc.wait(5)


def _console_until(line, want, seconds):
    """Read the board's console until `want` shows (or the time is up); -> what came."""
    got = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and want not in got:
        got += line.read(4096)
    return got


def _log(flash):
    try:
        with open(os.path.join(flash, "log.txt")) as f:
            return f.read()
    except OSError:
        return ""


def test_a_failing_app_is_logged_as_fatal_and_the_board_resets_and_tries_again(failing_board):
    import serial
    port, flash = failing_board
    with serial.Serial(port, 115200, timeout=0.2) as line:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _log(flash).count("ERROR fatal:") < 2:
            line.read(4096)    # keep the console drained
    log = _log(flash)
    assert log.count("ERROR fatal:") >= 2, log[-1500:]     # a reset, and main.py ran again
    assert "RuntimeError: the app failed at start" in log and 'app.py", line 2' in log, log[-1500:]


def test_a_ctrl_c_in_the_pause_before_the_reset_leaves_the_board_at_its_repl(failing_board):
    import serial
    port, flash = failing_board
    with serial.Serial(port, 115200, timeout=0.2) as line:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "ERROR fatal:" not in _log(flash):
            line.read(4096)
        assert "ERROR fatal:" in _log(flash)
        line.write(b"\x03")                            # within the 5 s pause
        said = _console_until(line, b">>> ", 5)
        assert b"reset cancelled (Ctrl-C): REPL" in said, said
        time.sleep(5.5)                                # past the pause: no reset came
        line.write(b"print(6 * 7)\r")
        said = _console_until(line, b"42", 5)
        assert b"42" in said, said
    assert _log(flash).count("ERROR fatal:") == 1, _log(flash)[-1500:]
