"""`lkedge deploy --romfs`: the library in the board's ROMFS partition.

A MicroPython firmware built with a ROMFS partition (1.25+, MICROPY_VFS_ROM; a custom
build on ESP32 and RP2, as freezing is) mounts it at /rom at boot with /rom/lib on
sys.path, and runs the bytecode of the .mpy files there in place, from flash: only the
module objects take heap (about 56 KB of the ~97 KB the library takes from /lib on the
64-bit unix port; docs/firmware.md "The library in ROMFS").

The deploy builds the library's board build (the .mpy and .msg files it would copy to
/lib/lkedge) and the firmware's compiled modules into an image with the real `mpremote
romfs build` (lib/lkedge/..., lib/app.mpy: /rom/lib on the board, importable by the
same names), checks it against the partition the board reports, and writes it with
`mpremote romfs deploy` unless the partition already holds it. boot.py, main.py, data
files and config.json stay on the flash. The order keeps a half-written partition from
being imported (a truncated .mpy can hang an import at every boot, out of the REPL's
reach):

1. the record MARKER on the flash says "writing";
2. the image is written;
3. the partition is read back (SHA-256 over the image's length) and compared;
4. the flash files are copied, MARKER with them, now naming the image ("sha256
   bytes"), and the flash copies of what is now in the partition are removed.

The firmware's boot.py takes /rom and /rom/lib off sys.path while MARKER says anything
but an image, so a write cut short leaves the board without the partition, never on a
torn one, until a deploy finishes. A deploy without --romfs on a board whose MARKER
names an image erases the partition's first block (its header: nothing is mounted at
/rom after the reset), since /rom/lib comes before /lib on sys.path and the library
there would shadow the one it copies to /lib/lkedge.
"""
import os
import subprocess

MARKER = "/.lkedge-romfs"
IN_IMAGE = "lib/lkedge"         # its place in the image: /rom/lib/lkedge on the board
ROMFS_HEADER = b"\xd2\xcd\x31"
RESULT = "LKEDGE-ROMFS "

# The board side: the SHA-256 of the partition's first n bytes (512 at a time: a
# memoryview slice is no copy), as hex; the partition as a memoryview is what the ESP32
# and RP2 ports give (memory-mapped flash).
HASH_FUNCTION = """
def _romh(d, n):
    import hashlib, binascii
    h = hashlib.sha256()
    for o in range(0, n, 512):
        h.update(d[o:min(o + 512, n)])
    return binascii.hexlify(h.digest()).decode()
"""

# For the deploy's query: None when the board has no ROMFS (no vfs.rom_ioctl, no
# partition); else [size, the sha256 of its first n bytes (None: n is 0 or more than
# the size)], or [size, 'object'] for a partition that is a block device, not memory.
QUERY_FUNCTION = HASH_FUNCTION + """
def _rom(n):
    try:
        import vfs
        if not hasattr(vfs, 'rom_ioctl') or vfs.rom_ioctl(1) < 1:
            return None
        d = vfs.rom_ioctl(2, 0)
        if isinstance(d, int):
            return None
        if hasattr(d, 'ioctl'):
            return [d.ioctl(4, 0) * d.ioctl(5, 0), 'object']
        return [len(d), _romh(d, n) if 0 < n <= len(d) else None]
    except Exception:
        return None
"""

VERIFY_CODE = HASH_FUNCTION + """
import vfs
print(%(result)r + _romh(vfs.rom_ioctl(2, 0), %(n)d))
"""

WRITING_CODE = """
with open(%r, 'w') as f:
    f.write('writing\\n')
""" % MARKER

# The partition's header erased (one erase block), /rom unmounted first as mpremote does
ERASE_CODE = """
import vfs
try:
    vfs.umount('/rom')
except OSError:
    pass
vfs.rom_ioctl(3, 0, 0, max(vfs.rom_ioctl(6, 0), 4))
"""

NO_PARTITION = ("the board has no ROMFS partition: its MicroPython is built without one (ROMFS needs "
                "MicroPython 1.25+ built with MICROPY_VFS_ROM and a partition for it; the stock ESP32 and "
                "Pico W firmware has none). Deploy without --romfs (the library goes to the flash's /lib), or "
                "flash a firmware with a ROMFS partition (docs/firmware.md, \"The library in ROMFS\")")


class Image:
    """The library's ROMFS image: path, size, sha256 (hex)."""

    def __init__(self, path):
        import hashlib
        self.path = path
        with open(path, "rb") as f:
            data = f.read()
        self.size = len(data)
        self.sha256 = hashlib.sha256(data).hexdigest()


def image_path(board_path, library):
    """Where a file the deploy builds goes in the image (its board path under /rom), or
    None for a file that stays on the flash. In: the files in `library`, the library's
    folder on the flash (/lib/lkedge/x -> lib/lkedge/x), and the firmware's compiled
    modules, importable by the same names from /rom/lib (/app.mpy -> lib/app.mpy,
    /drivers/b.mpy -> lib/drivers/b.mpy, and /lib/x.mpy, on /lib's path, -> lib/x.mpy).
    Out: boot.py, main.py (run from source by name), data files, config.json and
    profile.json (read by path)."""
    if not board_path.endswith(".mpy") and not board_path.startswith(library + "/"):
        return None
    if board_path.startswith("/lib/"):
        return board_path[1:]
    return "lib" + board_path


def build_image(mpremote, files, out_dir):
    """The ROMFS image of `files` ([(image path, local file)]), built by the real
    `mpremote romfs build`; returns an Image. RuntimeError if it fails."""
    import shutil
    tree = os.path.join(out_dir, "romfs-tree")
    for where, local in files:
        dest = os.path.join(tree, *where.split("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(local, dest)
    path = os.path.join(out_dir, "lkedge.romfs")
    r = subprocess.run([mpremote, "romfs", "--no-mpy", "--output", path, "build", tree],
                       capture_output=True, text=True)
    if r.returncode != 0 or not os.path.isfile(path):
        raise RuntimeError("`mpremote romfs build` failed: %s" % (r.stderr or r.stdout).strip())
    return Image(path)


def marker_file(image, out_dir):
    """The local file deploy copies to MARKER: the image it checked on the partition
    (boot.py reads its last two words)."""
    path = os.path.join(out_dir, "lkedge-romfs.txt")
    with open(path, "w") as f:
        f.write("# the ROMFS partition holds the image `lkedge deploy --romfs` wrote and read back (the "
                "library in /rom/%s, the firmware's modules in /rom/lib): sha256 bytes\n%s %d\n"
                % (IN_IMAGE, image.sha256, image.size))
    return path


def fits(rom, image):
    """None if the board's partition (the query's `rom`) can take `image`, else why not."""
    if rom is None:
        return NO_PARTITION
    size, sha = rom
    if sha == "object":
        return ("the board's ROMFS partition is a block device, not memory-mapped flash: lkedge deploy "
                "--romfs checks what it wrote by reading the partition as memory (ESP32 and RP2 boards); "
                "deploy without --romfs")
    if image.size > size:
        return ("the library's ROMFS image is %d bytes but the board's ROMFS partition has %d: build the "
                "firmware with a larger partition (%d bytes at least), or deploy without --romfs"
                % (image.size, size, image.size))
    return None


def holds(rom, image):
    """Whether the partition already holds `image` (its first bytes hash to it)."""
    return rom is not None and rom[1] == image.sha256


def write(run, image):
    """Write `image` to partition 0 with `mpremote romfs deploy` and read it back; MARKER
    says "writing" first. `run(args, what)` runs one mpremote command line on the board
    (its output returned). RuntimeError when the partition does not read back as the image."""
    out = run(["exec", WRITING_CODE, "+", "romfs", "deploy", image.path, "+",
               "exec", VERIFY_CODE % {"result": RESULT, "n": image.size}],
              "writing the library's ROMFS image (%d bytes)" % image.size)
    got = [line[len(RESULT):].strip() for line in out.splitlines() if line.startswith(RESULT)]
    if got != [image.sha256]:
        raise RuntimeError("the ROMFS partition does not read back as the image written (sha256 %s, "
                           "expected %s): the board's flash may be failing. The board does not import the library "
                           "from the partition until a deploy --romfs finishes" % (
                               got[0] if got else "not reported", image.sha256))
