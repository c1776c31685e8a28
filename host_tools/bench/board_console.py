"""How often mpremote's way into the emulated board's raw REPL fails around resets.

    .venv/bin/python -m lkedge_host.bench.board_console [--rounds 300] [--hogs 2] [--seed 1]

Each round does what `mpremote exec` does after a firmware's `machine.reset()`: a raw
REPL exec of `machine.reset()` (after 100 ms), then, after a random pause of 0-0.6 s
(often while the board boots, when `lkedge board` holds the bytes until the new
interpreter is ready), mpremote's entry into the raw REPL: "\\r\\x03", its input read
away, "\\r\\x01"; then an exec whose output is checked. mpremote never times out on a
pty, so a byte the board loses there is a hang: this counts the rounds whose raw REPL
prompt (or exec output) did not come within 10 s, and gets the board back by entering
again. `--hogs N` runs N busy processes meanwhile (a loaded CI machine).

What `lkedge board` says (resets, "a Ctrl-C landed while the interpreter held one of its
locks ...") goes to stderr as it happens. Measured numbers are in the issue notes; the
deterministic parts have tests (tests/host_tools/test_board.py).
"""
import argparse
import os
import random
import select
import subprocess
import sys
import tempfile
import time
import tty

from lkedge_host import board

PROMPT = b"raw REPL; CTRL-B to exit\r\n>"
WAIT_S = 10.0


class Console:
    def __init__(self, port):
        self.fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.fd)

    def send(self, data):
        os.write(self.fd, data)

    def drain(self):
        while select.select([self.fd], [], [], 0)[0]:
            os.read(self.fd, 4096)

    def until(self, end, timeout=WAIT_S):
        """True once what the board says ends with `end` (False after `timeout`)."""
        got = b""
        deadline = time.monotonic() + timeout
        while not got.endswith(end):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return False
            got += os.read(self.fd, 4096)
        return True

    def enter_raw(self):
        """mpremote's enter_raw_repl (transport_serial.py), without a soft reset."""
        self.send(b"\r\x03")
        self.drain()
        self.send(b"\r\x01")
        return self.until(PROMPT)

    def close(self):
        os.close(self.fd)


def run(rounds, seed, out=sys.stdout):
    tmp = tempfile.TemporaryDirectory(prefix="lkedge-console-")  # removed when run() returns
    flash = os.path.join(tmp.name, "flash")
    os.makedirs(flash)
    with open(os.path.join(flash, "main.py"), "w") as f:
        f.write("open('main_ran', 'w').close()\n")   # a firmware that writes to its flash
    proc, port = board.launch("unix", flash)
    con = Console(port)
    rng = random.Random(seed)
    lost_prompt = lost_exec = 0
    t0 = time.monotonic()
    try:
        if not con.enter_raw():
            raise RuntimeError("the board never showed its raw REPL")
        for i in range(rounds):
            con.send(b"import time, machine; time.sleep_ms(100); machine.reset()\x04")
            con.until(b"OK", 2)
            con.send(b"\r\x02")
            time.sleep(rng.uniform(0.0, 0.6))
            if not con.enter_raw():
                lost_prompt += 1
                print("round %d: no raw REPL prompt within %d s" % (i, WAIT_S), file=out, flush=True)
                if not con.enter_raw():
                    raise RuntimeError("round %d: the board did not answer a second entry either" % i)
                continue
            con.send(b"print(6 * 7)\x04")
            if not con.until(b"OK42\r\n\x04\x04>"):
                lost_exec += 1
                print("round %d: no exec output within %d s" % (i, WAIT_S), file=out, flush=True)
                con.enter_raw()
    finally:
        con.close()
        proc.terminate()
        proc.wait(10)
    return lost_prompt, lost_exec, time.monotonic() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m lkedge_host.bench.board_console", description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--hogs", type=int, default=0, help="busy processes running meanwhile")
    ap.add_argument("--seed", type=int, default=1, help="seed of the pauses")
    args = ap.parse_args(argv)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
    try:
        lost_prompt, lost_exec, secs = run(args.rounds, args.seed)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    print("%d rounds (%d busy processes): raw REPL prompt lost %d, exec output lost %d, in %.0f s"
          % (args.rounds, args.hogs, lost_prompt, lost_exec, secs))
    return 1 if lost_prompt or lost_exec else 0


if __name__ == "__main__":
    sys.exit(main())
