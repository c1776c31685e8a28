# boot.py: runs first on every reset. Kept minimal: a broken app must never stop the
# board from reaching its REPL (mpremote needs it to redeploy).
import sys

if "lib" not in sys.path:
    sys.path.append("lib")


def _romfs_check():
    # The ROMFS partition, which `lkedge deploy --romfs` writes (the library and this
    # firmware's modules, /rom/lib): its record /.lkedge-romfs says "writing" from
    # before the first byte until the partition reads back right, then names the image
    # ("sha256 bytes"). A partition left half-written (the line cut, the power lost) is
    # not used: a truncated .mpy can hang an import at every boot, out of the REPL's
    # reach. No record: the partition is not lkedge's (or there is none): left alone.
    try:
        with open("/.lkedge-romfs") as f:
            words = f.read().split()
    except OSError:
        return
    if len(words) < 2 or len(words[-2]) != 64 or not words[-1].isdigit():
        for p in ("/rom", "/rom/lib"):
            if p in sys.path:
                sys.path.remove(p)
        print("boot: the ROMFS partition is not used: an `lkedge deploy --romfs` did not finish writing it")


_romfs_check()
del _romfs_check
