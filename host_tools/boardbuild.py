"""Board builds of lib/lkedge: .mpy bytecode whose error texts live in message files.

A MicroPython board without frozen modules (and the unix port the suite runs on) keeps
a module's string constants in the heap, and the library's messages are about a third
of its loaded size. `board_source(text, module)` rewrites a module's source before
mpy-cross: every message text (a str literal of 12+ characters with a space, inside a
function, raised, logged or returned; see _text_position) becomes
`_lkmsg("<module>", n)`, and the texts are returned to be written with `write_msg()` as
`lkedge/<module>.msg`, which lkedge.msgtext reads back when a message is needed (the
package's `_lkmsg`, added to the board build of lkedge/__init__, imports msgtext on the
first message, so a board that raises nothing never loads it). Line
numbers are kept (a text spanning lines is replaced by the call plus the same newlines),
so a board's tracebacks point into the real source; the error a user sees is the same.

Private names are respelled as names the firmware already interned (see "private
names" below: `library_renames()` makes one table for the whole library).

`compile_module(mpy_cross, args, src, module, out_dir, renames)` -> [files written] does
all of it for one lib module: out_dir/<module>.mpy and, when it has messages,
out_dir/<module>.msg.
"""
import ast
import hashlib
import io
import os
import re
import struct
import subprocess
import sys
import tempfile
import tokenize

from lkedge_host import ROOT as _ROOT

_MIN_LEN = 12
_CALL = "_lkmsg"


class BuildError(Exception):
    pass


def _docstrings(tree):
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = n.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def _is_message(node):
    v = node.value
    return isinstance(v, str) and len(v) >= _MIN_LEN and " " in v


def _message_nodes(tree):
    """The str constants that are texts for people, in source order."""
    docs = _docstrings(tree)
    parents = {}
    for n in ast.walk(tree):
        for c in ast.iter_child_nodes(n):
            parents[id(c)] = n
    in_function = set()  # module-level texts run at import: moving them saves nothing
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_function.update(id(d) for d in ast.walk(n))
    found = [n for n in ast.walk(tree)
             if isinstance(n, ast.Constant) and id(n) not in docs and id(n) in in_function
             and _is_message(n) and _text_position(n, parents)]
    found.sort(key=lambda n: (n.lineno, n.col_offset))
    return found


# Calls whose str arguments are texts for people: exception constructors, warnings, logs.
_TEXT_CALLEE = re.compile(r"(error|exception|warn|fail|bad|print|log)", re.I)


def _callee_name(call):
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def _in_raise(node, parents):
    while node is not None:
        if isinstance(node, ast.Raise):
            return True
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return False
        node = parents.get(id(node))
    return False


def _text_position(node, parents):
    """A text is the left of a % (or either side of a +), possibly through a conditional
    expression, that is: a return value (only evaluated on that path), or an argument of
    a call inside a `raise`, or of a call that builds an error or a log line. Arguments
    of other calls (e.g. cbor's take(n, "a text string"), which names what it reads for
    a possible error) are evaluated on every call, so they stay inline."""
    p = parents.get(id(node))
    while isinstance(p, ast.IfExp) or (isinstance(p, ast.BinOp) and isinstance(p.op, (ast.Mod, ast.Add))):
        if isinstance(p, ast.BinOp) and p.left is not node and isinstance(p.op, ast.Mod):
            return False  # "x" % "text": the text is an argument, leave it
        node, p = p, parents.get(id(p))
    if isinstance(p, ast.keyword):
        node, p = p, parents.get(id(p))
    if isinstance(p, ast.Return):
        return True
    if isinstance(p, ast.Call) and node is not p.func:
        return _in_raise(p, parents) or bool(_TEXT_CALLEE.search(_callee_name(p)))
    return False


# Added to the package's __init__ in a board build: every module with moved texts
# imports this one function, and msgtext (~800 bytes of heap) loads on the first text.
_INIT_LKMSG = """

def %s(module, n):  # board build: a moved message text, read back from flash
    from .msgtext import text
    return text(module, n)
"""


def board_source(text, module):
    """(new source, [texts]) for lkedge.<module>; the source is unchanged if no texts
    (and always for lkedge.msgtext itself, which reads the texts back). The package's
    __init__ gains the `_lkmsg` the other modules import."""
    if module == "msgtext":
        return text, []
    if module == "__init__":
        return text + _INIT_LKMSG % _CALL, []
    tree = ast.parse(text)
    nodes = _message_nodes(tree)
    if not nodes:
        return text, []
    lines = text.encode("utf-8").split(b"\n")
    texts = []
    edits = []
    for n in nodes:
        if n.value not in texts:
            texts.append(n.value)
        call = ('%s("%s", %d)' % (_CALL, module, texts.index(n.value))).encode()
        edits.append((n.lineno - 1, n.col_offset, n.end_lineno - 1, n.end_col_offset, call))
    for l0, c0, l1, c1, call in reversed(edits):
        if l0 == l1:
            lines[l0] = lines[l0][:c0] + call + lines[l0][c1:]
        else:
            # Keep the line count: the call on the first line, the rest of the last
            # line on the last one (the text sat inside brackets, so this parses).
            tail = lines[l1][c1:]
            lines[l0] = lines[l0][:c0] + call
            for i in range(l0 + 1, l1):
                lines[i] = b""
            lines[l1] = b" " * c1 + tail if tail.strip() else b""
    out = b"\n".join(lines).decode("utf-8")
    out += "\nfrom . import %s  # noqa: E402 (board build)\n" % _CALL
    try:
        ast.parse(out)
    except SyntaxError as e:
        raise BuildError("board build of lkedge.%s does not parse: %s" % (module, e))
    return out, texts


def write_msg(path, texts):
    data = [t.encode("utf-8") for t in texts]
    offsets = [0]
    for d in data:
        offsets.append(offsets[-1] + len(d))
    if offsets[-1] > 0xFFFF or len(texts) > 0xFFFF:
        raise BuildError("%s: message table over 64 KiB" % path)
    with open(path, "wb") as f:
        f.write(struct.pack("<H", len(texts)))
        f.write(struct.pack("<%dH" % len(offsets), *offsets))
        f.write(b"".join(data))


# ------------------------------------------------------------------ private names
# Every identifier of loaded bytecode is a qstr: an entry in the interpreter's qstr pool
# (about 12 bytes on a 64-bit port, plus its text) unless the firmware already has it.
# The pool grows by doubling (a new pool at the 21st, 61st, 141st, 301st, 621st dynamic
# qstr...), so the library's ~300 private names decide whether a board allocates the
# next, ~7 KiB, pool. A board
# build therefore spells each private name (`_x`, not `__x__`) as a name the firmware
# already interned: these are names of builtin modules, types and functions that hold no
# protocol meaning for the runtime (no __dunder__, no read/write/send/close/...), so an
# attribute or method of that name on our objects changes nothing but the spelling.
# Names a renamed module never spells otherwise (checked per build: no collisions).
_ROM_NAMES = (
    "acos acosh asin asinh atan atan2 atanh ceil copysign cos cosh degrees erf erfc exp "
    "expm1 fabs factorial floor fmod frexp gamma isclose isfinite isinf isnan ldexp lgamma "
    "log10 log2 modf radians sin sinh sqrt tan tanh trunc tau "
    "center isalpha isdigit islower isspace isupper lstrip rstrip rfind rindex rpartition "
    "partition rsplit splitlines fromhex fromkeys from_bytes to_bytes difference "
    "difference_update intersection intersection_update isdisjoint issubset issuperset "
    "symmetric_difference symmetric_difference_update union discard setdefault popitem "
    "EACCES EADDRINUSE EAGAIN EALREADY EBADF ECONNABORTED ECONNREFUSED ECONNRESET EEXIST "
    "EHOSTUNREACH EINPROGRESS EINVAL EIO EISDIR ENOBUFS ENODEV ENOENT ENOMEM ENOTCONN "
    "EOPNOTSUPP EPERM ETIMEDOUT AF_INET AF_INET6 AF_UNIX SOCK_DGRAM SOCK_RAW SOCK_STREAM "
    "SOL_SOCKET SO_BROADCAST SO_ERROR SO_KEEPALIVE SO_LINGER SO_REUSEADDR MSG_DONTROUTE "
    "MSG_DONTWAIT MSG_PEEK IP_ADD_MEMBERSHIP IP_DROP_MEMBERSHIP POLLERR POLLHUP POLLIN "
    "POLLOUT a2b_base64 b2a_base64 crc32 hexlify unhexlify md5 sha1 sha256 calcsize "
    "pack_into unpack_from getrandbits randint randrange uniform choice seed heapify "
    "heappop heappush deque namedtuple OrderedDict gmtime localtime mktime ticks_add "
    "ticks_cpu ticks_diff ticks_us time_ns getaddrinfo inet_ntop inet_pton mem_alloc "
    "mem_free mem_info mem_peak mem_total mem_current qstr_info stack_use heap_lock "
    "heap_unlock kbd_intr opt_level schedule threshold isenabled atexit exc_info "
    "print_exception byteorder maxsize implementation executable argv ps1 ps2 chdir "
    "getcwd getenv putenv unsetenv listdir ilistdir mkdir rmdir unlink statvfs umount "
    "urandom VfsFat VfsLfs1 VfsLfs2 VfsPosix RingIO IOQueue TaskQueue SingletonGenerator "
    "ThreadSafeFlag StreamReader StreamWriter BytesIO StringIO IOBase open_connection "
    "start_server new_event_loop get_event_loop run_until_complete current_task cur_task "
    "wait_for_ms sleep_us errorcode getter setter deleter "
    # more core names, then port-specific ones (still correct where a firmware lacks
    # them: such a name merely costs its qstr there)
    "AUTO ArithmeticError GZIP GeneratorExit IndentationError IndexError LookupError "
    "NameError NotImplementedError OverflowError StopIteration SyntaxError ZLIB "
    "ZeroDivisionError addressof allocate_lock appendleft awritestr builtins "
    "bytearray_at bytes_at cmath collections default_exception_handler execfile "
    "get_ciphers get_extra_info get_ident heapq idle load_cert_chain math mem16 mem32 "
    "mem8 mkfs popleft queue_read queue_write re run_forever set_ciphers sizeof "
    "sockaddr soft_reset stack_size start_new_thread stream_awrite ticks uctypes "
    "version_info vfs wait_io_event ARRAY B1000000 B115200 B1152000 B230400 B460800 "
    "B500000 B57600 B576000 B921600 B9600 BFINT16 BFINT32 BFINT8 BFUINT16 BFUINT32 "
    "BFUINT8 BF_LEN BF_POS BIG_ENDIAN CERT_OPTIONAL FLOAT32 FLOAT64 FrameBuffer "
    "FrameBuffer1 GS2_HMSB GS4_HMSB GS8 INT INT16 INT32 INT64 INT8 LITTLE_ENDIAN LONG "
    "LONGLONG LockType MBEDTLS_VERSION MONO_HLSB MONO_HMSB MONO_VLSB MVLSB NATIVE "
    "PROTOCOL_DTLS_CLIENT PROTOCOL_DTLS_SERVER PROTOCOL_TLS_SERVER PTR PinBase RGB565 "
    "SHORT Signal TCSANOW UINT UINT16 UINT32 UINT64 UINT8 ULONG ULONGLONG USHORT VOID "
    "VfsRom ViperTypeError aes blit cryptolib decrypt ellipse encrypt fill_rect "
    "framebuf hline libc_ver pixel polar poly python_compiler rect scroll setraw "
    "tcgetattr tcsetattr termios time_pulse_us vline "
    # core builtins, exceptions and methods (any the library spells itself are skipped)
    "abs all any bin callable chr classmethod delattr divmod enumerate eval exec filter "
    "globals hex issubclass locals oct ord pow reversed round setattr sorted staticmethod "
    "sum zip complex frozenset property AssertionError AttributeError EOFError "
    "ImportError KeyError KeyboardInterrupt RuntimeError SystemExit UnicodeError "
    "NotImplemented Ellipsis endswith lower upper strip replace extend insert "
    "remove reverse sort clear copy values items keys update "
    # builtins and module members every port has (found unspelled by dir() on the unix port)
    "help iter exit ipoll modify mount search match sep stderr "
    # members of the unix port's frozen modules and their classes (argparse, mip,
    # asyncio, requests: a firmware that freezes none of them pays the qstr)
    "ArgumentParser ArgumentTypeError Loop add_argument allowed_mip_url_prefixes awrite "
    "call_exception_handler core dump get_exception_handler install parse parse_args "
    "parse_known_args peek push select usage "
    # keyword-argument and member names the unix port interns (found by checking which
    # identifiers in its binary add no qstr; socket, block-device and generator
    # protocol names left out)
    "abs_tol action argparse auth backlog bound_method branch cert_reqs certfile cipher "
    "client_id consume_unknown deps description dict_view do_install funcs invert "
    "keepends keyfile lookahead main_task nargs no_mpy opt_names optname out_buf "
    "package_json_url parse_headers peername ph_key poller preview progsize "
    "psk_identity psk_key ptr16 ptr32 readsize rel_tol render_arg requesting "
    "return_exceptions return_unknown runq_len separators server_psk_keys server_side "
    "sgen short_hash status_code store_const store_false store_true uint unsafe urls "
    "usys verify_callback waitq_len"
).split()

_WORD = re.compile(r"\w+")


def _is_private(name):
    return len(name) > 1 and name[0] == "_" and name[1] != "_"


def _tokens(text):
    return tokenize.generate_tokens(io.StringIO(text).readline)


def _const_names(text):
    """`_X = const(...)`: MicroPython folds these and stores no name at all (only while
    the name starts with an underscore), so they keep their spelling."""
    out = set()
    for n in ast.walk(ast.parse(text)):
        if (isinstance(n, ast.Assign) and isinstance(n.value, ast.Call)
                and isinstance(n.value.func, ast.Name) and n.value.func.id == "const"):
            out.update(t.id for t in n.targets if isinstance(t, ast.Name))
    return out


def _prose(text):
    """Where the docstrings start: MicroPython compiles them to nothing, so a name they
    mention is prose, never a getattr. (A docstring's prefix is indentation: its column
    is the same in characters, as tokenize counts, and in bytes, as ast does.)"""
    tree = ast.parse(text)
    docs = _docstrings(tree)
    return set((n.lineno, n.col_offset) for n in ast.walk(tree) if id(n) in docs)


def private_renames(lib_texts, outside_texts):
    """{private name: board name} for the whole library (one table: modules import each
    other's private names). A private name that appears in a string that is a value
    (getattr) or in any of `outside_texts` (code run against the board build: firmware,
    device tests) keeps its spelling; one a docstring mentions does not (a traceback's
    names go back through renames.txt); board names are never spelled anywhere."""
    private, spelled, keep = set(), set(), set()
    for text in lib_texts:
        keep.update(_const_names(text))
        prose = _prose(text)
        for tok in _tokens(text):
            if tok.type == tokenize.NAME:
                spelled.add(tok.string)
                if _is_private(tok.string):
                    private.add(tok.string)
            elif tok.type == tokenize.STRING and tok.start in prose:
                spelled.update(_WORD.findall(tok.string))   # (a board name it spells stays unused)
            elif tok.type == tokenize.STRING:
                words = _WORD.findall(tok.string)
                spelled.update(words)
                keep.update(words)
    for text in outside_texts:
        words = _WORD.findall(text)
        spelled.update(words)
        keep.update(words)
    names = sorted(private - keep)
    # Each board name once (dict.fromkeys keeps the order): one listed twice gave two
    # private names one spelling, and the board ran them as one attribute (a Room's
    # token became its frame reader's key, cleared by every frame: no rejoin, ever).
    targets = [t for t in dict.fromkeys(_ROM_NAMES) if t not in spelled]
    if len(names) > len(targets):  # the rest keep their spelling: correct, only less saved
        print("boardbuild: %d private names left as they are (add interned names to _ROM_NAMES)"
              % (len(names) - len(targets)), file=sys.stderr)   # (not in `lkedge names` output)
    return dict(zip(names, targets))


def rename_source(text, renames):
    """`text` with every NAME token in `renames` respelled (lines and columns of the
    rest unchanged, so tracebacks keep their line numbers)."""
    if not renames:
        return text
    lines = text.split("\n")
    edits = [(t.start, t.end, renames[t.string]) for t in _tokens(text)
             if t.type == tokenize.NAME and t.string in renames]
    for (row, c0), (_, c1), new in reversed(edits):
        line = lines[row - 1]
        lines[row - 1] = line[:c0] + new + line[c1:]
    return "\n".join(lines)


def renames_digest(renames):
    """A short fingerprint of a rename table (a build is stale when it changes)."""
    return hashlib.sha256(repr(sorted(renames.items())).encode()).hexdigest()[:16]


def renames_text(renames):
    """The table as text, one `board_name private_name` a line: it turns a board's
    traceback ("in isdisjoint") back into source names."""
    return "".join("%s %s\n" % (new, old) for old, new in sorted(renames.items(), key=lambda kv: kv[1]))


def library_renames(lib_dir, outside_paths=()):
    """private_renames() for lib_dir/*.py as board_source() leaves them."""
    texts = []
    for src in sorted(os.listdir(lib_dir)):
        if src.endswith(".py"):
            with open(os.path.join(lib_dir, src), encoding="utf-8") as f:
                texts.append(board_source(f.read(), src[:-3])[0])
    outside = []
    for path in outside_paths:
        with open(path, encoding="utf-8") as f:
            outside.append(f.read())
    return private_renames(texts, outside)


# Never deployed from a firmware folder: obvious junk (said by `lkedge deploy`).
JUNK_DIRS = ("__pycache__",)
JUNK_SUFFIXES = (".pyc", "~", ".swp")


def firmware_files(firmware_dir):
    """(files, skipped) of a firmware folder, walked with its subfolders: files is a
    sorted list of (board-relative path with "/", local path); skipped the relative
    paths left out as junk (dotfiles and dot-folders, __pycache__, *.pyc, editor
    backups; a skipped folder ends with "/")."""
    files, skipped = [], []
    for root, dirs, names in os.walk(firmware_dir):
        rel_root = os.path.relpath(root, firmware_dir)
        rel_root = "" if rel_root == "." else rel_root.replace(os.sep, "/") + "/"
        for d in sorted(dirs):
            if d.startswith(".") or d in JUNK_DIRS:
                skipped.append(rel_root + d + "/")
        dirs[:] = sorted(d for d in dirs if not (d.startswith(".") or d in JUNK_DIRS))
        for n in sorted(names):
            if n.startswith(".") or n.endswith(JUNK_SUFFIXES):
                skipped.append(rel_root + n)
            else:
                files.append((rel_root + n, os.path.join(root, n)))
    return sorted(files), sorted(skipped)


def deploy_renames(lib_dir, firmware_dir):
    """The table a deploy of lib_dir with firmware_dir (every .py in it and its
    subfolders, if that folder exists) makes."""
    firmware = [local for rel, local in firmware_files(firmware_dir)[0]
                if rel.endswith(".py")] if os.path.isdir(firmware_dir) else []
    return library_renames(lib_dir, firmware)


def outside_sources(root):
    """This repository's code that runs against a board build and may reach into the
    library: the firmware, examples, and the tests run under MicroPython."""
    out = []
    for sub in ("firmware", "examples", os.path.join("tests", "device"), os.path.join("tests", "scenarios")):
        d = os.path.join(root, sub)
        if os.path.isdir(d):
            out += [os.path.join(d, n) for n in sorted(os.listdir(d)) if n.endswith(".py")]
    peer = os.path.join(root, "tests", "interop", "mp_peer.py")
    if os.path.exists(peer):
        out.append(peer)
    return out


def compile_module(mpy_cross, args, src, module, out_dir, renames=None):
    """Compile lib module `src` for a board into out_dir; returns the files written.
    `renames` (library_renames()) respells private names; None leaves them."""
    with open(src, encoding="utf-8") as f:
        text = f.read()
    new, texts = board_source(text, module)
    new = rename_source(new, renames)
    out = os.path.join(out_dir, module + ".mpy")
    msg = os.path.join(out_dir, module + ".msg")
    with tempfile.TemporaryDirectory() as tmp:
        tsrc = os.path.join(tmp, module + ".py")
        with open(tsrc, "w", encoding="utf-8") as f:
            f.write(new)
        r = subprocess.run(list(mpy_cross) + list(args) + ["-s", "lkedge.%s" % module, "-o", out, tsrc],
                           capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildError("mpy-cross failed on %s: %s" % (src, (r.stderr or r.stdout).strip()))
    if texts:
        write_msg(msg, texts)
        return [out, msg]
    if os.path.exists(msg):
        os.remove(msg)
    return [out]


# ------------------------------------------------------------- `lkedge names`


def read_table(path):
    """{board name: private name} from a renames.txt."""
    table = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise BuildError("%s line %d: expected 'board_name private_name', got %r" % (path, n, line.strip()))
            table[parts[0]] = parts[1]
    return table


# A frame of a board's traceback, as MicroPython prints it: `  File "lkedge.room", line
# 195, in connect` for the library's .mpy (compiled with -s lkedge.<module>), or
# `File "lkedge/room.py", ...` / `"/lib/lkedge/room.py"` for one installed as source.
_FRAME = re.compile(r'^(\s*File "([^"]*)", line (\d+), in )([^\s]+)')
_LIB_FILE = re.compile(r'(?:^|/)lkedge[./](\w+?)(?:\.py|\.mpy)?$')
# Names an exception message spells (MicroPython's texts): the object's type, the
# attribute, the global, the imported name, the keyword argument.
_MESSAGE_NAME = re.compile(r"'(\w+)'(?= object)|(?<=attribute ')\w+(?=')|(?<=name ')\w+(?=')"
                           r"|(?<=import name )\w+|(?<=keyword argument ')\w+(?=')")


def _library_module(path):
    m = _LIB_FILE.search(path)
    return m.group(1) if m else None


# The firmware's flash log (firmware/flashlog.py, what `log.tail` returns) writes a
# traceback on one line, its lines joined by " | ": `... ERROR fatal: Traceback (most
# recent call last): |   File "lkedge.room", line 172, in uniform | ValueError: x | `.
_JOINED = " | "
_JOINED_FRAME = re.compile(r' \| \s*File "')


def untranslate(text, table, frames=None):
    """`text` (a board's traceback) with the board names written as source names, only
    where the board build put them: the function name of a library frame (File
    "lkedge.<module>"), and the names in the exception line right after a traceback
    whose innermost frame is the library's (`'T' object has no attribute 'X'`, `name 'X'
    isn't defined`, `can't import name X`, `unexpected keyword argument 'X'`). Anything
    else (exception and errno names, asyncio's frames, the firmware's own) is left as
    it is. A line of the flash log that holds a whole traceback, its lines joined by
    " | " (flashlog.exception), is read as those lines. `frames`, if a list, gets
    (module, line, source name) of each library frame."""
    out = []
    state = [False]  # the previous line was a frame, and of the library
    for line in text.splitlines(True):
        body = line.rstrip("\r\n")
        end = line[len(body):]
        if _JOINED_FRAME.search(body):
            body = _JOINED.join(_untranslate_line(part, table, frames, state) for part in body.split(_JOINED))
        else:
            body = _untranslate_line(body, table, frames, state)
        out.append(body + end)
    return "".join(out)


def _untranslate_line(body, table, frames, state):
    """One line of a traceback, as untranslate() says; `state` [whether the line before
    was a library frame] is read and updated."""
    m = _FRAME.match(body)
    if m:
        module = _library_module(m.group(2))
        state[0] = module is not None
        if state[0]:
            name = table.get(m.group(4), m.group(4))
            body = m.group(1) + name + body[m.end():]
            if frames is not None:
                frames.append((module, int(m.group(3)), name))
    elif state[0]:
        body = _MESSAGE_NAME.sub(
            lambda n: "'%s'" % table.get(n.group(1), n.group(1)) if n.group(1)
            else table.get(n.group(0), n.group(0)), body)
        state[0] = False
    return body


def check_frames(frames, lib_dir):
    """Library frames (module, line, source name) that do not fit lib_dir's source: the
    line is in no function of that name (line numbers of a board build are the
    source's). Each is a sign that the table (or the library) is not the board's."""
    misfits, funcs = [], {}
    for module, line, name in frames:
        if name.startswith("<"):
            continue  # <module>, <lambda>, <genexpr>, <listcomp>...
        if module not in funcs:
            try:
                with open(os.path.join(lib_dir, module + ".py"), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
            except (OSError, SyntaxError, ValueError):
                funcs[module] = None
            else:
                funcs[module] = [(n.name, n.lineno, n.end_lineno) for n in ast.walk(tree)
                                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        fs = funcs[module]
        if fs is None:
            misfits.append("lkedge.%s is not in %s" % (module, lib_dir))
        elif not any(n == name and a <= line <= b for n, a, b in fs):
            misfits.append("lkedge.%s line %d is in no function %s" % (module, line, name))
    return misfits


def add_names_arguments(parser):
    parser.add_argument("text", nargs="*", help="text to translate (default: standard input)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--table", help="a board's /lib/lkedge/renames.txt (/rom/lib/lkedge/renames.txt after a "
                                       "deploy --romfs; the surest: the table of what the board runs)")
    which.add_argument("--firmware", default=None,
                       help="the firmware folder the board was deployed with: the table `lkedge deploy "
                            "--firmware DIR` makes (default: this checkout's firmware/)")
    which.add_argument("--lib-only", action="store_true",
                       help="the board was deployed with `lkedge deploy --lib-only` (no firmware)")
    parser.add_argument("--lib", default=os.path.join(_ROOT, "lib", "lkedge"), help="lkedge library folder")


def _names_table(args, say):
    """{board name: source name} the options ask for; OSError/BuildError if unreadable."""
    if args.table:
        return read_table(args.table)
    if args.lib_only:
        firmware = None
    elif args.firmware is None:
        firmware = os.path.join(_ROOT, "firmware")
        say("lkedge names: names as a deploy of %s with firmware %s makes them (a board deployed with "
            "other firmware: --firmware DIR, or --table with its /lib/lkedge/renames.txt)"
            % (args.lib, firmware))
    else:
        firmware = args.firmware
    if firmware is not None and not os.path.isdir(firmware):
        raise BuildError("--firmware %s is not a folder (the firmware folder the board was deployed with)"
                         % firmware)
    renames = library_renames(args.lib, []) if firmware is None else deploy_renames(args.lib, firmware)
    return {new: old for old, new in renames.items()}


def run_names(args):
    import sys

    def say(msg):
        print(msg, file=sys.stderr, flush=True)

    try:
        table = _names_table(args, say)
    except OSError as e:
        where = ("--table %s" % args.table) if args.table else "the library %s" % args.lib
        hint = ""
        if args.table:
            hint = (" (a deployed board has it: mpremote connect PORT fs cp :%s/renames.txt %s; "
                    ":/rom/lib/lkedge/renames.txt on a board deployed with --romfs)" % ("/lib/lkedge", args.table))
        say("lkedge names: cannot read %s: %s%s" % (where, e.strerror or e, hint))
        return 2
    except BuildError as e:
        say("lkedge names: %s" % e)
        return 2
    if not args.text and sys.stdin.isatty():
        say("lkedge names: paste the board's traceback, then Ctrl-D")
    text = " ".join(args.text) if args.text else sys.stdin.read()
    frames = []
    sys.stdout.write(untranslate(text, table, frames) + ("\n" if args.text else ""))
    sys.stdout.flush()
    misfits = check_frames(frames, args.lib)
    if misfits:
        say("lkedge names: warning: the names may be wrong, the table does not fit this traceback "
            "(%s%s): was the board deployed with another firmware folder or library? Pass the same "
            "--firmware DIR, or --table with the board's /lib/lkedge/renames.txt"
            % ("; ".join(misfits[:3]), "; ..." if len(misfits) > 3 else ""))
    return 0
