"""lkedge_host.bench.board_heap: its command line (the bisection itself runs in
tests/lib/test_board_memory.py)."""
import argparse

import pytest

from lkedge_host.bench import board_heap


def test_sizes_take_bytes_or_binary_k_and_m():
    assert board_heap.payload_sizes("64K,1M,8388608") == [65536, 1048576, 8388608]
    assert board_heap.payload_sizes("512, 2KiB,1mib") == [512, 2048, 1048576]


@pytest.mark.parametrize("bad", ["1G", "M", "-5", "1.5M", "0", "", "64K,"])
def test_a_size_that_is_not_one_names_itself(bad):
    with pytest.raises(argparse.ArgumentTypeError, match="is not a payload size"):
        board_heap.payload_sizes(bad)


def test_compression_both_means_off_then_on():
    assert board_heap.COMPRESSION_MODES["both"] == [False, True]


def test_an_unknown_compression_mode_is_refused_not_taken_for_off(capsys):
    with pytest.raises(SystemExit):
        board_heap.main(["--compression", "yes"])
    assert "invalid choice: 'yes'" in capsys.readouterr().err


def test_the_romfs_image_mounts_on_micropython_and_the_library_imports_from_it(tmp_path):
    # --romfs: the board build as mpremote builds a ROMFS image; the real interpreter
    # mounts it and runs the library from it, its bytecode in place (far less heap)
    import subprocess
    image = board_heap.romfs_image(str(tmp_path))
    code = ("import gc, sys, vfs\nvfs.mount(vfs.VfsRom(open(%r, 'rb').read()), '/rom')\n"
            "sys.path.insert(0, '/rom')\ngc.collect()\nbase = gc.mem_alloc()\n"
            "import lkedge.room\nprint(lkedge.room.__file__)\ngc.collect()\nprint(gc.mem_alloc() - base)\n" % image)
    r = subprocess.run([board_heap._bin("micropython"), "-X", "heapsize=512K", "-c", code],
                       capture_output=True, text=True, timeout=60, env={"MICROPYPATH": ".frozen"})
    assert r.returncode == 0, r.stdout + r.stderr
    where, heap = r.stdout.split()
    assert where == "/rom/lkedge/room.mpy"
    assert int(heap) < 70000   # loaded from files, these modules take ~100 KB


def test_a_compressed_run_whose_board_did_not_advertise_compression_is_no_pass():
    # 150 KiB holds the library and the exchange, not the 32 KiB window beside them: the
    # board joins without the capability and the host sends uncompressed, which passed
    # and let a bisection settle below any heap that inflates.
    from lkedge_host.relay.process import RelayProcess
    with RelayProcess() as relay:
        r = board_heap.run_scenario(relay, 150 * 1024, 64 * 1024, True, timeout=60)
    assert not r["ok"] and r.get("caps") == [], r
    assert "did not advertise compression" in r["error"], r["error"]
