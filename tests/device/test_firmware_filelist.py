"""file.list (firmware/filelist.py): a folder's entries a bounded page at a time, and
what file.stat says of a folder. Apart from test_firmware_files.py: under MicroPython a
test module's bytecode is in the heap, and that module's log.tail test needs a 32 KB
block.

Runs under CPython and MicroPython; files are made in the working directory with a
per-test prefix and removed afterwards.
"""
import binascii
import json
import os

MP_HEAPSIZE = "256K"

import firmware_path  # noqa: E402,F401  (firmware/ on sys.path)

import filelist  # noqa: E402
import files  # noqa: E402
from lkedge.rpc import RpcError  # noqa: E402
from test_firmware_files import Data, _code, _content, _Flash  # noqa: E402

PREFIX = "fwlist_test_%s_" % binascii.hexlify(os.urandom(3)).decode()
_rm = firmware_path.rm


def _list(payload):
    return json.loads(filelist.file_list(Data(json.dumps(payload))))


def _rmtree(d):
    for name in os.listdir(d):
        p = d + "/" + name
        if os.stat(p)[0] & 0x4000:
            _rmtree(p)
        else:
            os.remove(p)
    os.rmdir(d)


def test_file_list_names_a_folders_files_with_their_sizes_and_its_folders():
    # There was no remote way to see what fills the flash (file.stat of a folder: 4004)
    d = PREFIX + "ls"
    os.mkdir(d)
    os.mkdir(d + "/sub")
    try:
        for name, n in (("a.bin", 700), ("empty", 0), (".put-0.tmp", 5), ("\u00e9t\u00e9.txt", 3)):
            with open(d + "/" + name, "wb") as f:
                f.write(_content(n))
        with _Flash(free=123456):
            for spelled in (d, "./" + d + "/", "/" + d):
                r = _list({"path": spelled})
                got = sorted(r["entries"], key=lambda e: e["name"])
                assert got == [{"name": ".put-0.tmp", "size": 5}, {"name": "a.bin", "size": 700},
                               {"name": "empty", "size": 0}, {"name": "sub", "dir": True},
                               {"name": "\u00e9t\u00e9.txt", "size": 3}], got
                assert r["path"] == d and r["next"] is None and r["free"] == 123456 and "not_utf8" not in r, r
            assert _list({"path": d + "/sub"})["entries"] == []
    finally:
        _rmtree(d)


def test_file_list_answers_a_bounded_page_and_where_the_next_starts():
    d = PREFIX + "many"
    os.mkdir(d)
    names = ["f%03d" % i for i in range(filelist.LIST_MAX + 5)]
    try:
        for name in names:
            open(d + "/" + name, "w").close()
        first = _list({"path": d})
        assert len(first["entries"]) == filelist.LIST_MAX and first["next"] == filelist.LIST_MAX, first["next"]
        rest = _list({"path": d, "start": first["next"]})
        assert len(rest["entries"]) == 5 and rest["next"] is None, rest
        assert sorted(e["name"] for e in first["entries"] + rest["entries"]) == names
        assert _list({"path": d, "start": 1000})["entries"] == []
        for name in names:
            os.remove(d + "/" + name)
        # long names: the page ends after about LIST_CHARS characters of them
        long_names = [("n%02d" % i) + "x" * 197 for i in range(20)]
        for name in long_names:
            open(d + "/" + name, "w").close()
        page = _list({"path": d})
        n = len(page["entries"])
        assert n < 20 and page["next"] == n and len(json.dumps(page)) < filelist.LIST_CHARS + 400, n
        seen = [e["name"] for e in page["entries"]]
        while page["next"] is not None:
            page = _list({"path": d, "start": page["next"]})
            seen += [e["name"] for e in page["entries"]]
        assert sorted(seen) == long_names
    finally:
        _rmtree(d)


def test_file_list_of_the_root_and_its_mistakes():
    mine = PREFIX + "in_root.bin"
    with open(mine, "wb") as f:
        f.write(_content(9))
    try:
        for root in ({}, {"path": ""}, {"path": "."}, {"path": "/"}, {"path": "./"}):
            page, found = _list(root), None
            assert page["path"] == "/", page
            for _ in range(100):
                found = found or [e for e in page["entries"] if e["name"] == mine]
                if page["next"] is None:
                    break
                page = _list(dict(root, start=page["next"]))
            assert found == [{"name": mine, "size": 9}], root
        for payload, code in (({"path": PREFIX + "missing"}, files.E_NO_FILE), ({"path": mine}, files.E_NO_FILE),
                              ({"path": "../x"}, files.E_BAD_PATH), ({"path": "a\x00b"}, files.E_BAD_PATH),
                              ({"path": 5}, files.E_BAD_PATH), ({"start": -1}, files.E_NOT_JSON),
                              ({"start": "2"}, files.E_NOT_JSON), ({"start": True}, files.E_NOT_JSON)):
            assert _code(filelist.file_list, Data(json.dumps(payload))) == code, payload
        assert _code(filelist.file_list, Data("[]")) == files.E_NOT_JSON
    finally:
        _rm(mine)


def test_file_stat_of_a_folder_says_that_file_list_lists_it():
    d = PREFIX + "statdir"
    os.mkdir(d)
    try:
        for path, code in (("/", files.E_BAD_PATH), (".", files.E_BAD_PATH), (d + "/", files.E_BAD_PATH),
                           (d, files.E_NO_FILE)):
            try:
                files.file_stat(Data(json.dumps({"path": path})))
            except RpcError as e:
                assert e.code == code and "file.list" in e.message, (path, e.code, e.message)
            else:
                raise AssertionError("file.stat of folder %r answered" % path)
    finally:
        os.rmdir(d)


def test_file_list_counts_names_that_are_not_utf8_without_listing_them():
    d = PREFIX + "bytes"
    os.mkdir(d)
    try:
        with open(d.encode() + b"/x\xffy", "w") as f:
            f.write("1")
        open(d + "/ok", "w").close()
        r = _list({"path": d})
        assert r["entries"] == [{"name": "ok", "size": 0}] and r["not_utf8"] == 1, r
    finally:
        for name in (b"/x\xffy", b"/ok"):
            try:
                os.remove(d.encode() + name)
            except OSError:
                pass
        os.rmdir(d)
