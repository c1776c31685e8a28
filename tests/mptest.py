"""A tiny test runner that works under MicroPython and CPython alike.

    micropython tests/mptest.py tests/device/test_link.py [...]

Imports each module, runs every function whose name starts with ``test_`` (coroutine
functions through asyncio.run), prints one line per test and closes with the line
``N passed, N failed`` that CI reads. Exit status 1 if anything failed or nothing ran.
"""
import gc
import sys

try:
    import asyncio
except ImportError:  # pragma: no cover
    asyncio = None


def _here():
    f = __file__
    i = f.rfind("/")
    return f[:i] if i >= 0 else "."


def _setup_path():
    tests = _here()
    root = tests[: tests.rfind("/")] if "/" in tests else ".."
    # Appended, so MICROPYPATH (the mpy-compiled library) keeps precedence.
    for p in (tests + "/device", tests, root + "/lib"):
        if p not in sys.path:
            sys.path.append(p)


def _is_awaitable(x):
    t = type(x).__name__
    return t in ("generator", "coroutine")


def run_module(path):
    name = path.split("/")[-1]
    if name.endswith(".py"):
        name = name[:-3]
    d = path[: path.rfind("/")] if "/" in path else "."
    if d not in sys.path:
        sys.path.insert(0, d)
    mod = __import__(name)
    passed = failed = 0
    names = sorted(n for n in dir(mod) if n.startswith("test_"))
    only = None
    for a in sys.argv:
        if a.startswith("-k="):
            only = a[3:]
    for n in names:
        if only and only not in n:
            continue
        fn = getattr(mod, n)
        if not callable(fn):
            continue
        # What one test left must not reach the next one, as if each ran in a process of
        # its own: MicroPython's asyncio.run keeps the tasks a failed test left running
        # (one global loop) unless the loop is reset, and its buffers would fragment the
        # next test's heap unless collected.
        if asyncio is not None and sys.implementation.name == "micropython":
            asyncio.new_event_loop()
        gc.collect()
        try:
            r = fn()
            if _is_awaitable(r):
                asyncio.run(r)
            passed += 1
            print("PASS", name + "." + n)
        except Exception as e:  # report and go on: one failure must not hide others
            failed += 1
            print("FAIL", name + "." + n, "-", type(e).__name__, e)
            try:
                sys.print_exception(e)
            except AttributeError:
                import traceback
                traceback.print_exc()
    return passed, failed


def main(argv):
    _setup_path()
    files = [a for a in argv if not a.startswith("-")]
    passed = failed = 0
    for f in files:
        p, x = run_module(f)
        passed += p
        failed += x
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
