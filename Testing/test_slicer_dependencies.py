"""XRayCardiacCommonLib.dependencies: what the modules need installed, read without importing it.

Runs against the real installed distributions of this environment (numpy, torch, ...): no stand-ins.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from test_slicer_static import REPO
from XRayCardiacCommonLib.dependencies import (
    SLICER_5_10_VERSIONS,
    SLICER_PACKAGES,
    TORCH_REQUIREMENT,
    missing_dependencies,
    missing_requirements,
    read_requirements,
    slicer_constraints,
    torch_version_problem,
)

tomllib = pytest.importorskip("tomllib")
PYPROJECT = {
    Requirement(d).name.lower(): Requirement(d)
    for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
}
REQUIREMENTS = REPO / "XRayCardiacCommon" / "Resources" / "requirements.txt"


def test_requirements_leave_out_what_slicer_ships() -> None:
    """pip is never asked for numpy, SimpleITK, ...: an upper bound or a newer floor would replace Slicer's build."""
    names = {Requirement(r).name.lower() for r in read_requirements(REQUIREMENTS)}
    assert not names & {p.lower() for p in SLICER_PACKAGES}, sorted(
        names & {p.lower() for p in SLICER_PACKAGES}
    )
    assert "torch" not in names


@pytest.mark.parametrize(("name", "version"), sorted(SLICER_5_10_VERSIONS.items()))
def test_slicer_5_10_packages_satisfy_the_library(name: str, version: str) -> None:
    """What Slicer 5.10 ships is inside pyproject.toml's range, so using it as it is is right."""
    assert name in SLICER_PACKAGES
    req = PYPROJECT[name.lower()]
    assert req.specifier.contains(version), f"Slicer 5.10 ships {name} {version}; pyproject wants {req}"


def test_torch_requirement_is_pyprojects() -> None:
    assert SpecifierSet(TORCH_REQUIREMENT) == PYPROJECT["torch"].specifier, (
        TORCH_REQUIREMENT,
        PYPROJECT["torch"],
    )


def test_missing_requirements_reads_installed_versions() -> None:
    numpy = importlib.metadata.version("numpy")
    assert missing_requirements([f"numpy=={numpy}", "numpy>=1"]) == []
    assert missing_requirements(["numpy<1", "no-such-package-xraycardiac>=1"]) == [
        "numpy<1",
        "no-such-package-xraycardiac>=1",
    ]


def test_read_requirements_skips_comments_and_options(tmp_path) -> None:
    path = tmp_path / "requirements.txt"
    path.write_text("# c\n\n-c constraints.txt\nkornia>=0.7  # why\nmonai\n", encoding="utf-8")
    assert read_requirements(path) == ["kornia>=0.7", "monai"]


def test_installed_torch_is_checked_against_the_range() -> None:
    torch = importlib.metadata.version("torch")
    assert torch_version_problem(TORCH_REQUIREMENT) is None, torch
    problem = torch_version_problem(">=99")
    assert problem is not None and f"PyTorch {torch} is installed" in problem and "torch>=99" in problem, (
        problem
    )
    assert "Uninstall PyTorch" in problem and "restart Slicer" in problem, problem


def test_constraints_pin_what_is_installed() -> None:
    pins = slicer_constraints()
    assert f"numpy=={importlib.metadata.version('numpy')}" in pins, pins
    assert f"torch=={importlib.metadata.version('torch')}" in pins, pins
    assert not any(p.startswith("no-such") for p in slicer_constraints(("no-such-package-xraycardiac",)))


def test_checks_do_not_import_torch() -> None:
    script = (
        "import sys\n"
        "from XRayCardiacCommonLib.dependencies import missing_requirements, slicer_constraints, "
        "torch_version_problem\n"
        "missing_requirements(['torch>=1', 'numpy>=1']); slicer_constraints(); torch_version_problem()\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO / "XRayCardiacCommon",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_missing_dependencies_lists_torch_and_packages(tmp_path) -> None:
    path = tmp_path / "requirements.txt"
    path.write_text("numpy>=1\nno-such-package-xraycardiac>=1\n", encoding="utf-8")
    assert missing_dependencies(path) == ["no-such-package-xraycardiac>=1"]  # torch of this venv is in range
    assert missing_dependencies(REQUIREMENTS) == [], "this test environment lacks a Slicer-side requirement"
