"""Shared pytest fixtures."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Slicer puts every scripted module's folder on sys.path; the module-logic tests import their
# <Module>Lib packages the same way.
_REPO = Path(__file__).resolve().parents[1]
for _folder in ("XRayCardiacCommon", "XRayToCT", "XRayCoronaryRecon", "CardiacSynth"):
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


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op torch thread for a module: tiny tensors on a shared 2-core machine run far slower with two."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_pair_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A coronary pair dataset of 3 trees x 1 pair at 64 x 64 px (seed 0), made once per session."""
    from xraycardiac.coronary.synth import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("tiny_pairs") / "pairs"
    summary = synthesize(SynthConfig(trees=3, pairs_per_tree=1, image_size=64, seed=0), root)
    assert summary["written"] == 3, summary
    return root


@pytest.fixture(scope="session")
def four_view_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One coronary tree seen in two 256 x 256 px pairs (four views; seed 3, 0.3 mm voxels), made once per
    session for the N-view job and Slicer tests."""
    from xraycardiac.coronary.synth import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("four_views") / "data"
    synthesize(SynthConfig(trees=1, pairs_per_tree=2, image_size=256, seed=3, voxel_mm=0.3), root)
    return root
