"""XRayToCT data pipeline: HU mapping, CT cube, view geometry and scale, cache build, dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from xraycardiac.io import write_volume
from xraycardiac.phantoms.chest import LABELS, ChestPhantomConfig, make_chest_phantom
from xraycardiac.projection import project_labels
from xraycardiac.volume import Volume
from xraycardiac.xray2ct.data import (
    X2CTDataConfig,
    X2CTDataset,
    augment_views,
    build_cache,
    discover_cases,
    hu_to_unit,
    parse_shard,
    prepare_ct,
    render_views,
    split_of_group,
    unit_to_hu,
    view_geometries,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = X2CTDataConfig(grid=16, spacing_mm=16.0)  # a 256 mm cube, like the demo's, at 16 mm voxels


def _air(config: X2CTDataConfig) -> np.ndarray:
    return np.full((config.grid,) * 3, -1000.0, dtype=np.float32)


def _cube_volume(array: np.ndarray, config: X2CTDataConfig) -> Volume:
    """A volume on the cube grid of ``config`` centred on RAS (0, 0, 0)."""
    origin = -config.spacing_mm * (config.grid - 1) / 2.0
    return Volume.from_geometry(array, (config.spacing_mm,) * 3, (origin,) * 3)


def _centroid_uv(image: np.ndarray) -> tuple[float, float]:
    """(column, row) intensity centroid of a (rows, cols) image."""
    rows, cols = np.indices(image.shape)
    w = np.clip(image, 0, None)
    return float((cols * w).sum() / w.sum()), float((rows * w).sum() / w.sum())


# --- intensities and config ------------------------------------------------------------------------


def test_hu_unit_round_trip_and_window_errors() -> None:
    hu = np.array([-1000.0, -999.5, -250.0, 0.0, 400.0, 1000.0], dtype=np.float32)
    unit = hu_to_unit(hu)
    np.testing.assert_allclose(unit, [-1.0, -0.9995, -0.25, 0.0, 0.4, 1.0], atol=1e-6)
    np.testing.assert_allclose(unit_to_hu(unit), hu, atol=1e-3)
    assert hu_to_unit(np.array([-3024.0, 3000.0])).tolist() == [-1.0, 1.0]  # clipped to the window
    t = hu_to_unit(torch.tensor([-160.0, 240.0]), (-160.0, 240.0))
    assert t.tolist() == [-1.0, 1.0] and torch.allclose(
        unit_to_hu(t, (-160.0, 240.0)), torch.tensor([-160.0, 240.0])
    )
    for bad in ((1000.0, -1000.0), (0.0, float("inf")), (1.0,)):
        with pytest.raises(ValueError, match=r"^window: expected"):
            hu_to_unit(hu, bad)
    with pytest.raises(ValueError, match=r"X2CTDataConfig.hu_window: expected finite"):
        X2CTDataConfig(hu_window=(500.0, -500.0))


def test_config_validates_every_field_and_round_trips() -> None:
    cases = {
        "grid": dict(grid=8), "spacing_mm": dict(spacing_mm=0.0), "views": dict(views=("pa", "ap")),
        "drr_size": dict(drr_size=4), "detector_spacing_mm": dict(detector_spacing_mm=-1.0),
        "sod_mm": dict(grid=128, spacing_mm=8.0), "drr_water_mm": dict(drr_water_mm=float("nan")),
        "augment_gamma": dict(augment_gamma=(0.0, 1.0)), "augment_noise_std": dict(augment_noise_std=-0.1),
        "augment_brightness": dict(augment_brightness=(0.1, -0.1)),
    }  # fmt: skip
    for field, kwargs in cases.items():
        with pytest.raises(ValueError, match=rf"X2CTDataConfig\.{field}: expected .*got"):
            X2CTDataConfig(**kwargs)
    with pytest.raises(ValueError, match="views: expected a non-empty tuple of distinct names"):
        X2CTDataConfig(views=("pa", "pa"))
    cfg = X2CTDataConfig(grid=32, views=["lateral"], hu_window=[-1024, 3071])
    assert X2CTDataConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match=r"where: unknown X2CTDataConfig field\(s\) \['colour'\]"):
        X2CTDataConfig.from_dict({"colour": 1}, where="where")
    paper = X2CTDataConfig.preset("paper")
    assert (paper.grid, paper.spacing_mm, paper.cube_mm, paper.image_size) == (128, 2.5, 320.0, 128)


@pytest.mark.parametrize("preset", ["demo", "paper"])
def test_default_detector_holds_the_whole_cube_tightly(preset: str) -> None:
    cfg = X2CTDataConfig.preset(preset)
    half = cfg.cube_mm / 2.0
    corners = np.array([[x, y, z] for x in (-half, half) for y in (-half, half) for z in (-half, half)])
    centre = np.array([5.0, -20.0, 100.0])
    for name, geom in view_geometries(cfg, centre).items():
        uv = geom.project(corners + centre) - (cfg.image_size - 1) / 2.0
        reach = np.abs(uv).max() / (cfg.image_size / 2.0)  # 1.0 = the detector's outer edge
        assert 0.97 < reach <= 1.0 + 1e-9, f"{name}: cube corners reach {reach:.3f} of the half detector"
        assert np.allclose(geom.isocenter, centre) and geom.sid_mm == 949.0 and geom.sod_mm == 541.0


# --- orientation, orthogonality and scale of the views ---------------------------------------------


def test_pa_view_is_radiological_and_consistent_with_the_label_map() -> None:
    """Heart (left of midline) on the image's right at PA, and denser there than the lung opposite."""
    cfg = X2CTDataConfig(grid=24, spacing_mm=12.0)
    ct, labels = make_chest_phantom(ChestPhantomConfig(shape_ijk=(24, 24, 24), spacing_mm=12.0, seed=3))
    heart_ras = labels.ijk_to_ras_points(np.argwhere(labels.array == LABELS["heart"])[:, ::-1]).mean(axis=0)
    assert heart_ras[0] < -10.0, f"phantom heart centroid x = {heart_ras[0]:.1f} mm (expected left, x < 0)"
    cube = prepare_ct(ct, cfg)
    pa = view_geometries(cfg, cube.center_ras())["pa"]
    heart_len, _ = project_labels(labels, pa, [LABELS["heart"]])
    u_heart, _ = _centroid_uv(heart_len[0])
    centre = (cfg.image_size - 1) / 2.0
    assert u_heart > centre + 1.0, f"PA heart centroid column {u_heart:.2f}, image centre {centre}"
    drr = render_views(cube, cfg)[0]
    rows = heart_len[0].max(axis=1) > 20.0  # rows crossing the heart
    cols = np.arange(cfg.image_size)
    right = drr[rows][:, cols > centre + 2].mean()
    left = drr[rows][:, cols < centre - 2].mean()
    assert right > left, f"PA DRR over the heart rows: image-right {right:.4f} <= image-left {left:.4f}"


def test_lateral_is_orthogonal_and_anterior_is_on_the_left() -> None:
    cfg = TINY
    c = cfg.grid // 2

    def blob_views(di: int, dj: int) -> np.ndarray:
        a = _air(cfg)
        a[c - 1 : c + 1, c - 1 + dj : c + 1 + dj, c - 1 + di : c + 1 + di] = 1000.0  # 2³ voxels, (k, j, i)
        return render_views(_cube_volume(a, cfg), cfg)

    base, moved_x, moved_y = blob_views(0, 0), blob_views(-4, 0), blob_views(0, 4)  # -x = left, +y = anterior
    (u0, v0), (ul0, vl0) = _centroid_uv(base[0]), _centroid_uv(base[1])
    (u1, v1), (ul1, vl1) = _centroid_uv(moved_x[0]), _centroid_uv(moved_x[1])
    assert u1 - u0 > 3.0, f"PA column moved {u1 - u0:.2f} px for 64 mm toward the patient's left"
    assert abs(ul1 - ul0) < 0.05 and abs(vl1 - vl0) < 0.05, f"lateral moved ({ul1 - ul0}, {vl1 - vl0}) px"
    assert abs(v1 - v0) < 0.05
    (u2, _), (ul2, _) = _centroid_uv(moved_y[0]), _centroid_uv(moved_y[1])
    assert abs(u2 - u0) < 0.05, f"PA column moved {u2 - u0:.3f} px along the beam"
    assert ul0 - ul2 > 3.0, f"lateral column moved {ul2 - ul0:.2f} px for 64 mm anterior (expected < 0)"


def test_view_values_are_water_equivalent_path_lengths() -> None:
    """A 256 mm water cube: the central ray reads 256 / 400 at both views, whatever else is in the image."""
    cfg = TINY
    water = _cube_volume(np.zeros((cfg.grid,) * 3, dtype=np.float32), cfg)
    views = render_views(water, cfg)
    assert views.shape == (2, 16, 16) and views.dtype == np.float32
    centre = views[:, 7:9, 7:9].mean(axis=(1, 2))
    np.testing.assert_allclose(centre, 256.0 / 400.0, rtol=0.02, err_msg=f"central values {centre}")
    half = _cube_volume(np.full((cfg.grid,) * 3, -500.0, dtype=np.float32), cfg)  # mu halves -> values halve
    np.testing.assert_allclose(render_views(half, cfg), views / 2.0, rtol=1e-4, atol=1e-6)


def test_augmentation_is_seeded_and_keeps_shape() -> None:
    cfg = TINY
    ct = _cube_volume(np.zeros((cfg.grid,) * 3, dtype=np.float32), cfg)
    clean = render_views(ct, cfg)
    a = render_views(ct, cfg, augment=np.random.default_rng(1))
    b = render_views(ct, cfg, augment=np.random.default_rng(1))
    c = render_views(ct, cfg, augment=np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert a.shape == clean.shape and np.abs(a - c).max() > 1e-3 and np.abs(a - clean).max() > 1e-3
    none = X2CTDataConfig(grid=16, spacing_mm=16.0, augment_gamma=(1.0, 1.0), augment_contrast=(1.0, 1.0),
                          augment_brightness=(0.0, 0.0), augment_noise_std=0.0)  # fmt: skip
    batch = torch.rand(3, 2, 8, 8)
    assert torch.allclose(augment_views(batch, none, torch.Generator().manual_seed(0)), batch)


# --- CT cube ---------------------------------------------------------------------------------------


def test_prepare_ct_keeps_a_voxel_at_its_ras_position() -> None:
    """An LPS-stored, anisotropic CT: a marked voxel keeps its HU at its RAS position; outside is air."""
    rng = np.random.default_rng(0)
    arr = rng.normal(0.0, 5.0, (30, 40, 36)).astype(np.float32)  # (K, J, I)
    arr[14:17, 19:22, 9:12] = 800.0  # 3³ block around voxel (i, j, k) = (10, 20, 15)
    lps_dirs = np.diag([-1.0, -1.0, 1.0])  # I -> left, J -> posterior, K -> superior
    src = Volume.from_geometry(arr, (4.0, 4.0, 4.0), (100.0, 60.0, -50.0), directions_ras=lps_dirs)
    target = src.ijk_to_ras_points(np.array([[10.0, 20.0, 15.0]]))[0]
    cfg = X2CTDataConfig(grid=16, spacing_mm=4.0)
    cube = prepare_ct(src, cfg, centre_ras=target + 2.0)  # even grid: voxel 7 sits half a voxel below centre
    assert cube.array.shape == (16, 16, 16) and cube.array.dtype == np.float32
    np.testing.assert_allclose(cube.directions, np.eye(3))
    np.testing.assert_allclose(cube.spacing, 4.0)
    np.testing.assert_allclose(cube.center_ras(), target + 2.0)
    np.testing.assert_allclose(cube.ijk_to_ras_points(np.array([[7, 7, 7]]))[0], target, atol=1e-9)
    assert cube.array[7, 7, 7] == pytest.approx(800.0, abs=1e-2)
    block = np.argwhere(cube.array > 400.0)
    assert len(block) == 27, f"{len(block)} voxels of the 3x3x3 block"
    np.testing.assert_allclose(
        cube.ijk_to_ras_points(block[:, ::-1].mean(axis=0)[None])[0], target, atol=1e-6
    )
    # same spacing, voxel-aligned: every cube voxel is exactly a source voxel (the LPS flip undone)
    kji = np.argwhere(np.ones((16,) * 3, bool))
    src_ijk = np.rint(src.ras_to_ijk_points(cube.ijk_to_ras_points(kji[:, ::-1]))).astype(int)
    expected = arr[src_ijk[:, 2], src_ijk[:, 1], src_ijk[:, 0]]
    np.testing.assert_allclose(cube.array[tuple(kji.T)], expected, atol=0.01)  # float32 sampling, HU
    far = prepare_ct(src, cfg, centre_ras=target + np.array([0.0, 0.0, 100.0]))  # top half above the CT
    assert np.all(far.array[-2:] == -1000.0), "outside the source must read air (-1000 HU)"
    coarse = prepare_ct(src, X2CTDataConfig(grid=16, spacing_mm=12.0), centre_ras=target)
    assert 50.0 < coarse.array.max() < 800.0  # anti-aliasing blur spreads the small block
    flat = Volume.from_geometry(np.zeros((1, 8, 8), np.float32), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"^volume: expected a 3D volume"):
        prepare_ct(flat, cfg)
    with pytest.raises(ValueError, match=r"^ct: expected a 3D volume"):
        render_views(flat, cfg)
    with pytest.raises(ValueError, match=r"^centre_ras: expected three finite"):
        prepare_ct(src, cfg, centre_ras=(0.0, 1.0))


# --- sources, cache and dataset --------------------------------------------------------------------


def test_discover_cases_lidc_layout_files_and_errors(tmp_path: Path) -> None:
    lidc = tmp_path / "LIDC-IDRI"
    for patient, series, n in (
        ("LIDC-IDRI-0001", "s1", 20),
        ("LIDC-IDRI-0001", "cr", 2),
        ("LIDC-IDRI-0002", "s9", 16),
    ):
        folder = lidc / patient / "study" / series
        folder.mkdir(parents=True)
        for f in range(n):
            (folder / f"{f:03d}.dcm").write_bytes(b"")
    (lidc / "LIDC-IDRI-0001" / "notes.xml").write_text("<x/>")
    nii = tmp_path / "scan-a.nii.gz"
    nii.write_bytes(b"")
    cases = discover_cases([lidc, nii, "phantom:2-3"])
    assert [(c.name, c.group, c.kind) for c in cases] == [
        ("LIDC-IDRI-0001__study__s1", "LIDC-IDRI-0001", "dicom"),
        ("LIDC-IDRI-0002__study__s9", "LIDC-IDRI-0002", "dicom"),
        ("phantom_00002", "phantom_00002", "phantom"),
        ("phantom_00003", "phantom_00003", "phantom"),
        ("scan-a", "scan-a", "file"),
    ]
    with pytest.raises(ValueError, match="sources: bad spec 'phantom:3-1'"):
        discover_cases(["phantom:3-1"])
    with pytest.raises(FileNotFoundError, match="sources: .*nowhere does not exist"):
        discover_cases([tmp_path / "nowhere"])
    with pytest.raises(ValueError, match="both make case 'phantom_00001'"):
        discover_cases(["phantom:1", "phantom:0-1"])
    with pytest.raises(ValueError, match="no CT file"):
        discover_cases([lidc / "LIDC-IDRI-0001" / "study" / "cr"])
    splits = [split_of_group(f"patient-{n}") for n in range(2000)]
    fractions = [splits.count(s) / len(splits) for s in ("train", "val", "test")]
    assert abs(fractions[0] - 0.8) < 0.03 and abs(fractions[1] - 0.1) < 0.02, fractions
    assert split_of_group("patient-7") == splits[7]
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "x", "1/0"):
        with pytest.raises(ValueError, match="^shard: expected i/n"):
            parse_shard(bad)


def _case_arrays(root: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for f in sorted((root / "cases").glob("*.npz")):
        with np.load(f) as z:
            out[f.stem] = {k: z[k] for k in z.files}
    return out


def test_cache_is_deterministic_resumable_and_sharded(tmp_path: Path) -> None:
    nii = tmp_path / "scan.nii.gz"
    ct, _ = make_chest_phantom(ChestPhantomConfig(shape_ijk=(20, 20, 18), spacing_mm=14.0, seed=9))
    write_volume(ct, nii)
    sources = ["phantom:0-3", nii]
    full = build_cache(sources, tmp_path / "a", TINY, seed=5)
    assert full["written"] == ["phantom_00000", "phantom_00001", "phantom_00002", "phantom_00003", "scan"]
    s0 = build_cache(sources, tmp_path / "b", TINY, seed=5, shard=(0, 2))
    s1 = build_cache(sources, tmp_path / "b", TINY, seed=5, shard=(1, 2))
    assert sorted(s0["written"] + s1["written"]) == full["written"] and not set(s0["written"]) & set(
        s1["written"]
    )
    a, b = _case_arrays(tmp_path / "a"), _case_arrays(tmp_path / "b")
    assert a.keys() == b.keys()
    for name in a:
        for key in a[name]:
            np.testing.assert_array_equal(a[name][key], b[name][key], err_msg=f"{name}/{key}")
    info = json.loads((tmp_path / "a" / "dataset.json").read_text())
    assert info == json.loads((tmp_path / "b" / "dataset.json").read_text())
    assert sorted(sum(info["splits"].values(), [])) == full["written"]
    case = a["phantom_00000"]
    assert case["ct"].shape == (1, 16, 16, 16) and case["ct"].dtype == np.float16
    assert case["views"].shape == (2, 16, 16) and case["views"].dtype == np.float16
    assert case["ct"].min() == -1.0 and 0.0 < case["ct"].max() <= 1.0
    assert 0.2 < float(case["views"].max()) < 1.0 and case["view_names"].tolist() == ["pa", "lateral"]
    assert not np.array_equal(a["phantom_00000"]["ct"], a["phantom_00001"]["ct"])  # seeded anatomy differs
    # resume: complete cases are skipped, missing and truncated ones are redone, nothing temporary remains
    (tmp_path / "a" / "cases" / "phantom_00001.npz").unlink()
    (tmp_path / "a" / "cases" / "phantom_00002.npz").write_bytes(b"PK\x03\x04 truncated")
    flipped = tmp_path / "a" / "cases" / "phantom_00003.npz"  # same size, same zip directory, one byte off
    data = bytearray(flipped.read_bytes())
    data[len(data) // 3] ^= 0xFF
    flipped.write_bytes(bytes(data))
    again = build_cache(sources, tmp_path / "a", TINY, seed=5)
    assert again["written"] == ["phantom_00001", "phantom_00002", "phantom_00003"]
    assert len(again["skipped"]) == 2
    assert sorted(p.name for p in (tmp_path / "a" / "records").iterdir()) == sorted(
        f"{name}.done.json" for name in again["written"] + again["skipped"]
    )
    np.testing.assert_array_equal(
        _case_arrays(tmp_path / "a")["phantom_00002"]["views"], b["phantom_00002"]["views"]
    )
    assert not [p for p in (tmp_path / "a").rglob(".*") if "tmp" in p.name]
    with pytest.raises(ValueError, match="built with another config or seed"):
        build_cache(sources, tmp_path / "a", TINY, seed=6)
    with pytest.raises(ValueError, match=r"^shard: expected \(i, n\)"):
        build_cache(sources, tmp_path / "c", TINY, shard=(2, 2))


def test_dataset_items_and_errors(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    build_cache(["phantom:0-1"], root, TINY)
    ds = X2CTDataset(root, "all")
    item = ds[1]
    assert len(ds) == 2 and ds.config == TINY
    assert item["ct"].shape == (1, 16, 16, 16) and item["ct"].dtype == torch.float32
    assert item["views"].shape == (2, 16, 16) and item["views"].dtype == torch.float32
    assert -1.0 <= float(item["ct"].min()) and float(item["ct"].max()) <= 1.0
    with pytest.raises(ValueError, match=r"^split: expected one of"):
        X2CTDataset(root, "training")
    with pytest.raises(ValueError, match="no dataset.json; build an XRayToCT cache"):
        X2CTDataset(tmp_path)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "dataset.json").write_text(json.dumps({"format": "xraycardiac.coronary_pairs"}))
    with pytest.raises(ValueError, match="not an XRayToCT cache .*got 'xraycardiac.coronary_pairs'"):
        X2CTDataset(tmp_path / "foreign")
    (root / "cases" / "phantom_00000.npz").unlink()
    with pytest.raises(ValueError, match="1 of 2 all cases are not built yet"):
        X2CTDataset(root, "all")
