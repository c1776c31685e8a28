"""README, "The library": its example runs as printed (it failed with NameError: token),
with the token from LKEDGE_TOKEN as its comment says, against a relay and a "board-1"
that answers device.info (here `lkedge serve` under that identity; only the relay's URL
is this test's)."""
import os
import re
import subprocess
import sys

from lkedge_host import deploy
from lkedge_host.relay import auth
from lkedge_host.relay.process import RelayProcess
from test_cli_mistakes import _Serve, _env

BOARD = '''
def device_info(data):
    return '{"board": "esp32", "identity": "board-1"}'
device_info.rpc_name = "device.info"
'''


def readme_example():
    with open(os.path.join(deploy.ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("## The library"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_library_example_runs_as_printed(tmp_path):
    code = readme_example()
    assert 'os.environ["LKEDGE_TOKEN"]' in code and "lkedge token --identity me --room lkedge" in code
    (tmp_path / "board.py").write_text(BOARD)
    with RelayProcess() as relay:
        (tmp_path / "example.py").write_text(code.replace("tcp://127.0.0.1:7880", relay.url))
        board = _Serve(str(tmp_path / "board.py"), relay.url, "board-1")
        try:
            token = subprocess.run([os.path.join(os.path.dirname(sys.executable), "lkedge"), "token", "--identity",
                                    "me", "--room", "lkedge"], capture_output=True, text=True, timeout=30,
                                   env=_env()).stdout.strip()
            assert auth.Verifier(auth.DEV_API_KEY, auth.DEV_API_SECRET).verify(token)["identity"] == "me"
            r = subprocess.run([sys.executable, str(tmp_path / "example.py")], capture_output=True, text=True,
                               timeout=60, env=dict(_env(), LKEDGE_TOKEN=token))
        finally:
            board.stop()
    assert r.returncode == 0, r.stderr
    assert r.stdout == '{"board": "esp32", "identity": "board-1"}\n', (r.stdout, r.stderr)
    assert "call device.info from me ok" in board.err
