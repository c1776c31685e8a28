"""lkedge_host.bench.load: calls start only once everyone is in, so none fail for lack
of a callee (the numbers themselves are the benchmark's to print, not a test's); its
command line; a worker that fails, dies or never joins ends the run with exit 1."""
import asyncio
import multiprocessing
import os
import subprocess
import sys

import pytest

from lkedge_host.bench import load


def test_a_small_load_run_completes_every_call_and_reports_the_relay():
    r = subprocess.run([sys.executable, "-m", "lkedge_host.bench.load", "--participants", "40",
                        "--seconds", "3", "--workers", "2"], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "40 participants joined and see their callee" in out, out
    ok = int(out.split("calls ok ")[1].split()[0])
    assert ok >= 40 and "failed 0" in out, out
    assert "relay: CPU" in out and "RSS" in out, out


# In-process from here: the workers are forked from pytest.
fork_only = pytest.mark.skipif(multiprocessing.get_start_method() != "fork",
                               reason="the patched worker reaches the child only by fork")


@pytest.mark.parametrize("argv, want", [
    (["--participants", "1"], "argument --participants: '1' is not a whole number of at least 2"),
    (["--participants", "0"], "argument --participants: '0' is not a whole number of at least 2"),
    (["--workers", "0"], "argument --workers: '0' is not a whole number of at least 1"),
    (["--seconds", "0"], "argument --seconds: '0' is not a duration of 1ms or more"),
    (["--seconds", "-5"], "argument --seconds: '-5' is not a duration"),
])
def test_counts_and_durations_out_of_range_are_usage_errors(argv, want, capsys):
    with pytest.raises(SystemExit) as e:
        load.main(argv)
    assert e.value.code == 2
    assert want in capsys.readouterr().err


def test_seconds_take_units_and_plain_numbers_stay_seconds():
    p = load.parser()
    assert p.parse_args(["--seconds", "1m"]).seconds == 60
    assert p.parse_args(["--seconds", "90s"]).seconds == 90
    assert p.parse_args(["--seconds", "500ms"]).seconds == 0.5
    assert p.parse_args(["--seconds", "60"]).seconds == 60


def test_help_names_the_module_and_every_default(capsys):
    with pytest.raises(SystemExit):
        load.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: python -m lkedge_host.bench.load ")
    for want in ("(default: 1000)", "(default: 60)", "(default: 4)", "at least 2"):
        assert want in text, want


async def _boom(*args):
    raise RuntimeError("boom in the worker")


async def _never_ready(*args):
    await asyncio.sleep(3600)


@fork_only
def test_a_worker_that_fails_ends_the_run_with_its_error(monkeypatch, capsys):
    monkeypatch.setattr(load, "_worker_main", _boom)
    assert load.main(["--participants", "4", "--seconds", "1", "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert "failed: RuntimeError: boom in the worker" in err, err


@fork_only
def test_a_worker_that_dies_silently_ends_the_run(monkeypatch, capsys):
    monkeypatch.setattr(load, "_worker", lambda *args: os._exit(3))
    assert load.main(["--participants", "2", "--seconds", "1", "--workers", "1"]) == 1
    assert "worker 0 exited (code 3) before it was ready" in capsys.readouterr().err


@fork_only
def test_workers_that_never_join_time_out_and_are_stopped(monkeypatch, capsys):
    monkeypatch.setattr(load, "_worker_main", _never_ready)
    monkeypatch.setattr(load, "JOIN_TIMEOUT_S", 1)
    started = []
    real_start = load._start_workers
    monkeypatch.setattr(load, "_start_workers", lambda *a: started.extend(real_start(*a)) or started)
    assert load.main(["--participants", "2", "--seconds", "1", "--workers", "2"]) == 1
    assert "2 of 2 workers not ready within 1 s" in capsys.readouterr().err
    assert started and not any(p.is_alive() for p in started)


@fork_only
def test_more_workers_than_participants_start_one_per_participant(capsys):
    assert load.main(["--participants", "2", "--seconds", "1", "--workers", "5"]) == 0
    out = capsys.readouterr().out
    assert "2 participants joined" in out and "2 worker processes" in out, out
