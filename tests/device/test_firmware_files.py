"""The firmware's file methods and base64 pieces (firmware/files.py, filedelete.py,
b64pieces.py), the flash log's tail (flashlog.py) and
config.update's validation (methods.py), without a room: the RPC data object is given
a reader that hands out the request in pieces of awkward sizes, as a stream does.

Runs under CPython and MicroPython; files are made in the working directory with a
per-test prefix and removed afterwards.
"""
import binascii
import hashlib
import json
import os

MP_HEAPSIZE = "256K"


import firmware_path  # noqa: E402,F401  (firmware/ on sys.path)

import b64pieces  # noqa: E402
import filedelete  # noqa: E402
import files  # noqa: E402
import methods  # noqa: E402
from lkedge.rpc import RpcError  # noqa: E402

# A name of its own per run: the suite runs this module in parallel workers and
# under MicroPython at the same time, all in one working directory.
PREFIX = "fwfiles_test_%s_" % binascii.hexlify(os.urandom(3)).decode()


class PieceReader:
    """A request stream: readinto() hands out at most `step` bytes per call."""

    def __init__(self, data, step=7):
        self.data = data
        self.pos = 0
        self.step = step

    async def readinto(self, buf):
        n = min(len(buf), self.step, len(self.data) - self.pos)
        buf[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n

    async def read_all(self, limit=None):
        s = bytes(self.data[self.pos:]).decode()
        self.pos = len(self.data)
        if limit is not None and len(s.encode()) > limit:  # as lkedge's readers do
            raise ValueError("stream larger than the %d-byte read_all limit" % limit)
        return s


class SlowReader(PieceReader):
    """A request stream whose pieces take a turn of the event loop each, so two
    uploads interleave as they do on the board."""

    async def readinto(self, buf):
        import asyncio
        await asyncio.sleep(0)
        return await PieceReader.readinto(self, buf)


class Data:
    def __init__(self, payload=None, reader=None):
        self.payload = payload
        self.reader = reader
        self.caller_identity = "tester"


def _content(n):
    return bytes((i * 7 + (i >> 8)) & 255 for i in range(n))


def _sha(b):
    return binascii.hexlify(hashlib.sha256(b).digest()).decode()


_rm = firmware_path.rm


def _tmp(name, n=0):
    """The temporary file a file.put of `name` writes first (the lowest N not in use)."""
    return name[:name.rfind("/") + 1] + ".put-%d.tmp" % n


async def _rpc_code(aw):
    try:
        r = await aw if not isinstance(aw, str) else aw
    except RpcError as e:
        return e.code
    raise AssertionError("expected an RpcError, got the answer %r" % (r,))


def _code(fn, *args):
    try:
        r = fn(*args)
    except RpcError as e:
        return e.code
    raise AssertionError("expected an RpcError, got the answer %r" % (r,))


async def test_file_get_streams_base64_that_decodes_to_the_file():
    name = PREFIX + "get.bin"
    content = _content(1000)
    with open(name, "wb") as f:
        f.write(content)
    try:
        src = await files.file_get(Data(reader=PieceReader(json.dumps({"path": name}).encode())))
        pieces = []
        async for p in src:
            assert isinstance(p, str) and len(p) % 4 == 0, "every piece decodes on its own"
            pieces.append(p)
        assert len(pieces) == 3 and binascii.a2b_base64("".join(pieces)) == content
    finally:
        _rm(name)


async def test_file_put_writes_the_file_and_reports_its_sha256():
    name = PREFIX + "put.bin"
    content = _content(3001)
    body = (json.dumps({"path": name}) + "\n").encode() + binascii.b2a_base64(content)[:-1]
    try:
        for step in (1, 5, 511, 4096):
            _rm(name)
            r = json.loads(await files.file_put(Data(reader=PieceReader(body, step))))
            with open(name, "rb") as f:
                assert f.read() == content, "step %d" % step
            assert r == {"path": name, "size": 3001, "sha256": _sha(content)}
    finally:
        _rm(name)


async def test_file_put_accepts_wrapped_base64_lines():
    name = PREFIX + "wrapped.bin"
    content = _content(500)
    text = binascii.b2a_base64(content)[:-1]
    wrapped = b"\r\n".join(text[i:i + 76] for i in range(0, len(text), 76))
    try:
        r = json.loads(await files.file_put(Data(reader=PieceReader(
            (json.dumps({"path": name}) + "\n").encode() + wrapped, 13))))
        assert r["sha256"] == _sha(content) and r["size"] == 500
    finally:
        _rm(name)


async def test_file_put_errors_name_the_cause_and_leave_no_file():
    name = PREFIX + "bad.bin"
    head = (json.dumps({"path": name}) + "\n").encode()
    try:
        assert await _rpc_code(files.file_put(Data(reader=PieceReader(head + b"QUJ")))) == files.E_BAD_BASE64
        assert await _rpc_code(files.file_put(Data(reader=PieceReader(head + b"QU=DQUJD")))) == files.E_BAD_BASE64
        assert await _rpc_code(files.file_put(Data(reader=PieceReader(b"QUJD")))) == files.E_NO_HEADER
        assert await _rpc_code(files.file_put(Data(reader=PieceReader(b"x" * 600)))) == files.E_NO_HEADER
        assert await _rpc_code(files.file_put(Data(reader=PieceReader(b"[1]\nQUJD")))) == files.E_NOT_JSON
        assert await _rpc_code(files.file_put(Data(reader=PieceReader(b'{"path": "../up"}\nQUJD')))) == files.E_BAD_PATH
        for n in (name, _tmp(name)):
            try:
                os.stat(n)
                raise AssertionError("%s was left behind by a failed upload" % n)
            except OSError:
                pass
    finally:
        _rm(name, _tmp(name))


async def test_file_put_keeps_the_old_file_when_the_upload_fails():
    name = PREFIX + "keep.bin"
    with open(name, "wb") as f:
        f.write(b"good")
    try:
        body = (json.dumps({"path": name}) + "\n").encode() + b"QUJDRA"
        assert await _rpc_code(files.file_put(Data(reader=PieceReader(body)))) == files.E_BAD_BASE64
        with open(name, "rb") as f:
            assert f.read() == b"good"
    finally:
        _rm(name, _tmp(name))


def test_file_stat_gives_size_and_sha256_or_a_clear_error():
    name = PREFIX + "stat.bin"
    content = _content(1500)
    with open(name, "wb") as f:
        f.write(content)
    try:
        assert json.loads(files.file_stat(Data(json.dumps({"path": "/" + name})))) == {
            "path": name, "size": 1500, "sha256": _sha(content)}
        assert _code(files.file_stat, Data(json.dumps({"path": PREFIX + "missing"}))) == files.E_NO_FILE
        assert _code(files.file_stat, Data("{}")) == files.E_MISSING
        assert _code(files.file_stat, Data("not json")) == files.E_NOT_JSON
        assert _code(files.file_stat, Data(json.dumps({"path": "a/../../etc"}))) == files.E_BAD_PATH
        assert _code(files.file_stat, Data(json.dumps({"path": "/"}))) == files.E_BAD_PATH
    finally:
        _rm(name)


def test_b64_sink_carries_partial_quads_across_feeds():
    out = []
    sink = b64pieces.B64Sink(out.append, piece=8)
    text = binascii.b2a_base64(b"hello, board!")[:-1]
    for i in range(0, len(text), 3):
        sink.feed(text[i:i + 3])
    assert b"".join(out) == b"hello, board!" and sink.carry == 0 and sink.size == 13


def test_config_update_patch_is_validated():
    assert methods._config_patch('{"name": "pump-7", "telemetry_interval_s": 0.5}') == {
        "name": "pump-7", "telemetry_interval_s": 0.5}
    cases = (('{"nam": "x"}', methods.E_BAD_CONFIG), ('{"name": 7}', methods.E_BAD_CONFIG),
             ('{"telemetry_interval_s": true}', methods.E_BAD_CONFIG),
             ('{"telemetry_interval_s": 0}', methods.E_BAD_CONFIG),
             ('[1, 2]', files.E_NOT_JSON), ('nope', files.E_NOT_JSON))
    for payload, code in cases:
        assert _code(methods._config_patch, payload) == code, payload


def _put_body(name, content):
    return (json.dumps({"path": name}) + "\n").encode() + binascii.b2a_base64(content)[:-1]


def _absent(*names):
    for n in names:
        try:
            os.stat(n)
        except OSError:
            continue
        raise AssertionError("%s is on flash" % n)


async def test_a_second_put_of_the_same_path_is_refused_while_the_first_runs():
    import asyncio
    name = PREFIX + "twice.bin"
    a, b = _content(2000), bytes(reversed(_content(2000)))
    try:
        first = asyncio.create_task(files.file_put(Data(reader=SlowReader(_put_body(name, a), 64))))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert await _rpc_code(files.file_put(Data(reader=SlowReader(_put_body(name, b), 64)))) == files.E_BUSY
        for other in ("./" + name, "/" + name, ".//" + name):   # the same file spelled otherwise
            assert await _rpc_code(files.file_put(Data(reader=SlowReader(_put_body(other, b), 64)))) == files.E_BUSY, other
        r = json.loads(await first)
        with open(name, "rb") as f:
            assert f.read() == a and r["sha256"] == _sha(a), "the two uploads were mixed"
        # once the first is over, the path takes a new upload
        json.loads(await files.file_put(Data(reader=PieceReader(_put_body(name, b), 500))))
        with open(name, "rb") as f:
            assert f.read() == b
    finally:
        _rm(name, _tmp(name))


class _FullFlashFile:
    """A file on a flash that fills up after `room` bytes (OSError ENOSPC, 28)."""

    def __init__(self, f, room):
        self.f = f
        self.room = room

    def write(self, b):
        if len(b) > self.room:
            raise OSError(28)
        self.room -= len(b)
        return self.f.write(b)

    def close(self):
        self.f.close()


async def test_file_put_on_a_full_flash_is_a_clear_error_that_keeps_the_old_file():
    name = PREFIX + "full.bin"
    with open(name, "wb") as f:
        f.write(b"good")
    real_create = files._create
    files._create = lambda tmp, path: _FullFlashFile(real_create(tmp, path), 1000)
    try:
        try:
            await files.file_put(Data(reader=PieceReader(_put_body(name, _content(3000)), 300)))
        except RpcError as e:
            assert e.code == files.E_WRITE and name in e.message and "ENOSPC" in e.message, e.message
        else:
            raise AssertionError("file.put on a full flash answered")
        with open(name, "rb") as f:
            assert f.read() == b"good"
        _absent(_tmp(name))
    finally:
        files._create = real_create
        _rm(name, _tmp(name))
    assert not files._writing, "a failed put still holds its path"


async def test_file_put_onto_a_directory_is_a_clear_error_and_leaves_no_temporary_file():
    name = PREFIX + "dir"
    os.mkdir(name)
    try:
        try:
            await files.file_put(Data(reader=PieceReader(_put_body(name, b"abc"), 100)))
        except RpcError as e:
            assert e.code == files.E_WRITE and name in e.message, e.message
        else:
            raise AssertionError("file.put onto a directory answered")
        _absent(_tmp(name))
    finally:
        _rm(_tmp(name))
        os.rmdir(name)


async def test_directories_control_characters_and_oversized_requests_are_refused():
    d = PREFIX + "adir"
    os.mkdir(d)
    try:
        assert _code(files.file_stat, Data(json.dumps({"path": d}))) == files.E_NO_FILE
        assert await _rpc_code(files.file_get(Data(reader=PieceReader(json.dumps({"path": d}).encode())))) \
            == files.E_NO_FILE
        for bad in (d + "/", "a\x00b", "a\nb", ""):
            assert _code(files.file_stat, Data(json.dumps({"path": bad}))) == files.E_BAD_PATH, repr(bad)
        big = json.dumps({"path": "x" * 600}).encode()
        assert await _rpc_code(files.file_get(Data(reader=PieceReader(big)))) == files.E_NOT_JSON
    finally:
        os.rmdir(d)


async def test_log_tail_takes_an_empty_object_and_refuses_a_bool():
    app = methods.App(None, {}, {}, None, 0)
    src = await app.log_tail(Data(reader=PieceReader(b"{}")))
    if src.f is not None:
        src.f.close()
    assert await _rpc_code(app.log_tail(Data(reader=PieceReader(b'{"bytes": true}')))) == files.E_NOT_JSON
    assert await _rpc_code(app.log_tail(Data(reader=PieceReader(b" " * 300)))) == files.E_NOT_JSON


async def _put_error(body, step=7):
    """The RpcError a file.put of `body` (header line included) ends in."""
    try:
        r = await files.file_put(Data(reader=PieceReader(body, step)))
    except RpcError as e:
        return e
    raise AssertionError("file.put answered %r" % (r,))


# Both interpreters' binascii skip what is not base64 and stop at '=': each of these
# decoded to something (or to part of the file) and was written as the whole upload.
BAD_BASE64 = (
    (binascii.b2a_base64(_content(1000))[:-1] + binascii.b2a_base64(_content(999))[:-1], 1336),
    (b"aGk=QUJD", 4), (b"QQ==QQ==", 4), (b"QQ==\nQUJD", 4), (b"QUJD=", 4), (b"QUJDQ===", 5),
    (b"QUJ", 0), (b"QUJDR", 4), (b"QU JD", 2), (b"QUJD\tQUJD", 4), (b"QU*D", 2), (b"QUJD-_ab", 4),
    (b"QUJD\xc3\xa9QUJD", 4), (b"QUJD\x00QUJ", 4), (b"Q=JD", 1))


async def test_file_put_refuses_malformed_base64_naming_the_offset_and_writes_nothing():
    name = PREFIX + "malformed.bin"
    head = (json.dumps({"path": name}) + "\n").encode()
    try:
        for body, offset in BAD_BASE64:
            for step in (1, 3, 512, 4096):
                e = await _put_error(head + body, step)
                assert e.code == files.E_BAD_BASE64, (body[:20], step, e.code, e.message)
                assert "offset %d" % offset in e.message, (body[:20], step, e.message)
                _absent(name, _tmp(name))
    finally:
        _rm(name, _tmp(name))


def test_b64_sink_takes_line_breaks_and_padding_at_the_very_end():
    for text, want in ((b"QUJD\r\nQQ==\n", b"ABCA"), (b"QUJDQUI=\n\n", b"ABCAB"), (b"", b""),
                       (b"\nQUJD", b"ABC")):
        out = []
        sink = b64pieces.B64Sink(out.append, piece=4)
        sink.feed(text)
        assert b"".join(out) == want and sink.carry == 0, (text, out)


def _text_ok(s):
    import config
    return config.is_text(s)


async def test_paths_that_are_not_utf8_text_are_refused_without_echoing_them():
    # MicroPython's json turns "\ud800" into a str that is not UTF-8: as a file name it
    # made a file named by invalid bytes, and echoed in an error the answer was invalid
    for path in ('"\\ud800"', '"a\\udfffb"', '"' + PREFIX + '\\ud83d.txt"'):
        payload = '{"path": %s}' % path
        for call in (lambda: files.file_stat(Data(payload)),
                     lambda: files.file_get(Data(reader=PieceReader(payload.encode()))),
                     lambda: files.file_put(Data(reader=PieceReader(payload.encode() + b"\nQUJD")))):
            try:
                r = call()
                if not isinstance(r, str):
                    r = await r
            except RpcError as e:
                assert e.code == files.E_BAD_PATH and _text_ok(e.message), (path, e.code, e.message)
            else:
                raise AssertionError("%s answered %r" % (payload, r))
    assert not [n for n in os.listdir() if n.startswith(PREFIX)], "a file was made"
    # raw bytes that are not UTF-8 in file.put's header line
    e = await _put_error(b'{"path": "' + PREFIX.encode() + b'\xed\xa0\x80"}\nQUJD')
    assert e.code == files.E_NOT_JSON and _text_ok(e.message), e.message
    assert not [n for n in os.listdir() if n.startswith(PREFIX)], "a file was made"


def test_del_and_c1_controls_are_control_characters():
    for bad in ("a\x7fb", "a\x80b", "a\x85b", "a\x9fb"):
        assert _code(files.file_stat, Data(json.dumps({"path": bad}))) == files.E_BAD_PATH, repr(bad)
    for fine in ("a\xa0b", "caf\xe9", "\u20ac"):  # printable: only not there
        assert _code(files.file_stat, Data(json.dumps({"path": PREFIX + fine}))) == files.E_NO_FILE, repr(fine)


async def test_file_put_errors_name_the_users_path_not_the_temporary_file():
    d = PREFIX + "plain"
    with open(d, "wb") as f:
        f.write(b"a file")
    try:
        for path, why in ((PREFIX + "nodir/t1.txt", "folder %snodir does not exist" % PREFIX),
                          (d + "/t1.txt", "%s is a file, not a folder" % d)):
            e = await _put_error(_put_body(path, b"abc"))
            assert e.code == files.E_NO_FILE and why in e.message, e.message
            assert ".tmp" not in e.message and ".part" not in e.message, e.message
        _absent(_tmp(d))
    finally:
        _rm(d)


async def test_file_put_takes_a_name_as_long_as_the_flash_does_and_says_when_it_is_too_long():
    d = PREFIX + "long"
    os.mkdir(d)
    fits = d + "/" + "n" * 252  # was refused: NAME.part was 257 characters
    try:
        r = json.loads(await files.file_put(Data(reader=PieceReader(_put_body(fits, b"abc"), 500))))
        assert r["size"] == 3 and r["path"] == fits
        e = await _put_error(_put_body(d + "/" + "n" * 256, b"abc"), 500)
        assert e.code == files.E_BAD_PATH and "too long" in e.message and ".tmp" not in e.message, e.message
        assert os.listdir(d) == ["n" * 252], os.listdir(d)
    finally:
        _rm(fits, _tmp(fits))
        os.rmdir(d)


async def test_puts_into_one_folder_at_once_use_temporary_files_of_their_own():
    import asyncio
    d = PREFIX + "both"
    os.mkdir(d)
    a, b = _content(2000), bytes(reversed(_content(2000)))
    try:
        first = asyncio.create_task(files.file_put(Data(reader=SlowReader(_put_body(d + "/a", a), 64))))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        # a path named as the first one's temporary file is busy too
        assert await _rpc_code(files.file_put(Data(reader=SlowReader(_put_body(_tmp(d + "/a"), b), 64)))) \
            == files.E_BUSY
        second = json.loads(await files.file_put(Data(reader=SlowReader(_put_body(d + "/b", b), 64))))
        json.loads(await first)
        for n, want in (("a", a), ("b", b)):
            with open(d + "/" + n, "rb") as f:
                assert f.read() == want, "the two uploads were mixed"
        assert second["sha256"] == _sha(b) and sorted(os.listdir(d)) == ["a", "b"], os.listdir(d)
    finally:
        _rm(d + "/a", d + "/b", _tmp(d + "/a"), _tmp(d + "/a", 1))
        os.rmdir(d)


# ------------------------------------------------------------ a full flash
class _CountingFile:
    """A file.put's temporary file that counts what is written to it into `flash.used`."""

    def __init__(self, f, flash):
        self.f = f
        self.flash = flash

    def write(self, b):
        self.flash.used += len(b)
        return self.f.write(b)

    def close(self):
        self.f.close()


class _Flash:
    """A flash of `free` bytes that file.put's writes use up (FAKE: `files.free_bytes`;
    this machine's disk is not nearly full); the flash log pointed at files of this
    test's own. Use with `with`."""

    def __init__(self, free):
        self.free = free
        self.used = 0

    def __enter__(self):
        import flashlog
        self.saved = (files.free_bytes, files.reserve, files._create, flashlog.LOG, flashlog.OLD)
        create = files._create
        files._create = lambda tmp, path: _CountingFile(create(tmp, path), self)
        files.free_bytes = lambda path: self.free - self.used
        files.reserve = 4096
        flashlog.LOG, flashlog.OLD = PREFIX + "log.txt", PREFIX + "log.old"
        return self

    def __exit__(self, *exc):
        import flashlog
        _rm(flashlog.LOG, flashlog.OLD)
        files.free_bytes, files.reserve, files._create, flashlog.LOG, flashlog.OLD = self.saved


def test_the_free_flash_is_measured_with_statvfs():
    free = files.free_bytes(PREFIX + "x")
    assert isinstance(free, int) and free > 0, free


async def test_file_put_keeps_the_reserve_free_for_the_firmwares_own_files():
    name = PREFIX + "big.bin"
    with open(name, "wb") as f:
        f.write(b"good")
    try:
        with _Flash(free=4096 + 3000 + 4):  # room for 3000 bytes beyond the reserve
            e = await _put_error(_put_body(name, _content(5000)), 500)
            assert e.code == files.E_WRITE and "no space" in e.message and name in e.message, e.message
            assert "4096" in e.message and "file.delete" in e.message and ".tmp" not in e.message, e.message
            with open(name, "rb") as f:
                assert f.read() == b"good"
            _absent(_tmp(name))
        with _Flash(free=4096 + 3000 + 4):
            r = json.loads(await files.file_put(Data(reader=PieceReader(_put_body(name, _content(2900)), 500))))
            assert r["size"] == 2900
    finally:
        _rm(name, _tmp(name))
    assert not files._writing


async def _puts_at_once(names, size):
    import asyncio
    import gc
    outcome = []

    async def put(body):
        try:
            outcome.append(json.loads(await files.file_put(Data(reader=SlowReader(body, 300))))["size"])
        except RpcError as e:
            outcome.append(e)
    # The requests are built first, after a collection: built inside the running puts,
    # each 12 KB base64 text had to fit between their buffers, and a 256 KiB MicroPython
    # heap failed to find room in about one run of three (MemoryError in this helper)
    gc.collect()
    bodies = [_put_body(n, _content(size)) for n in names]
    await asyncio.gather(*[put(b) for b in bodies])
    return outcome


async def test_uploads_running_at_once_together_keep_out_of_the_reserve():
    names = [PREFIX + "con%d.bin" % i for i in range(3)]
    try:
        with _Flash(free=4096 + 12000) as flash:   # 12000 bytes beyond the reserve, for three 9000-byte puts
            outcome = await _puts_at_once(names, 9000)
            # each measured the same free flash; without counting what the others may
            # still write, each wrote up to 8 KiB of it and together ate into the reserve
            assert flash.used <= 12000, flash.used
            failed = [x for x in outcome if not isinstance(x, int)]
            assert len(failed) >= 2, outcome
            for e in failed:
                assert e.code == files.E_WRITE and "no space" in e.message, e.message
            assert any("other uploads running now may still write" in e.message for e in failed), failed
        assert files._granted[0] == 0, files._granted
        with _Flash(free=4096 + 20000) as flash:   # room for both: neither is refused for the other's share
            assert await _puts_at_once(names[:2], 9000) == [9000, 9000]
            assert flash.used == 18000
        assert files._granted[0] == 0, files._granted
    finally:
        _rm(*(names + [_tmp(n, i) for n in names for i in range(3)]))


def test_file_delete_removes_a_users_file_and_says_what_is_free():
    name = PREFIX + "del.bin"
    with open(name, "wb") as f:
        f.write(_content(700))
    try:
        with _Flash(free=100000):
            import flashlog
            r = json.loads(filedelete.file_delete(Data(json.dumps({"path": "./" + name}))))
            assert r == {"path": name, "size": 700, "free": 100000}, r
            _absent(name)
            with open(flashlog.LOG) as f:
                assert "file.delete by tester: %s (700 bytes)" % name in f.read()
        assert _code(filedelete.file_delete, Data(json.dumps({"path": name}))) == files.E_NO_FILE
    finally:
        _rm(name)


def test_file_delete_refuses_the_firmwares_own_files_and_bad_paths():
    d = PREFIX + "deldir"
    os.mkdir(d)
    try:
        for own in ("config.json", "config.good.json", "profile.json", "log.txt", "log.old", "telemetry.q",
                    "telemetry.st", "telemetry.boot", "telemetry.st.tmp", ".lkedge-deployed", "main.py",
                    "app.mpy", "lib/lkedge/room.mpy", "drivers/bme.mpy", "/config.json"):
            assert _code(filedelete.file_delete, Data(json.dumps({"path": own}))) == filedelete.E_OWN, own
        for bad, code in (("../x", files.E_BAD_PATH), ("a\x00b", files.E_BAD_PATH), ("", files.E_BAD_PATH),
                          (d, files.E_NO_FILE)):
            assert _code(filedelete.file_delete, Data(json.dumps({"path": bad}))) == code, bad
        assert _code(filedelete.file_delete, Data("{}")) == files.E_MISSING
        assert _code(filedelete.file_delete, Data("nope")) == files.E_NOT_JSON
    finally:
        os.rmdir(d)


def test_a_put_never_takes_as_its_temporary_file_a_path_being_written():
    # mutation review: neither the target itself nor another put's target was pinned
    try:
        assert files._claim(".put-0.tmp") == ".put-1.tmp"   # a user's file named like one
        assert files._claim("x.bin") == ".put-2.tmp"        # not the first put's target or temp
        assert files._claim("d/.put-0.tmp") == "d/.put-1.tmp"
    finally:
        files._writing.clear()


def test_file_delete_protects_every_file_the_firmware_names():
    # _OWN spells the names so file.delete imports nothing more; this pins them to the
    # modules' own constants, so a rename there cannot silently unprotect a file
    import sys
    import config
    import flashlog
    fresh = [m for m in ("lastgood", "telemetry") if m not in sys.modules]
    import lastgood
    import telemetry
    try:
        for name in (config.PATH, lastgood.GOOD, lastgood.REJECTED, lastgood.TRIAL, flashlog.LOG, flashlog.OLD,
                     telemetry.QUEUE, telemetry.STATE, telemetry.BOOT):
            assert name in filedelete._OWN, name
            assert filedelete._own(name) and filedelete._own(name + ".tmp"), name
    finally:   # the later tests here measure a board-sized heap: drop what this one loaded
        for m in fresh:
            del sys.modules[m]


def test_file_delete_refuses_what_deploy_put_there():
    name = PREFIX + "settings.json"   # a data file a deploy copied from the firmware folder
    saved = filedelete._MANIFEST
    try:
        with open(name, "w") as f:
            f.write("{}")
        filedelete._MANIFEST = PREFIX + "manifest"
        with open(filedelete._MANIFEST, "w") as f:
            f.write("%s /lib/lkedge/room.mpy\n%s /%s\n" % ("0" * 64, "1" * 64, name))
        assert _code(filedelete.file_delete, Data(json.dumps({"path": name}))) == filedelete.E_OWN
        assert firmware_path.exists(name)
        # a user's own files, though named like the firmware's: a manifest says what is code
        mine = PREFIX + "mytool.py"
        with open(mine, "w") as f:
            f.write("x")
        with _Flash(free=100000):   # (its log line goes to a file of the test's)
            assert json.loads(filedelete.file_delete(Data(json.dumps({"path": mine}))))["path"] == mine
        _absent(mine)
        for other in ("log.csv", "config.bak", "telemetry.csv", "notes/config.json", "notes/main.py"):
            assert not filedelete._own(other), other
        for own in ("CONFIG.JSON", "Log.Txt", "main.py", "telemetry.st.tmp"):   # a FAT flash ignores case
            assert _code(filedelete.file_delete, Data(json.dumps({"path": own}))) == filedelete.E_OWN, own
    finally:
        filedelete._MANIFEST = saved
        _rm(name, PREFIX + "manifest", PREFIX + "mytool.py")


async def test_file_delete_refuses_a_file_a_put_is_writing():
    import asyncio
    name = PREFIX + "busy.bin"
    try:
        put = asyncio.create_task(files.file_put(Data(reader=SlowReader(_put_body(name, _content(2000)), 64))))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        for path in (name, _tmp(name)):
            assert _code(filedelete.file_delete, Data(json.dumps({"path": path}))) == files.E_BUSY, path
        await put
    finally:
        _rm(name, _tmp(name))


async def _tail(n, log, old):
    import flashlog
    out = []
    async for piece in flashlog.TailSource(n, log, old, piece=64):
        out.append(piece)
    return "".join(out)


def _exists(name):
    try:
        os.stat(name)
        return True
    except OSError:
        return False


def _log_to(log, old, lines, fill):
    import flashlog
    flashlog.LOG, flashlog.OLD = log, old
    with open(log, "w") as f:
        f.write(fill)
    for line in lines:
        flashlog.write("INFO", line)


async def test_log_tail_being_read_holds_rotation_off_and_a_stalled_one_says_it_rotated():
    import flashlog
    log, old = PREFIX + "log.txt", PREFIX + "log.old"
    saved = flashlog.LOG, flashlog.OLD
    fill = "".join("%d INFO filler line %04d\n" % (1000 + i, i) for i in range(1400))[:flashlog.LOG_MAX - 100]
    fill = fill[:fill.rindex("\n") + 1]
    try:
        _log_to(log, old, [], fill)
        tail = flashlog.TailSource(2048, log, old, piece=64)
        first = await tail.__anext__()
        # being read: these would have rotated log.txt, and the tail's file with it
        for i in range(5):
            flashlog.write("INFO", "written while the tail is read %d" % i)
        assert not _exists(old) and os.stat(log)[6] > flashlog.LOG_MAX, "rotation held off"
        rest = [first]
        async for piece in tail:
            rest.append(piece)
        text = "".join(rest)
        assert flashlog.ROTATED not in text and text.endswith("written while the tail is read 4\n"), text[-120:]
        assert text.split("\n")[0] in fill.split("\n"), "starts at a line"
        # the hold is bounded: past 1.5 * LOG_MAX the log rotates all the same
        tail = flashlog.TailSource(2048, log, old, piece=64)
        await tail.__anext__()
        while not _exists(old):
            flashlog.write("INFO", "x" * 1000)
        assert os.stat(old)[6] <= flashlog.LOG_MAX * 3 // 2 + flashlog.LINE_MAX + 20
        # ... and the tail, whose file went, says so instead of mixing the two files
        pieces = []
        async for piece in tail:
            pieces.append(piece)
        assert pieces == [flashlog.ROTATED], pieces
        # a log.old that a held rotation made (over LOG_MAX) holds no second one off:
        # the two files stay within 2.5 x LOG_MAX, what files.reserve counts
        with open(old, "w") as f:
            for _ in range(flashlog.LOG_MAX // 1000 + 8):   # in pieces: a board-sized heap
                f.write("o" * 999 + "\n")
        _log_to(log, old, [], fill)
        tail = flashlog.TailSource(2048, log, old, piece=64)
        await tail.__anext__()
        for i in range(5):
            flashlog.write("INFO", "written past LOG_MAX beside a big log.old %d" % i)
        assert os.stat(old)[6] <= flashlog.LOG_MAX, "not rotated at LOG_MAX"
        # a stalled tail's hold lapses by itself (HOLD_S after its last piece)
        _rm(old)
        _log_to(log, old, [], fill)
        tail = flashlog.TailSource(2048, log, old, piece=64)
        await tail.__anext__()
        flashlog._rotation_hold[0] = 0   # as HOLD_S later
        for i in range(5):
            flashlog.write("INFO", "written after the hold lapsed %d" % i)
        assert _exists(old) and os.stat(log)[6] < 200, "rotated"
        pieces = []
        async for piece in tail:
            pieces.append(piece)
        assert pieces == [flashlog.ROTATED], pieces
    finally:
        flashlog.LOG, flashlog.OLD = saved
        flashlog._rotation_hold[0] = 0
        _rm(log, old)


async def test_log_tail_reads_log_old_then_log_txt():
    log, old = PREFIX + "log.txt", PREFIX + "log.old"
    lines = ["%d INFO line %d of the rotated half\n" % (1000 + i, i) for i in range(300)]
    with open(old, "w") as f:
        f.write("".join(lines))
    with open(log, "w") as f:
        f.write("2000 INFO the first line after the rotation\n")
    try:
        text = await _tail(2048, log, old)
        # the old firmware: log.txt alone, one line though log.old held 10 KB
        assert text.endswith("of the rotated half\n2000 INFO the first line after the rotation\n"), text[-200:]
        assert 2048 - 64 < len(text) <= 2048 and text.split("\n")[0] in [x[:-1] for x in lines], text[:80]
        both = "".join(lines) + "2000 INFO the first line after the rotation\n"
        assert await _tail(100000, log, old) == both
        assert await _tail(30, log, old) == "", "a partial line"
        _rm(old)
        assert await _tail(2048, log, old) == "2000 INFO the first line after the rotation\n"
        _rm(log)
        with open(old, "w") as f:
            f.write("".join(lines[:3]))
        assert await _tail(2048, log, old) == "".join(lines[:3])
    finally:
        _rm(log, old)
