"""EMULATION: the emulated board's "ROM", a REPL program that runs INSIDE MicroPython.

The unix port's own REPL does not speak the raw REPL protocol that mpremote uses, so
this program plays the part of a real board's firmware around user code
(shared/runtime/pyexec.c in MicroPython): it boots (boot.py, then main.py in friendly
REPL mode), then serves the friendly REPL (readline, paste mode) and the raw REPL
(Ctrl-A; Ctrl-D executes with "OK" and 0x04 framing; raw-paste mode Ctrl-E 'A' 0x01
with flow-control windows), executing everything in one persistent namespace.

Started by the host supervisor (lkedge_host.board) as

    micropython -X heapsize=N rom.py flash=DIR heap=BYTES cause=N mode=friendly|raw|repl
                 port=esp32 freq=HZ uid=HEX name=PROFILE ctl=FD

(mode=repl: the friendly REPL after boot.py, main.py not run; see "A Ctrl-C in a
garbage collection" in lkedge_host/board.py), and, for a profile with a ROMFS
partition, romfs=FILE romfs_bytes=N (emulation/rompart.py: vfs.rom_ioctl(), the image
mounted at /rom with /rom and /rom/lib on sys.path)

with stdin/stdout on a pseudo-terminal whose line discipline turns Ctrl-C into SIGINT
while a program runs (that is how it gets KeyboardInterrupt, as on a board; the REPL
reads Ctrl-C as a byte: Console) and fd FD a pipe
to the supervisor (ctl=FD: "R" ready, "W<ms>" watchdog armed, "F" fed, "X<code>" the
exit code it is about to end with, "G" a Ctrl-C
landed in a garbage collection: see _gc_interrupted).

The flash: the supervisor runs the interpreter with the flash folder as its working
directory, and the ROM mounts the same folder as the VFS root (os.VfsPosix at "/"), so
"/main.py", "main.py" and "/lib/x.py" all name files inside the flash folder, and
sys.path is a board's ['', '.frozen', '/lib']. The emulated built-ins (machine, network,
esp32) are imported from the ROM's own folder before the mount, so they live outside
the flash like a board's firmware modules.

Resets end the interpreter with an exit code (machine.EXIT_*); the supervisor starts
a new one with the flash and the serial port kept. A soft reset also restarts the
interpreter, which gives user code a fresh heap exactly as on a board.

The heap: the ROM's own code and the emulated modules take heap that a board keeps in
flash, so the supervisor gives the interpreter extra heap and the ROM pins the
surplus as ballast; user code then sees `heap` bytes free at the prompt, in one piece
(see _ballast).
"""
import builtins
import gc
import io
import micropython as _micropython
import os
import select
import sys
import termios

ROM_DIR = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
sys.path[:] = [ROM_DIR]
import machine  # noqa: E402  (the emulated built-ins, loaded before the flash is mounted)
import network  # noqa: E402

_BANNER_RAW = b"raw REPL; CTRL-B to exit\r\n"
# The ROM's own room, given up when a program's exception is shown: a board's REPL works
# from static buffers, so a program that filled the heap is still interrupted, its
# traceback shown and the REPL answers; the ROM, which needs heap for each, died
# (mpremote, which waits for ever on a pty, with it). Taken again when there is room.
_RESERVE = 8192
_PASTE_WINDOW = 128  # pyexec.c: half of a 256-byte stdin buffer
_COMPOUND = ("if", "while", "for", "try", "with", "def", "class", "async", "@", "elif", "else",
             "except", "finally", "match")


class SoftReset(BaseException):
    """A soft reboot was requested (Ctrl-D at an empty prompt, sys.exit())."""


def _args():
    out = {}
    for a in sys.argv[1:]:
        k, _, v = a.partition("=")
        out[k] = v
    return out


# termios.h (the unix port's termios module does not name them): the line discipline
# turns the interrupt character (cc[VINTR]) into SIGINT; a read waits for VMIN bytes
_ISIG = 0o1
_VINTR = 0
_VMIN = 6


class Console:
    """Bytes from the pty (stdin) and to it (stdout).

    The terminal is set as a board's UART behaves for whoever reads it. While a program
    runs (run(), and boot), Ctrl-C is a signal, as on a board (pyexec.c sets the
    interrupt character around execution alone), and a read waits for its bytes
    (sys.stdin.read(3) returned '' at once with the REPL's setting). While the ROM's REPL
    reads (getc()), Ctrl-C is the byte 3, in order with the others, and a read returns
    what is there: the unix port raises KeyboardInterrupt from inside its SIGINT
    handler, so a signal that arrived as a read returned took the bytes of that read
    with it (mpremote's Ctrl-A after its Ctrl-C was lost, and mpremote, which never
    times out on a pty, waited for ever: 1 boot in 300 of a reproducer that held
    mpremote's bytes through a reset)."""

    def __init__(self):
        self.buf = bytearray(256 + 8)  # reads fill 256; the rest takes late Ctrl-Cs
        self.view = memoryview(self.buf)[:256]
        self.pos = 0
        self.end = 0
        self.poll = select.poll()
        self.poll.register(sys.stdin, select.POLLIN)
        self.out = sys.stdout.buffer
        try:
            self.attrs = termios.tcgetattr(0)
        except OSError:
            self.attrs = None  # not a terminal: nothing to set
        # as if a program ran: the first getc() sets the REPL's terminal, whatever an
        # earlier interpreter left (a read with VMIN=1 would wait for 256 bytes)
        self.program = self.attrs is not None

    def program_mode(self, on, intr=3):
        """The terminal as a program sees it (on; `intr` its interrupt character, as
        micropython.kbd_intr() sets it, -1 none) or as the REPL reads it (off)."""
        a = self.attrs
        if a is not None:
            signals = on and 0 <= intr <= 255
            a[3] = a[3] | _ISIG if signals else a[3] & ~_ISIG
            if signals:
                a[6][_VINTR] = bytes((intr,))
            a[6][_VMIN] = 1 if on else 0
            self.program = on
            termios.tcsetattr(0, termios.TCSANOW, a)

    def repl_mode(self):
        """program_mode(False). A Ctrl-C the line discipline turned into SIGINT before
        the switch is delivered as tcsetattr returns (the switch waits for the input
        being processed), so it is raised here: it becomes the byte, after those read."""
        while True:
            try:
                self.program_mode(False)
                return
            except KeyboardInterrupt:
                # switched again, whether or not the signal came on the switch's return
                if self.pos:
                    n = self.end - self.pos
                    self.buf[:n] = self.buf[self.pos:self.end]
                    self.pos, self.end = 0, n
                if self.end < len(self.buf):
                    self.buf[self.end] = 3
                    self.end += 1

    def getc(self):
        if self.program:
            self.repl_mode()
        while self.pos >= self.end:
            try:
                self.poll.ipoll(-1)  # ipoll: no list allocated (the heap may be full)
                # the tty has VMIN=0, so readinto returns what is there instead of
                # waiting for the whole buffer
                n = sys.stdin.buffer.readinto(self.view)
                # kept before the try ends: a SIGINT from elsewhere (or any, with stdin
                # not a terminal) is raised at the next jump, maybe the try's own exit
                self.pos, self.end = 0, n or 0
            except KeyboardInterrupt:
                return 3
        c = self.buf[self.pos]
        self.pos += 1
        return c

    def write(self, data):
        self.out.write(data)


def _needs_more(text):
    """The friendly REPL's "continue with input" rule (py/repl.c, simplified)."""
    depth = 0
    quote = None
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif text.startswith(quote, i):
                i += len(quote) - 1
                quote = None
        elif ch == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif ch in "'\"":
            quote = ch * 3 if text.startswith(ch * 3, i) else ch
            i += len(quote) - 1
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        i += 1
    if depth > 0 or (quote is not None and len(quote) == 3) or text.endswith("\\"):
        return True
    lines = text.split("\n")
    first = lines[0].lstrip()
    word = first.split(" ", 1)[0].split(":", 1)[0].split("(", 1)[0]
    compound = first.startswith("@") or word in _COMPOUND or lines[0].rstrip().endswith(":")
    return compound and lines[-1].strip() != ""


class Rom:
    """The REPL state machines of pyexec.c (event-driven form): one byte in at a time."""

    def __init__(self, args, con):
        self.args = args
        self.con = con
        self.ns = {"__name__": "__main__"}
        self.raw = args.get("mode") == "raw"
        self.line = bytearray()
        self.src = ""
        self.cont = False
        self.paste = False
        self.esc = 0
        self.serving = False  # serve() has shown its banner
        self.reserve = None   # _RESERVE bytes, taken before the heap is measured (main)

    # ----------------------------------------------------------- execution
    def print_exc(self, e):
        try:
            buf = io.StringIO()
            sys.print_exception(e, buf)
            for line in buf.getvalue().split("\n"):
                # frames of the ROM and the emulated built-ins are firmware, not user code
                if line and ROM_DIR not in line:
                    self.con.write(line.encode() + b"\r\n")
        except MemoryError:
            self.con.write(b"MemoryError: no heap left to show the exception\r\n")

    def keep_room(self):
        if self.reserve is None:
            gc.collect()  # the first fit is then where it was, unless the program took it
            try:
                self.reserve = bytearray(_RESERVE)
            except MemoryError:
                pass  # the program's data holds it: again after the next command

    def run(self, src, mode, eof, filename="<stdin>"):
        """Compile and execute like pyexec.c's parse_compile_execute."""
        w = self.con.write
        try:
            self.con.program_mode(True)  # Ctrl-C interrupts it (getc() sets the REPL's)
            if mode == "single":
                self.run_single(src)
            else:
                exec(compile(src, filename, mode), self.ns)
        except machine.ResetRequest:
            raise
        except SystemExit:
            if eof:
                w(b"\x04\x04")
            raise SoftReset()
        except BaseException as e:  # KeyboardInterrupt included: the board survives it
            self.reserve = None  # the heap may be all the program's: room for what follows
            if isinstance(e, KeyboardInterrupt):
                _take_locks()
            if eof:
                w(b"\x04")
            self.print_exc(e)
            if eof:
                w(b"\x04")
            self.keep_room()
            return
        if eof:
            w(b"\x04\x04")
        self.keep_room()

    def run_single(self, src):
        """A friendly REPL entry: an expression's value is shown via (cooked) print."""
        try:
            code = compile(src, "<stdin>", "eval")
        except SyntaxError:
            exec(compile(src, "<stdin>", "single"), self.ns)
            return
        value = eval(code, self.ns)
        if value is not None:
            print(repr(value))

    def run_file(self, path):
        try:
            with open(path) as f:
                src = f.read()
        except OSError:
            return  # no such file is the same as an empty one (pyexec_file_if_exists)
        self.ns["__file__"] = path
        self.run(src, "exec", False, path)

    # ----------------------------------------------------------- raw REPL
    def raw_enter(self):
        self.raw = True
        self.line = bytearray()
        self.con.write(_BANNER_RAW + b">")

    def raw_char(self, c):
        w = self.con.write
        if c == 1:
            if len(self.line) == 2 and self.line[0] == 5:
                self.raw_paste(self.line[1])
                self.line = bytearray()
                w(b">")
                return
            self.raw_enter()
        elif c == 2:
            w(b"\r\n")
            self.raw = False
            self.friendly_enter()
        elif c == 3:
            self.line = bytearray()
        elif c == 4:
            w(b"OK")
            if not self.line:
                w(b"\r\n")
                raise SoftReset()
            src = bytes(self.line)
            self.line = bytearray()
            self.run(src.decode(), "exec", True)
            w(b">")
        else:
            self.line.append(c)

    def raw_paste(self, kind):
        w = self.con.write
        if kind != ord("A"):
            w(b"R\x00")
            return
        w(b"R\x01")
        w(bytes((_PASTE_WINDOW & 0xFF, _PASTE_WINDOW >> 8, 1)))
        src = bytearray()
        failed = None
        remain = _PASTE_WINDOW
        while True:
            c = self.con.getc()
            if c == 3 or c == 4:
                w(b"\x04")  # end of data acknowledged
                break
            if failed is None:
                try:
                    src.append(c)
                except MemoryError as e:
                    # A board compiles the code as it comes, and on a heap its program
                    # fills that compile fails: the rest is read, and the MemoryError
                    # said as the compile's error (before, it broke the exchange:
                    # mpremote got "unexpected read during raw paste")
                    failed, src = e, None
            remain -= 1
            if remain == 0:
                w(b"\x01")  # another window is free
                remain = _PASTE_WINDOW
        if c == 3:
            w(b"\x04")
            self.print_exc(KeyboardInterrupt())
            w(b"\x04")
            return
        if failed is None:
            try:
                text = src.decode()
            except MemoryError as e:
                failed = e
        if failed is not None:
            src = None
            self.reserve = None  # room to say it, as run() makes
            w(b"\x04")
            self.print_exc(failed)
            w(b"\x04")
            self.keep_room()
            return
        src = None
        self.run(text, "exec", True)

    # ----------------------------------------------------------- friendly REPL
    def banner(self):
        name = self.args.get("name", "board")
        ver = "MicroPython v%d.%d.%d" % sys.implementation.version[:3]
        self.con.write(("%s; lkedge emulated %s (unix port)\r\nType \"help()\" for more information.\r\n"
                        % (ver, name)).encode())

    def friendly_enter(self):
        self.banner()
        self.restart()

    def restart(self, prompt=b">>> "):
        self.line = bytearray()
        self.src = ""
        self.cont = False
        self.paste = False
        self.con.write(prompt)

    def friendly_char(self, c):
        w = self.con.write
        if self.paste:
            return self.paste_char(c)
        if self.esc:
            # swallow terminal escape sequences (arrows): ESC [ ... final byte
            self.esc = 0 if (self.esc > 1 and 64 <= c <= 126) else self.esc + 1
            return
        if c == 3:
            w(b"\r\n")
            return self.restart()
        if not self.line and not self.cont:
            if c == 1:
                w(b"\r\n")
                return self.raw_enter()
            if c == 2:
                w(b"\r\n")
                return self.friendly_enter()
            if c == 4:
                w(b"\r\n")
                raise SoftReset()
            if c == 5:
                w(b"\r\npaste mode; Ctrl-C to cancel, Ctrl-D to finish\r\n=== ")
                self.paste = True
                self.line = bytearray()
                return
        if c == 4 and self.cont and not self.line:
            w(b"\r\n")
            return self.execute(self.src)
        if c in (8, 127):
            if self.line:
                self.line = self.line[:-1]
                w(b"\b \b")
        elif c == 27:
            self.esc = 1
        elif c == 13:
            w(b"\r\n")
            self.line_done()
        elif c >= 32:
            self.line.append(c)
            w(bytes((c,)))

    def line_done(self):
        text = bytes(self.line).decode()
        self.line = bytearray()
        if not self.cont and not text:
            return self.restart()
        self.src = self.src + "\n" + text if self.cont else text
        if _needs_more(self.src):
            self.cont = True
            self.con.write(b"... ")
            self.auto_indent(text)
            return
        self.execute(self.src)

    def auto_indent(self, prev):
        """Pre-fill the indentation, as MicroPython's readline does after ':'."""
        n = len(prev) - len(prev.lstrip())
        if prev.rstrip().endswith(":"):
            n += 4
        if prev.strip() and n:
            self.line = bytearray(b" " * n)
            self.con.write(b" " * n)

    def execute(self, src):
        self.cont = False
        self.run(src, "single", False)
        self.restart()

    def paste_char(self, c):
        w = self.con.write
        if c == 3:
            w(b"\r\n")
            return self.restart()
        if c == 4:
            w(b"\r\n")
            src = bytes(self.line).decode()
            self.paste = False
            self.run(src, "exec", False)
            return self.restart()
        self.line.append(c)
        w(b"\r\n=== " if c == 13 else bytes((c,)))

    # ----------------------------------------------------------- main loop
    def serve(self):
        if self.serving:
            # Back after a Ctrl-C that landed outside the loop's try (between bytes, or
            # in the banner): it is the byte itself, as below. Showing the banner again
            # (and clearing the raw REPL's line) gave mpremote a second "raw REPL"
            # prompt in the middle of its exchange.
            self.raw_char(3) if self.raw else self.friendly_char(3)
        else:
            self.serving = True
            if self.raw:
                self.raw_enter()
            else:
                self.friendly_enter()
        while True:
            c = self.con.getc()
            try:
                self.raw_char(c) if self.raw else self.friendly_char(c)
            except KeyboardInterrupt:
                # a Ctrl-C that landed in the ROM's own code acts like the byte itself
                self.raw_char(3) if self.raw else self.friendly_char(3)
            except MemoryError:
                if _gc_interrupted():
                    raise  # the heap is locked: main() tells the supervisor
                # a heap the program's data fills: the input so far is dropped, as a
                # board's REPL drops a line too long for its buffer
                self.reserve = None
                self.con.write(b"\r\nMemoryError: no heap left for the REPL's input\r\n")
                self.line = bytearray()


class _Micropython:
    """The micropython module as user code sees it, but for kbd_intr(), which sets the
    emulated UART's interrupt character for the rest of the program, as on a board
    (kbd_intr(-1): Ctrl-C is a byte the program reads). The unix port's own leaves
    SIGINT to its default action instead: a Ctrl-C then ended the interpreter, which
    restarted as after a crash."""

    def __init__(self, con):
        self.con = con

    def __getattr__(self, name):
        return getattr(_micropython, name)

    def kbd_intr(self, c):
        self.con.program_mode(True, c)


def _cooked_print(*args, sep=" ", end="\n", file=None):
    """print() to the console with \\n sent as \\r\\n, as a board's stdout does."""
    if file is not None and file is not sys.stdout:
        return _print(*args, sep=sep, end=end, file=file)
    text = sep.join([a if isinstance(a, str) else str(a) for a in args]) + end
    sys.stdout.write(text.replace("\n", "\r\n"))


_print = builtins.print


class FlashVfs:
    """The flash: os.VfsPosix on the flash folder, with file sizes in ilistdir.

    The unix port's VfsPosix lists (name, type, inode) only; a board's filesystem also
    gives the size, which `mpremote fs ls` shows.
    """

    def __init__(self, path):
        self.root = path
        self.v = os.VfsPosix(path)
        for name in ("mount", "umount", "chdir", "getcwd", "mkdir", "remove",
                     "rmdir", "stat", "statvfs", "open"):
            setattr(self, name, getattr(self.v, name))
        # EMULATION: LKEDGE_EMULATED_FLASH_SIZE=BYTES in the environment of `lkedge board`
        # gives the flash a size (else it has the host disk's): statvfs reports it, and a
        # write past it fails with ENOSPC, as on a full LittleFS (tests of a full flash).
        self.size = int(os.getenv("LKEDGE_EMULATED_FLASH_SIZE") or 0)
        if self.size:
            self.statvfs = self._statvfs
            self.open = self._open

    # A sized flash counts each file in whole FLASH_BLOCK blocks (folders are free): a
    # model of LittleFS's blocks, not its exact accounting.
    def _used(self, d="/"):
        used = 0
        for e in self.ilistdir(d):
            if e[1] == 0x4000:
                used += self._used(d.rstrip("/") + "/" + e[0])
            else:
                used += _blocks(e[3])
        return used

    def _free_blocks(self):
        return max(0, self.size // FLASH_BLOCK - self._used())

    def _statvfs(self, path):
        free = self._free_blocks()
        return (FLASH_BLOCK, FLASH_BLOCK, self.size // FLASH_BLOCK, free, free, 0, 0, 0, 0, 255)

    def _open(self, path, mode="r"):
        f = self.v.open(path, mode)
        if not any(c in mode for c in "wax+"):
            return f
        return _SizedFile(f, mode, self)

    def rename(self, old, new):
        # The unix port's VfsPosix.rename joins both paths to its folder in one buffer:
        # with two absolute paths the first is lost (rename(root/new, root/new): ENOENT,
        # MicroPython 1.28), with an absolute and a relative one the file leaves the
        # flash. Relative paths are taken as they are, against the process's working
        # directory, which VfsPosix.chdir keeps at the VFS cwd: so both go relative.
        self.v.rename(self._relative(old), self._relative(new))

    def _relative(self, path):
        if not path.startswith("/"):
            return path
        depth = len([d for d in self.v.getcwd().split("/") if d])
        return "../" * depth + path[1:] or "."

    def ilistdir(self, path):
        base = path if path.endswith("/") else path + "/"
        for entry in self.v.ilistdir(path):
            size = 0
            if entry[1] == 0x8000:
                try:
                    size = self.v.stat(base + entry[0])[6]
                except OSError:
                    pass  # removed while listing
            yield (entry[0], entry[1], entry[2], size)


FLASH_BLOCK = 4096  # a sized flash's block (LittleFS on an ESP32)
ENOSPC = 28  # MicroPython's (its errno module lacks the name on the unix port)


def _blocks(size):
    return (size + FLASH_BLOCK - 1) // FLASH_BLOCK


class _SizedFile(io.IOBase):
    """A file open for writing on a sized flash: a write that would take more blocks
    than are free raises OSError(ENOSPC), what was written before stays (a copy cut
    short by a full flash, as on a board). The free blocks are counted when a write
    needs a new one, not at open: files written at once share them."""

    def __init__(self, f, mode, flash):
        self.f = f
        self.flash = flash
        self.size = f.seek(0, 2)  # "w" has truncated it, "a" writes at the end
        if "a" not in mode:
            f.seek(0)

    def write(self, data):
        end = self.f.tell() + len(data)
        grows = _blocks(max(end, self.size)) - _blocks(self.size)
        # this file's blocks so far are in _used (its writes go straight to the file)
        if grows and grows > self.flash._free_blocks():
            raise OSError(ENOSPC)
        self.size = max(end, self.size)
        return self.f.write(data)

    def readinto(self, buf):
        return self.f.readinto(buf)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __iter__(self):
        return self.f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _mount_flash(path):
    try:
        os.umount("/")
    except OSError:
        pass  # nothing mounted at / yet
    os.mount(FlashVfs(path), "/")
    sys.path[:] = ["", ".frozen", "/lib"]


def _load_frozen(names):
    """Emulate modules frozen into the firmware: load them (from the deployed .mpy in
    /lib) before the heap is measured, so their bytecode is not charged to user code,
    as on a board where frozen bytecode runs from flash. Missing ones (nothing deployed
    yet) are skipped: the firmware's own import then reports them. Not from the ROMFS
    partition: a firmware that freezes the library has no need to put it there, and
    only the firmware's boot.py knows whether a deploy finished writing it."""
    loaded = []
    path = sys.path[:]
    sys.path[:] = [".frozen", "/lib"]   # (.frozen: asyncio, which the library imports)
    try:
        for name in names:
            if not name:
                continue
            had = list(sys.modules)
            try:
                __import__(name)
                loaded.append(name)
            except ImportError:
                # what the failed import left goes (a /lib/lkedge folder without the
                # module made "lkedge" a namespace package there, hiding /rom/lib/lkedge)
                for n in list(sys.modules):
                    if n not in had:
                        del sys.modules[n]
    finally:
        sys.path[:] = path
    return loaded


def _ballast(target):
    """Pin the heap surplus so that `target` bytes are free for user code, in one piece
    where the heap has a region that large. The ROM is compiled at boot, and what the
    compiler threw away leaves holes between what the ROM keeps: one ballast block after
    them left the holes to user code (esp32 profile: of 110 KiB free, the largest block
    57 KiB). So the user's share is held while ballast pieces fill the holes, and then
    freed: user code gets that one region. A heap with no region as large as the share
    (a profile whose firmware leaves little beside it) gets one block, as before."""
    gc.collect()
    free = gc.mem_free()
    if free < target:
        sys.stdout.write("lkedge ROM: only %d bytes of heap free, the profile wants %d\r\n" % (free, target))
        return None
    try:
        share = bytearray(target)  # first fit of its size: the large region after the holes
    except MemoryError:
        return bytearray(free - target - 64) if free - target > 64 else None
    pieces = []
    left = free - target  # the pieces never take more than the surplus
    n = left
    while n >= 64 and left >= 64:
        n = min(n, left)
        try:
            pieces.append(bytearray(n))
            left -= n
        except MemoryError:
            n //= 2
    share = None  # noqa: F841 (freed: the region user code gets)
    gc.collect()
    extra = gc.mem_free() - target  # what the pieces did not fill (list growth, crumbs)
    if extra > 64:
        try:
            pieces.append(bytearray(extra - 64))
        except MemoryError:
            pass
    return pieces


def _boot_and_serve(rom, ctl):
    # A Ctrl-C is a signal: it can land in the ROM's own code as well as in user code.
    # Each phase absorbs it the way a board does (boot.py/main.py end, the REPL goes on);
    # the phase advances before it runs, so an interrupt moves on to the next one.
    phase = 0
    while True:
        try:
            if phase == 0:
                # on before input flows: mpremote's Ctrl-C, held while the board booted,
                # must interrupt boot.py or main.py, not wait as a byte behind them
                rom.con.program_mode(True)
                if ctl is not None:
                    ctl.write(b"R\n")  # the SIGINT handler is in place: input may flow
                phase = 1
            if phase == 1:
                phase = 2
                rom.run_file("boot.py")
            if phase == 2:
                phase = 3
                # pyexec: main.py only when booting into the friendly REPL; mode=repl
                # is where a Ctrl-C that cost the interpreter left main.py: ended
                if not rom.raw and rom.args.get("mode") != "repl":
                    rom.run_file("main.py")
            rom.serve()
        except KeyboardInterrupt:
            _take_locks()
            continue


def _take_locks():
    """After a Ctrl-C in a program: take the interpreter's locks once. The unix port
    raises KeyboardInterrupt from inside its SIGINT handler, wherever the interpreter
    was, and one raised while it held a lock leaves that lock held: the next taker waits
    for ever. Taken here, right after the Ctrl-C, that wait is where the supervisor
    looks for it (lkedge_host/board.py _check_stuck) and restarts the board at its
    REPL; met later, at the next compile, mpremote's request would already be taken
    (its "OK" sent) and mpremote would wait for ever. The locks: the names table's (a
    compile looks a name up), the heap's (compiling allocates), the C library
    allocator's (a directory listing)."""
    try:
        compile("_lk", "<lock check>", "eval")
        os.listdir("/")
    except MemoryError:
        if _gc_interrupted():
            raise  # the heap is locked: main() tells the supervisor
        # a heap the program filled: its REPL says so at the next command, as before
    except OSError:
        pass  # the flash folder gone: the REPL's next file access says it


def _gc_interrupted():
    """Whether the heap is locked by a collection a Ctrl-C cut short: the unix port
    raises KeyboardInterrupt from its SIGINT handler, and one that lands in a collection
    leaves it locked and half-marked for good (a board defers Ctrl-C). Told apart from
    user code's micropython.heap_lock(), which heap_unlock() counts. Allocates nothing
    unless the heap takes it."""
    _micropython.heap_lock()  # the module itself: the user's (_Micropython) is Python code
    if _micropython.heap_unlock():
        return False
    try:
        [0]
    except MemoryError:
        return True
    return False


def main():
    code = machine.EXIT_RESET
    args = _args()
    ctl = open("/dev/fd/" + args["ctl"], "wb") if args.get("ctl") else None
    port = args.get("port", "unix")
    uid = bytes(int(args.get("uid", "00" * 6)[i:i + 2], 16) for i in range(0, len(args.get("uid", "00" * 6)), 2))
    # The ROMFS partition first: its one block goes below everything the ROM allocates
    part = None
    if args.get("romfs"):
        import rompart
        part = rompart.Partition(args["romfs"], int(args["romfs_bytes"]))
        sys.modules["vfs"] = rompart.Vfs(part)   # with rom_ioctl(), for mpremote romfs
    machine._configure(int(args.get("cause", "1")), uid, int(args.get("freq", "240000000")), ctl, port,
                       args.get("chip", ""))
    network._sync_status_constants()
    if port == "esp32":
        import esp32  # noqa: F401  (emulated built-in, kept in sys.modules)
    con = Console()
    sys.modules["micropython"] = _Micropython(con)
    rom = Rom(args, con)
    builtins.print = _cooked_print
    _mount_flash(args["flash"])
    if part is not None:
        rompart.mount(part, sys.path)
    sys.argv[:] = []
    _load_frozen(args.get("frozen", "").split(","))
    # the ballast leaves the user's heap and the ROM's room, which is taken right after
    # it: where the user's heap starts, so that giving it up leaves no hole in between
    keep = _ballast(int(args.get("heap", "0")) + _RESERVE)
    rom.keep_room()
    try:
        _boot_and_serve(rom, ctl)
    except SoftReset:
        con.write(b"MPY: soft reboot\r\n")
        code = machine.EXIT_SOFT_RAW if rom.raw else machine.EXIT_SOFT_FRIENDLY
    except machine.ResetRequest as r:
        code = r.code
    except MemoryError:
        if ctl is not None and _gc_interrupted():
            ctl.write(b"G\n")   # the supervisor restarts the board at its REPL
        raise
    del keep
    if ctl is not None:
        # Said before the exit: the unix port leaves SIGINT to its default action once
        # the ROM has ended, so a Ctrl-C then kills the interpreter (-2), and the
        # supervisor would take a machine.reset() for a crash
        ctl.write(("X%d\n" % code).encode())
    while True:
        try:
            sys.exit(code)
        except KeyboardInterrupt:
            pass  # a late Ctrl-C must not turn a reset into a crash


main()
