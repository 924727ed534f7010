"""Any cardiac label granularity: the MGM varies an undivided heart, TCDM takes coarse templates."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from xraycardiac.cardiac.labels import AORTA, WHOLE_HEART, structure_betti
from xraycardiac.cardiac.mgm import MGMConfig, generate_masks
from xraycardiac.volume import Volume


def _coarse_labels(n: int = 24) -> Volume:
    """A heart given as one label (10) beside an aorta (6), 2.5 mm voxels."""
    k, j, i = np.indices((n, n, n))
    lab = np.zeros((n, n, n), np.uint8)
    lab[(k - 12) ** 2 + (j - 12) ** 2 + (i - 10) ** 2 <= 36] = WHOLE_HEART
    lab[((j - 12) ** 2 + (i - 18) ** 2 <= 4) & (k >= 6) & (k <= 19)] = AORTA
    return Volume.from_geometry(lab, (2.5, 2.5, 2.5), (0.0, 0.0, 0.0))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.sum(a & b) / (np.sum(a) + np.sum(b)))


def test_mgm_varies_an_undivided_heart():
    """Without a random field, the per-structure and global scaling alone must change the heart."""
    labels = _coarse_labels()
    cfg = replace(MGMConfig(), strength_mm=0.0, coronary_variation=False)
    samples, report = generate_masks(labels, 3, cfg, seed=0)
    assert len(samples) == 3, report.to_dict()
    dice = [_dice(s.labels.array == WHOLE_HEART, labels.array == WHOLE_HEART) for s in samples]
    assert np.mean(dice) < 0.97 and min(dice) > 0.6, f"heart Dice of the cases vs the template: {dice}"
    ref = structure_betti(labels.array, [AORTA, WHOLE_HEART])
    for s in samples:
        assert structure_betti(s.labels.array, [AORTA, WHOLE_HEART]) == ref
        assert s.meta["min_jacobian"] > 0.0
        assert {"heart", "aorta", "global"} <= set(s.meta["scales"])


def test_mgm_scaling_of_other_structures_can_be_switched_off():
    labels = _coarse_labels()
    cfg = replace(MGMConfig(), strength_mm=0.0, coronary_variation=False, scale_other_structures=False,
                  global_scale_range=(1.0, 1.0))  # fmt: skip
    samples, _ = generate_masks(labels, 1, cfg, seed=0)
    np.testing.assert_array_equal(samples[0].labels.array, labels.array)
    with pytest.raises(ValueError, match="global_scale_range"):
        replace(MGMConfig(), global_scale_range=(1.2, 0.9))


def _tiny_tcdm(tmp_path):
    """An untrained 32^3 TCDM (labels 0..10: the undivided heart is a class): plumbing only, not quality."""
    import torch

    from xraycardiac.cardiac.tcdm import TCDMConfig, build_tcdm, save_tcdm

    torch.manual_seed(0)
    cfg = TCDMConfig(grid=32, channels=(8, 8, 8), attention_levels=(False, False, False), norm_num_groups=4,
                     num_train_timesteps=20)  # fmt: skip
    return save_tcdm(build_tcdm(cfg)[0], tmp_path / "tcdm.pt")


def _coarse_template():
    """The 32^3 phantom with its chambers and myocardium merged into one heart (10), plus a superior vena
    cava (12) whose contrast is 3500 HU, beyond the model's -1000..1000 window."""
    from xraycardiac.cardiac.templates import CardiacTemplate, template_from_phantom
    from xraycardiac.phantoms.cardiac import CardiacPhantomConfig

    tpl = template_from_phantom(CardiacPhantomConfig(seed=0, shape_ijk=(32, 32, 32), spacing_mm=5.0))
    lab = tpl.labels.array.copy()
    lab[np.isin(lab, (1, 2, 3, 4, 5))] = WHOLE_HEART
    k, j, i = np.indices(lab.shape)
    svc = ((k - 24) ** 2 + (j - 8) ** 2 + (i - 8) ** 2 <= 9) & (lab == 0)
    lab[svc] = 12
    image = tpl.image.array.copy()
    image[svc] = 3500.0
    return CardiacTemplate(
        image=Volume(image, tpl.image.ijk_to_ras.copy()),
        labels=Volume(lab, tpl.labels.ijk_to_ras.copy()),
        name="coarse",
    )


def test_tcdm_takes_a_coarse_template_and_keeps_contrast_above_its_window(tmp_path, one_torch_thread):
    import json

    from xraycardiac.cardiac.synth import CardiacSynthConfig, synthesize_dataset
    from xraycardiac.io import read_volume

    tpl = _coarse_template()
    config = CardiacSynthConfig(n=1, seed=0, renderer="tcdm", model=str(_tiny_tcdm(tmp_path)), steps=2,
                                ssv_steps=(2, 4), device="cpu")  # fmt: skip
    events = []
    summary = synthesize_dataset(tpl, tmp_path / "ds", config, progress=lambda s, f, **_: events.append(s))
    assert summary["written"] == ["case_00000"]
    assert any("given to it as background" in s for s in events), events[:3]
    case = json.loads((tmp_path / "ds" / "cases" / "case_00000.json").read_text())
    assert case["conditioned_as_background"] == [12]  # the heart (10) is a class of the model
    image = read_volume(tmp_path / "ds" / "imagesTr" / "case_00000_0000.nii.gz").array
    # 3500 HU contrast minus at most the window's 2000 HU of model error: above 1000 HU, not clipped to it
    assert image.max() > 1400.0 and int((image > 1000.0).sum()) >= 20, (
        image.max(),
        int((image > 1000).sum()),
    )


def test_tcdm_refuses_a_template_it_cannot_condition_on_before_writing(tmp_path, one_torch_thread):
    from xraycardiac.cardiac.synth import CardiacSynthConfig, synthesize_dataset

    tpl = _coarse_template()
    tpl.labels.array[tpl.labels.array <= WHOLE_HEART] = 0  # only the SVC (12) remains, beyond 0..10
    config = CardiacSynthConfig(n=1, renderer="tcdm", model=str(_tiny_tcdm(tmp_path)), steps=2, ssv_steps=(2, 4),
                                device="cpu")  # fmt: skip
    with pytest.raises(ValueError, match=r"all outside the 0\.\.10 .*--renderer warp"):
        synthesize_dataset(tpl, tmp_path / "ds", config)
    assert not (tmp_path / "ds").exists()
