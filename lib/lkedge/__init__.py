"""lkedge: a MicroPython board as a participant of a LiveKit-style room.

The same package runs on the board (MicroPython) and on the host (CPython). Submodules
are imported lazily so that a board only loads what it uses.
"""
import gc

__version__ = "0.1.0"

# MicroPython collects only when an allocation fails, so garbage piles up between the
# objects that stay (bytecode, buffers, per-call state) and the free space ends up in
# holes too small for the next piece. A collection every heap/16 bytes allocated (at
# least 4 KiB) keeps what stays packed and the rest in large blocks: the 1 MiB board
# scenario (host_tools/bench/board_heap.py) needs 117 KiB of heap instead of 129 KiB.
# It costs CPU: the emulated ESP32 of `make demo` moves 1 MiB out at 3.0 MiB/s (4.5
# with no threshold; heap/32 packs no tighter at 2.4 MiB/s, heap/8 is 3.4 MiB/s but
# needs 119 KiB, 164 compressed; see docs/internals.md). Set when the package is
# imported (the import is where most of the packing happens), and only if the
# application has not chosen a threshold of its own (gc.threshold() == -1: none):
# set one before importing lkedge, e.g. gc.threshold(1 << 30) for speed.
if hasattr(gc, "threshold") and gc.threshold() == -1:
    gc.threshold(max(4096, (gc.mem_free() + gc.mem_alloc()) // 16))


def load(name):
    """lkedge.<name>, imported on first use (the optional parts: calls, sending, inflate,
    transport, ...). A collection runs first, so that on MicroPython the module's
    bytecode, which stays for good, fills the lowest free blocks of a clean heap
    instead of landing among short-lived garbage and splitting the free space."""
    import sys
    mod = sys.modules.get("lkedge." + name)
    if mod is None:
        gc.collect()
        mod = __import__("lkedge." + name, None, None, (name,))
    return mod
