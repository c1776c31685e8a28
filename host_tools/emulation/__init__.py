"""EMULATION of a MicroPython board on the host (used by `lkedge board`).

The files in this folder, except this one, run INSIDE the MicroPython unix port:
rom.py is the board's REPL program ("ROM"), machine.py, network.py and esp32.py are
stand-ins for the built-in modules of a real board. See rom.py for the design.
"""
import os

EMULATION_DIR = os.path.dirname(os.path.abspath(__file__))
ROM_PATH = os.path.join(EMULATION_DIR, "rom.py")

# Exit codes of the emulated interpreter (must match machine.py).
EXIT_RESET = 100
EXIT_SOFT_FRIENDLY = 101
EXIT_SOFT_RAW = 102
EXIT_DEEPSLEEP = 103

# machine.reset_cause() values (ESP32 numbering, as machine.py).
PWRON_RESET = 1
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
