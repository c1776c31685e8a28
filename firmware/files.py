"""The file methods: file.get (streamed download), file.put (streamed upload), file.stat.

    file.get   request {"path"}            -> the file as base64 text, streamed
    file.put   request: first line {"path"}, then the file as base64 text, streamed
               -> {"path", "size", "sha256"} of what was written
    file.stat  {"path"} -> {"path", "size", "sha256"}

Paths are relative to the board's root; ".." and control characters are refused.
file.put writes to PATH.part and renames it at the end, so a broken upload (bad
base64, the caller gone, a full flash) never replaces a good file and leaves no .part
behind (a power cut midway can leave PATH.part; the next put of PATH overwrites it);
a second put of a path already being written is refused (E_BUSY) instead of mixing
the two uploads. Errors are RpcErrors with the codes below and a message naming the
cause.
"""
import json
import os

from b64pieces import B64Error, B64Sink, FileB64Source

try:
    import hashlib
except ImportError:  # pragma: no cover - every supported port has hashlib
    hashlib = None

E_NOT_JSON = 4000
E_MISSING = 4001
E_BAD_PATH = 4002
E_NO_HEADER = 4003
E_NO_FILE = 4004
E_BAD_BASE64 = 4006
E_WRITE = 4007
E_BUSY = 4008
_HEADER_MAX = 512
_writing = set()  # paths a file.put is writing now


def rpc_error(code, message, data=None):
    from lkedge.rpc import RpcError
    return RpcError(code, message, data)


async def read_request(reader, limit, method):
    """The whole request text of a streaming method, at most `limit` characters."""
    try:
        return await reader.read_all(limit=limit)
    except ValueError as e:
        if type(e) is not ValueError:  # the stream broke: not the request's fault
            raise
        raise rpc_error(E_NOT_JSON, "%s: the request is over %d characters" % (method, limit))


def request(payload, key):
    """The JSON object of a request, which must hold `key` (None: any object)."""
    try:
        d = json.loads(payload) if payload else {}
    except ValueError:
        raise rpc_error(E_NOT_JSON, "the request must be a JSON object", payload[:100])
    if not isinstance(d, dict):
        raise rpc_error(E_NOT_JSON, "the request must be a JSON object", payload[:100])
    if key is not None and key not in d:
        raise rpc_error(E_MISSING, "missing %r in the request" % key)
    return d


def safe_path(path):
    """Only files below the board's root; no way out with '..'. -> the path in one
    spelling ("./a//b" and "/a/b" are "a/b"), so that checks keyed on it (a put in
    progress) see every spelling of one file."""
    parts = path.split("/") if isinstance(path, str) else [".."]
    parts = [p for p in parts if p and p != "."]
    if (not parts or ".." in parts or path.endswith("/") or min(path) < " "):
        raise rpc_error(E_BAD_PATH, "bad path %r: a file below / without '..' or control characters" % (path,))
    return "/".join(parts)


def _hexdigest(h):
    import binascii
    return binascii.hexlify(h.digest()).decode()


def _open(path, mode):
    try:
        if mode == "rb" and os.stat(path)[0] & 0x4000:  # a directory opens on some ports
            raise rpc_error(E_NO_FILE, "cannot open %s: it is a directory" % path)
        return open(path, mode)
    except OSError as e:
        raise rpc_error(E_NO_FILE, "cannot open %s: %s" % (path, _errname(e)))


def _errname(e):
    import errno
    code = e.args[0] if e.args else 0
    if code == 28:  # not in MicroPython's errno table
        return "ENOSPC, the flash is full"
    return errno.errorcode.get(code, str(code)) if hasattr(errno, "errorcode") else str(code)


async def file_get(data):
    req = request(await read_request(data.reader, _HEADER_MAX, "file.get"), "path")
    path = safe_path(req["path"])
    return FileB64Source(_open(path, "rb"))


def file_stat(data):
    path = safe_path(request(data.payload, "path")["path"])
    h = hashlib.sha256()
    buf = bytearray(512)
    mv = memoryview(buf)
    size = 0
    with _open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(mv[:n])
            size += n
    return json.dumps({"path": path, "size": size, "sha256": _hexdigest(h)})


async def _read_header(reader, buf):
    """Read up to the first newline; returns (header text, memoryview of the rest)."""
    got = 0
    while True:
        n = await reader.readinto(memoryview(buf)[got:])
        if not n:
            raise rpc_error(E_NO_HEADER, "file.put got no header line: send JSON {\"path\": ...} then a newline")
        got += n
        nl = buf.find(b"\n", 0, got)
        if nl >= 0:
            return bytes(buf[:nl]).decode(), memoryview(buf)[nl + 1:got]
        if got == len(buf):
            raise rpc_error(E_NO_HEADER, "file.put: no newline in the first %d bytes; the first line "
                            "must be JSON {\"path\": ...}" % len(buf))


async def file_put(data):
    reader = data.reader
    head, rest = await _read_header(reader, bytearray(_HEADER_MAX))
    path = safe_path(request(head, "path")["path"])
    if path in _writing:
        raise rpc_error(E_BUSY, "file.put: %s is being written by another file.put; try again after it" % path)
    _writing.add(path)
    try:
        return await _put(reader, path, rest)
    finally:
        _writing.discard(path)


async def _put(reader, path, rest):
    tmp = path + ".part"
    h = hashlib.sha256()
    f = _open(tmp, "wb")

    def write(chunk):
        f.write(chunk)
        h.update(chunk)

    sink = B64Sink(write)
    done = False
    try:
        sink.feed(rest)
        size = await sink.pump(reader)
        f.close()
        os.rename(tmp, path)
        done = True
    except B64Error as e:
        raise rpc_error(E_BAD_BASE64, "file.put: bad base64 body: %s" % (e,))
    except OSError as e:  # flash full, a directory in the way, ... (a broken link is a StreamError)
        raise rpc_error(E_WRITE, "file.put: cannot write %s: %s (the old file, if any, is kept)"
                        % (path, _errname(e)))
    finally:
        if not done:
            try:
                f.close()
            except OSError:
                pass
            try:
                os.remove(tmp)
            except OSError:
                pass
    return json.dumps({"path": path, "size": size, "sha256": _hexdigest(h)})
