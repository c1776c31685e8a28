# boot.py: runs first on every reset. Kept minimal: a broken app must never stop the
# board from reaching its REPL (mpremote needs it to redeploy).
import sys

if "lib" not in sys.path:
    sys.path.append("lib")
