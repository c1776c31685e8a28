"""Device tests under CPython run in a working directory of their own, as the MicroPython
half does (tests/test_micropython_half.py): the files they write (file.put's .put-0.tmp,
the flash log's files) must not meet those of another run in the same checkout."""
import pytest


@pytest.fixture(autouse=True)
def _own_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
