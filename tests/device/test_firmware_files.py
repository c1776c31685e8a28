"""The firmware's file methods and base64 pieces (firmware/files.py, b64pieces.py) and
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
import files  # noqa: E402
import methods  # noqa: E402
from lkedge.rpc import RpcError  # noqa: E402

PREFIX = "fwfiles_test_"


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
        if limit is not None and len(s) > limit:  # as lkedge's readers do
            raise ValueError("stream larger than the %d-character read_all limit" % limit)
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
        for n in (name, name + ".part"):
            try:
                os.stat(n)
                raise AssertionError("%s was left behind by a failed upload" % n)
            except OSError:
                pass
    finally:
        _rm(name, name + ".part")


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
        _rm(name, name + ".part")


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
        _rm(name, name + ".part")


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
    real_open = files._open
    files._open = lambda path, mode: _FullFlashFile(real_open(path, mode), 1000)
    try:
        try:
            await files.file_put(Data(reader=PieceReader(_put_body(name, _content(3000)), 300)))
        except RpcError as e:
            assert e.code == files.E_WRITE and name in e.message and "ENOSPC" in e.message, e.message
        else:
            raise AssertionError("file.put on a full flash answered")
        with open(name, "rb") as f:
            assert f.read() == b"good"
        _absent(name + ".part")
    finally:
        files._open = real_open
        _rm(name, name + ".part")
    assert not files._writing, "a failed put still holds its path"


async def test_file_put_onto_a_directory_is_a_clear_error_and_leaves_no_part():
    name = PREFIX + "dir"
    os.mkdir(name)
    try:
        try:
            await files.file_put(Data(reader=PieceReader(_put_body(name, b"abc"), 100)))
        except RpcError as e:
            assert e.code == files.E_WRITE and name in e.message, e.message
        else:
            raise AssertionError("file.put onto a directory answered")
        _absent(name + ".part")
    finally:
        _rm(name + ".part")
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
