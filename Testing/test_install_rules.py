"""The extension carries the whole ``xraycardiac`` package: its install rules run for real, without Slicer.

A tiny CMake project includes CMake/XRayCardiacPackage.cmake -- the file the top-level CMakeLists.txt
includes -- and calls ``xraycardiac_package`` with Slicer's layout: configure copies the package into
the build tree (``file(COPY)``, what a Slicer build tree loads), ``cmake --install`` installs it
(``install(DIRECTORY)``, what the extension package holds). Then:

- both copies hold exactly the files of the wheel (every .py plus pyproject's package-data), no caches;
- every file the packaged model manifest names, and each part an x2ct bundle names, is there with the
  sha256 its manifest records;
- a child process that can only import the installed copy loads ``x2ct-demo``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "xraycardiac"
RULES = REPO / "CMake" / "XRayCardiacPackage.cmake"
CMAKE = shutil.which("cmake")
# Slicer_QTSCRIPTEDMODULES_LIB_DIR is lib/Slicer-X.Y/qt-scripted-modules (build tree, under CMAKE_BINARY_DIR);
# Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR is "./" + the same inside the extension package (Linux, Windows).
LIB_DIR = "lib/Slicer-5.8/qt-scripted-modules"
CACHES = ("__pycache__", ".pyc")


def _run(args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a command; its stdout, or an AssertionError holding the command and both outputs."""
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"build": build-tree copy, "install": installed copy} of the package folder's parent."""
    if CMAKE is None:
        pytest.skip(
            "cmake is not on PATH, so the extension's install rules (CMake/XRayCardiacPackage.cmake) cannot "
            "run; install CMake >= 3.16 to run this test"
        )
    root = tmp_path_factory.mktemp("install_rules")
    project, build, prefix = root / "project", root / "build", root / "install"
    project.mkdir()
    (project / "CMakeLists.txt").write_text(
        textwrap.dedent(f"""\
            cmake_minimum_required(VERSION 3.16.3)
            project(XRayCardiacInstallRulesTest NONE)
            include("{RULES.as_posix()}")
            xraycardiac_package(
              SOURCE "{PACKAGE.as_posix()}"
              BUILD_DESTINATION "${{CMAKE_BINARY_DIR}}/{LIB_DIR}"
              INSTALL_DESTINATION "./{LIB_DIR}"
              )
            """),
        encoding="utf-8",
    )
    _run([CMAKE, "-S", str(project), "-B", str(build)])
    _run([CMAKE, "--install", str(build), "--prefix", str(prefix)])
    return {"build": build / LIB_DIR, "install": prefix / LIB_DIR}


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Paths (relative to the package's parent) of the ``xraycardiac`` files the wheel ships."""
    pytest.importorskip("setuptools.build_meta", reason="setuptools (the build backend) is not installed")
    src = tmp_path_factory.mktemp("wheel_src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, src / name)
    shutil.copytree(PACKAGE, src / PACKAGE.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = src / "dist"
    code = "import sys; from setuptools import build_meta; build_meta.build_wheel(sys.argv[1])"
    _run([sys.executable, "-c", code, str(out)], cwd=src)
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return {n for n in zf.namelist() if n.startswith(f"{PACKAGE.name}/")}


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in (root / PACKAGE.name).rglob("*") if p.is_file()}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest_files() -> dict[str, str]:
    """{file name under models/weights: sha256} for every file the packaged manifest names.

    An entry names its weights file; an x2ct bundle entry's file (bundle JSON) names its parts in turn.
    """
    weights = PACKAGE / "models" / "weights"
    named: dict[str, str] = {}
    manifest = json.loads((PACKAGE / "models" / "manifest.json").read_text(encoding="utf-8"))
    for entry in manifest["models"]:
        named[entry["file"]] = entry["sha256"]
        if entry["file"].endswith(".json"):
            bundle = json.loads((weights / entry["file"]).read_text(encoding="utf-8"))
            for rec in bundle["files"].values():
                named[rec["file"]] = rec["sha256"]
    return named


def test_cmakelists_ships_the_package_with_these_rules() -> None:
    """The extension's CMakeLists.txt calls the tested function with Slicer's scripted-module folders."""
    cmake = re.sub(r"#.*", "", (REPO / "CMakeLists.txt").read_text(encoding="utf-8"))
    call = re.search(r"xraycardiac_package\((.*?)\)", cmake, re.S)
    assert "include(${CMAKE_CURRENT_SOURCE_DIR}/CMake/XRayCardiacPackage.cmake)" in cmake
    assert call, "CMakeLists.txt does not call xraycardiac_package(...)"
    assert call.group(1).split() == [
        "SOURCE",
        "${CMAKE_CURRENT_SOURCE_DIR}/xraycardiac",
        "BUILD_DESTINATION",
        "${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}",
        "INSTALL_DESTINATION",
        "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}",
    ], call.group(1)
    assert "install(" not in cmake and "file(COPY" not in cmake, (
        "a second copy/install rule in CMakeLists.txt"
    )


@pytest.mark.parametrize("tree", ["build", "install"])
def test_copy_holds_exactly_the_wheels_files(
    trees: dict[str, Path], wheel_files: set[str], tree: str
) -> None:
    got = _files(trees[tree])
    assert not [f for f in got if any(c in f for c in CACHES)], "caches were copied"
    assert got == wheel_files, (
        f"{tree} tree vs wheel: missing {sorted(wheel_files - got)}; not in the wheel {sorted(got - wheel_files)}"
    )


@pytest.mark.parametrize("tree", ["build", "install"])
def test_every_manifest_file_is_there_and_verifies(trees: dict[str, Path], tree: str) -> None:
    named = _manifest_files()
    assert sum(f.endswith(".pt") for f in named) >= 6, sorted(named)  # 4 models + 2 x2ct bundles of 3 parts
    models = trees[tree] / PACKAGE.name / "models"
    assert _sha256(models / "manifest.json") == _sha256(PACKAGE / "models" / "manifest.json")
    missing = sorted(f for f in named if not (models / "weights" / f).is_file())
    assert not missing, f"{tree} tree lacks {len(missing)} of {len(named)} manifest files: {missing}"
    wrong = sorted(f for f, sha in named.items() if _sha256(models / "weights" / f) != sha)
    assert not wrong, f"{tree} tree: sha256 differs from the manifest for {wrong}"


def test_load_bundle_from_the_installed_copy(trees: dict[str, Path], tmp_path: Path) -> None:
    installed = trees["install"]
    home = tmp_path / "xraycardiac_home"
    home.mkdir()
    code = textwrap.dedent("""\
        import json, pathlib, xraycardiac
        from xraycardiac.xray2ct.bundle import load_bundle
        bundle = load_bundle("x2ct-demo")
        print(json.dumps({"package": str(pathlib.Path(xraycardiac.__file__).resolve().parent),
                          "folder": str(pathlib.Path(bundle.source["folder"]).resolve()),
                          "model": bundle.source["model"], "mode": bundle.mode}))
        """)
    env = {**os.environ, "PYTHONPATH": str(installed), "XRAYCARDIAC_HOME": str(home), "OMP_NUM_THREADS": "1"}
    out = _run([sys.executable, "-c", code], cwd=tmp_path, env=env)
    got = json.loads(out.strip().splitlines()[-1])
    print("xraycardiac imported from", got["package"])
    package = (installed / PACKAGE.name).resolve()
    assert Path(got["package"]) == package, f"imported {got['package']}, not the installed copy {package}"
    assert Path(got["folder"]).is_relative_to(package), got
    assert (got["model"], got["mode"]) == ("x2ct-demo", "biplanar"), got
