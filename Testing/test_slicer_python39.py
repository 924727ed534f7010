"""Slicer < 5.10 gets a message, not a trace: what loads with a module file imports on Python 3.9.

XRayCardiac needs Slicer >= 5.10 (Python 3.12); Slicer 5.8 runs Python 3.9 (Slicer's CMakeLists.txt,
Slicer_REQUIRED_PYTHON_VERSION 3.9.10 at v5.8.1, 3.12.10 at v5.10.0). The module files and the repository
files they import at load must parse and import on 3.9 up to ``XRayCardiacCommonLib.support``'s check.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
from test_slicer_static import MODULE_IDS, MODULES, REPO

# ------------------------------------------------------- Slicer < 5.10: a message, not a trace at load
#
# XRayCardiac needs Slicer >= 5.10 (Python 3.12); Slicer 5.8 runs Python 3.9. What Slicer runs when it
# loads a module file (its module-level code and the repository files that imports, transitively) must
# import under Python 3.9, so that the module can say "XRayCardiac needs 3D Slicer 5.10 or newer"
# (XRayCardiacCommonLib.support) instead of failing with a SyntaxError / TypeError trace.

SLICER_SYS_PATH = [
    *MODULES,
    REPO,
]  # Slicer puts every module folder on sys.path, and the library next to them


def _module_file(name: str, roots: list[Path]) -> Path | None:
    """The file ``import name`` loads from the repository (a package's ``__init__.py``), None if not ours."""
    parts = name.split(".")
    for root in roots:
        base = root.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _lazy_names(py: Path) -> dict[str, str]:
    """A package's PEP 562 ``_LAZY = {"name": "module", ...}`` table (empty when it has none)."""
    for node in ast.parse(py.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    return {}


def _load_time_imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(module, names) of the imports that run at import time: everything outside function bodies."""
    found: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return  # runs when called, after the version check
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def load_time_files(entry: Path, roots: list[Path] = SLICER_SYS_PATH) -> list[Path]:
    """The repository files that run when Slicer loads ``entry``: ``entry`` and its load-time imports, transitively.

    ``import a.b`` runs ``a/__init__.py`` and ``a/b.py``; ``from a import x`` runs ``a/__init__.py``, and
    ``a/x.py`` when x is a submodule or a lazy (PEP 562 ``_LAZY``) name of ``a``. Imports inside functions
    run later and are not followed.
    """
    seen: list[Path] = []
    todo = [entry]
    while todo:
        py = todo.pop()
        if py in seen:
            continue
        seen.append(py)
        for module, names in _load_time_imports(ast.parse(py.read_text(encoding="utf-8"))):
            parts = module.split(".")
            targets = [".".join(parts[: i + 1]) for i in range(len(parts))]
            package = _module_file(module, roots)
            lazy = _lazy_names(package) if package is not None else {}
            targets += [lazy.get(n, f"{module}.{n}") for n in names]
            todo += [f for f in (_module_file(t, roots) for t in targets) if f is not None]
    return seen


def _has_pep604_union(node: ast.AST | None) -> bool:
    return node is not None and any(
        isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(node)
    )


def check_python39_load(py: Path) -> list[str]:
    """Python 3.9 syntax, and no ``X | Y`` evaluated at run time: in isinstance / issubclass, or in
    annotations that Python evaluates (files without ``from __future__ import annotations``)."""
    text = py.read_text(encoding="utf-8")
    try:
        tree = ast.parse(text, filename=str(py), feature_version=(3, 9))
    except SyntaxError as exc:
        return [f"{py}:{exc.lineno}: not Python 3.9 syntax ({exc.msg})"]
    postponed = any(
        isinstance(n, ast.ImportFrom)
        and n.module == "__future__"
        and any(a.name == "annotations" for a in n.names)
        for n in tree.body
    )
    problems = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("isinstance", "issubclass")
            and len(node.args) == 2
            and _has_pep604_union(node.args[1])
        ):
            problems.append(f"{py}:{node.lineno}: {node.func.id}(..., X | Y) is a TypeError on Python 3.9")
    if postponed:
        return problems

    def annotations(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
                if arg is not None and _has_pep604_union(arg.annotation):
                    problems.append(f"{py}:{arg.lineno}: annotation of {arg.arg!r} uses X | Y")
            if _has_pep604_union(node.returns):
                problems.append(f"{py}:{node.lineno}: return annotation of {node.name}() uses X | Y")
            in_function = True
        elif isinstance(node, ast.AnnAssign) and not in_function and _has_pep604_union(node.annotation):
            problems.append(f"{py}:{node.lineno}: annotation uses X | Y")
        for child in ast.iter_child_nodes(node):
            annotations(child, in_function)

    annotations(tree, False)
    return problems


def _python39() -> str | None:
    """A Python 3.9 interpreter (Slicer 5.8's Python), or None."""
    import glob
    import os
    import subprocess

    candidates = [os.environ.get("XRAYCARDIAC_PYTHON39"), shutil.which("python3.9")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))
    for exe in filter(None, candidates):
        try:
            out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.startswith("Python 3.9"):
            return exe
    return None


@pytest.mark.parametrize("module", MODULES, ids=MODULE_IDS)
def test_module_load_is_python39_clean(module: Path) -> None:
    files = load_time_files(module / f"{module.name}.py")
    problems = [p for f in files for p in check_python39_load(f)]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("module", MODULES, ids=MODULE_IDS)
def test_module_load_needs_no_library(module: Path) -> None:
    """Loading a module file runs no file of ``xraycardiac``: its dependencies may not be installed yet
    (and it needs Python >= 3.10); the shared version check is among the files that load."""
    files = load_time_files(module / f"{module.name}.py")
    names = sorted(f.relative_to(REPO).as_posix() for f in files)
    assert not [n for n in names if n.startswith("xraycardiac/")], names
    assert "XRayCardiacCommon/XRayCardiacCommonLib/support.py" in names, names


@pytest.mark.parametrize("module", MODULES, ids=MODULE_IDS)
def test_module_load_compiles_under_python39(module: Path, tmp_path: Path) -> None:
    import subprocess

    python39 = _python39()
    if python39 is None:
        pytest.skip("no Python 3.9 interpreter (set XRAYCARDIAC_PYTHON39 to one)")
    files = [str(f) for f in load_time_files(module / f"{module.name}.py")]
    script = (
        "import py_compile, sys\n"
        "for i, f in enumerate(sys.argv[2:]):\n"
        "    py_compile.compile(f, cfile=f'{sys.argv[1]}/{i}.pyc', doraise=True)\n"
    )
    out = subprocess.run(
        [python39, "-c", script, str(tmp_path), *files], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]


def test_load_time_files_follow_imports() -> None:
    names = {f.relative_to(REPO).as_posix() for f in load_time_files(REPO / "XRayToCT" / "XRayToCT.py")}
    assert {
        "XRayToCT/XRayToCT.py",
        "XRayToCT/XRayToCTLib/__init__.py",
        "XRayToCT/XRayToCTLib/choices.py",
        "XRayCardiacCommon/XRayCardiacCommon.py",
    } <= names, names
    assert "XRayToCT/XRayToCTLib/generate.py" not in names, "imported inside methods only"


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ("from __future__ import annotations\ndef f(x):\n    return isinstance(x, int | float)\n", True),
        ("def f(x: int | None) -> None:\n    pass\n", True),
        ("def f(x) -> int | None:\n    pass\n", True),
        ("class C:\n    x: int | None = None\n", True),
        ("def f(x):\n    match x:\n        case 1:\n            pass\n", True),
        ("from __future__ import annotations\ndef f(x: int | None) -> int | None:\n    pass\n", False),
        ("def f(x: 'int | None') -> None:\n    y: int | None = x\n", False),
        ("def f(x):\n    return isinstance(x, (int, float)) and x | 1\n", False),
    ],
)
def test_python39_check_can_fail(tmp_path: Path, source: str, caught: bool) -> None:
    py = tmp_path / "mod.py"
    py.write_text(source, encoding="utf-8")
    assert bool(check_python39_load(py)) == caught, check_python39_load(py)


def test_lazy_import_of_the_library_is_followed(tmp_path: Path) -> None:
    """A load-time ``from Pkg import name`` of a lazy name runs the module the name comes from."""
    (tmp_path / "Pkg").mkdir()
    (tmp_path / "Pkg" / "__init__.py").write_text('_LAZY = {"heavy": "Pkg.heavy"}\n', encoding="utf-8")
    (tmp_path / "Pkg" / "heavy.py").write_text("import xraycardiac.geometry\n", encoding="utf-8")
    (tmp_path / "M.py").write_text("from Pkg import heavy\n", encoding="utf-8")
    names = {
        f.relative_to(REPO).as_posix()
        for f in load_time_files(tmp_path / "M.py", [tmp_path, REPO])
        if f.is_relative_to(REPO)
    }
    assert "xraycardiac/geometry/__init__.py" in names, names


def test_version_check_runs_under_python39() -> None:
    """The shared check itself runs on Slicer 5.8's Python and names both versions."""
    import subprocess

    python39 = _python39()
    if python39 is None:
        pytest.skip("no Python 3.9 interpreter (set XRAYCARDIAC_PYTHON39 to one)")
    script = (
        "import sys\n"
        "import XRayCardiacCommonLib\n"
        "from XRayCardiacCommonLib.support import unsupported_slicer_message\n"
        "print(unsupported_slicer_message((5, 8)))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('xraycardiac', 'numpy', 'torch')))\n"
    )
    out = subprocess.run(
        [python39, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO / "XRayCardiacCommon",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    message, imported = out.stdout.strip().splitlines()
    assert message.startswith(
        "XRayCardiac needs 3D Slicer 5.10 or newer (Python 3.12); this is Slicer 5.8 "
    ), message
    assert "with Python 3.9." in message, message
    assert imported == "[]", imported
