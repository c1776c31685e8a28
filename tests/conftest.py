"""Shared pytest setup: lib/ importable, coroutine tests run with asyncio.run."""
import asyncio
import inspect
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (os.path.join(ROOT, "lib"), os.path.join(ROOT, "tests", "device"), os.path.join(ROOT, "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

# A suite started in the background by a non-interactive shell (`make test &`) inherits
# SIGINT ignored, and so would every command it starts: Python keeps an ignored SIGINT,
# so `lkedge call` could not be interrupted in the Ctrl-C tests. The default handler here
# gives the commands the default disposition again.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_pyfunc_call(pyfuncitem):
    """Run `async def test_*` functions (device tests share code with MicroPython)."""
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        funcargs = pyfuncitem.funcargs
        args = {a: funcargs[a] for a in pyfuncitem._fixtureinfo.argnames}
        asyncio.run(pyfuncitem.obj(**args))
        return True
    return None


def pytest_configure(config):
    """Under pytest-xdist (`-n`), build the shared compiled library once, in the controller,
    before the workers start: two workers compiling into build/ at once would race."""
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        return
    sys.path.insert(0, os.path.join(ROOT, "tests", "interop"))
    from mpybuild import compiled_lib
    from py_peer import compiled_peer
    compiled_lib()
    compiled_peer()
