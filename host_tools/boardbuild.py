"""Board builds of lib/lkedge: .mpy bytecode whose error texts live in message files.

A MicroPython board without frozen modules (and the unix port the suite runs on) keeps
a module's string constants in the heap, and the library's messages are about a third
of its loaded size. `board_source(text, module)` rewrites a module's source before
mpy-cross: every message text (a str literal of 12+ characters with a space, inside a
function, raised, logged or returned; see _text_position) becomes
`_lkmsg("<module>", n)`, and the texts are returned to be written with `write_msg()` as
`lkedge/<module>.msg`, which lkedge.msgtext reads back when a message is needed. Line
numbers are kept (a text spanning lines is replaced by the call plus the same newlines),
so a board's tracebacks point into the real source; the error a user sees is the same.

`compile_module(mpy_cross, args, src, module, out_dir)` -> [files written] does both
for one lib module: out_dir/<module>.mpy and, when it has messages, out_dir/<module>.msg.
"""
import ast
import os
import re
import struct
import subprocess
import tempfile

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


def board_source(text, module):
    """(new source, [texts]) for lkedge.<module>; the source is unchanged if no texts
    (and always for lkedge.msgtext itself, which reads the texts back)."""
    if module == "msgtext":
        return text, []
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
    out += "\nfrom .msgtext import text as %s  # noqa: E402 (board build)\n" % _CALL
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


def compile_module(mpy_cross, args, src, module, out_dir):
    """Compile lib module `src` for a board into out_dir; returns the files written."""
    with open(src, encoding="utf-8") as f:
        text = f.read()
    new, texts = board_source(text, module)
    out = os.path.join(out_dir, module + ".mpy")
    msg = os.path.join(out_dir, module + ".msg")
    with tempfile.TemporaryDirectory() as tmp:
        tsrc = os.path.join(tmp, module + ".py")
        with open(tsrc, "w", encoding="utf-8") as f:
            f.write(new)
        r = subprocess.run(list(mpy_cross) + list(args) + ["-s", "lkedge/%s.py" % module, "-o", out, tsrc],
                           capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildError("mpy-cross failed on %s: %s" % (src, (r.stderr or r.stdout).strip()))
    if texts:
        write_msg(msg, texts)
        return [out, msg]
    if os.path.exists(msg):
        os.remove(msg)
    return [out]
