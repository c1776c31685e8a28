"""Error and log texts of a board build, read from flash when one is needed.

On the MicroPython unix port and on a board without frozen modules, a module's string
constants live in the heap next to its bytecode, and the library's texts (error
messages, warnings) are about a third of that. A board build (lkedge_host.boardbuild,
used by `lkedge deploy` and the test suite's MicroPython half) replaces each such text
in the compiled module with `_lkmsg("<module>", n)` and writes the texts to
`lkedge/<module>.msg` next to the .mpy; this function reads text n back (`_lkmsg` is
a two-line function the build adds to the package's __init__; it imports this module
on the first text, so a board that raises and logs nothing never loads it). The source
keeps the texts inline, CPython never calls this, and a board only pays when it raises
or logs.

File format: u16 count, then count + 1 u16 offsets (little-endian) relative to the end
of the table, then the UTF-8 texts.
"""


def text(module, n):
    """Text n of lkedge.<module>'s message file (OSError naming the file if missing)."""
    here = __file__
    k = here.rfind("/")
    path = "%s/%s.msg" % (here[:k] if k >= 0 else ".", module)
    try:
        f = open(path, "rb")
    except OSError:
        raise OSError("lkedge: message file %s is missing (deploy it with the .mpy files)" % path)
    with f:
        head = f.read(2)
        count = head[0] | head[1] << 8
        if not 0 <= n < count:
            raise OSError("lkedge: %s has no message %d" % (path, n))
        f.seek(2 + 2 * n)
        b = f.read(4)
        start, end = b[0] | b[1] << 8, b[2] | b[3] << 8
        f.seek(2 + 2 * (count + 1) + start)
        return f.read(end - start).decode("utf-8")
