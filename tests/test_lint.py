"""`make lint` as a test: pyflakes' checks (flake8, configured in .flake8) find no unused
or undefined names anywhere in the repository's Python."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_no_unused_or_undefined_names_in_any_python_file():
    r = subprocess.run([sys.executable, "-m", "flake8", "lib", "host_tools", "firmware", "examples", "tests",
                        "boards"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, "flake8 (make lint) found:\n" + r.stdout + r.stderr
