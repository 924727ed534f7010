"""What the XRayCardiac modules need installed in Slicer's Python, checked without importing it.

``XRayCardiacCommon.ensurePythonDependencies`` (Qt side) installs what these functions report missing:
torch through the PyTorch extension (the build that fits the GPU driver), then the packages of
``Resources/requirements.txt``. Nothing here imports torch or the packages it checks: versions are read
from the installed distributions' metadata, so Slicer's own process never loads torch.

Slicer ships its own builds of some packages (``SLICER_PACKAGES``); the requirements file leaves
them out and every installation runs with ``slicer_constraints()``, which pins what is installed of
them (and the PyTorch extension's torch), so pip fails with a message rather than replace them.
"""

from __future__ import annotations

import importlib.metadata
import os

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

__all__ = [
    "SLICER_PACKAGES",
    "SLICER_5_10_VERSIONS",
    "TORCH_REQUIREMENT",
    "installed_version",
    "missing_dependencies",
    "missing_requirements",
    "read_requirements",
    "slicer_constraints",
    "torch_version_problem",
]

TORCH_REQUIREMENT = ">=2.3,<2.15"
"""torch versions the core library is tested with (pyproject.toml pins the same range)."""

SLICER_PACKAGES = ("numpy", "scipy", "SimpleITK", "pydicom", "pillow", "packaging", "requests", "six")
"""Packages Slicer's installer ships (built against its own Python); never installed or replaced by us."""

SLICER_5_10_VERSIONS = {
    "numpy": "2.0.2",  # SuperBuild/External_python-numpy.cmake at v5.10.0
    "scipy": "1.13.1",  # SuperBuild/External_python-scipy.cmake
    "SimpleITK": "2.5.2",  # SuperBuild/External_SimpleITK.cmake (slicer-v2.5.2 tag)
    "pydicom": "2.4.4",  # SuperBuild/External_python-dicom-requirements.cmake
    "pillow": "11.2.1",  # SuperBuild/External_python-dicom-requirements.cmake
}
"""What Slicer 5.10 ships of the library's dependencies; a test checks pyproject.toml accepts each."""


def installed_version(name: str) -> str | None:
    """The installed version of distribution ``name`` (e.g. ``"2.5.1+cu121"`` for torch), None if absent."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def read_requirements(path: str | os.PathLike[str]) -> list[str]:
    """The requirement lines of a requirements.txt (comments, blank lines and pip options left out)."""
    with open(path, encoding="utf-8") as f:
        lines = (line.split("#", 1)[0].strip() for line in f)
        return [line for line in lines if line and not line.startswith("-")]


def missing_requirements(requirements: list[str]) -> list[str]:
    """The requirements that are not installed at an accepted version (pre-releases accepted)."""
    missing = []
    for text in requirements:
        req = Requirement(text)
        version = installed_version(req.name)
        if version is None or not req.specifier.contains(version, prereleases=True):
            missing.append(text)
    return missing


def torch_version_problem(requirement: str = TORCH_REQUIREMENT) -> str | None:
    """Why an installed torch cannot be used, or None (torch in range, or not installed at all).

    Returns:
        E.g. "PyTorch 2.1.0 is installed, but XRayCardiac needs torch>=2.3,<2.15. ..." with what to do.
    """
    version = installed_version("torch")
    if version is None or SpecifierSet(requirement).contains(version, prereleases=True):
        return None
    return (
        f"PyTorch {version} is installed, but XRayCardiac needs torch{requirement}. Open the 'PyTorch Utils' "
        "module, click 'Uninstall PyTorch', restart Slicer, and start the XRayCardiac job again: it installs "
        f"a matching PyTorch. (Or install one there with the version requirement '{requirement}'.)"
    )


def missing_dependencies(requirements_path: str | os.PathLike[str]) -> list[str]:
    """What a module still needs: torch (absent or outside ``TORCH_REQUIREMENT``), then missing requirements.

    Returns:
        E.g. ``["torch>=2.3,<2.15", "kornia>=0.7,<0.10"]``; an installed torch outside the range is listed
        as ``"torch>=2.3,<2.15 (installed: 2.1.0)"``. Empty when everything is installed.
    """
    missing = []
    torch = installed_version("torch")
    if torch is None:
        missing.append(f"torch{TORCH_REQUIREMENT}")
    elif torch_version_problem() is not None:
        missing.append(f"torch{TORCH_REQUIREMENT} (installed: {torch})")
    return missing + missing_requirements(read_requirements(requirements_path))


def slicer_constraints(names: tuple[str, ...] = SLICER_PACKAGES + ("torch", "torchvision")) -> list[str]:
    """pip constraints that keep the installed ``names`` exactly as they are (``numpy==2.0.2``, ...)."""
    pins = []
    for name in names:
        version = installed_version(name)
        if version is not None:
            pins.append(f"{name}=={version}")
    return pins
