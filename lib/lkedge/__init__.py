"""lkedge: a MicroPython board as a participant of a LiveKit-style room.

The same package runs on the board (MicroPython) and on the host (CPython). Submodules
are imported lazily so that a board only loads what it uses.
"""
__version__ = "0.1.0"
