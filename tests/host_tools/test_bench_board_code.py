"""lkedge_host.bench.board_code: the library's code cost on a board's heap, and its floor."""
import ast
import os
import sys

from lkedge_host.bench import board_code

SAMPLE = '''
X = {"k": (1, 2)}


def f(a, b=3):
    """doc"""
    return [i * a for i in range(b)]


class C(ValueError):
    Y = 2

    async def m(self, x):
        g = (y for y in x)
        return lambda: g
'''


def test_shape_counts_every_function_and_class_micropython_makes():
    # f, its list comprehension, m, its generator expression, the lambda; one class
    assert board_code.shape([SAMPLE]) == (5, 1)


def test_empty_bodies_keeps_names_classes_and_module_data_but_no_code():
    tree = ast.parse(board_code.empty_bodies(SAMPLE))
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    assert [(n.name, [a.arg for a in n.args.args]) for n in funcs] == [("f", ["a", "b"]), ("m", ["self", "x"])]
    assert all(len(n.body) == 1 and isinstance(n.body[0], ast.Pass) for n in funcs)
    assert [n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)] == ["C"]
    assert "X = {'k': (1, 2)}" in ast.unparse(tree) and "Y = 2" in ast.unparse(tree)
    assert board_code.shape([board_code.empty_bodies(SAMPLE)]) == (2, 1)


def test_the_board_modules_exist_and_the_floor_is_below_the_build(tmp_path):
    for m in board_code.BOARD_MODULES:
        assert os.path.exists(os.path.join(board_code.LIB, m + ".py")), m
    modules = ("__init__", "consts", "utf8", "rpc")
    built, q_built, _ = board_code.measure_import(board_code._build(str(tmp_path / "a")), modules)
    floor, q_floor, _ = board_code.measure_import(board_code._build(str(tmp_path / "b"), board_code._emptied),
                                                  modules)
    print("rpc and what it imports: %d B as built, %d B with empty bodies" % (built, floor), file=sys.stderr)
    assert 0 < floor < built and q_floor <= q_built


def test_unit_costs_are_measured_not_assumed():
    u = board_code.unit_costs()
    # a function is several heap objects (function, raw code, bytecode, dict slot) and a
    # class a type object and dict on top of its method: both well above one 16/32-byte block
    assert 32 < u["u_funcs"] < u["u_classes"] < 2000


FALLBACK = '''
try:
    from micropython import const
except ImportError:
    def const(x):
        return x


def top():
    def inner():
        return 1
    return inner


class K:
    def a(self):
        return 1

    def b(self):
        return 2
'''


def test_function_names_are_qualified_and_leave_out_the_cpython_fallbacks():
    assert board_code.function_names(FALLBACK, "mod") == ["mod.top", "mod.top.inner", "mod.K.a", "mod.K.b"]
    assert board_code.function_names(SAMPLE, "s") == ["s.f", "s.C.m"]


def test_without_drops_the_named_functions_and_keeps_classes_valid():
    text = board_code.without(FALLBACK, "mod", {"mod.K.a", "mod.K.b", "mod.top.inner", "mod.const"})
    tree = ast.parse(text)
    defs = [n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    assert defs == ["top"]
    cls = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)][0]
    assert isinstance(cls.body[0], ast.Pass)
    # the except clause that lost its only statement still compiles
    compile(text, "mod", "exec")


def test_an_instrumented_build_records_what_ran_under_micropython(tmp_path):
    src = tmp_path / "probe_mod.py"
    src.write_text(board_code.instrumented(FALLBACK, "probe_mod"))
    (tmp_path / (board_code.RAN_MODULE + ".py")).write_text(board_code._RAN_SOURCE)
    out = tmp_path / "ran.txt"
    code = ("import sys\nsys.path.insert(0, %r)\nimport probe_mod\nprobe_mod.top()()\nprobe_mod.K().b()\n"
            % str(tmp_path))
    import subprocess
    r = subprocess.run([board_code._bin("micropython"), "-c", code], capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, LKEDGE_RAN_OUT=str(out)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(out.read_text().split()) == ["probe_mod.K.b", "probe_mod.top", "probe_mod.top.inner"]
