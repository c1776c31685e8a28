"""Board builds (lkedge_host.boardbuild): message texts leave the bytecode for .msg files,
and the board gets the very same errors, read back by lkedge.msgtext."""
import ast
import os
import shutil
import subprocess
import sys

import pytest

from lkedge_host import boardbuild

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from mpybuild import compiled_lib, mpy_cross  # noqa: E402

SAMPLE = '''"""Docstring texts stay (the compiler drops them anyway)."""
TABLE = {1: "a module-level text runs at import"}


def check(x):
    """A function docstring with spaces in it."""
    if x < 0:
        raise ValueError("x must not be negative, got %r" % (x,))
    if x > 9:
        raise ValueError("x is too large: "
                         "the limit is nine" + str(x))
    key = "not a text"   # short, or a value rather than a message
    return "x is fine, thank you" if x else "zero is fine too"
'''


def test_message_texts_are_replaced_by_numbered_lookups_keeping_line_numbers():
    new, texts = boardbuild.board_source(SAMPLE, "sample")
    assert texts == ["x must not be negative, got %r", "x is too large: the limit is nine",
                     "x is fine, thank you", "zero is fine too"]
    old_lines = SAMPLE.split("\n")
    # Every statement starts on the line it started on in the source.
    starts = sorted((n.lineno, type(n).__name__) for n in ast.walk(ast.parse(SAMPLE)) if isinstance(n, ast.stmt))
    new_starts = sorted((n.lineno, type(n).__name__) for n in ast.walk(ast.parse(new)) if isinstance(n, ast.stmt))
    assert new_starts == starts + [(len(old_lines) + 1, "ImportFrom")]
    assert 'raise ValueError(_lkmsg("sample", 0) % (x,))' in new
    assert '"a module-level text runs at import"' in new       # import-time: left inline
    assert '"not a text"' in new and "Docstring texts stay" in new
    assert new.rstrip().endswith("from . import _lkmsg  # noqa: E402 (board build)")


def test_the_package_init_gains_the_lazy_message_reader():
    src = open(os.path.join(ROOT, "lib", "lkedge", "__init__.py")).read()
    new, texts = boardbuild.board_source(src, "__init__")
    assert texts == [] and new.startswith(src)
    tree = ast.parse(new)
    fn = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_lkmsg"]
    assert len(fn) == 1 and [a.arg for a in fn[0].args.args] == ["module", "n"]
    # msgtext is imported inside the function: loading the package does not load it
    assert not any(isinstance(n, ast.ImportFrom) and n.module == "msgtext" for n in tree.body)


def test_identical_texts_share_one_entry():
    src = 'def f(a):\n    if a:\n        raise KeyError("the same long text")\n    raise ValueError("the same long text")\n'
    new, texts = boardbuild.board_source(src, "m")
    assert texts == ["the same long text"] and new.count('_lkmsg("m", 0)') == 2


def test_a_module_without_texts_is_left_alone():
    src = "def f():\n    return 1\n"
    assert boardbuild.board_source(src, "m") == (src, [])


def test_msgtext_reads_back_every_text(tmp_path):
    pkg = tmp_path / "lkedge"
    pkg.mkdir()
    shutil.copy(os.path.join(ROOT, "lib", "lkedge", "msgtext.py"), pkg / "msgtext.py")
    texts = ["first text here", "ünïcödé text, two-byte characters", "", "last one %d"]
    boardbuild.write_msg(str(pkg / "sample.msg"), texts)
    code = ("import sys; sys.path.insert(0, %r)\nfrom lkedge.msgtext import text\n"
            "print('|'.join([text('sample', i) for i in range(4)]))\n"
            "try:\n    text('sample', 4)\nexcept OSError as e:\n    print('E', e)\n"
            "try:\n    text('other', 0)\nexcept OSError as e:\n    print('E', e)\n" % str(tmp_path))
    for exe in (sys.executable, shutil.which("micropython") or os.path.join(os.path.dirname(sys.executable), "micropython")):
        out = subprocess.run([exe, "-c", code], capture_output=True, text=True, timeout=30).stdout.split("\n")
        assert out[0] == "|".join(texts), exe
        assert out[1].startswith("E lkedge: ") and "has no message 4" in out[1]
        assert out[2].startswith("E lkedge: message file ") and "other.msg is missing" in out[2]


def _micropython():
    exe = os.path.join(os.path.dirname(sys.executable), "micropython")
    return exe if os.path.exists(exe) else "micropython"


def test_a_board_build_raises_the_same_error_with_the_source_line_under_micropython():
    path = compiled_lib()
    assert os.path.exists(os.path.join(path, "lkedge", "rpc.msg"))
    code = ("import sys\nfrom lkedge.rpc import RpcServer\ns = RpcServer()\n"
            "print('lkedge.msgtext' in sys.modules)\n"
            "try:\n    s.register('', print)\nexcept ValueError as e:\n    print(e)\n"
            "print('lkedge.msgtext' in sys.modules)\n"
            "s.register('m', print)\ns.register('m', print)\n")
    r = subprocess.run([_micropython(), "-c", code], capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, MICROPYPATH=path + ":.frozen"))
    out = r.stdout + r.stderr   # the unix port prints the traceback on stdout
    # msgtext loads with the first moved text, not with the modules
    assert out.split("\n")[:3] == ["False", "RPC method name must be a non-empty str, got ''", "True"]
    assert ("ValueError: an RPC handler is already registered for method 'm'; "
            "unregister it before registering another") in out
    src = open(os.path.join(ROOT, "lib", "lkedge", "rpc.py")).read().split("\n")
    # the source is named by its module ("lkedge.rpc": a qstr the import made anyway)
    line = [int(x.split("line ")[1].split(",")[0]) for x in out.split("\n") if '"lkedge.rpc"' in x][-1]
    assert "raise ValueError(" in src[line - 1]


def test_a_board_build_imports_in_less_heap_than_the_plain_bytecode(tmp_path):
    src = os.path.join(ROOT, "lib", "lkedge", "rpc.py")
    plain, board = tmp_path / "plain" / "lkedge", tmp_path / "board" / "lkedge"
    for d in (plain, board):
        d.mkdir(parents=True)
        for name in ("consts", "utf8", "msgtext", "__init__"):
            boardbuild.compile_module(mpy_cross(), ["-march=host"], os.path.join(ROOT, "lib", "lkedge", name + ".py"),
                                      name, str(d))
    subprocess.run(mpy_cross() + ["-march=host", "-o", str(plain / "rpc.mpy"), src], check=True)
    boardbuild.compile_module(mpy_cross(), ["-march=host"], src, "rpc", str(board))
    code = ("import gc\nimport lkedge.consts, lkedge.utf8, lkedge.msgtext\ngc.collect()\na = gc.mem_alloc()\n"
            "import lkedge.rpc\ngc.collect()\nprint(gc.mem_alloc() - a)\n")
    used = {}
    for label, d in (("plain", plain), ("board", board)):
        r = subprocess.run([_micropython(), "-X", "heapsize=256K", "-c", code], capture_output=True, text=True,
                           timeout=30, env=dict(os.environ, MICROPYPATH=str(d.parent) + ":.frozen"))
        used[label] = int(r.stdout.strip())
    print("lkedge.rpc import heap: plain %(plain)d B, board build %(board)d B" % used)
    assert used["board"] < used["plain"] - 1024


def test_a_build_that_would_not_parse_is_refused(monkeypatch):
    monkeypatch.setattr(boardbuild, "_CALL", "1bad name")
    with pytest.raises(boardbuild.BuildError, match="does not parse"):
        boardbuild.board_source(SAMPLE, "sample")


def test_texts_evaluated_on_every_call_stay_inline():
    """An argument naming what is read (used only if it fails) is evaluated on every
    call: moving it would read a file per call, so only raised/logged/returned texts go."""
    src = ('def read(d, n):\n    return d.take(n, "a text string here")\n\n\n'
           'def check(d):\n    _warn("dropped a packet from %r" % d)\n'
           '    err = StreamError("abnormal end: sender left")\n'
           '    raise wrap(d, "wrapped in a raise statement")\n')
    new, texts = boardbuild.board_source(src, "m")
    assert texts == ["dropped a packet from %r", "abnormal end: sender left", "wrapped in a raise statement"]
    assert 'd.take(n, "a text string here")' in new


# ------------------------------------------------------------------ private names
LIB_A = '''_LIMIT = const(8)
_TABLE = {"k": 1}


class _Helper:
    def __init__(self):
        self._count = 0
        self._seen = getattr(self, "_spelled_in_a_string", None)

    def _bump(self, _by=1):
        self._count += _by   # _count in a comment is left alone
        return "_count"


def public():
    return _Helper()._bump(_by=_TABLE["k"] + _LIMIT)
'''
LIB_B = '''from .a import _Helper


def other():
    h = _Helper()
    h._tested_from_outside = 1
    return h
'''


def test_private_names_get_one_table_for_the_library_and_keep_what_must_keep():
    renames = boardbuild.private_renames([LIB_A, LIB_B], ["peer._tested_from_outside = 2"])
    # const names are folded away only while they start with "_"; a name in a string
    # (getattr, a returned text) or spelled by code outside the library keeps its spelling
    for kept in ("_LIMIT", "_spelled_in_a_string", "_count", "_tested_from_outside", "__init__"):
        assert kept not in renames, kept
    assert set(renames) == {"_TABLE", "_Helper", "_seen", "_bump", "_by"}
    assert len(set(renames.values())) == len(renames)
    spelled = set(boardbuild._WORD.findall(LIB_A + LIB_B))
    assert all(new in boardbuild._ROM_NAMES and new not in spelled for new in renames.values())


def test_a_private_name_a_docstring_mentions_is_still_respelled():
    # A docstring is prose (MicroPython compiles it to nothing); a string that is a
    # value may be a getattr. 15 of the library's names were kept for a mention in a
    # docstring, and a board interned each (620 of the 620 before the next pool).
    lib = ('"""Module notes: _Helper does it."""\n\n\nclass _Helper:\n    """Uses _bump, see _seen."""\n\n'
           '    def _bump(self):\n        """_bump: one more."""\n        return getattr(self, "_seen")\n')
    renames = boardbuild.private_renames([lib], [])
    assert set(renames) == {"_Helper", "_bump"}   # _seen: a value string names it
    assert not set(renames.values()) & set(boardbuild._WORD.findall(lib))   # and no board name it spells


def test_renaming_respells_names_only_and_keeps_every_line():
    renames = boardbuild.private_renames([LIB_A, LIB_B], [])
    new = boardbuild.rename_source(LIB_A, renames)
    assert new.count("\n") == LIB_A.count("\n")
    assert "# _count in a comment" in new and 'return "_count"' in new
    assert "_Helper" not in new and "class %s:" % renames["_Helper"] in new
    ns = {"const": lambda x: x}
    exec(new, ns)   # the renamed module still runs, its keyword argument included
    assert ns["public"]() == "_count"


def test_every_board_name_is_already_interned_by_the_unix_port():
    """The saving is real only if the firmware has the name: interning each must not add
    a qstr on the unix port the suite measures with."""
    # The names come on stdin: as literals in the code they would be interned (and so
    # counted) when the code is compiled, before the first count.
    code = ("import micropython, sys\nnames = sys.stdin.read().split()\nmicropython.qstr_info()\n"
            "for n in names:\n    getattr(None, n, None)\nmicropython.qstr_info()\n")
    for names, interned in ((boardbuild._ROM_NAMES, True), (["zqxwv_not_a_builtin"], False)):
        out = subprocess.run([_micropython(), "-c", code], input=" ".join(names), capture_output=True,
                             text=True, timeout=30).stdout
        counts = [line.split("n_qstr=")[1].split(",")[0] for line in out.split("\n") if "n_qstr=" in line]
        assert len(counts) == 2 and (counts[0] == counts[1]) == interned, (names[:3], out)


def test_the_board_build_of_the_library_respells_private_names_and_needs_fewer_qstrs():
    path = compiled_lib()
    table = {old: new for new, old in boardbuild.read_table(os.path.join(path, "renames.txt")).items()}
    assert len(table) > 200, "most private names of the library are respelled"
    code = ("import micropython, lkedge.room\nmicropython.qstr_info()\n"
            "print(hasattr(lkedge.room.Room, %r), hasattr(lkedge.room.Room, '_emit'))\n" % table["_emit"])
    out = subprocess.run([_micropython(), "-c", code], capture_output=True, text=True, timeout=30,
                         env=dict(os.environ, MICROPYPATH=path + ":.frozen")).stdout.split("\n")
    assert out[1] == "True False", out
    n_qstr = int(out[0].split("n_qstr=")[1].split(",")[0])
    # below 625 the interpreter's qstr pools stop short of the next (~7 KiB) one
    assert n_qstr < 625 - 60, out[0]


def test_lkedge_names_turns_a_board_traceback_back_into_source_names(tmp_path, capsys):
    from lkedge_host import cli
    table = tmp_path / "renames.txt"
    table.write_text("isdisjoint _reader_loop\nticks_diff _drain\n")
    trace = 'File "lkedge.room", line 283, in isdisjoint\nFile "lkedge.room", line 310, in ticks_diff\n'
    assert boardbuild.untranslate(trace, boardbuild.read_table(str(table))) == \
        'File "lkedge.room", line 283, in _reader_loop\nFile "lkedge.room", line 310, in _drain\n'
    assert cli.main(["names", "--table", str(table), 'File "lkedge.room", line 1, in isdisjoint']) == 0
    assert capsys.readouterr().out == 'File "lkedge.room", line 1, in _reader_loop\n'
    # without --table: the table a deploy of this repository's library and firmware makes
    renames = boardbuild.deploy_renames(os.path.join(ROOT, "lib", "lkedge"), os.path.join(ROOT, "firmware"))
    assert cli.main(["names", 'File "lkedge.room", line 1, in %s' % renames["_emit"]]) == 0
    assert capsys.readouterr().out == 'File "lkedge.room", line 1, in _emit\n'
    table.write_text("just-one-column\n")
    assert cli.main(["names", "--table", str(table), "x"]) == 2
    assert "line 1: expected 'board_name private_name'" in capsys.readouterr().err


def test_names_with_a_missing_table_says_where_to_get_one(tmp_path):
    r = subprocess.run([sys.executable, "-m", "lkedge_host.cli", "names", "--table", str(tmp_path / "renames.txt"),
                        "x"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "cannot read --table" in r.stderr and "fs cp :/lib/lkedge/renames.txt" in r.stderr


# The board names reuse interned qstrs, exception, errno and asyncio names among them: a
# table maps e.g. IndexError, ECONNRESET and run_until_complete to private names.
REVIEW_TABLE = "IndexError _pend\nECONNRESET _connect\nrun_until_complete _off\nsetter _open_link\n" \
               "popitem _state\nmem_free _Waiter\n"
BOARD_TRACE = (
    "Traceback (most recent call last):\r\n"
    '  File "main.py", line 6, in <module>\r\n'
    '  File "asyncio/core.py", line 1, in run_until_complete\r\n'
    '  File "myapp.py", line 88, in run_until_complete\r\n'
    '  File "lkedge.room", line 195, in connect\r\n'
    '  File "lkedge.room", line 241, in setter\r\n'
    "ConnectError: the relay refused to join: LEAVE 3 token expired\r\n"
    "Traceback (most recent call last):\n"
    '  File "myapp.py", line 3, in f\n'
    "IndexError: list index out of range\n"
    "OSError: [Errno 104] ECONNRESET\n"
    "lkedge: RPC handler for 'popitem' failed (caller 'setter' gets 1500):\n"
    "Traceback (most recent call last):\n"
    '  File "lkedge/participant.py", line 145, in setter\n'
    "AttributeError: 'mem_free' object has no attribute 'popitem'\n"
    "Traceback (most recent call last):\n"
    '  File "lkedge.participant", line 145, in setter\n'
    '  File "myapp.py", line 74, in crash\n'
    "AttributeError: 'Room' object has no attribute 'popitem'\n"
    "Traceback (most recent call last):\n"
    '  File "/lib/lkedge/room.py", line 9, in setter\n'
    "NameError: name 'popitem' isn't defined\n")


def test_lkedge_names_translates_only_library_frames_and_the_names_their_errors_spell(tmp_path):
    table = boardbuild.read_table(_table_file(tmp_path))
    got = boardbuild.untranslate(BOARD_TRACE, table)
    want = (BOARD_TRACE
            .replace('"lkedge.room", line 241, in setter', '"lkedge.room", line 241, in _open_link')
            .replace('"lkedge/participant.py", line 145, in setter', '"lkedge/participant.py", line 145, in _open_link')
            .replace('"lkedge.participant", line 145, in setter', '"lkedge.participant", line 145, in _open_link')
            .replace('"/lib/lkedge/room.py", line 9, in setter', '"/lib/lkedge/room.py", line 9, in _open_link')
            # raised in the library: the type and the attribute are the board build's names
            .replace("'mem_free' object has no attribute 'popitem'", "'_Waiter' object has no attribute '_state'")
            .replace("name 'popitem' isn't", "name '_state' isn't"))
    assert got == want
    # left as they are: exception and errno names, asyncio's and the firmware's frames,
    # the message of an error raised in the firmware, the words of other lines
    for kept in ("IndexError: list index out of range", "[Errno 104] ECONNRESET", '"asyncio/core.py", line 1, in '
                 "run_until_complete", '"myapp.py", line 88, in run_until_complete',
                 "'Room' object has no attribute 'popitem'", "RPC handler for 'popitem' failed (caller 'setter'"):
        assert kept in got


def test_lkedge_names_decodes_a_traceback_as_the_flash_log_writes_it_on_one_line(tmp_path):
    # firmware/flashlog.py joins a traceback's lines with " | ", and log.tail returns that
    table = boardbuild.read_table(_table_file(tmp_path))
    lines = BOARD_TRACE.replace("\r\n", "\n").split("\n")
    joined = "1767225600 ERROR task failed: " + " | ".join(lines) + "\n"
    want = "1767225600 ERROR task failed: " + " | ".join(boardbuild.untranslate("\n".join(lines), table)
                                                         .split("\n")) + "\n"
    assert boardbuild.untranslate(joined, table) == want and "_open_link" in want and "_Waiter" in want
    # the command, on log.tail's output with the table a deploy of this checkout makes
    renames = boardbuild.deploy_renames(os.path.join(ROOT, "lib", "lkedge"), os.path.join(ROOT, "firmware"))
    with open(os.path.join(ROOT, "lib", "lkedge", "room.py"), encoding="utf-8") as f:
        line = [n.lineno for n in ast.walk(ast.parse(f.read()))
                if isinstance(n, ast.FunctionDef) and n.name == "_emit"][0] + 2
    log = ('1767225600 INFO boot: firmware on esp32\n'
           '1767225601 ERROR fatal: Traceback (most recent call last): |   File "main.py", line 30, in <module> | '
           '  File "lkedge.room", line %d, in %s | ValueError: x | \n' % (line, renames["_emit"]))
    r = _names(stdin=log)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    assert r.stdout == log.replace("in %s |" % renames["_emit"], "in _emit |"), r.stdout


def _table_file(tmp_path):
    path = tmp_path / "renames.txt"
    path.write_text(REVIEW_TABLE + "\n")  # a blank line (an editor's) is no error
    return str(path)


def _names(*args, stdin=""):
    return subprocess.run([sys.executable, "-m", "lkedge_host.cli", "names"] + list(args), input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_names_says_which_firmware_the_table_is_for_and_refuses_a_missing_one(tmp_path):
    r = _names('File "lkedge.room", line 1, in <module>')
    assert r.returncode == 0 and r.stderr.count("\n") == 1, r.stderr
    assert "lkedge names: names as a deploy of %s with firmware %s makes them" % (
        os.path.join(ROOT, "lib", "lkedge"), os.path.join(ROOT, "firmware")) in r.stderr
    r = _names("--firmware", str(tmp_path / "nonexistent"), "x")
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert "lkedge names: --firmware %s is not a folder" % (tmp_path / "nonexistent") in r.stderr
    r = _names("--table", _table_file(tmp_path), "--firmware", str(tmp_path), "x")
    assert r.returncode == 2 and "not allowed with argument" in r.stderr
    # a board deployed with --lib-only: the library's table, said by nobody but the option
    r = _names("--lib-only", 'File "lkedge.room", line 1, in <module>')
    assert r.returncode == 0 and r.stderr == "" and r.stdout == 'File "lkedge.room", line 1, in <module>\n'


def test_names_from_the_deployed_firmware_folder_and_subfolders(tmp_path):
    # a firmware that spells a private name keeps it (the table differs from firmware/'s)
    fw = tmp_path / "fw"
    (fw / "drivers").mkdir(parents=True)
    (fw / "main.py").write_text("import drivers\n")
    lib = os.path.join(ROOT, "lib", "lkedge")
    plain = boardbuild.deploy_renames(lib, str(fw))
    name = sorted(plain)[0]
    (fw / "drivers" / "__init__.py").write_text("x = room.%s\n" % name)
    assert name not in boardbuild.deploy_renames(lib, str(fw))
    assert boardbuild.deploy_renames(lib, str(fw)) != plain


def test_names_warns_when_the_table_does_not_fit_the_traceback(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "room.py").write_text("class Room:\n    def _open_link(self):\n        x = 1\n"
                                 "        return x\n\n\ndef other():\n    pass\n")
    fits = 'Traceback (most recent call last):\n  File "lkedge.room", line 3, in setter\nOSError: x\n'
    r = _names("--table", _table_file(tmp_path), "--lib", str(lib), stdin=fits)
    assert r.returncode == 0 and "in _open_link" in r.stdout and r.stderr == "", r.stderr
    for frame, said in (('"lkedge.room", line 7, in setter', "lkedge.room line 7 is in no function _open_link"),
                        ('"lkedge.room", line 3, in popitem', "lkedge.room line 3 is in no function _state"),
                        ('"lkedge.nosuch", line 3, in connect', "lkedge.nosuch is not in %s" % lib)):
        r = _names("--table", _table_file(tmp_path), "--lib", str(lib), stdin="  File %s\n" % frame)
        assert r.returncode == 0 and "lkedge names: warning: the names may be wrong" in r.stderr, r.stderr
        assert said in r.stderr and "--firmware DIR" in r.stderr, r.stderr


def test_no_two_private_names_ever_share_a_board_name():
    # "rsplit" was listed twice: once a library had enough private names to reach the
    # second, Room._token and Room._acc_key were one attribute on the board, and the
    # reader clearing its key cleared the token (the board never rejoined a relay).
    assert len(set(boardbuild._ROM_NAMES)) == len(boardbuild._ROM_NAMES), \
        sorted(n for n in set(boardbuild._ROM_NAMES) if boardbuild._ROM_NAMES.count(n) > 1)
    lib = "".join("_p%d = %d\n" % (i, i) for i in range(len(boardbuild._ROM_NAMES) + 50))
    renames = boardbuild.private_renames([lib], [])
    assert len(renames) == len(set(boardbuild._ROM_NAMES)) and len(set(renames.values())) == len(renames)
    # and the tables this checkout builds (a deploy's, the suite's)
    for table in (boardbuild.deploy_renames(os.path.join(ROOT, "lib", "lkedge"), os.path.join(ROOT, "firmware")),
                  {old: new for new, old in boardbuild.read_table(os.path.join(compiled_lib(), "renames.txt")).items()}):
        assert len(set(table.values())) == len(table)
