"""The file methods: file.get (streamed download), file.put (streamed upload),
file.stat, file.delete, file.list.

    file.get     request {"path"}            -> the file as base64 text, streamed
    file.put     request: first line {"path"}, then the file as base64 text, streamed
                 -> {"path", "size", "sha256"} of what was written
    file.stat    {"path"} -> {"path", "size", "sha256"}
    file.delete  {"path"} -> {"path", "size", "free"}: filedelete.py
    file.list    {"path", "start"} -> a folder's entries, a page at a time: filelist.py

Paths are relative to the board's root and must be UTF-8 text (MicroPython's json
lets "\\ud800" through); "..", control characters (U+0000-U+001F, U+007F-U+009F) and a
trailing "/" are refused. file.put checks its folder first (a missing one is named),
writes to a temporary ".put-N.tmp" in that folder (N: the lowest not in use by
another put) and renames it at the end, so a broken upload (bad base64, the caller
gone, a full flash) never replaces a good file and leaves no temporary file behind (a
power cut midway can leave one; the next put into that folder overwrites it); a
second put of a path already being written is refused (E_BUSY) instead of mixing the
two uploads. file.put leaves `reserve` bytes of the flash free (E_WRITE, "no space",
beyond it): the firmware's own files must still grow when a user's upload has filled
the flash (the telemetry queue, up to three times the profile's telemetry_queue_bytes
while it is compacted; its state and boot counter, without which `dropped` and `boot`
would not survive a reboot; config and log writes); file.delete makes room. Errors are
RpcErrors with the codes below and a message naming the user's path and the cause.
"""
import json
import os

from b64pieces import B64Error, B64Sink, FileB64Source
from config import NOT_TEXT, is_text

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
# state, boot counter and config writes (16 KiB), and the log past its usual 2 x 32 KiB
# while a log.tail holds rotation off (flashlog: log.txt to 1.5 x); App adds the queue's need
RESERVE_MIN = 16384 + 16384
reserve = RESERVE_MIN + 3 * 8192  # set from the profile by methods.App
_MEASURE_EVERY = 8192  # file.put measures the free flash again after this many bytes
# What puts running at once were allowed to write and have not yet: each counts the
# others' as used, else each could write _MEASURE_EVERY into the reserve
_granted = [0]
_writing = {}  # path -> its temporary file, for each file.put writing now
_ERRNAMES = {20: "ENOTDIR, a folder in the path is a file", 28: "ENOSPC, the flash is full",
             36: "ENAMETOOLONG, the name is too long"}  # not in MicroPython's errno table


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
    if not isinstance(path, str):
        raise rpc_error(E_BAD_PATH, "bad path: a string, not %s" % type(path).__name__)
    if not is_text(path):  # never echoed: the answer would not be UTF-8 either
        raise rpc_error(E_BAD_PATH, "bad path: not UTF-8 text" + NOT_TEXT)
    parts = [p for p in path.split("/") if p and p != "."]
    if not parts or ".." in parts or path.endswith("/") or _has_control(path):
        raise rpc_error(E_BAD_PATH, "bad path %r: a file below / without '..' or control characters%s"
                        % (path, " (file.list lists a folder)" if not parts or path.endswith("/") else ""))
    return "/".join(parts)


def _has_control(s):
    for c in s:
        if c < " " or "\x7f" <= c <= "\x9f":
            return True
    return False


def _hexdigest(h):
    import binascii
    return binascii.hexlify(h.digest()).decode()


def _open(path, mode):
    try:
        if mode == "rb" and os.stat(path)[0] & 0x4000:  # a directory opens on some ports
            raise rpc_error(E_NO_FILE, "cannot open %s: it is a folder (file.list lists it)" % path)
        return open(path, mode)
    except OSError as e:
        raise rpc_error(E_NO_FILE, "cannot open %s: %s" % (path, _errname(e)))


def _errno(e):
    return e.args[0] if e.args else 0


def _errname(e):
    import errno
    code = _errno(e)
    if code in _ERRNAMES:
        return _ERRNAMES[code]
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
            return _text(buf, nl), memoryview(buf)[nl + 1:got]
        if got == len(buf):
            raise rpc_error(E_NO_HEADER, "file.put: no newline in the first %d bytes; the first line "
                            "must be JSON {\"path\": ...}" % len(buf))


def _text(buf, n):
    from lkedge.utf8 import text
    try:
        return text(memoryview(buf)[:n])
    except ValueError:  # UnicodeError is one
        raise rpc_error(E_NOT_JSON, "file.put: the header line is not UTF-8 text")


async def file_put(data):
    reader = data.reader
    head, rest = await _read_header(reader, bytearray(_HEADER_MAX))
    if head.lstrip()[:1] not in ("{", "[", '"'):  # not JSON: `base64 up.bin | lkedge call BOARD file.put -`
        raise rpc_error(E_NO_HEADER, "file.put got no header line: its first line (%r...) is not JSON "
                        "{\"path\": ...}; send that line first, then the base64" % head[:16])
    path = safe_path(request(head, "path")["path"])
    tmp = _claim(path)
    try:
        old = _check_target(path)
        return await _put(reader, path, tmp, rest, old)
    finally:
        del _writing[path]


def _busy(path):
    """Whether a file.put is writing `path`, or uses it as its temporary file."""
    return path in _writing or path in _writing.values()


def _claim(path):
    """Mark `path` as being written (E_BUSY if it is) -> the temporary file for it: in
    the same folder (the rename stays on one filesystem), short (a name that fits the
    flash still fits with it), the lowest N not in use."""
    busy = _writing
    if _busy(path):
        raise rpc_error(E_BUSY, "file.put: %s is being written by another file.put; try again after it" % path)
    folder = path[:path.rfind("/") + 1]
    n = 0
    while True:
        tmp = "%s.put-%d.tmp" % (folder, n)
        if tmp != path and tmp not in busy and tmp not in busy.values():
            busy[path] = tmp
            return tmp
        n += 1


def _check_target(path):
    """Refuse, naming the user's path, a put that cannot succeed: its folder is missing
    or a file, or its name is too long. -> the size of the file it replaces, or None."""
    i = path.rfind("/")
    if i > 0:
        try:
            folder = os.stat(path[:i])[0] & 0x4000
        except OSError as e:
            raise rpc_error(E_NO_FILE, "file.put: folder %s does not exist (%s)" % (path[:i], _errname(e)))
        if not folder:
            raise rpc_error(E_NO_FILE, "file.put: %s is a file, not a folder" % path[:i])
    try:
        return os.stat(path)[6]
    except OSError as e:
        if _errno(e) == 36:
            raise rpc_error(E_BAD_PATH, "file.put: the name is too long for the flash: %s" % path)
    return None


def _create(tmp, path):
    try:
        return open(tmp, "wb")
    except OSError as e:
        raise rpc_error(E_WRITE, "file.put: cannot write %s: %s" % (path, _errname(e)))


def _allowance(path, size, n, old=None):
    """How many more bytes a put of `path` (`size` written so far) may write before it
    measures again: half the free flash beyond `reserve` and beyond what other puts
    may still write (_granted), at most _MEASURE_EVERY (the firmware writes meanwhile).
    Counted in _granted until written. Raises E_WRITE, saying why, when that is under
    the `n` bytes it is about to write (`old`: the size of the file it would replace,
    None when there is none)."""
    free = free_bytes(path)
    if free is None:
        grant = max(n, _MEASURE_EVERY)
    elif free - reserve - _granted[0] >= n:
        # half of what is left when it runs short: another put may need the rest
        grant = max(n, min((free - reserve - _granted[0]) // 2, _MEASURE_EVERY))
    else:
        others = (" (other uploads running now may still write %d of it)" % _granted[0]) if _granted[0] else ""
        # (the message is cut at 256 bytes: what to do about the old file goes in the data)
        raise rpc_error(E_WRITE, "file.put: no space for %s after %d bytes: %d free%s, and the board keeps %d "
                        "for its own files (telemetry, config, log); the upload needs at least %d bytes; file.delete "
                        "makes room" % (path, size, free, others, reserve, size + n),
                        ("nothing is written: there was no %s before" % path) if old is None else
                        ("the old %s (%d bytes) is kept: its space comes back only when a new one replaces it, so "
                         "file.delete it first if the flash cannot hold both" % (path, old)))
    _granted[0] += grant
    return grant


def free_bytes(path):
    """Bytes free on the flash that holds file `path`, or None where the port cannot say."""
    i = path.rfind("/")
    try:
        s = os.statvfs(path[:i] if i > 0 else ".")
        return s[1] * s[4]  # fragment size * blocks free to us, as POSIX counts them
    except (AttributeError, OSError):
        return None


async def _put(reader, path, tmp, rest, old=None):
    h = hashlib.sha256()
    f = _create(tmp, path)
    room = [0]  # bytes it may write before it measures the free flash again

    def write(chunk):
        n = len(chunk)
        if room[0] < n:
            _granted[0] -= room[0]   # what it had left is not counted against itself
            room[0] = 0
            room[0] = _allowance(path, sink.size - n, n, old)  # raises past the reserve
        room[0] -= n
        _granted[0] -= n
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
        _granted[0] -= room[0]
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

