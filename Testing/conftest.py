"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


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
