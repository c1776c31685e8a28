# Freezing lkedge into a custom MicroPython firmware (frozen bytecode runs from flash,
# leaving the heap to the application):
#
#   cd micropython/ports/esp32
#   make BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/lkedge/manifest.py
#
# (rp2: `make BOARD=RPI_PICO_W FROZEN_MANIFEST=...`). boot.py and main.py stay on the
# board's filesystem, where `lkedge deploy` puts them, so the board's start-up stays
# editable; the rest of firmware/ is frozen together with the library.
metadata(description="lkedge: a MicroPython board as a LiveKit room participant", version="0.1.0")

# The port's own frozen modules (asyncio, network helpers, ...) stay in the firmware.
include("$(PORT_DIR)/boards/manifest.py")

# lib/lkedge/*.py -> the `lkedge` package, less the modules for relays, tests and
# CPython only (lkedge deploy's HOST_ONLY), which a board never imports.
import os  # noqa: E402

_HOST_ONLY = ("hoststream.py", "hostwait.py", "memroom.py", "relayside.py")
package("lkedge", files=sorted(n for n in os.listdir("lib/lkedge") if n.endswith(".py") and n not in _HOST_ONLY),
        base_path="lib")

# The board application's modules (all of firmware/*.py but boot.py and main.py),
# importable by name as from the filesystem. manifestfile.py runs this file with the
# manifest's folder as the working directory, so relative paths name repo folders.
if os.path.isdir("firmware"):
    for _name in sorted(os.listdir("firmware")):
        if _name.endswith(".py") and _name not in ("boot.py", "main.py"):
            module(_name, base_path="firmware")
