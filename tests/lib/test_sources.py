"""Properties of the library's source text itself (not its behaviour)."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCE_DIRS = ("lib", "host_tools", "firmware", "examples")


def _python_files():
    for top in SOURCE_DIRS:
        for base, _dirs, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith(".py"):
                    yield os.path.join(base, name)


def _docstrings(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc is not None:
                yield node, doc


def test_docstrings_are_valid_utf8_so_python_313_can_import_the_package():
    # Python 3.13 encodes docstrings to UTF-8 when it compiles them: one escape such as
    # "\ud800" (a lone surrogate) in a docstring made `import lkedge` fail there with
    # UnicodeEncodeError. Escapes meant as text must be written "\\ud800".
    bad = []
    for path in _python_files():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node, doc in _docstrings(tree):
            try:
                doc.encode("utf-8")
            except UnicodeEncodeError as e:
                bad.append("%s:%s: %s" % (os.path.relpath(path, ROOT), getattr(node, "lineno", 1), e))
    assert not bad, "docstrings that are not valid UTF-8:\n" + "\n".join(bad)


def test_the_checker_finds_a_lone_surrogate_in_a_docstring():
    tree = ast.parse('def f():\n    """one of "\\ud800" here"""\n')
    (_node, doc), = [d for d in _docstrings(tree) if d[0].__class__ is ast.FunctionDef]
    try:
        doc.encode("utf-8")
    except UnicodeEncodeError:
        return
    raise AssertionError("a docstring holding a lone surrogate was taken as valid UTF-8")
