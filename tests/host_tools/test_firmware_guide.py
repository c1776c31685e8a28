"""docs/firmware.md does what it says: its example firmware and its pytest recipe are
taken from the guide as written, and its commands are run as written (in a temporary
folder; only the relay's port changes if 7880 is taken on this host)."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from lkedge_host import board as board_mod
from lkedge_host import boardbuild, deploy

ROOT = deploy.ROOT
GUIDE = os.path.join(ROOT, "docs", "firmware.md")
BIN = os.path.dirname(sys.executable)


def guide():
    with open(GUIDE, encoding="utf-8") as f:
        return f.read()


def guide_files():
    """{path: text} of the guide's `<!-- file: PATH -->` code blocks."""
    return dict(re.findall(r"<!-- file: (\S+) -->\n```python\n(.*?)```", guide(), re.S))


def guide_commands():
    """Every line of the guide's ```sh blocks, in order."""
    out = []
    for block in re.findall(r"```sh\n(.*?)```", guide(), re.S):
        out += [line for line in block.splitlines() if line.strip()]
    return out


def command(text):
    """A command line of the guide with one of its words as this environment spells it."""
    for prefix, what in (("lkedge ", "lkedge"), ("mpremote ", "mpremote"), ("python ", None)):
        if text.startswith(prefix):
            exe = sys.executable if what is None else os.path.join(BIN, what)
            return exe + " " + text[len(prefix):]
    return text


def _port_free(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


@pytest.fixture
def workdir(tmp_path):
    for path, text in guide_files().items():
        full = tmp_path / path
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_text(text)
    return tmp_path


def test_the_guide_has_the_example_and_the_recipe():
    assert set(guide_files()) == {"myfw/main.py", "tests/test_myfw.py"}
    cmds = guide_commands()
    for start in ("lkedge relay", "lkedge board ", "lkedge deploy ", "lkedge call ", "mpremote connect ",
                  "lkedge names --firmware myfw", "lkedge names --table", "python -m pytest"):
        assert any(c.startswith(start) for c in cmds), start


def test_the_guides_commands_work_as_written(workdir):
    cmds = guide_commands()
    relay_port = 7880 if _port_free(7880) else None
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    env.pop("LIVEKIT_API_KEY", None)
    env.pop("LIVEKIT_API_SECRET", None)
    env.pop("LKEDGE_URL", None)
    extra_deploy = ""
    if relay_port is None:  # 7880 taken here: the same commands on another port
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        relay_port = s.getsockname()[1]
        s.close()
        env["LKEDGE_URL"] = "tcp://127.0.0.1:%d" % relay_port
        extra_deploy = " --relay tcp://127.0.0.1:%d" % relay_port
    background = []

    def start(line, ready):
        line = command(line)
        if line.split()[1] == "relay":
            line += " --port %d --ws-port 0 --http-port 0" % relay_port
        p = subprocess.Popen(line, shell=True, cwd=str(workdir), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        background.append(p)
        assert ready in p.stdout.readline(), line
        return p

    def run(line, timeout=120, **kw):
        r = subprocess.run(command(line), shell=True, cwd=str(workdir), env=env, capture_output=True,
                           text=True, timeout=timeout, **kw)
        return r

    try:
        start(next(c for c in cmds if c.startswith("lkedge relay")), "lkedge relay")
        start(next(c for c in cmds if c.startswith("lkedge board ")), "emulated on")
        r = run(next(c for c in cmds if c.startswith("lkedge deploy ")) + extra_deploy)
        assert r.returncode == 0, r.stderr
        assert "warning" not in r.stderr, r.stderr
        calls = [c for c in cmds if c.startswith("lkedge call ")]
        assert calls == ["lkedge call my-board echo hello", "lkedge call my-board count 5"]
        r = run(calls[0] + " --wait 20")
        assert r.returncode == 0 and r.stdout == "hello", (r.stdout, r.stderr)
        r = run(calls[1])
        assert r.returncode == 0 and r.stdout == "1\n2\n3\n4\n5\n", (r.stdout, r.stderr)

        # the console: from boot on with `reset repl` (a terminal program: run in `script`)
        repl = next(c for c in cmds if c.startswith("mpremote connect ./board.pty reset repl"))
        if shutil.which("script"):
            # read until the line shows (at most 20 s), then stop the terminal program
            p = subprocess.Popen(["script", "-qc", command(repl), "/dev/null"], cwd=str(workdir), env=env,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
            seen, end = b"", time.monotonic() + 20
            os.set_blocking(p.stdout.fileno(), False)
            while b"myfw: joined room lkedge as my-board" not in seen and time.monotonic() < end:
                seen += p.stdout.read() or b""
                time.sleep(0.1)
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(10)
            p.stdout.close()
            assert b"myfw: joined room lkedge as my-board" in seen, seen
        # what the board printed while nobody had the pty open is kept for the next reader
        assert "timeout 2 cat ./board.pty" in guide()
        r = run(command("mpremote connect ./board.pty reset"))
        assert r.returncode == 0, r.stderr
        assert run("lkedge call my-board echo back --wait 20").stdout == "back"  # it joined again
        r = run("timeout 2 cat ./board.pty")
        assert "myfw: joined room lkedge as my-board" in r.stdout, r.stdout

        # a traceback through the library, as the board names it, decoded both ways
        table = next(c for c in cmds if c.startswith("mpremote connect ./board.pty fs cp :/lib/lkedge/renames.txt"))
        assert run(table).returncode == 0
        board_names = {old: new for new, old in boardbuild.read_table(str(workdir / "renames.txt")).items()}
        line = _line_in(os.path.join(ROOT, "lib", "lkedge", "room.py"), "_open_link")
        (workdir / "traceback.txt").write_text(
            "Traceback (most recent call last):\n  File \"main.py\", line 126, in <module>\n"
            "  File \"lkedge.room\", line %d, in %s\nOSError: [Errno 104] ECONNRESET\n"
            % (line, board_names["_open_link"]))
        for names in (c for c in cmds if c.startswith("lkedge names ")):
            r = run(names)
            assert r.returncode == 0 and "in _open_link\n" in r.stdout, (names, r.stdout, r.stderr)
            assert "ECONNRESET" in r.stdout and "warning" not in r.stderr, r.stderr
    finally:
        for p in reversed(background):
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(10)
            p.stdout.close()

    # the pytest recipe, as the guide has it
    recipe = next(c for c in cmds if c.startswith("python -m pytest"))
    # its esp32 half (the picow half differs only by the profile; the suite's time is short)
    r = run(recipe + " -p no:cacheprovider -k esp32", timeout=300)
    assert r.returncode == 0 and "3 passed, 3 deselected" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]


def _line_in(path, function):
    """A line inside `function` of the module at path (its body's first line)."""
    import ast
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    fn = next(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
              and n.name == function)
    return fn.body[-1].lineno


def test_emulated_board_deploys_a_firmware_and_shows_its_console(workdir, tmp_path):
    from lkedge_host.relay.process import RelayProcess
    with RelayProcess() as relay, board_mod.EmulatedBoard("unix", str(tmp_path / "flash")) as b:
        report = b.deploy(str(workdir / "myfw"), relay, identity="dut")
        assert "/main.py" in report.copied and "/config.json" in report.copied
        end = time.monotonic() + 15
        seen = ""
        while "myfw: joined room lkedge as dut" not in seen and time.monotonic() < end:
            seen += b.console()
        assert "myfw: joined room lkedge as dut" in seen, seen
        with pytest.raises(deploy.UsageError):
            b.deploy(str(tmp_path / "missing"), relay)
    assert b.proc.poll() is not None  # stopped with the `with`
