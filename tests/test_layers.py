"""Dependencies point down (docs/architecture.md): the building blocks never import the
layers built on them, and no two top-level parts of ``mct`` import each other as they load.

Static: every module under src/mct is parsed (ast), function-level imports included, with
the same import reader the pipeline's code dependencies use (mct.pipeline.code_deps)."""

from __future__ import annotations

from pathlib import Path

from mct.pipeline.code_deps import imports_of, module_file

REPO = Path(__file__).resolve().parent.parent
PKG = REPO / "src" / "mct"

# the building blocks (``training`` and others may not exist yet: absent ones are skipped) ...
LOWER = ("nets", "diffusion", "teachers", "metrics", "training", "data", "config", "io", "errors", "records",
         "checkpoint", "provenance", "stats")
# ... never import these, not even inside a function
UPPER = ("distill", "benchmarks", "report", "pipeline", "bench", "export", "cli", "root")

# Violations tolerated until the change that fixes them (none today). The tests fail on a
# violation not listed here AND on a listed one that no longer occurs, so the set cannot go stale.
EXPECTED_TO_BE_FIXED: set[tuple[str, str]] = set()  # none left: keep it empty


def _modules(pkg: Path) -> dict[str, Path]:
    mods = {}
    for f in sorted(pkg.rglob("*.py")):
        parts = list(f.relative_to(pkg.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def _edges(pkg: Path) -> dict[tuple[str, str], bool]:
    """(importer, imported module) -> True when the import runs as the importer loads."""
    edges: dict[tuple[str, str], bool] = {}
    for mod, path in _modules(pkg).items():
        for name, top in imports_of(path, mod).items():
            if module_file(pkg, name) is not None:  # a module, not a name imported from one
                edges[(mod, name)] = edges.get((mod, name), False) or top
    return edges


def _part(mod: str) -> str | None:
    """The top-level part of ``mct`` a module belongs to (``mct.nets.unet`` -> ``nets``)."""
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else None


def layer_violations(pkg: Path) -> set[tuple[str, str]]:
    return {(a, b) for (a, b) in _edges(pkg) if _part(a) in LOWER and _part(b) in UPPER}


def module_level_cycles(pkg: Path) -> list[list[str]]:
    """Cycles among the top-level parts of ``mct`` through imports that run at load time
    (strongly connected components of more than one part, or a part importing itself is
    ignored: a package may import its own modules)."""
    graph: dict[str, set[str]] = {}
    for (a, b), top in _edges(pkg).items():
        pa, pb = _part(a), _part(b)
        if top and pa and pb and pa != pb:
            graph.setdefault(pa, set()).add(pb)
            graph.setdefault(pb, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str):  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


# ----------------------------------------------------------------------------- the rules, on today's code


def test_the_lower_layers_exist_where_the_rule_looks():
    present = {_part(m) for m in _modules(PKG)}
    assert {"nets", "diffusion", "teachers", "metrics", "config", "io", "errors"} <= present
    assert {"distill", "benchmarks", "cli"} <= present


def test_no_new_layer_violation():
    new = layer_violations(PKG) - EXPECTED_TO_BE_FIXED
    assert not new, ("lower layers import upper ones (move the shared code down instead): "
                     + ", ".join(f"{a} -> {b}" for a, b in sorted(new)))


def test_expected_violations_still_occur():
    fixed = EXPECTED_TO_BE_FIXED - layer_violations(PKG)
    assert not fixed, ("fixed (or renamed): remove from EXPECTED_TO_BE_FIXED in tests/test_layers.py: "
                       + ", ".join(f"{a} -> {b}" for a, b in sorted(fixed)))


def test_no_import_cycle_between_top_level_parts_at_load_time():
    assert module_level_cycles(PKG) == []


# ----------------------------------------------------------------------------- the checks catch what they should


def _write(pkg: Path, files: dict[str, str]):
    for rel, text in files.items():
        p = pkg / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_imports_are_read_at_load_time_or_not(tmp_path):
    pkg = tmp_path / "mct"
    _write(pkg, {
        "__init__.py": "",
        "errors.py": "",
        "io.py": "",
        "nets/__init__.py": "",
        "nets/a.py": ("from typing import TYPE_CHECKING\n"
                      "from ..errors import X\n"
                      "import mct.io\n"
                      "if TYPE_CHECKING:\n    from ..distill import trainer\n"
                      "class C:\n    from .. import cli\n"
                      "def f():\n    from ..benchmarks.base import B\n"),
    })
    got = imports_of(pkg / "nets" / "a.py", "mct.nets.a")
    assert got["mct.errors"] is True and got["mct.errors.X"] is True
    assert got["mct.io"] is True
    assert got["mct.distill"] is False and got["mct.distill.trainer"] is False  # type checking only
    assert got["mct.cli"] is True  # a class body runs as the module loads
    assert got["mct.benchmarks.base"] is False
    assert "typing" not in got


def test_a_violation_and_a_cycle_are_found(tmp_path):
    pkg = tmp_path / "mct"
    _write(pkg, {
        "__init__.py": "",
        "errors.py": "",
        "nets/__init__.py": "from . import a\n",  # a package importing its own module: no cycle
        "nets/a.py": "from ..errors import E\n\ndef load():\n    from ..distill.em import step\n",
        "distill/__init__.py": "",
        "distill/em.py": "from ..nets.a import load\nfrom ..report import page\n",
        "report/__init__.py": "",
        "report/page.py": "import mct.distill.em\n",
    })
    assert layer_violations(pkg) == {("mct.nets.a", "mct.distill.em")}
    assert module_level_cycles(pkg) == [["distill", "report"]]
    (pkg / "report" / "page.py").write_text("def f():\n    import mct.distill.em\n")
    assert module_level_cycles(pkg) == []

