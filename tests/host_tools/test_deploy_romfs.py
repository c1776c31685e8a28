"""`lkedge deploy --romfs` (lkedge_host/romfs.py) against the emulated board's ROMFS
partition: real mpy-cross, real `mpremote romfs build` and `romfs deploy`, real
MicroPython. A tiny firmware with this checkout's boot.py stands in for firmware/."""
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from lkedge_host import board, deploy, demo, romfs
from lkedge_host.relay.process import RelayProcess
from test_deploy import _write, firmware, lib, run_deploy  # noqa: F401 (firmware, lib: fixtures)
from test_deploy import mpremote_out as out

REAL_LIB = os.path.join(deploy.ROOT, "lib", "lkedge")
REAL_BOOT = os.path.join(deploy.ROOT, "firmware", "boot.py")


@pytest.fixture(autouse=True)
def _with_this_boot_py(firmware):
    """test_deploy's tiny firmware, with this checkout's boot.py (its ROMFS check) and a data file."""
    shutil.copyfile(REAL_BOOT, os.path.join(firmware, "boot.py"))
    _write(firmware, "settings.json", '{"kept": "on the flash"}\n')


@pytest.fixture
def emulated(tmp_path):
    with board.EmulatedBoard("picow-romfs", str(tmp_path / "flash")) as b:
        yield b


@pytest.fixture
def romfs_board(emulated):
    return emulated.port


def _after_reset():
    time.sleep(0.1 + board.BOOT_TIME_S + 0.3)


def test_what_goes_in_the_image_and_what_stays_on_the_flash():
    goes = {"/lib/lkedge/room.mpy": "lib/lkedge/room.mpy", "/lib/lkedge/room.msg": "lib/lkedge/room.msg",
            "/lib/lkedge/renames.txt": "lib/lkedge/renames.txt", "/app.mpy": "lib/app.mpy",
            "/drivers/bme.mpy": "lib/drivers/bme.mpy", "/lib/extra.mpy": "lib/extra.mpy",
            "/boot.py": None, "/main.py": None, "/settings.json": None, "/config.json": None,
            "/profile.json": None, "/lib/data.txt": None, "/www/index.html": None}
    assert dict((p, romfs.image_path(p, deploy.LIB_DIR_ON_BOARD)) for p in goes) == goes


WHERE = "import app, lkedge.alpha as a; print(app.__file__, a.__file__, app.answer(), a.name())"


def test_romfs_puts_the_library_and_the_firmware_modules_in_the_partition(romfs_board, firmware, lib, tmp_path):
    # modules in subfolders keep their names: drivers.bme, and extra from the firmware's lib/
    _write(os.path.join(firmware, "drivers"), "bme.py", "KIND = 'bme'\n")
    _write(os.path.join(firmware, "lib"), "extra.py", "KIND = 'extra'\n")
    counts, log = run_deploy(romfs_board, "picow-romfs", firmware, lib, "--romfs")
    assert "--romfs: the library (3 files, /rom/lib/lkedge on the board) and 4 firmware modules (/rom/lib)" in log
    assert "then reading it back" in log and "the library's ROMFS image written" in log
    # on the flash: boot.py, main.py, the data file, profile.json, the ROMFS record, config.json
    assert counts == [6, 0, 0], log
    _after_reset()
    assert out(romfs_board, "exec", WHERE) == "/rom/lib/app.mpy /rom/lib/lkedge/alpha.mpy 42 alpha\n"
    got = out(romfs_board, "exec", "import drivers.bme as b, extra; print(b.__file__, b.KIND, extra.__file__)")
    assert got == "/rom/lib/drivers/bme.mpy bme /rom/lib/extra.mpy\n"
    flash = out(romfs_board, "exec", "import os; print(sorted(os.listdir('/')), 'lib' in os.listdir('/'))")
    assert flash == ("['.lkedge-deployed', '.lkedge-romfs', 'boot.py', 'config.json', 'main.py', 'main_ran', "
                     "'profile.json', 'rom', 'settings.json'] False\n")   # (rom: the mount point)
    # the record names the image the deploy read back from the partition
    record = out(romfs_board, "exec", "print(open('/.lkedge-romfs').read())").split("\n")[1].split()
    data = open(board.romfs_path(str(tmp_path / "flash")), "rb").read()
    size = int(record[1])
    import hashlib
    assert hashlib.sha256(data[:size]).hexdigest() == record[0] and data[:3] == romfs.ROMFS_HEADER
    # again: the partition holds the image, so only config.json (a new token) is copied
    counts, log = run_deploy(romfs_board, "picow-romfs", firmware, lib, "--romfs")
    assert counts == [1, 5, 0] and "the library's ROMFS image unchanged" in log and "not written" in log, log


def test_a_boot_py_without_the_partition_check_is_warned_about(romfs_board, firmware, lib):
    _write(firmware, "boot.py", "# a boot.py of its own\n")
    counts, log = run_deploy(romfs_board, "picow-romfs", firmware, lib, "--romfs")
    assert "boot.py does not check /.lkedge-romfs: a deploy --romfs cut short leaves a half-written" in log, log
    os.remove(os.path.join(firmware, "boot.py"))
    counts, log = run_deploy(romfs_board, "picow-romfs", firmware, lib, "--romfs")
    assert "has no boot.py, so it does not check /.lkedge-romfs" in log, log
    # this checkout's boot.py has the check: nothing said
    shutil.copyfile(REAL_BOOT, os.path.join(firmware, "boot.py"))
    counts, log = run_deploy(romfs_board, "picow-romfs", firmware, lib, "--romfs")
    assert "does not check" not in log, log


def test_a_library_in_lib_moves_to_the_partition_and_back(romfs_board, firmware, lib):
    run_deploy(romfs_board, "picow-romfs", firmware, lib)
    _after_reset()
    assert out(romfs_board, "exec", WHERE) == "app.mpy /lib/lkedge/alpha.mpy 42 alpha\n"
    counts, log = run_deploy(romfs_board, "picow-romfs", firmware, lib, "--romfs")
    # the flash copies of what is now in the partition go, the folder with them
    for gone in ("/lib/lkedge/alpha.mpy", "/lib/lkedge/__init__.mpy", "/app.mpy"):
        assert "remove %s" % gone in log, log
    _after_reset()
    assert out(romfs_board, "exec", WHERE) == "/rom/lib/app.mpy /rom/lib/lkedge/alpha.mpy 42 alpha\n"
    assert out(romfs_board, "exec", "import os; print('lkedge' in os.listdir('/lib'))") == "False\n"
    # a deploy without --romfs erases the partition's header and takes the record away:
    # nothing is mounted at /rom, and the board imports what it put in /lib and / again
    counts, log = run_deploy(romfs_board, "picow-romfs", firmware, lib)
    assert "its header is erased with the renames" in log, log
    _after_reset()
    assert out(romfs_board, "exec", WHERE) == "app.mpy /lib/lkedge/alpha.mpy 42 alpha\n"
    got = out(romfs_board, "exec", "import os, sys; print(sys.path, '.lkedge-romfs' in os.listdir('/'))")
    assert got == "['', '.frozen', '/lib', 'lib'] False\n"
    assert "Not a valid ROMFS" in out(romfs_board, "romfs", "query")


def test_a_romfs_write_cut_short_is_never_imported_and_the_next_deploy_finishes(
        emulated, romfs_board, firmware, lib, monkeypatch, capsys):
    run_deploy(romfs_board, "picow-romfs", firmware, lib, "--romfs")
    _write(firmware, "app.py", "def answer():\n    return 43\n\ndef started():\n    pass\n")
    real = deploy._mpremote

    def cut_short(mpremote, port, args, what, *more):
        if what.startswith("writing the library's ROMFS image"):
            # the record says "writing", the new image's first 100 bytes are written over
            # the old one, then the line is cut: a valid header and a torn body
            image = args[args.index("deploy") + 1]
            with open(image, "rb") as f:
                head = f.read(100)
            real(mpremote, port, args[:args.index("romfs")] + [
                "exec", "import vfs\nvfs.rom_ioctl(3, 0, 0, 65536)\nvfs.rom_ioctl(4, 0, 0, %r)" % head], what, *more)
            raise KeyboardInterrupt
        return real(mpremote, port, args, what, *more)

    monkeypatch.setattr(deploy, "_mpremote", cut_short)
    with pytest.raises(KeyboardInterrupt):
        deploy.to_board(romfs_board, "picow-romfs", firmware, lib=lib, romfs=True)
    monkeypatch.setattr(deploy, "_mpremote", real)
    assert "deploy: incomplete: it stopped while writing the board's ROMFS partition" in capsys.readouterr().err
    _after_reset()
    # the record says "writing": boot.py took /rom and /rom/lib off sys.path, so nothing
    # of the torn image is imported
    assert "boot: the ROMFS partition is not used: an `lkedge deploy --romfs` did not finish" in emulated.console()
    got = out(romfs_board, "exec", "import sys; print(sys.path)\ntry:\n    import app\nexcept ImportError as e:\n"
                                   "    print('ImportError', e)")
    assert got == "['', '.frozen', '/lib', 'lib']\nImportError no module named 'app'\n"
    report = deploy.to_board(romfs_board, "picow-romfs", firmware, lib=lib, romfs=True)
    assert report.romfs == "written" and "/.lkedge-romfs" in report.copied
    _after_reset()
    assert out(romfs_board, "exec", WHERE) == "/rom/lib/app.mpy /rom/lib/lkedge/alpha.mpy 43 alpha\n"


def test_a_partition_that_does_not_read_back_fails_the_deploy_without_the_record(
        romfs_board, firmware, lib, monkeypatch):
    run_deploy(romfs_board, "picow-romfs", firmware, lib, "--romfs")
    _write(firmware, "app.py", "def answer():\n    return 43\n")   # a new image to write
    # the board reads back one byte less than the image: not what was written
    monkeypatch.setattr(romfs, "VERIFY_CODE", romfs.VERIFY_CODE.replace("%(n)d)", "%(n)d - 1)"))
    with pytest.raises(deploy.DeployError, match="does not read back as the image written"):
        deploy.to_board(romfs_board, "picow-romfs", firmware, lib=lib, romfs=True)
    _after_reset()
    # its record still says "writing": boot.py keeps the partition off sys.path
    got = out(romfs_board, "exec", "import sys; print(open('/.lkedge-romfs').read(), sys.path)")
    assert got == "writing\n ['', '.frozen', '/lib', 'lib']\n"


def test_a_board_without_a_partition_is_a_usage_error_before_anything_changes(tmp_path, firmware, lib):
    proc, port = board.launch("unix", str(tmp_path / "flash"))
    try:
        r = subprocess.run([sys.executable, "-m", "lkedge_host.cli", "deploy", "--port", port, "--firmware",
                            firmware, "--lib", lib, "--romfs"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        assert "the board has no ROMFS partition" in r.stderr and "Deploy without --romfs" in r.stderr
        assert "to copy" not in r.stderr and "board reset after the failure" in r.stderr
        _after_reset()
        assert out(port, "exec", "import os; print(sorted(os.listdir('/')))") == "[]\n"
    finally:
        proc.terminate()
        proc.wait(5)


def test_an_image_larger_than_the_partition_is_refused(tmp_path, firmware):
    with open(os.path.join(deploy.ROOT, "boards", "picow-romfs.json")) as f:
        p = json.load(f)
    p["name"], p["romfs_bytes"] = "tiny-romfs", 8192
    path = tmp_path / "tiny-romfs.json"
    path.write_text(json.dumps(p))
    proc, port = board.launch(str(path), str(tmp_path / "flash"))
    try:
        with pytest.raises(deploy.UsageError, match=r"the library's ROMFS image is \d+ bytes but the board's ROMFS "
                                                    r"partition has 8192: build the firmware with a larger partition"):
            deploy.to_board(port, str(path), firmware, lib=REAL_LIB, romfs=True)
    finally:
        proc.terminate()
        proc.wait(5)


async def _device_info(url):
    room = await demo.join(url, identity="host", room="lkedge")
    try:
        await demo.wait_for_participant(room, "dut", 30)
        return json.loads(await room.local_participant.perform_rpc(
            destination_identity="dut", method="device.info", payload="", response_timeout=10))
    finally:
        await room.disconnect()


def _console_until(b, text, timeout):
    got = ""
    end = time.monotonic() + timeout
    while text not in got and time.monotonic() < end:
        got += b.console(quiet_s=0.5, max_s=2.0)
    return got


def test_this_firmware_runs_on_a_pico_w_from_romfs_where_lib_has_no_room(tmp_path):
    # picow-romfs: a Pico W whose firmware has a ROMFS partition instead of the frozen
    # library. From /lib the library's bytecode and the firmware's fill the 160 KiB heap
    # before the board joins; from the partition, the board joins and answers.
    with RelayProcess() as relay, board.EmulatedBoard("picow-romfs", str(tmp_path / "flash")) as b:
        b.deploy(None, relay, identity="dut")
        assert "MemoryError" in _console_until(b, "MemoryError", 20)
        report = b.deploy(None, relay, identity="dut", romfs=True)
        assert report.romfs == "written"
        info = asyncio.run(_device_info(relay.url))
        assert info["identity"] == "dut" and info["board"] == "picow-romfs"
        assert info["mem_free"] > 12 * 1024, info
