"""Confidence-aware Adaptive Learning: weighted Dice + CE, the two training stages, Dice/HD95."""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from xraycardiac.cardiac.cal import (
    CALConfig,
    ConfidenceWeightedDiceCE,
    SegmentationVolumes,
    build_segmenter,
    confidence_weights,
    evaluate_segmentation,
    finetune,
    predict_labels,
    pretrain_segmenter,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = CALConfig(n_classes=3, channels=(8, 16), steps=6, finetune_steps=3, batch_size=2, device="cpu")


def _logits_and_labels(seed: int = 0, c: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((2, c, 8, 8, 8), generator=g), torch.randint(0, c, (2, 1, 8, 8, 8), generator=g)


def test_equals_monai_dice_ce_at_confidence_one() -> None:
    from monai.losses import DiceCELoss

    logits, labels = _logits_and_labels()
    reference = DiceCELoss(to_onehot_y=True, softmax=True)(logits, labels)
    ours = ConfidenceWeightedDiceCE()
    for weight in (None, torch.ones((2, 1, 8, 8, 8)), torch.ones((2, 8, 8, 8))):
        value = ours(logits, labels, weight)
        print(f"monai DiceCE {float(reference):.8f}, weighted (w=1) {float(value):.8f}")
        assert abs(float(value) - float(reference)) < 1e-6
    scaled = ConfidenceWeightedDiceCE(lambda_dice=0.3, lambda_ce=2.0)(logits, labels[:, 0])
    reference2 = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.3, lambda_ce=2.0)(logits, labels)
    assert abs(float(scaled) - float(reference2)) < 1e-6


def test_zero_confidence_ignores_a_mislabelled_region() -> None:
    c = 3
    g = torch.Generator().manual_seed(1)
    truth = torch.randint(0, c, (1, 8, 8, 8), generator=g)
    logits = (4.0 * torch.nn.functional.one_hot(truth, c).movedim(-1, 1).float()).requires_grad_(True)
    region = torch.zeros((1, 8, 8, 8), dtype=torch.bool)
    region[:, 2:5, 1:6, 3:7] = True
    wrong = torch.where(region, (truth + 1) % c, truth)
    conf = torch.where(region, 0.0, 1.0)
    loss_fn = ConfidenceWeightedDiceCE()
    trusted = loss_fn(logits, wrong).detach()
    ignored = loss_fn(logits, wrong, conf)
    ignored.backward()
    grad, ignored = logits.grad, ignored.detach()
    print(f"loss, mislabelled region trusted {float(trusted):.4f}, at confidence 0 {float(ignored):.4f}")
    assert float(ignored) < 0.5 * float(trusted)
    assert float(grad[:, :, region[0]].abs().max()) == 0.0, "voxels of confidence 0 must get no gradient"
    assert float(grad[:, :, ~region[0]].abs().max()) > 0.0
    # the labels under confidence 0 do not matter at all
    assert float(loss_fn(logits.detach(), truth, conf)) == pytest.approx(float(ignored), abs=1e-7)


def test_confidence_weights_power_and_threshold() -> None:
    c = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert torch.allclose(confidence_weights(c, power=2.0), torch.tensor([0.0, 0.0625, 0.25, 1.0]))
    assert torch.equal(confidence_weights(c, power=1.0, threshold=0.5), torch.tensor([0.0, 0.0, 0.5, 1.0]))


def test_evaluate_segmentation_on_hand_made_masks() -> None:
    target = np.zeros((16, 16, 16), np.uint8)
    pred = np.zeros_like(target)
    target[2:6, 2:6, 2:6] = 1
    pred[2:6, 2:6, 2:6] = 1  # identical
    target[8:12, 8:12, 2:6] = 2
    pred[9:13, 8:12, 2:6] = 2  # shifted one voxel along D
    target[4, 12, 12] = 3
    pred[7, 12, 12] = 3  # single voxels 3 voxels apart along D
    target[14, 14, 14] = 5  # missed structure
    res = evaluate_segmentation(pred, target, labels=(1, 2, 3, 4, 5), spacing_mm=(2.0, 1.0, 1.0))
    print({k: {m: round(v, 4) for m, v in d.items()} for k, d in res.items()})
    assert res[1] == {"dice": 1.0, "hd95_mm": 0.0}
    assert res[2]["dice"] == pytest.approx(2 * 48 / 128) and res[2]["hd95_mm"] == pytest.approx(2.0)
    assert res[3]["dice"] == 0.0 and res[3]["hd95_mm"] == pytest.approx(6.0)
    assert math.isnan(res[4]["dice"]) and math.isnan(res[4]["hd95_mm"])
    assert res[5] == {"dice": 0.0, "hd95_mm": math.inf}
    iso = evaluate_segmentation(pred, target, labels=(2,), spacing_mm=1.0)
    assert iso[2]["hd95_mm"] == pytest.approx(1.0)


def _volumes(n: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    images, labels = [], []
    k, j, i = np.meshgrid(*(np.arange(16),) * 3, indexing="ij")
    for _ in range(n):
        c = rng.uniform(6, 10, 3)
        lab = (((k - c[0]) ** 2 + (j - c[1]) ** 2 + (i - c[2]) ** 2) < 16).astype(np.int64)
        lab[(lab == 1) & (k > c[0] + 1)] = 2
        images.append(
            (np.array([-0.6, 0.4, 0.8])[lab] + 0.05 * rng.standard_normal(lab.shape)).astype(np.float32)
        )
        labels.append(lab)
    return images, labels


def test_pretrain_and_finetune_run_and_learn(tmp_path: Path) -> None:
    images, labels = _volumes(4)
    confidences = [np.full(img.shape, 0.8, np.float32) for img in images]
    synthetic = SegmentationVolumes(images, labels, confidences, n_classes=3)
    real = SegmentationVolumes(images[:2], labels[:2], n_classes=3)
    cfg = replace(TINY, steps=15, lr=1e-2)
    t0 = time.perf_counter()
    net, summary = pretrain_segmenter(synthetic, cfg, out=tmp_path)
    seconds = time.perf_counter() - t0
    log = (tmp_path / "pretrain" / "log.jsonl").read_text().splitlines()
    first_log = [json.loads(line)["loss"] for line in log]
    print(f"pretrain 15 steps at 16^3: {seconds:.2f} s; logged losses {np.round(first_log, 3).tolist()}")
    assert summary["step"] == 15 and first_log[-1] < first_log[0]
    assert summary["last_log"]["weight_mean"] == pytest.approx(0.8)
    net, summary2 = finetune(net, real, cfg, out=tmp_path)
    assert summary2["step"] == cfg.finetune_steps and (tmp_path / "finetune" / "checkpoint.pt").is_file()
    assert summary2["last_log"]["weight_mean"] == 1.0
    pred = predict_labels(net, torch.from_numpy(images[0])[None, None])
    assert pred.shape == (1, 16, 16, 16) and int(pred.max()) < 3
    # SegResNet builds and maps (B, 1, D, H, W) to (B, n_classes, D, H, W)
    seg = build_segmenter(replace(TINY, network="segresnet"))
    assert seg(torch.zeros((1, 1, 16, 16, 16))).shape == (1, 3, 16, 16, 16)


def test_bad_inputs_name_the_parameter() -> None:
    with pytest.raises(ValueError, match="CALConfig.network"):
        CALConfig(network="vnet")
    with pytest.raises(ValueError, match="CALConfig.channels"):
        CALConfig(network="segresnet", channels=(12, 24))
    with pytest.raises(ValueError, match="CALConfig.confidence_threshold"):
        CALConfig(confidence_threshold=1.5)
    logits, labels = _logits_and_labels(c=3)
    loss_fn = ConfidenceWeightedDiceCE()
    with pytest.raises(ValueError, match=r"target: labels must be in 0\.\.2"):
        loss_fn(logits, labels + 1)
    with pytest.raises(ValueError, match="weight: expected values"):
        loss_fn(logits, labels, torch.full((2, 1, 8, 8, 8), 1.5))
    with pytest.raises(ValueError, match="weight: expected shape"):
        loss_fn(logits, labels, torch.ones((2, 1, 4, 8, 8)))
    images, labels_np = _volumes(1)
    with pytest.raises(ValueError, match=r"labels\[0\]"):
        SegmentationVolumes(images, [labels_np[0] + 2], n_classes=3)
    with pytest.raises(ValueError, match=r"confidences\[0\]"):
        SegmentationVolumes(images, labels_np, [np.full((16, 16, 16), -0.1)], n_classes=3)
    with pytest.raises(ValueError, match="pred"):
        evaluate_segmentation(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))
    with pytest.raises(ValueError, match="spacing_mm"):
        evaluate_segmentation(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), spacing_mm=(1.0, 0.0, 1.0))
