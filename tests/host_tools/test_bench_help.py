"""Every benchmark's --help names it as it is run (`python -m lkedge_host.bench.NAME`, not
the script's file name) and says in whole sentences what it measures."""
import importlib

import pytest


@pytest.mark.parametrize("name", ["board_calls", "board_code", "board_console", "board_heap", "board_payload", "load",
                                  "throughput"])
def test_help_names_the_module_and_says_what_it_measures(name, capsys):
    mod = importlib.import_module("lkedge_host.bench." + name)
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m lkedge_host.bench.%s " % name), text
    description = " ".join(text.split("\n\n")[1].split())
    assert description.endswith("."), description   # not cut off at the docstring's first line
