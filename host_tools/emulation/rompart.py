"""EMULATION: a board's ROMFS partition and vfs.rom_ioctl(); runs INSIDE MicroPython.

A MicroPython firmware built with MICROPY_VFS_ROM (1.25+, a custom build on ESP32 and
RP2, as freezing is) has a ROMFS partition in its flash: `mpremote romfs deploy`
writes an image there through vfs.rom_ioctl(), and at boot the firmware mounts it at
/rom (vfs.VfsRom over the memory-mapped flash) with /rom and /rom/lib on sys.path.
Bytecode imported from it runs in place, as frozen bytecode does: only the module
objects take heap, not the code (MicroPython docs, "Working with ROMFS").

Here the partition is a file on the host (the supervisor's romfs=PATH, the profile's
romfs_bytes long), read at boot into one bytearray taken before the user's heap is
measured: the supervisor adds its size to the interpreter's heap, as a board maps its
flash outside the heap. Writes go to the bytearray and to the file at once, so they
outlive resets. The unix port has VfsRom but no rom_ioctl: this module gives the `vfs`
that user code and mpremote import one (rom.py puts it in sys.modules).

rom_ioctl(op, ...) as the ports implement it (extmod/vfs_rom_ioctl): 1 the number of
partitions; 2 (id) the partition as a memoryview; 3 (id, length) or (id, offset,
length) erase for writing, returns the smallest write; 4 (id, offset, data) write;
5 (id) writing done; 6 (id) the erase block size. A bad id or range answers -EINVAL,
an unknown op -EINVAL, as a board does (mpremote tests for a negative int).
"""
import vfs as _vfs

MAGIC = b"\xd2\xcd\x31"  # a ROMFS image's first bytes
BLOCK = 4096  # a flash erase sector (ESP32, RP2040)
MIN_WRITE = 4
_EINVAL = -22
_ERASED = b"\xff" * 512


class Partition:
    """The partition's bytes (buf), mirrored to the host file at path."""

    def __init__(self, path, size):
        self.buf = bytearray(size)   # first: one block, before the ROM allocates more
        self.view = memoryview(self.buf)
        self.file = open(path, "r+b")   # kept open: the flash VFS mounted at / hides host paths
        self.file.readinto(self.buf)    # (the supervisor made the file `size` bytes long)

    def _erase(self, start, end):
        for o in range(start, end, len(_ERASED)):
            n = min(len(_ERASED), end - o)
            self.view[o:o + n] = _ERASED[:n]
            self.file.seek(o)
            self.file.write(_ERASED[:n])
        self.file.flush()

    def write(self, offset, data):
        self.view[offset:offset + len(data)] = data
        self.file.seek(offset)
        self.file.write(data)
        self.file.flush()

    def holds_image(self):
        return bytes(self.view[:3]) == MAGIC


class Vfs:
    """The vfs module with rom_ioctl() for `part`; everything else is the port's own."""

    def __init__(self, part):
        self.part = part

    def __getattr__(self, name):
        return getattr(_vfs, name)

    def rom_ioctl(self, op, rom_id=0, *args):
        p = self.part
        if op == 1:
            return 1
        if rom_id != 0:
            return _EINVAL
        size = len(p.buf)
        if op == 2:
            return p.view
        if op == 3:
            offset, length = (0, args[0]) if len(args) == 1 else args
            if offset < 0 or length < 0 or offset + length > size:
                return _EINVAL
            p._erase(offset, offset + length)
            return MIN_WRITE
        if op == 4:
            offset, data = args
            if offset < 0 or offset + len(data) > size:
                return _EINVAL
            p.write(offset, data)
            return 0
        if op == 5:
            return 0
        if op == 6:
            return BLOCK
        return _EINVAL


def mount(part, path):
    """At boot, as the firmware does: mount the image at /rom and put /rom, /rom/lib on
    sys.path (after '' and '.frozen', before /lib); a partition without a valid image
    is skipped, silently, as on a board. Returns whether it mounted."""
    if not part.holds_image():
        return False
    try:
        _vfs.mount(_vfs.VfsRom(part.view), "/rom")
    except OSError:
        return False
    i = path.index(".frozen") + 1 if ".frozen" in path else len(path)
    path[i:i] = ["/rom", "/rom/lib"]
    return True
