"""The library's layers point one way (docs/ARCHITECTURE.md): checked statically, like test_slicer_static.

- Only the top layer (``jobs/``, the command lines, the demo) imports ``xraycardiac.jobs``; the
  pipelines and the ground never do, also not inside a function.
- No source file of the library or the Slicer modules is longer than 700 lines (one idea per file).

Not yet checked here (issue 18 is open): import cycles (``anatomy.coronary_tree`` <->
``coronary_tree_vtk`` remains) and private names imported across modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "xraycardiac"
SLICER_FOLDERS = ("XRayCardiacCommon", "XRayToCT", "XRayCoronaryRecon", "CardiacSynth")
MAX_LINES = 700


def is_top_layer(rel: Path) -> bool:
    """``jobs/``, ``cli.py`` files, ``train_cli.py`` and ``demo.py`` may run jobs."""
    return rel.parts[0] == "jobs" or rel.name in ("cli.py", "train_cli.py", "demo.py")


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


def long_files(folders: list[Path], root: Path = REPO, limit: int = MAX_LINES) -> list[str]:
    """``file (N lines)`` (relative to ``root``) for each Python file over ``limit`` lines."""
    out = []
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            n = len(path.read_text(encoding="utf-8").splitlines())
            if n > limit:
                out.append(f"{path.relative_to(root).as_posix()} ({n} lines)")
    return out


def test_no_pipeline_or_ground_module_imports_jobs() -> None:
    assert upward_job_imports(LIBRARY) == []


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
