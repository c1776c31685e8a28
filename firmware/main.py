# main.py: start the lkedge app; on a fatal error log it to flash and reset, as
# MicroPython boards customarily do, so the device recovers without a person.
import sys


def _fatal(e):
    # The heap may be what ran out (a library not frozen into the firmware): what the
    # app loaded goes first, so that the flash log may have room to say why, and the
    # console says it when the flash log cannot (the board reset every 5 s saying
    # nothing anywhere). The board resets below anyway.
    globals().pop("app", None)
    if "asyncio" in sys.modules:   # its task queue holds the Room's tasks, and so the Room
        sys.modules["asyncio"].new_event_loop()   # (MicroPython: a new, empty queue)
    # What the deploy put on the flash (.mpy: the library and the firmware, which holds
    # the library's names), not the port's own (frozen, built in, or an emulated
    # machine, whose reset must stay the one it was)
    for name, mod in list(sys.modules.items()):
        if name != "flashlog" and (name == "app" or getattr(mod, "__file__", "").endswith(".mpy")):
            del sys.modules[name]
    import gc
    gc.collect()
    try:
        import flashlog
        if flashlog.exception("fatal", e):
            e = None
    except Exception:
        pass
    if e is not None:   # the flash log could not take it: the console at least
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
