"""`lkedge <command>`: the host command line.

Each command lives in its own module exposing an arguments function and a run function
(`add_arguments(parser)` / `run(args) -> int` unless COMMANDS names others); the module
is imported only when its command is invoked, so `lkedge --help` needs none of them and a
missing or broken module gives a one-line error, not a traceback.
"""
import argparse
import importlib
import os
import sys

from lkedge_host import ROOT as _ROOT

# name: (module, add-arguments function, run function, help)
COMMANDS = {
    "relay": ("lkedge_host.relay.command", "add_arguments", "run",
              "run the link relay: rooms in memory, TCP/WebSocket/serial listeners, /metrics"),
    "token": ("lkedge_host.tokens", "add_arguments", "run",
              "print an access token for --identity in --room (the relay's keys)"),
    "board": ("lkedge_host.board", "add_arguments", "run",
              "run an emulated board (MicroPython unix port on a pty) from a board profile"),
    "deploy": ("lkedge_host.deploy", "add_arguments", "run",
               "compile (mpy-cross) and copy the firmware to a board with mpremote"),
    "call": ("lkedge_host.calls", "add_call_arguments", "run_call",
             "call an RPC method on a participant: lkedge call IDENTITY METHOD [payload|@file|-]"),
    "serve": ("lkedge_host.calls", "add_serve_arguments", "run_serve",
              "join the room and serve RPC methods from a Python file"),
    "room": ("lkedge_host.calls", "add_room_arguments", "run_room",
             "join the room, list its participants, and leave"),
    "names": ("lkedge_host.boardbuild", "add_names_arguments", "run_names",
              "turn the private names in a board's traceback back into source names"),
}

EXIT_CODES = """exit codes:
  0    ok
  1    error (the message says which), e.g. call: no answer within --timeout
  2    usage: bad arguments or configuration
  3    RPC error returned by the remote participant (call --help: the ones said here)
  4    connection failure (relay unreachable, refused, or our link lost or ended by it)
  130  interrupted (Ctrl-C); call and room: 143 for SIGTERM, 129 for SIGHUP, the same
       clean stop; relay, serve and board stop with 0
       (serve rejoins after a link loss; it exits 4 if the relay will not take it back)"""


def _parser():
    p = argparse.ArgumentParser(
        prog="lkedge", description="MicroPython boards as participants of LiveKit-style rooms.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    subs = {}
    for name, (_m, _a, _r, text) in COMMANDS.items():
        subs[name] = sub.add_parser(name, help=text, description=text)
    return p, subs


# The tools read their repository: boards/ (profiles), firmware/ and lib/ (what deploy
# compiles and copies), tests' device helpers for the emulation. Installed from a wheel
# (`pip install <checkout>`) only the packages come along.
NOT_A_CHECKOUT = ("lkedge runs from a checkout of its repository (it reads boards/, firmware/ and lib/ "
                  "there), and %s has none: install it editable, `pip install -e <checkout>` (the "
                  "checkout's `make demo` does so into its .venv), not from a wheel or an sdist")


def _load(name):
    """-> (add_arguments, run), or an error message."""
    if not all(os.path.isdir(os.path.join(_ROOT, d)) for d in ("boards", "firmware", "lib")):
        return NOT_A_CHECKOUT % _ROOT
    module, add_name, run_name, _ = COMMANDS[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        return "command %r is not available: module %s cannot be imported (%s)" % (name, module, e)
    add, run = getattr(mod, add_name, None), getattr(mod, run_name, None)
    if add is None or run is None:
        return "command %r is not available: %s has no %s()/%s()" % (name, module, add_name, run_name)
    return add, run


def _command_name(argv):
    for a in argv:
        if not a.startswith("-"):
            return a if a in COMMANDS else None
    return None


def drop_stdout():
    """Point standard output at /dev/null once writing to it failed: no second error (and
    traceback) when Python flushes it at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, subs = _parser()
    name = _command_name(argv)
    run = None
    if name is not None:
        loaded = _load(name)
        if isinstance(loaded, str):
            print("lkedge: error: " + loaded, file=sys.stderr)
            return 1
        add, run = loaded
        add(subs[name])
    args, extra = parser.parse_known_args(argv)
    if extra and args.command is None:
        parser.error("unrecognized arguments: %s" % " ".join(extra))
    if args.command is None:
        parser.print_help()
        return 2
    if extra:  # said by the command's own parser, with its usage line (exits 2)
        subs[args.command].error("unrecognized arguments: %s" % " ".join(extra))
    try:
        return int(run(args) or 0)
    except BrokenPipeError:
        # stdout closed early (`lkedge call ... | head`): stop quietly, as a Unix tool does.
        drop_stdout()
        return 1
    except KeyboardInterrupt:
        print("\nlkedge %s: interrupted" % args.command if sys.stderr.isatty()
              else "lkedge %s: interrupted" % args.command, file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
