"""Which source files a job runs: the ``mct`` modules its stage starts from and every
``mct`` module they import, transitively (function-level imports too, since a stage
reaches them). A change to one of these files reruns the job (DVC ``deps``, Snakemake
inputs). :func:`imports_of` is also what ``tests/test_layers.py`` checks the layering with."""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Iterable, Optional

from ..errors import MCTError


def package_dir(base: str | os.PathLike = ".") -> Path:
    """The ``mct`` sources the jobs' code dependencies point at: ``<base>/src/mct`` when
    this checkout has one, else the imported package."""
    local = Path(base) / "src" / "mct"
    if (local / "__init__.py").exists():
        return local
    return Path(__file__).resolve().parent.parent


def module_file(pkg: Path, modname: str) -> Optional[Path]:
    """The source of module ``modname`` (``mct.x.y``) in package directory ``pkg``, or None."""
    p = pkg.parent.joinpath(*modname.split("."))
    if (p / "__init__.py").is_file():
        return p / "__init__.py"
    if p.with_suffix(".py").is_file():
        return p.with_suffix(".py")
    return None


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
           (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports_of(path: Path, modname: str) -> dict[str, bool]:
    """The ``mct`` names imported anywhere in ``path`` (source of module ``modname``), each
    mapped to True when the import runs as the module is imported (not inside a function
    or an ``if TYPE_CHECKING`` block). ``from .io import write_json`` gives both
    ``mct.io`` and ``mct.io.write_json``: callers keep the names that are modules."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    except SyntaxError as exc:
        raise MCTError(f"cannot read the imports of {path}: {exc}") from None
    pkg = modname if path.name == "__init__.py" else modname.rpartition(".")[0]
    found: dict[str, bool] = {}

    def add(name: str, top: bool):
        if name == "mct" or name.startswith("mct."):
            found[name] = found.get(name, False) or top

    def visit(node: ast.AST, top: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                visit(child, False)
            elif isinstance(child, ast.Import):
                for a in child.names:
                    add(a.name, top)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    parts = pkg.split(".")
                    if child.level > 1:
                        parts = parts[:-(child.level - 1)]
                    mod = ".".join(parts + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                add(mod, top)
                for a in child.names:
                    add(f"{mod}.{a.name}", top)
            else:
                visit(child, top)

    visit(tree, True)
    return found


def code_files(modules: Iterable[str], pkg: Path) -> list[Path]:
    """Source files of ``modules`` and of every mct module they import, transitively
    (with the packages' ``__init__.py`` and non-Python files beside the modules, such
    as templates)."""
    todo = list(modules)
    seen: set[str] = set()
    files: set[Path] = set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        path = module_file(pkg, mod)
        if path is None:
            continue
        files.add(path)
        parent = mod.rpartition(".")[0]
        if parent:
            todo.append(parent)
        todo.extend(imports_of(path, mod))
        if path.parent != pkg:
            files.update(p for p in path.parent.iterdir()
                         if p.is_file() and p.suffix not in (".py", ".pyc") and not p.name.startswith("."))
    return sorted(files)
