"""lkedge: a MicroPython board as a participant of a LiveKit-style room.

The same package runs on the board (MicroPython) and on the host (CPython). Submodules
are imported lazily so that a board only loads what it uses.
"""
__version__ = "0.1.0"


def load(name):
    """lkedge.<name>, imported on first use (the optional parts: calls, sending, inflate,
    transport, ...). A collection runs first, so that on MicroPython the module's
    bytecode, which stays for good, fills the lowest free blocks of a clean heap
    instead of landing among short-lived garbage and splitting the free space."""
    import sys
    mod = sys.modules.get("lkedge." + name)
    if mod is None:
        import gc
        gc.collect()
        mod = __import__("lkedge." + name, None, None, (name,))
    return mod
