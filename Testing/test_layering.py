"""The library's layers point one way (docs/ARCHITECTURE.md): checked statically, like test_slicer_static.

- Only the top layer (``jobs/``, the command lines, the demo) imports ``xraycardiac.jobs``; the
  pipelines and the ground never do, also not inside a function.
- No import cycle between the library's modules, counting imports inside functions (they only
  hide a cycle) but not ``if TYPE_CHECKING:`` blocks nor package ``__init__`` re-exports.
- No module imports another module's private (``_name``) names.
- No source file of the library or the Slicer modules is longer than 700 lines (one idea per file).
- The JSON value checks and conversions (``is_int``, ``is_number``, ``json_default``, ``json_safe``) are
  defined once, in ``xraycardiac/jsonutil.py``: no module keeps a local copy, also not inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "xraycardiac"
SLICER_FOLDERS = ("XRayCardiacCommon", "XRayToCT", "XRayCoronaryRecon", "CardiacSynth")
MAX_LINES = 700
JSONUTIL = LIBRARY / "jsonutil.py"
# Names under which a copy of a jsonutil helper was written (with or without a leading underscore).
JSONUTIL_COPIES = {
    "is_int",
    "is_integer",
    "is_number",
    "is_num",
    "finite",
    "is_finite",
    "json_default",
    "json_safe",
}


def is_top_layer(rel: Path) -> bool:
    """``jobs/``, ``demo/``, ``cli.py`` files and ``train_cli.py`` may run jobs."""
    return rel.parts[0] in ("jobs", "demo") or rel.name in ("cli.py", "train_cli.py")


def imports_of(source: str) -> set[str]:
    """Every module named by an absolute import statement, at any depth (functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def upward_job_imports(library: Path) -> list[str]:
    """``file: module`` for each import of ``xraycardiac.jobs`` below the top layer."""
    bad = []
    for path in sorted(library.rglob("*.py")):
        rel = path.relative_to(library)
        if is_top_layer(rel):
            continue
        for name in sorted(imports_of(path.read_text(encoding="utf-8"))):
            if name == "xraycardiac.jobs" or name.startswith("xraycardiac.jobs."):
                bad.append(f"xraycardiac/{rel.as_posix()}: {name}")
    return bad


def module_name(library: Path, path: Path) -> str:
    """``xraycardiac.a.b`` for ``<library>/a/b.py`` (``xraycardiac.a`` for ``a/__init__.py``)."""
    parts = path.relative_to(library).with_suffix("").parts
    return ".".join(("xraycardiac", *(parts[:-1] if parts[-1] == "__init__" else parts)))


def runtime_tree(source: str) -> ast.Module:
    """The module's AST without its ``if TYPE_CHECKING:`` blocks (imports for annotations only)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            node.body = [  # type: ignore[attr-defined]
                n
                for n in body
                if not (isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
            ]
    return tree


def import_graph(library: Path) -> tuple[dict[str, set[str]], list[str]]:
    """Module -> the library modules it imports (anywhere in it), and the private names imported across."""
    paths = {module_name(library, p): p for p in library.rglob("*.py")}

    def known(name: str) -> str:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name

    edges: dict[str, set[str]] = {m: set() for m in paths}
    private = []
    for mod, path in paths.items():
        for node in ast.walk(runtime_tree(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if not node.module.startswith("xraycardiac"):
                    continue
                for alias in node.names:
                    target = known(f"{node.module}.{alias.name}") or known(node.module)
                    if target and target != mod:
                        edges[mod].add(target)
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append(f"{mod} imports {node.module}.{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("xraycardiac") and known(alias.name) not in ("", mod):
                        edges[mod].add(known(alias.name))
    # a package __init__ re-exports its modules lazily: an edge into it is not a cycle of ideas
    inits = {m for m, p in paths.items() if p.name == "__init__.py"}
    return {m: es - inits for m, es in edges.items() if m not in inits}, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def long_files(folders: list[Path], root: Path = REPO, limit: int = MAX_LINES) -> list[str]:
    """``file (N lines)`` (relative to ``root``) for each Python file over ``limit`` lines."""
    out = []
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            n = len(path.read_text(encoding="utf-8").splitlines())
            if n > limit:
                out.append(f"{path.relative_to(root).as_posix()} ({n} lines)")
    return out


def helper_copies(folders: list[Path], root: Path = REPO, home: Path = JSONUTIL) -> list[str]:
    """``file:line name`` for each function (at any depth) named like a ``jsonutil`` helper outside ``home``."""
    out = []
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            if path == home:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    if node.name.lstrip("_") in JSONUTIL_COPIES:
                        out.append(f"{path.relative_to(root).as_posix()}:{node.lineno} {node.name}")
    return out


def test_no_pipeline_or_ground_module_imports_jobs() -> None:
    assert upward_job_imports(LIBRARY) == []


def test_no_import_cycles() -> None:
    edges, _ = import_graph(LIBRARY)
    assert cycles(edges) == []


def test_no_private_names_cross_modules() -> None:
    _, private = import_graph(LIBRARY)
    assert private == []


def test_a_cycle_hidden_in_a_function_and_a_private_import_are_caught(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("from xraycardiac.b import _helper\n", encoding="utf-8")
    (tmp_path / "b.py").write_text("def _helper():\n    from xraycardiac.a import x\n", encoding="utf-8")
    (tmp_path / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from xraycardiac.a import x\n",
        encoding="utf-8",
    )
    edges, private = import_graph(tmp_path)
    assert cycles(edges) == [["xraycardiac.a", "xraycardiac.b"]], edges
    assert private == ["xraycardiac.a imports xraycardiac.b._helper"]
    assert edges["xraycardiac.c"] == set()


def test_no_source_file_is_over_700_lines() -> None:
    assert long_files([LIBRARY, *(REPO / f for f in SLICER_FOLDERS)]) == []


@pytest.mark.parametrize("where", ["import xraycardiac.jobs.runner", "from xraycardiac.jobs import run_job"])
def test_an_upward_import_in_a_function_is_caught(tmp_path: Path, where: str) -> None:
    (tmp_path / "xray2ct").mkdir()
    (tmp_path / "xray2ct" / "evaluate.py").write_text(f"def f():\n    {where}\n", encoding="utf-8")
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "x2ct.py").write_text(f"{where}\n", encoding="utf-8")
    (tmp_path / "cli.py").write_text(f"{where}\n", encoding="utf-8")
    bad = upward_job_imports(tmp_path)
    assert len(bad) >= 1 and all(b.startswith("xraycardiac/xray2ct/evaluate.py") for b in bad), bad


def test_a_long_file_is_caught(tmp_path: Path) -> None:
    (tmp_path / "big.py").write_text("x = 1\n" * (MAX_LINES + 1), encoding="utf-8")
    (tmp_path / "small.py").write_text("x = 1\n" * MAX_LINES, encoding="utf-8")
    assert long_files([tmp_path], root=tmp_path) == [f"big.py ({MAX_LINES + 1} lines)"]


def test_jsonutil_helpers_have_one_home() -> None:
    assert helper_copies([LIBRARY, *(REPO / f for f in SLICER_FOLDERS), REPO / "benchmarks"]) == []


def test_a_helper_copy_is_caught(tmp_path: Path) -> None:
    (tmp_path / "jsonutil.py").write_text("def is_int(v):\n    return True\n", encoding="utf-8")
    (tmp_path / "a.py").write_text(
        "class C:\n    def check(self):\n        def finite(v):\n            return True\n", encoding="utf-8"
    )
    (tmp_path / "b.py").write_text("def _json_default(v):\n    return v\n", encoding="utf-8")
    assert helper_copies([tmp_path], root=tmp_path, home=tmp_path / "jsonutil.py") == [
        "a.py:3 finite",
        "b.py:1 _json_default",
    ]
