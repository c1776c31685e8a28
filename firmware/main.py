# main.py: start the lkedge app; on a fatal error log it to flash and reset, as
# MicroPython boards customarily do, so the device recovers without a person.
import sys


def _fatal(e):
    try:
        import flashlog
        flashlog.exception("fatal", e)
    except Exception:
        sys.print_exception(e)
    # A pause before the reset: a crash at import would otherwise loop so fast that
    # mpremote (Ctrl-C) could never get in to deploy a fix.
    import time
    try:
        time.sleep(5)
    except KeyboardInterrupt:
        print("reset cancelled (Ctrl-C): REPL")
        return
    import machine
    machine.reset()


try:
    import app
    app.main()
except KeyboardInterrupt:
    print("app stopped (Ctrl-C): REPL")
except Exception as e:  # noqa: anything else restarts the board
    _fatal(e)
