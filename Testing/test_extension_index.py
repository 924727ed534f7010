"""The Slicer Extensions Index checks of our catalog entry that need no network, done here.

The Index runs ``scripts/check_description_files.py`` of Slicer/ExtensionsIndex (read at commit 07f1d1b,
2026-08-07) on ``<Name>.json``: it clones ``scm_url``, validates the JSON against its ``$schema``, wants
LF line endings, an extension name that does not start with "Slicer", a known category, a repository
name that does, ``project(<Name>)`` in the top-level CMakeLists.txt, reachable icon and screenshot URLs
and a licence file at the root. These tests check each of those offline (URLs: the file they name
exists in this repository); docs/RELEASE.md says how to run the Index's script itself.

Catalog schema: slicer-extension-catalog-entry-schema-v1.0.2.json (Slicer/Slicer ``Schemas/``, commit
583e9b3): required ``$schema``, ``category``, ``scm_url``; no other keys than those of ``SCHEMA_TYPES``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCHEMA_URL = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json#"
SCHEMA_REQUIRED = ("$schema", "category", "scm_url")
SCHEMA_TYPES: dict[str, type] = {
    "$schema": str,
    "category": str,
    "scm_url": str,
    "scm_revision": str,
    "scm_type": str,  # "git" or "local"
    "build_dependencies": list,  # of str
    "dicom_support_rule": str,
    "build_subdirectory": str,
    "enabled": bool,
    "tier": int,  # 1..5
}
LICENSE_NAMES = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt")
# sha256 of the Apache License 2.0 terms (from "TERMS AND CONDITIONS FOR USE" to "END OF TERMS AND
# CONDITIONS", runs of white space as one space): the same for apache.org's LICENSE-2.0.txt and GitHub's copy.
APACHE_2_TERMS_SHA256 = "b316b715c7f48af32f6265b3de80b9656fdbddc57f5854215c8a4c6e0ad42c05"
_RAW_URL = re.compile(r"^https://raw\.githubusercontent\.com/([^/]+)/([^/]+)/([^/]+)/(.+)$")


def schema_problems(entry: object, where: str) -> list[str]:
    """The catalog entry against schema v1.0.2: required keys, no unknown keys, value types and ranges."""
    if not isinstance(entry, dict):
        return [f"{where}: expected a JSON object, got {type(entry).__name__}"]
    problems = [f"{where}: required key {k!r} is missing" for k in SCHEMA_REQUIRED if k not in entry]
    problems += [
        f"{where}: key {k!r} is not in schema v1.0.2 (allowed: {sorted(SCHEMA_TYPES)})"
        for k in sorted(set(entry) - set(SCHEMA_TYPES))
    ]
    for key, kind in SCHEMA_TYPES.items():
        value = entry.get(key)
        # bool is an int in Python, never in JSON schema
        if key in entry and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            problems.append(f"{where}: {key!r} must be a {kind.__name__}, got {value!r}")
    if entry.get("$schema") != SCHEMA_URL:
        problems.append(f"{where}: $schema is {entry.get('$schema')!r}; this check knows {SCHEMA_URL!r}")
    if "scm_type" in entry and entry["scm_type"] not in ("git", "local"):
        problems.append(f"{where}: scm_type must be 'git' or 'local', got {entry['scm_type']!r}")
    deps = entry.get("build_dependencies", [])
    if isinstance(deps, list) and not all(isinstance(d, str) for d in deps):
        problems.append(f"{where}: build_dependencies must be a list of strings, got {deps!r}")
    tier = entry.get("tier", 1)
    if isinstance(tier, int) and not isinstance(tier, bool) and not 1 <= tier <= 5:
        problems.append(f"{where}: tier must be 1..5, got {tier}")
    return problems


def catalog_problems(root: Path = REPO) -> list[str]:
    """Index checks of the catalog entry ``<root>/<Name>.json`` against the extension's CMakeLists.txt."""
    entries = sorted(root.glob("*.json"))
    if len(entries) != 1:
        return [
            f"{root}: expected one extension description <Name>.json at the top, found {[p.name for p in entries]}"
        ]
    path, name = entries[0], entries[0].stem
    raw = path.read_bytes()
    problems = [f"{path.name}: CR or CRLF line endings; the Index wants LF only"] if b"\r" in raw else []
    entry = json.loads(raw)
    problems += schema_problems(entry, path.name)
    if name.lower().startswith("slicer"):
        problems.append(
            f"{path.name}: extension name {name!r} starts with 'Slicer', which the Index rejects; "
            f"rename it (e.g. {name[6:]!r}) in the file name and in project()"
        )
    cmake = (root / "CMakeLists.txt").read_text(encoding="utf-8")
    project = re.search(r"project\s*\(\s*([^\s)]+)", cmake, re.IGNORECASE)  # the first, as the Index reads it
    project_name = project.group(1).strip("\"'") if project else None
    if project_name != name:
        problems.append(
            f"CMakeLists.txt: project({project_name}) differs from the description file name {name!r}"
        )
    category = re.search(r'set\(\s*EXTENSION_CATEGORY\s+"([^"]+)"\s*\)', cmake)
    if not category or category.group(1) != entry.get("category"):
        problems.append(
            f"CMakeLists.txt: EXTENSION_CATEGORY {category and category.group(1)!r} differs from "
            f"{path.name}'s category {entry.get('category')!r}"
        )
    scm = urllib.parse.urlsplit(str(entry.get("scm_url", "")))
    org_repo = scm.path.strip("/").removesuffix(".git").split("/")
    if scm.scheme not in ("git", "https") or len(org_repo) != 2:
        problems.append(
            f"{path.name}: scm_url {entry.get('scm_url')!r} is not git:// or https://<host>/<org>/<repo>"
        )
    elif not org_repo[1].startswith("Slicer"):
        problems.append(f"{path.name}: the repository name {org_repo[1]!r} should start with 'Slicer'")
    for key in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        urls = re.search(rf'set\(\s*{key}\s+"([^"]+)"\s*\)', cmake)
        for url in urls.group(1).split() if urls else []:
            m = _RAW_URL.match(url)
            if not m or m.group(1, 2) != tuple(org_repo) or not (root / m.group(4)).is_file():
                problems.append(
                    f"CMakeLists.txt: {key} {url} is not a file of {'/'.join(org_repo)} in this tree"
                )
        if not urls:
            problems.append(f"CMakeLists.txt: {key} is not set")
    return problems


def license_problems(root: Path = REPO) -> list[str]:
    """A licence file at the root (the Index's names), and it is the Apache License 2.0 pyproject.toml declares."""
    found = [root / n for n in LICENSE_NAMES if (root / n).is_file()]
    if not found:
        return [f"{root}: no licence file ({', '.join(LICENSE_NAMES)}); the Index requires one"]
    text = found[0].read_text(encoding="utf-8")
    start, end = text.find("TERMS AND CONDITIONS FOR USE"), text.find("END OF TERMS AND CONDITIONS")
    terms = " ".join(text[start : end + len("END OF TERMS AND CONDITIONS")].split())
    problems = []
    if start < 0 or end < 0 or hashlib.sha256(terms.encode()).hexdigest() != APACHE_2_TERMS_SHA256:
        problems.append(f"{found[0]}: not the unmodified Apache License 2.0 terms")
    declared = re.search(
        r"^license\s*=\s*(.+?)\s*$", (root / "pyproject.toml").read_text(encoding="utf-8"), re.M
    )
    if not declared or declared.group(1) != '{ text = "Apache-2.0" }':
        problems.append(
            f"pyproject.toml: license is {declared and declared.group(1)!r}, but {found[0].name} is Apache-2.0"
        )
    return problems


def test_catalog_entry_passes_the_index_checks() -> None:
    problems = catalog_problems()
    assert problems == [], "\n".join(problems)


def test_catalog_entry_values() -> None:
    (path,) = REPO.glob("*.json")
    assert path.name == "XRayCardiac.json"
    entry = json.loads(path.read_text(encoding="utf-8"))
    assert entry["build_dependencies"] == ["PyTorch"], entry.get("build_dependencies")


def test_license_is_apache_2() -> None:
    problems = license_problems()
    assert problems == [], "\n".join(problems)


# ------------------------------------------------------------------------------ each check can fail


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The files the Index looks at, copied to break."""
    for name in ("CMakeLists.txt", "XRayCardiac.json", "LICENSE", "pyproject.toml"):
        shutil.copy2(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "Resources", tmp_path / "Resources")
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def _slicer_prefixed(root: Path) -> None:
    (root / "XRayCardiac.json").rename(root / "SlicerXRayCardiac.json")
    _edit(root / "CMakeLists.txt", "project(XRayCardiac)", "project(SlicerXRayCardiac)")


def _entry(root: Path, **changes: object) -> None:
    entry = json.loads((root / "XRayCardiac.json").read_text(encoding="utf-8"))
    entry.update(changes)
    entry = {k: v for k, v in entry.items() if v is not None}
    (root / "XRayCardiac.json").write_text(json.dumps(entry, indent=2) + "\n", encoding="utf-8")


BREAKS: dict[str, tuple[Callable[[Path], None], str]] = {
    "slicer-prefix": (_slicer_prefixed, "starts with 'Slicer'"),
    "project-name": (
        lambda r: _edit(r / "CMakeLists.txt", "project(XRayCardiac)", "project(XRay)"),
        "project(XRay)",
    ),
    "no-category": (lambda r: _entry(r, category=None), "required key 'category'"),
    "unknown-key": (lambda r: _entry(r, slicer_version="5.10"), "key 'slicer_version' is not in schema"),
    "tier-string": (lambda r: _entry(r, tier="1"), "'tier' must be a int"),
    "tier-range": (lambda r: _entry(r, tier=6), "tier must be 1..5"),
    "crlf": (lambda r: _edit(r / "XRayCardiac.json", "\n", "\r\n"), "CRLF"),
    "category-mismatch": (lambda r: _entry(r, category="Utilities"), "EXTENSION_CATEGORY 'Cardiac' differs"),
    "repo-name": (
        lambda r: _entry(r, scm_url="https://github.com/SlicerXRayCardiac/XRayCardiac.git"),
        "should start with 'Slicer'",
    ),
    "icon-missing": (lambda r: (r / "Resources/Icons/XRayCardiac.png").unlink(), "EXTENSION_ICONURL"),
}


@pytest.mark.parametrize("name", BREAKS)
def test_broken_catalog_entry_is_caught(copy: Path, name: str) -> None:
    assert catalog_problems(copy) == [], "the unbroken copy must pass"
    breaker, expected = BREAKS[name]
    breaker(copy)
    problems = catalog_problems(copy)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    "breaker, expected",
    [
        (lambda r: (r / "LICENSE").unlink(), "no licence file"),
        (lambda r: _edit(r / "LICENSE", "royalty-free", "royalty-bearing"), "not the unmodified Apache"),
        (lambda r: _edit(r / "pyproject.toml", '"Apache-2.0"', '"MIT"'), "pyproject.toml: license"),
    ],
    ids=["missing", "edited", "pyproject-differs"],
)
def test_broken_license_is_caught(copy: Path, breaker: Callable[[Path], None], expected: str) -> None:
    assert license_problems(copy) == [], "the unbroken copy must pass"
    breaker(copy)
    problems = license_problems(copy)
    assert any(expected in p for p in problems), problems
