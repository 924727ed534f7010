"""Mask Generation Module: identity, diffeomorphism, topology checks and rejection counting, DDF conventions."""

from __future__ import annotations

import numpy as np
import pytest

from xraycardiac.cardiac.labels import AORTA, FINE_LABELS, LCA, LV, MYO, structure_betti
from xraycardiac.cardiac.mgm import (
    REJECTION_REASONS,
    MGMConfig,
    ddf_ras_to_voxel,
    ddf_voxel_to_ras,
    generate_masks,
    jacobian_determinant,
    topology_violations,
    warp_image,
    warp_labels,
)
from xraycardiac.phantoms import CardiacPhantomConfig, make_cardiac_phantom
from xraycardiac.volume import Volume

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def template():
    """The default phantom (64^3 x 2.5 mm), with MONAI imported once for the module."""
    import monai.networks.blocks  # noqa: F401  (a ~5-10 s import, paid here rather than in a test)

    return make_cardiac_phantom(CardiacPhantomConfig(seed=0))


@pytest.fixture(scope="module")
def default_samples(template, one_torch_thread):
    _, labels = template
    return generate_masks(labels, 2, MGMConfig(), seed=7)


def test_zero_strength_is_identity(template):
    image, labels = template
    cfg = MGMConfig(
        strength_mm=0.0,
        scale_range=(1.0, 1.0),
        global_scale_range=(1.0, 1.0),
        coronary_variation=False,
        max_tries=1,
    )
    for interpolation in ("linear", "nearest"):
        samples, report = generate_masks(
            labels, 1, MGMConfig(**{**cfg.__dict__, "label_interpolation": interpolation})
        )
        assert report.accepted == 1 and report.attempts == 1
        s = samples[0]
        assert s.ddf_ras_mm.shape == (3, *labels.array.shape) and s.ddf_ras_mm.dtype == np.float32
        assert not np.any(s.ddf_ras_mm)
        np.testing.assert_array_equal(s.labels.array, labels.array)
        np.testing.assert_array_equal(s.labels.ijk_to_ras, labels.ijk_to_ras)
    # Trilinear resampling at the grid points themselves: equal up to float32 round-off of the grid.
    np.testing.assert_allclose(warp_image(image, s.ddf_ras_mm).array, image.array, atol=0.01)
    assert np.all(jacobian_determinant(s.ddf_ras_mm, labels.ijk_to_ras) == 1.0)


def test_default_deformation_is_diffeomorphic_and_keeps_topology(template, default_samples):
    _, labels = template
    samples, report = default_samples
    assert report.accepted == 2, report.to_dict()
    assert report.rejected["folding"] == 0
    assert sum(report.rejected.values()) == report.attempts - report.accepted
    for s in samples:
        jac = jacobian_determinant(s.ddf_ras_mm, labels.ijk_to_ras)
        assert float(jac.min()) > 0.0, f"min Jacobian determinant {jac.min():.3f}"
        assert np.isclose(float(jac.min()), s.meta["min_jacobian"])
        peak = float(np.linalg.norm(s.ddf_ras_mm, axis=0).max())
        assert 2.0 < peak < 15.0, f"peak displacement {peak:.2f} mm"
        assert structure_betti(s.labels.array, FINE_LABELS) == report.reference_betti
        changed = float(np.mean(s.labels.array != labels.array))
        assert changed > 0.002, f"only {changed:.4f} of the voxels changed"
    assert not np.array_equal(samples[0].labels.array, samples[1].labels.array)


def test_generate_masks_is_deterministic(template, default_samples):
    _, labels = template
    again, _ = generate_masks(labels, 2, MGMConfig(), seed=7)
    for a, b in zip(default_samples[0], again, strict=True):
        np.testing.assert_array_equal(a.labels.array, b.labels.array)
        np.testing.assert_array_equal(a.ddf_ras_mm, b.ddf_ras_mm)
        assert a.meta["scales"] == b.meta["scales"]


def test_structure_scaling_grows_the_structure_about_its_centroid(template):
    _, labels = template
    cfg = MGMConfig(
        strength_mm=0.0,
        coronary_variation=False,
        scale_range=(1.15, 1.15),
        scale_groups=((LV, MYO),),
        scale_other_structures=False,
        global_scale_range=(1.0, 1.0),
    )
    samples, report = generate_masks(labels, 1, cfg, seed=0)
    assert report.accepted == 1, report.to_dict()
    before = np.isin(labels.array, (LV, MYO))
    after = np.isin(samples[0].labels.array, (LV, MYO))
    ratio = after.sum() / before.sum()
    assert abs(ratio - 1.15**3) < 0.15, f"LV volume ratio {ratio:.3f}, expected ~{1.15**3:.3f}"
    c0, c1 = (
        labels.ijk_to_ras_points(np.argwhere(m)[:, ::-1].astype(float)).mean(axis=0) for m in (before, after)
    )
    assert np.linalg.norm(c1 - c0) < 2.0, f"centroid moved {np.linalg.norm(c1 - c0):.2f} mm"


def test_topology_violations_on_hand_made_breaks(template):
    _, labels = template
    ref = structure_betti(labels.array, FINE_LABELS)
    assert topology_violations(labels.array, ref) == (None, [])
    # Cut the aorta in two with a full axial slab of background.
    cut = labels.array.copy()
    k = int(np.median(np.argwhere(cut == AORTA)[:, 0]))
    cut[k - 1 : k + 1][cut[k - 1 : k + 1] == AORTA] = 0
    assert structure_betti(cut, [AORTA])[AORTA][0] >= 2
    assert topology_violations(cut, ref) == ("topology", [AORTA])
    # Break the LCA tree: remove the voxels near the middle of its extent along its main axis.
    cut = labels.array.copy()
    kji = np.argwhere(cut == LCA)
    cut[tuple(kji[np.abs(kji[:, 0] - np.median(kji[:, 0])) <= 1].T)] = 0
    reason, bad = topology_violations(cut, ref)
    assert reason == "coronary_disconnected" and LCA in bad, (reason, bad)
    # A structure that vanished.
    gone = np.where(labels.array == LV, MYO, labels.array).astype(np.uint8)
    assert topology_violations(gone, ref)[0] == "label_lost"


def test_large_strength_rejections_are_counted(template):
    _, labels = template
    cfg = MGMConfig(strength_mm=25.0, smoothness_sigma_mm=6.0, integration_steps=2, max_tries=3)
    samples, report = generate_masks(labels, 1, cfg, seed=0)
    rejected = report.attempts - report.accepted
    assert rejected > 0, f"no rejection at 25 mm / 6 mm smoothness: {report.to_dict()}"
    assert sum(report.rejected.values()) == rejected
    assert set(report.rejected) == set(REJECTION_REASONS)
    assert report.rejection_rate == pytest.approx(rejected / report.attempts)
    assert len(samples) == report.accepted
    for s in samples:  # whatever passed is valid
        assert structure_betti(s.labels.array, FINE_LABELS) == report.reference_betti


def test_ddf_conventions_on_a_flipped_grid():
    # A grid whose I axis points to patient Left (-x), like the real CT; one bright voxel.
    arr = np.zeros((9, 9, 9), np.float32)
    arr[4, 4, 4] = 100.0
    img = Volume.from_geometry(arr, (2.0, 2.0, 2.0), (10.0, 0.0, 0.0), np.diag([-1.0, 1.0, 1.0]))
    ddf = np.zeros((3, 9, 9, 9), np.float32)
    ddf[0] = 2.0  # RAS +x by 2 mm = one voxel along -I
    vox = ddf_ras_to_voxel(ddf, img.ijk_to_ras)
    assert np.allclose(vox[2], -1.0) and np.allclose(vox[:2], 0.0)  # channels (dk, dj, di)
    np.testing.assert_allclose(ddf_voxel_to_ras(vox, img.ijk_to_ras), ddf, atol=1e-6)
    # output(x) = input(x + ddf): the dot appears 2 mm towards -x, i.e. one voxel towards +I.
    out = warp_image(img, ddf).array
    assert out[4, 4, 5] == pytest.approx(100.0) and out[4, 4, 4] == pytest.approx(0.0)
    lab = Volume((arr > 0).astype(np.uint8) * 6, img.ijk_to_ras)
    for interpolation in ("nearest", "linear"):
        moved = warp_labels(lab, ddf, interpolation=interpolation).array
        assert moved[4, 4, 5] == 6 and moved.sum() == 6
    with pytest.raises(ValueError, match="ddf_ras_mm"):
        warp_image(img, ddf[:, :-1])


def test_invalid_inputs_name_the_parameter(template):
    _, labels = template
    bad = Volume(np.where(labels.array == AORTA, 42, labels.array).astype(np.uint8), labels.ijk_to_ras)
    with pytest.raises(ValueError, match=r"template_labels: labels \[42\]"):
        generate_masks(bad, 1)
    with pytest.raises(ValueError, match="template_labels: the label map is empty"):
        generate_masks(Volume(np.zeros((8, 8, 8), np.uint8), np.eye(4)), 1)
    with pytest.raises(ValueError, match="generate_masks: n"):
        generate_masks(labels, 0)
    with pytest.raises(ValueError, match="MGMConfig.strength_mm"):
        MGMConfig(strength_mm=-1.0)
    with pytest.raises(ValueError, match="MGMConfig.scale_groups"):
        MGMConfig(scale_groups=((LV, 77),))
    with pytest.raises(ValueError, match="MGMConfig.topology_reference"):
        MGMConfig(topology_reference="atlas")
    with pytest.raises(ValueError, match="MGMConfig.label_interpolation"):
        MGMConfig(label_interpolation="cubic")
