"""Shared pytest fixtures."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Slicer puts every scripted module's folder on sys.path; the module-logic tests import their
# <Module>Lib packages the same way.
_REPO = Path(__file__).resolve().parents[1]
for _folder in ("XRayCardiacCommon", "XRayToCT", "XRayCoronaryRecon"):
    if str(_REPO / _folder) not in sys.path:
        sys.path.insert(0, str(_REPO / _folder))


@pytest.fixture
def xraycardiac_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh, empty XRAYCARDIAC_HOME (model cache) for one test; the in-process hash cache is cleared."""
    from xraycardiac.models import clear_hash_cache

    home = tmp_path / "xraycardiac_home"
    home.mkdir()
    monkeypatch.setenv("XRAYCARDIAC_HOME", str(home))
    clear_hash_cache()
    yield home
    clear_hash_cache()
