"""Self-tests that pass on a fresh Slicer: the tests that run jobs install the dependencies or skip."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from test_slicer_static import MODULES

# --------------------------------------------- self-tests on a fresh Slicer: install or skip, say why

SELFTEST_GUARD = "dependenciesForSelfTest"
_JOB_CALLS = {"simulate", "synthesize", "generate", "run", "wait_and_import"}


def check_selftests_guard_dependencies(py: Path) -> list[str]:
    """Every ``test_*`` method of a module's self-test that runs a job or imports the library (torch,
    kornia, scipy through the Lib code) first passes ``XRayCardiacCommon.dependenciesForSelfTest``,
    which installs the dependencies (when asked to) or skips with the reason."""
    problems = []
    for cls in ast.walk(ast.parse(py.read_text(encoding="utf-8"))):
        if not (isinstance(cls, ast.ClassDef) and cls.name.endswith("Test")):
            continue
        for fn in cls.body:
            if not (isinstance(fn, ast.FunctionDef) and fn.name.startswith("test_")):
                continue
            needs = any(
                (isinstance(n, ast.Attribute) and n.attr in _JOB_CALLS and isinstance(n.ctx, ast.Load))
                or (
                    isinstance(n, ast.ImportFrom)
                    and (n.module or "").split(".")[0].endswith("Lib")
                    or isinstance(n, ast.ImportFrom)
                    and (n.module or "").startswith("xraycardiac")
                )
                for n in ast.walk(fn)
            )
            if not needs:
                continue
            body = [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
            first = body[0] if body else None
            guarded = isinstance(first, ast.If) and any(
                isinstance(n, ast.Attribute) and n.attr == SELFTEST_GUARD for n in ast.walk(first.test)
            )
            if not guarded:
                problems.append(
                    f"{py.name}:{fn.lineno}: {cls.name}.{fn.name} needs the Python dependencies but does not "
                    f"start with 'if not XRayCardiacCommon.{SELFTEST_GUARD}(self, ...): return'"
                )
    return problems


@pytest.mark.parametrize(
    "module", [m for m in MODULES if m.name != "XRayCardiacCommon"], ids=lambda m: m.name
)
def test_selftests_install_or_skip(module: Path) -> None:
    problems = check_selftests_guard_dependencies(module / f"{module.name}.py")
    assert problems == [], "\n".join(problems)


def test_unguarded_selftest_is_caught(tmp_path: Path) -> None:
    py = tmp_path / "M.py"
    py.write_text(
        "class MTest:\n"
        "    def test_a(self):\n"
        "        '''doc'''\n"
        "        if not XRayCardiacCommon.dependenciesForSelfTest(self, 'M'):\n"
        "            return\n"
        "        logic.simulate(p)\n"
        "    def test_b(self):\n"
        "        from XRayToCTLib.generate import installed_x2ct_models\n"
        "    def test_c(self):\n"
        "        self.assertEqual(1, 1)\n",
        encoding="utf-8",
    )
    problems = check_selftests_guard_dependencies(py)
    assert len(problems) == 1 and "test_b" in problems[0], problems
