"""The emulated board (`lkedge board`) driven by the real mpremote over its pty.

Real parts: the MicroPython unix port, the board ROM running inside it, and the
mpremote CLI from the venv, exactly as a user runs them against a serial port.
"""
import os
import signal
import subprocess
import sys
import time
import tty

import pytest

from lkedge_host import board, profiles

MPREMOTE = os.path.join(os.path.dirname(sys.executable), "mpremote")


def mpremote(port, *args, timeout=20):
    return subprocess.run([MPREMOTE, "connect", port] + list(args), capture_output=True,
                          text=True, timeout=timeout)


def out(port, *args):
    r = mpremote(port, *args)
    assert r.returncode == 0, (r.stdout, r.stderr)
    return r.stdout.replace("\r\n", "\n")


@pytest.fixture
def flash(tmp_path):
    return str(tmp_path / "flash")


def _start(profile, flash):
    proc, port = board.launch(profile, flash)
    return proc, port


@pytest.fixture
def unix_board(flash):
    proc, port = _start("unix", flash)
    yield port
    proc.terminate()
    proc.wait(5)


def _wait_for(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_board_prints_its_pty_and_mpremote_execs_code(unix_board):
    assert unix_board.startswith("/dev/")
    assert out(unix_board, "exec", "print(1+1)") == "2\n"


def test_fs_cp_ls_and_back_use_the_flash_folder(unix_board, flash, tmp_path):
    src = tmp_path / "hello.py"
    src.write_text("print('hi from hello')\n")
    out(unix_board, "fs", "cp", str(src), ":hello.py")
    assert (open(os.path.join(flash, "hello.py")).read() == src.read_text())
    listing = out(unix_board, "fs", "ls")
    assert "%d hello.py" % len(src.read_bytes()) in listing  # sizes are listed as on a board's filesystem
    out(unix_board, "fs", "mkdir", ":lib")
    out(unix_board, "fs", "cp", str(src), ":/lib/hello2.py")  # absolute board path
    assert os.path.exists(os.path.join(flash, "lib", "hello2.py"))
    assert out(unix_board, "exec", "import hello2") == "hi from hello\n"  # /lib is on sys.path
    back = tmp_path / "back.py"
    out(unix_board, "fs", "cp", ":hello.py", str(back))
    assert back.read_text() == src.read_text()


def test_rename_takes_absolute_and_relative_paths_on_the_flash_as_on_a_board(unix_board, flash):
    # The unix port's VfsPosix.rename loses its first path when both are absolute (and
    # moves the file out of the flash with one absolute, one relative); a board's
    # LittleFS or FAT takes any. lkedge deploy renames its copies with absolute paths.
    code = ("import os\n"
            "for p in ('/a', '/sub/b'):\n    open(p + '.part', 'w').write(p)\n"
            "os.rename('/a.part', '/a')\n"                 # both absolute
            "os.chdir('/sub')\n"
            "os.rename('/sub/b.part', 'b')\n"              # absolute, then relative to /sub
            "os.rename('b', '/c')\n"                       # relative, then absolute
            "os.chdir('/')\n"
            "print(sorted(os.listdir('/')), os.listdir('/sub'))")
    out(unix_board, "fs", "mkdir", ":sub")
    assert out(unix_board, "exec", code) == "['a', 'c', 'sub'] []\n"
    assert open(os.path.join(flash, "a")).read() == "/a"
    assert open(os.path.join(flash, "c")).read() == "/sub/b"


def test_rename_works_on_a_flash_reached_through_a_symlink(tmp_path):
    # The emulated rename counts paths from the flash folder as the OS reports the
    # working directory (symlinks resolved): a --flash path through a symlink (a macOS
    # /tmp, a linked home) made every rename fail with ENOENT, and lkedge deploy with it.
    real = tmp_path / "real-flash"
    real.mkdir()
    link = tmp_path / "linked-flash"
    link.symlink_to(real)
    proc, port = _start("unix", str(link))
    try:
        code = ("import os\nos.mkdir('/s')\nopen('/s/b.part', 'w').write('b')\nos.chdir('/s')\n"
                "os.rename('/s/b.part', '/s/b')\nos.chdir('/')\nprint(os.listdir('/s'))")
        assert out(port, "exec", code) == "['b']\n"
        assert (real / "s" / "b").read_text() == "b"
    finally:
        proc.terminate()
        proc.wait(5)


def test_run_executes_a_local_script(unix_board, tmp_path):
    script = tmp_path / "s.py"
    script.write_text("import sys\nprint(sys.platform, sum(range(5)))\n")
    assert out(unix_board, "run", str(script)) == "linux 10\n"


def test_errors_come_back_framed_as_from_a_board(unix_board):
    r = mpremote(unix_board, "exec", "raise ValueError('boom')")
    assert r.returncode == 1
    assert "ValueError: boom" in r.stdout
    assert 'File "<stdin>", line 1' in r.stdout
    assert "rom.py" not in r.stdout  # the ROM's own frames are firmware, not shown


def test_resume_keeps_the_namespace_and_soft_reset_clears_it(unix_board):
    assert out(unix_board, "exec", "x = 41", "resume", "exec", "print(x + 1)") == "42\n"
    out(unix_board, "exec", "y = 1")
    assert out(unix_board, "resume", "exec", "print(y)") == "1\n"
    assert out(unix_board, "soft-reset", "exec", "print('y' in globals())") == "False\n"


def test_machine_reset_restarts_with_the_flash_kept(unix_board, flash):
    out(unix_board, "exec", "import machine; print(machine.reset_cause())")
    out(unix_board, "exec", "f = open('/keep.txt', 'w'); f.write('kept'); f.close()")
    out(unix_board, "exec", "--no-follow", "import machine; machine.reset()")
    time.sleep(board.BOOT_TIME_S + 0.2)
    got = out(unix_board, "exec", "import machine; print(machine.reset_cause(), open('keep.txt').read())")
    assert got == "5 kept\n"  # SOFT_RESET: what an ESP32 reports after machine.reset()
    assert os.path.exists(os.path.join(flash, "keep.txt"))


def test_mpremote_reset_command(unix_board):
    out(unix_board, "reset")
    time.sleep(0.1 + board.BOOT_TIME_S + 0.2)  # mpremote's reset waits 100 ms on the board
    assert out(unix_board, "exec", "import machine; print(machine.reset_cause())") == "5\n"


def test_boot_and_main_run_on_boot_and_ctrl_c_interrupts_main(flash):
    os.makedirs(flash)
    with open(os.path.join(flash, "boot.py"), "w") as f:
        f.write("open('booted', 'w').close()\n")
    with open(os.path.join(flash, "main.py"), "w") as f:
        f.write("import time\nopen('main_started', 'w').close()\nwhile True:\n    time.sleep_ms(5)\n")
    proc, port = _start("unix", flash)
    try:
        assert _wait_for(lambda: os.path.exists(os.path.join(flash, "main_started")))
        assert os.path.exists(os.path.join(flash, "booted"))
        # mpremote interrupts main.py with Ctrl-C, then soft-resets into the raw REPL,
        # which runs boot.py but not main.py (as pyexec does on a board)
        os.remove(os.path.join(flash, "main_started"))
        assert out(port, "exec", "print('in repl')") == "in repl\n"
        assert not os.path.exists(os.path.join(flash, "main_started"))
    finally:
        proc.terminate()
        proc.wait(5)


def _start_collecting(flash, watchdog=False):
    """A board whose main.py collects garbage all the time, over many objects (so a
    Ctrl-C lands in a collection), feeding a 2 s watchdog it armed if `watchdog`."""
    os.makedirs(flash)
    with open(os.path.join(flash, "main.py"), "w") as f:
        f.write("import gc, machine\n" + ("w = machine.WDT(timeout=2000)\n" if watchdog else "")
                + "x = [bytearray(16) for i in range(4000)]\nopen('main_started', 'w').close()\n"
                + "while True:\n    gc.collect()\n" + ("    w.feed()\n" if watchdog else ""))
    return _start("unix", flash)


def test_a_ctrl_c_that_lands_in_a_garbage_collection_leaves_the_board_at_its_repl(flash):
    # The unix port raises KeyboardInterrupt from its SIGINT handler, so a Ctrl-C in a
    # collection leaves the heap locked: the interpreter died and came back as a hard
    # reset running main.py, and mpremote failed ("could not enter raw repl", 6 of 6
    # with this main.py). It comes back at the REPL, the reset cause kept.
    proc, port = _start_collecting(flash)
    try:
        for cause in ("1\n", "5\n"):   # power-on, then machine.reset()'s: kept
            assert _wait_for(lambda: os.path.exists(os.path.join(flash, "main_started")))
            os.remove(os.path.join(flash, "main_started"))
            assert out(port, "exec", "import machine; print(machine.reset_cause())") == cause
            assert not os.path.exists(os.path.join(flash, "main_started"))
            out(port, "reset")   # main.py runs again
    finally:
        proc.terminate()
        proc.wait(5)


def test_after_a_ctrl_c_in_a_collection_an_armed_watchdog_still_runs_and_user_heap_locks_are_not_taken_for_one(
        flash):
    proc, port = _start_collecting(flash, watchdog=True)
    try:
        assert _wait_for(lambda: os.path.exists(os.path.join(flash, "main_started")))
        os.remove(os.path.join(flash, "main_started"))
        assert out(port, "exec", "print('at the repl')") == "at the repl\n"
        # nobody feeds it at the REPL: it resets the board, as on a board after Ctrl-C
        assert _wait_for(lambda: os.path.exists(os.path.join(flash, "main_started")), timeout=10)
        os.remove(os.path.join(flash, "main.py"))
        assert out(port, "exec", "import machine; print(machine.reset_cause())") == "3\n"   # WDT_RESET
        # a heap locked by user code is not a collection cut short: the board restarts
        # as after any crash (hard reset), saying what the interpreter last said
        try:   # (mpremote waits for the end of an output that never comes)
            mpremote(port, "exec", "import micropython; micropython.heap_lock(); x = [1] * 100", timeout=5)
        except subprocess.TimeoutExpired:
            pass
        assert _wait_for(lambda: out(port, "exec", "import machine; print(machine.reset_cause())") == "2\n",
                         timeout=20)
    finally:
        proc.terminate()
        proc.wait(5)


def _mpremote_gets_in(flash, main_py, code, expect):
    """Boot a board whose main.py (`main_py`, which ends its setup by writing the file
    "started") then runs for ever; mpremote's exec of `code` prints `expect`, at the
    REPL where its Ctrl-C leaves the board: main.py did not run again."""
    os.makedirs(flash)
    with open(os.path.join(flash, "main.py"), "w") as f:
        f.write(main_py)
    proc, port = _start("unix", flash)
    try:
        assert _wait_for(lambda: os.path.exists(os.path.join(flash, "started")), 20)
        os.remove(os.path.join(flash, "started"))
        assert out(port, "exec", code) == expect
        assert not os.path.exists(os.path.join(flash, "started"))
    finally:
        proc.terminate()
        proc.wait(5)


def test_a_ctrl_c_that_leaves_the_interpreter_waiting_on_its_own_lock_leaves_the_board_at_its_repl(flash):
    # The unix port raises KeyboardInterrupt from inside its SIGINT handler: one that
    # lands while the interpreter holds a lock of its own leaves the lock held, and the
    # interpreter waits for it for ever (seen as a hang of mpremote, 1 in 500 rounds of
    # a reset-and-raw-REPL reproducer under load). Here main.py takes its own lock again
    # after the KeyboardInterrupt: the same state, every time. mpremote's command runs,
    # at the REPL where the Ctrl-C was to leave the board, the reset cause kept.
    _mpremote_gets_in(flash, "import _thread, time\nlock = _thread.allocate_lock()\nlock.acquire()\n"
                      "open('started', 'w').close()\ntry:\n    while True:\n        time.sleep_ms(5)\n"
                      "except KeyboardInterrupt:\n    lock.acquire()\n",
                      "import machine; print(machine.reset_cause())", "1\n")


def test_only_a_single_threaded_process_waiting_on_a_lock_is_taken_for_stuck():
    code = ("import threading, sys, time\nl = threading.Lock()\nl.acquire()\n"
            "if sys.argv[1] == 'thread':\n    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
            "if sys.argv[1] == 'sleep':\n    time.sleep(60)\n"
            "print('ready', flush=True)\nl.acquire()\n")
    for how, stuck in (("lock", True), ("thread", False), ("sleep", False)):
        p = subprocess.Popen([sys.executable, "-c", code, how], stdout=subprocess.PIPE)
        try:
            if how != "sleep":
                assert p.stdout.readline() == b"ready\n"
            assert _wait_for(lambda: board._stuck_on_its_lock(p.pid) == stuck or stuck is False, 10)
            time.sleep(0.3)
            assert board._stuck_on_its_lock(p.pid) == stuck, how
        finally:
            p.kill()
            p.wait()


def test_a_firmware_that_filled_the_heap_is_interrupted_and_mpremote_gets_in(flash):
    # A board's REPL works from static buffers; the ROM needs heap to show the
    # KeyboardInterrupt and to read the next command: it died for want of 152 bytes,
    # came back as a hard reset running main.py again, and mpremote waited for ever.
    _mpremote_gets_in(flash, "import time\nx = []\ntry:\n    while True:\n        x.append(bytearray(1000))\n"
                      "except MemoryError:\n    pass\nopen('started', 'w').close()\n"
                      "while True:\n    time.sleep_ms(5)\n", "print('in repl')", "in repl\n")


def test_profile_heap_limit_is_in_effect(flash):
    heap = profiles.load("esp32")["heap"]
    proc, port = _start("esp32", flash)
    try:
        free = int(out(port, "exec", "import gc; gc.collect(); print(gc.mem_free())"))
        assert heap * 0.9 < free <= heap, (free, heap)
        r = mpremote(port, "exec", "b = bytearray(%d)" % (heap + 1024))
        assert r.returncode == 1 and "MemoryError" in r.stdout
        # the board is still usable after the failed allocation, and the heap is free in
        # one piece, not in the holes the ROM's own compilation left (57 KiB was the
        # largest block of 110 KiB)
        big = heap * 3 // 4
        assert out(port, "exec", "print(len(bytearray(%d)))" % big) == "%d\n" % big
    finally:
        proc.terminate()
        proc.wait(5)


def test_watchdog_resets_a_board_that_stops_feeding(unix_board):
    out(unix_board, "exec", "import machine; w = machine.WDT(timeout=300); w.feed()")
    time.sleep(0.3 + board.BOOT_TIME_S + 0.4)
    assert out(unix_board, "exec", "import machine; print(machine.reset_cause())") == "3\n"


def test_emulated_machine_and_network(unix_board):
    code = (
        "import machine, network\n"
        "a = machine.ADC(machine.Pin(34))\n"
        "r = [a.read_u16() for _ in range(3)]\n"
        "led = machine.Pin(2, machine.Pin.OUT); led.on(); v = led.value()\n"
        "btn = machine.Pin(0, machine.Pin.IN, machine.Pin.PULL_UP)\n"
        "w = network.WLAN(network.STA_IF); w.active(True); w.connect('ssid', 'pw')\n"
        "print(r[0] != r[1], v, btn.value(), w.isconnected(), w.ifconfig()[0],"
        " w.status() == network.STAT_GOT_IP, len(machine.unique_id()), machine.freq())\n"
        "print(r)\n"
    )
    first = out(unix_board, "exec", code).split("\n")
    assert first[0] == "True 1 1 True 127.0.0.1 True 8 1000000000"
    # deterministic: a fresh interpreter reads the same values again
    assert out(unix_board, "exec", code).split("\n")[1] == first[1]


def _pty_session(port, chunks):
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    got = []
    try:
        for data, expect in chunks:
            os.write(fd, data)
            buf = b""
            end = time.monotonic() + 5
            while expect not in buf and time.monotonic() < end:
                buf += os.read(fd, 4096) if _readable(fd) else b""
            got.append(buf)
            assert expect in buf, (data, buf)
    finally:
        os.close(fd)
    return got


def _readable(fd, timeout=0.05):
    import select
    return bool(select.select([fd], [], [], timeout)[0])


def test_friendly_repl_evaluates_lines_compound_statements_and_paste_mode(unix_board):
    _pty_session(unix_board, [
        (b"\x03", b">>> "),
        (b"1+2\r", b"3\r\n>>> "),
        (b"for i in range(2):\r", b"... "),
        (b"print(i * 10)\r", b"... "),
        (b"\r", b"0\r\n10\r\n>>> "),
        (b"\x05", b"=== "),
        (b"a = 6\rprint(a * 7)\x04", b"42\r\n>>> "),
        (b"\x02", b"lkedge emulated unix"),
    ])


def test_an_armed_watchdog_survives_a_soft_reset(unix_board):
    # mpremote soft-resets before each command; the watchdog keeps counting, as the
    # hardware watchdog of a board does
    # (2 s: the next mpremote command, its soft reset included, must come first, and
    # on a loaded machine one took more than 0.6 s)
    out(unix_board, "exec", "import machine; machine.WDT(timeout=2000)")
    armed = time.monotonic()   # it fires 2 s after it was armed, so before armed + 2 s
    assert out(unix_board, "exec", "import machine; print(machine.reset_cause())") == "1\n"
    time.sleep(max(0, armed + 2.0 + board.BOOT_TIME_S + 0.4 - time.monotonic()))
    assert out(unix_board, "exec", "import machine; print(machine.reset_cause())") == "3\n"


def test_a_missing_profile_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "lkedge_host.board", "--profile", "nosuch",
                        "--flash", str(tmp_path / "f")], capture_output=True, text=True, timeout=20)
    assert r.returncode == 2 and "no board profile 'nosuch'" in r.stderr


def test_option_mistakes_are_said_before_the_board_starts(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("")

    def run(*args):
        r = subprocess.run([sys.executable, "-m", "lkedge_host.board", "--profile", "unix"] + list(args),
                           capture_output=True, text=True, timeout=20)
        assert r.returncode == 2, (r.returncode, r.stderr)
        assert "Traceback" not in r.stderr and "emulated on" not in r.stdout
        return r.stderr

    assert "--micropython /no/such/micropython is not an executable file" in run(
        "--flash", str(tmp_path / "f"), "--micropython", "/no/such/micropython")
    assert "is a file, not a folder" in run("--flash", str(a_file))
    assert "exists and is not a symlink" in run("--flash", str(tmp_path / "f"), "--port-link", str(a_file))
    assert "does not exist" in run("--flash", str(tmp_path / "f"), "--port-link", str(tmp_path / "no" / "pty"))
    no_parent = tmp_path / "no" / "such" / "flash"
    assert "--flash %s: folder %s does not exist" % (no_parent, no_parent.parent) in run("--flash", str(no_parent))
    assert not (tmp_path / "no").exists()  # only the flash folder itself is ever made
    assert a_file.read_text() == ""


def _board_cmd(*args):
    return [sys.executable, "-m", "lkedge_host.board"] + list(args)


def _children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def _gone(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return True


def _stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_a_second_board_on_the_same_flash_refuses_to_start(flash):
    first, port = _start("unix", flash)
    try:
        r = subprocess.run(_board_cmd("--profile", "esp32", "--flash", flash), capture_output=True,
                           text=True, timeout=20)
        assert r.returncode == 2 and "emulated on" not in r.stdout, (r.stdout, r.stderr)
        assert "flash folder %s is in use by another emulated board (pid %d" % (flash, first.pid) in r.stderr
        assert "--flash OTHER_DIR" in r.stderr
        # the lock is beside the flash folder: the board's filesystem does not show it
        assert os.listdir(flash) == [] and out(port, "fs", "ls").strip() == "ls :"
        assert os.path.exists(flash + ".lock")
        interpreter = _children(first.pid)
        first.kill()  # a crashed board leaves no stale lock behind
        first.wait(5)
        assert _wait_for(lambda: all(_gone(p) for p in interpreter))
        again, _ = _start("unix", flash)
        _stop(again)
        assert again.returncode == 0
        assert not os.path.exists(flash + ".lock")  # a board that stops removes its lock
    finally:
        _stop(first)


def test_an_interpreter_that_cannot_start_stops_the_board(tmp_path):
    r = subprocess.run(_board_cmd("--flash", str(tmp_path / "f"), "--micropython", "/bin/false"),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert r.stderr.count("restarting it as a hard reset") == board.START_TRIES - 1, r.stderr
    assert "the interpreter /bin/false ended with code 1 before the board was ready, 3 times in a row" in r.stderr
    fake = tmp_path / "not-micropython"
    fake.write_text("#!/bin/sh\necho 'unknown option -X' >&2\nexit 3\n")
    fake.chmod(0o755)
    r = subprocess.run(_board_cmd("--flash", str(tmp_path / "f"), "--micropython", str(fake)),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "ended with code 3" in r.stderr and "it said: unknown option -X" in r.stderr


def test_a_board_whose_interpreter_crashes_is_restarted_each_time(flash):
    proc, port = _start("unix", flash)
    try:
        for _ in range(board.START_TRIES + 1):
            out(port, "exec", "print(1)")
            (pid,) = _children(proc.pid)
            os.kill(pid, 9)
            assert _wait_for(lambda: _children(proc.pid) not in ([], [pid]))
        assert out(port, "exec", "import machine; print(machine.reset_cause())") == "2\n"  # HARD_RESET
    finally:
        _stop(proc)
    assert proc.returncode == 0


def _full_pipe():
    """A pipe nobody reads that is already full: a blocking write to it never returns."""
    rd, wr = os.pipe()
    os.set_blocking(wr, False)
    try:
        while True:
            os.write(wr, b"x" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(wr, True)
    return rd, wr


def _start_logging_to(fd, flash):
    proc = subprocess.Popen(_board_cmd("--profile", "unix", "--flash", flash), stdout=subprocess.PIPE,
                            stderr=fd, text=True)
    line = proc.stdout.readline() if _readable(proc.stdout.fileno(), 10) else ""
    assert " emulated on " in line, line
    return proc, line.split(" emulated on ", 1)[1].split(" ", 1)[0]


def test_sigterm_stops_a_board_whose_log_nobody_reads(flash):
    rd, wr = _full_pipe()
    proc, _ = _start_logging_to(wr, flash)
    try:
        time.sleep(0.5)  # the board has something to log (its heap line) and has started
        proc.terminate()
        assert proc.wait(5) == 0
    finally:
        _stop(proc)
        os.close(rd)
        os.close(wr)


def test_a_log_nobody_reads_does_not_block_the_board_and_is_written_later(flash):
    rd, wr = _full_pipe()
    proc, port = _start_logging_to(wr, flash)
    try:
        out(port, "exec", "--no-follow", "import machine; machine.reset()")
        time.sleep(board.BOOT_TIME_S + 0.2)
        assert out(port, "exec", "print(1+1)") == "2\n"
        got = b""
        end = time.monotonic() + 5
        while b"machine.reset(): restarting" not in got and time.monotonic() < end:
            got += os.read(rd, 65536) if _readable(rd) else b""
        assert b"lkedge board: heap " in got and b"machine.reset(): restarting" in got
    finally:
        _stop(proc)
        os.close(rd)
        os.close(wr)


def test_an_interpreter_never_outlives_its_board_even_one_deaf_to_hangups(tmp_path):
    # A kill -9 of `lkedge board` closes the pty, whose hangup usually ends the
    # interpreter; but a board started under nohup (SIGHUP ignored) whose firmware had
    # reset it (as every deploy does) went on running, in the room, on a flash a second
    # board could then take. It is killed with its supervisor, and holds the lock
    # meanwhile.
    flash = str(tmp_path / "flash")
    os.mkdir(flash)
    with open(os.path.join(flash, "main.py"), "w") as f:   # a firmware that runs, as a board's does
        f.write("import asyncio, machine, os\n"
                "try:\n    os.stat('booted')\nexcept OSError:\n"
                "    open('booted', 'w').close()\n    machine.reset()\n"   # as a deploy's reset does
                "async def run():\n    while True:\n        await asyncio.sleep(0.1)\n"
                "asyncio.run(run())\n")
    # started as under nohup: SIGHUP ignored, which its interpreter inherits
    first = subprocess.Popen(_board_cmd("--profile", "esp32", "--flash", flash), stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    try:
        assert "emulated on" in first.stdout.readline()
        assert _wait_for(lambda: os.path.exists(os.path.join(flash, "booted")))
        time.sleep(1)   # the board restarted after its reset
        assert _wait_for(lambda: _children(first.pid))
        interpreter = _children(first.pid)
        first.kill()
        first.wait(5)
        assert _wait_for(lambda: all(_gone(p) for p in interpreter)), "the interpreter outlived its board"
        again, _ = _start("unix", flash)
        _stop(again)
        assert again.returncode == 0
    finally:
        _stop(first)


def test_emulated_board_says_why_it_did_not_start_and_takes_env_and_reset(tmp_path):
    # A copied profile whose name is not its file's: EmulatedBoard said only "did not
    # start within 10.0 s: ''" (the reason went to stderr), after a second of waiting
    import json
    p = profiles.load("unix")
    path = tmp_path / "my-unix.json"
    path.write_text(json.dumps(p))
    with pytest.raises(profiles.ProfileError) as e:
        board.EmulatedBoard(str(path), flash=str(tmp_path / "f1"))
    assert '\'name\' is \'unix\' but the file is my-unix.json' in str(e.value), e.value
    assert '"name": "my-unix"' in str(e.value), e.value
    p["name"] = "my-unix"
    path.write_text(json.dumps(p))
    # env for this board alone (not the test's process), and a reset as a button press
    with board.EmulatedBoard(str(path), flash=str(tmp_path / "f2"), env={"LKEDGE_EMULATED_FLASH_SIZE": "65536"}) as b:
        assert "LKEDGE_EMULATED_FLASH_SIZE" not in os.environ
        got = out(b.port, "exec", "import os; s = os.statvfs('/'); print(s[0] * s[2])")
        assert got == "65536\n", got
        out(b.port, "exec", "import sys; sys.modules['marker'] = 1")
        b.reset()
        time.sleep(board.BOOT_TIME_S + 0.2)
        assert out(b.port, "exec", "import sys, machine; print('marker' in sys.modules, machine.reset_cause())") \
            == "False 5\n"
        # the board runs one profile: deploy's profile= said only "got multiple values"
        with pytest.raises(TypeError) as e:
            b.deploy(str(tmp_path), "tcp://127.0.0.1:1", profile="esp32")
        assert "takes no profile=" in str(e.value) and "my-unix" in str(e.value), e.value


def test_a_ctrl_c_that_kills_the_interpreter_on_its_way_out_keeps_the_exit_it_announced(flash):
    # The unix port leaves SIGINT to its default action once the ROM has ended: a Ctrl-C
    # then (mpremote's, as a machine.reset() completes) killed it with -2, and the board
    # restarted as after a crash (a hard reset, its cause lost). The ROM says "X<code>"
    # on its control pipe first; a -SIGINT after that is the exit it announced.
    sup = board.Supervisor(profiles.load("unix"), flash, board.find_micropython())
    rd, wr = os.pipe()
    os.set_blocking(rd, False)
    sup.ctl, sup.ctl_buf = rd, b""
    try:
        assert sup._ended_with(-signal.SIGINT) == -signal.SIGINT   # nothing said: a crash
        os.write(wr, b"R\nX100\n")
        sup._control()
        assert sup.exiting == 100
        assert sup._ended_with(-signal.SIGINT) == 100               # machine.reset()'s
        assert sup._ended_with(-signal.SIGKILL) == -signal.SIGKILL  # not a Ctrl-C: as it is
        assert sup._ended_with(100) == 100
    finally:
        os.close(rd)
        os.close(wr)
        for fd in (sup.port_master, sup.port_slave, sup.board_master, sup.board_slave):
            os.close(fd)


def test_the_rom_says_the_exit_code_it_ends_with_before_it_ends(flash):
    # what _ended_with relies on: "X100" for machine.reset(), on the control pipe
    from lkedge_host import emulation as emu
    sup = board.Supervisor(profiles.load("unix"), flash, board.find_micropython(), log=None)
    said = b""
    try:
        sup.start(emu.PWRON_RESET, "friendly")
        deadline = time.monotonic() + 20
        while b"R\n" not in said and time.monotonic() < deadline:
            if _readable(sup.ctl, 0.1):
                said += os.read(sup.ctl, 256)
        assert b"R\n" in said, said
        os.write(sup.board_master, b"\r\x01import machine; machine.reset()\x04")
        while sup.proc.poll() is None and time.monotonic() < deadline:
            if _readable(sup.board_master, 0.1):
                os.read(sup.board_master, 4096)   # its console, drained
        while _readable(sup.ctl, 0.1):
            chunk = os.read(sup.ctl, 256)
            if not chunk:
                break
            said += chunk
        assert sup.proc.returncode == emu.EXIT_RESET and said.endswith(b"X%d\n" % emu.EXIT_RESET), said
    finally:
        sup.shutdown()
        for fd in (sup.port_master, sup.port_slave, sup.board_master, sup.board_slave, sup.ctl):
            os.close(fd)


def _signals_on(sup):
    """Whether the interpreter's terminal turns Ctrl-C into SIGINT now (its ISIG; the
    pty's master reports the board side's flags)."""
    import termios
    return bool(termios.tcgetattr(sup.board_master)[3] & termios.ISIG)


class _Supervised:
    """A Supervisor (no loop of its own) booting `main_py` from the flash, and what its
    interpreter says on its pty, read up to an expected text."""

    def __init__(self, flash, main_py):
        from lkedge_host import emulation as emu
        os.makedirs(flash)
        with open(os.path.join(flash, "main.py"), "w") as f:
            f.write(main_py)
        self.sup = board.Supervisor(profiles.load("unix"), flash, board.find_micropython(), log=None)
        self.seen = b""
        self.sup.start(emu.PWRON_RESET, "friendly")

    def send(self, data):
        os.write(self.sup.board_master, data)

    def until(self, text):
        """Wait (20 s at most) for `text`; what came after it is looked at next."""
        deadline = time.monotonic() + 20
        while text not in self.seen and time.monotonic() < deadline:
            if _readable(self.sup.board_master, 0.05):
                self.seen += os.read(self.sup.board_master, 4096)
        assert text in self.seen, self.seen
        self.seen = self.seen.split(text, 1)[1]

    def close(self):
        sup = self.sup
        sup.shutdown()
        for fd in (sup.port_master, sup.port_slave, sup.board_master, sup.board_slave, sup.ctl):
            os.close(fd)


def test_a_ctrl_c_is_a_signal_and_stdin_waits_while_a_program_runs_and_the_repl_reads_bytes(flash):
    # The unix port raises KeyboardInterrupt from inside its SIGINT handler, so a signal
    # that came as the ROM's read returned took that read's bytes with it: mpremote's
    # Ctrl-A after its Ctrl-C was lost, and mpremote (no timeout on a pty) waited for
    # ever, 1 boot in 300 of a reproducer. As on a board (pyexec.c), Ctrl-C is an
    # interrupt only while a program runs; the REPL reads it as a byte, in order. And a
    # program's sys.stdin.read(3) waits for 3 bytes, as on a board (it returned '').
    b = _Supervised(flash, "import sys, time\nprint('got', sys.stdin.read(3))\nwhile True:\n    time.sleep_ms(5)\n")
    sup = b.sup
    try:
        assert _wait_for(lambda: _readable(sup.ctl, 0) and b"R\n" in os.read(sup.ctl, 256), 20)
        assert _signals_on(sup)                          # main.py runs: Ctrl-C interrupts it
        b.send(b"ab")
        assert not _readable(sup.board_master, 0.3)      # the read waits for a third byte
        b.send(b"c")
        b.until(b"got abc\r\n")
        b.send(b"\x03")
        b.until(b"KeyboardInterrupt")
        b.until(b">>> ")
        assert _wait_for(lambda: not _signals_on(sup), 20)   # the REPL reads: a byte
        b.send(b"\x03\x01")                              # one write: both reach the REPL
        b.until(b"raw REPL; CTRL-B to exit\r\n>")
        b.send(b"import time\nprint('running')\nwhile True:\n    time.sleep_ms(5)\n\x04")
        # in its loop: a Ctrl-C in the compile could leave a lock held (see _take_locks),
        # which only the supervisor's loop, not run here, restarts from
        b.until(b"OK")
        b.until(b"running")
        assert _signals_on(sup)                          # a program again
        b.send(b"\x03")
        b.until(b"KeyboardInterrupt")
        b.until(b"\x04>")
        assert _wait_for(lambda: not _signals_on(sup), 20)
    finally:
        b.close()


def test_kbd_intr_sets_the_interrupt_character_of_the_program_as_on_a_board(flash):
    # micropython.kbd_intr(-1): Ctrl-C is a byte the program reads; kbd_intr(c): c
    # interrupts it, until the program ends. The unix port's own kbd_intr(-1) left
    # SIGINT to its default action: a Ctrl-C ended the interpreter, and the board
    # restarted as after a crash.
    b = _Supervised(flash, "import micropython, sys, time\nmicropython.kbd_intr(-1)\nprint('reading')\n"
                    "print('got', repr(sys.stdin.read(1)))\n"
                    "micropython.kbd_intr(ord('x'))\nprint('now x')\nwhile True:\n    time.sleep_ms(5)\n")
    try:
        b.until(b"reading\r\n")
        b.send(b"\x03")
        b.until(b"got '\\x03'")
        b.until(b"now x\r\n")
        b.send(b"x")
        b.until(b"KeyboardInterrupt")
        assert b.sup.proc.poll() is None
    finally:
        b.close()
