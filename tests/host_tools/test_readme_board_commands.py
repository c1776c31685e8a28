"""README, "Boards": the file.put command line as printed, run by a shell with a stand-in
`lkedge` that records what it was sent. Printed without a check first, a missing local
file sent the header alone (exit 0), and the board's file became empty."""
import base64
import os
import re
import stat
import subprocess

from lkedge_host import deploy


def _put_line():
    with open(os.path.join(deploy.ROOT, "README.md"), encoding="utf-8") as f:
        lines = [m.group(1) for m in re.finditer(r"^\s+(.*\| lkedge call BOARD file\.put -)\s*$", f.read(), re.M)]
    assert len(lines) == 1, lines
    return lines[0]


def _run(tmp_path):
    stub = tmp_path / "bin" / "lkedge"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text("#!/bin/sh\ncat > \"$(dirname \"$0\")/../sent\"\necho '{\"size\": 0}'\n")
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=str(stub.parent) + os.pathsep + os.environ["PATH"])
    return subprocess.run(["sh", "-c", _put_line()], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                          timeout=30)


def test_the_readmes_file_put_sends_nothing_when_the_file_is_missing(tmp_path):
    r = _run(tmp_path)
    assert r.returncode != 0 and not (tmp_path / "sent").exists(), (r.returncode, r.stderr)


def test_the_readmes_file_put_sends_the_header_line_then_the_base64(tmp_path):
    (tmp_path / "up.bin").write_bytes(bytes(range(256)) * 3)
    r = _run(tmp_path)
    assert r.returncode == 0, r.stderr
    sent = (tmp_path / "sent").read_text().split("\n", 1)
    assert sent[0] == '{"path": "up.bin"}' and base64.b64decode(sent[1]) == bytes(range(256)) * 3
