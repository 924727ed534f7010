"""``xraycardiac train coronary-foundation``: our DINOv2-architecture angiogram encoder (issue 4).

Patch labels from ground-truth keypoints, a 4-step run on the 64 px tiny pair dataset, and the
folder it writes loaded through the matcher's real foundation path (``dinov2:OUT/foundation``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from xraycardiac.cli import app
from xraycardiac.coronary.matching.train_foundation import (
    BRANCHES,
    IGNORE,
    AngioFoundationConfig,
    FoundationTrainingViews,
    _branch_positions,
    patch_labels,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = ["image_size=64", "patch_size=8", "hidden_size=16", "num_hidden_layers=1", "num_attention_heads=2"]


def test_patch_labels_background_ignore_and_nearest_keypoint() -> None:
    mask = np.zeros((32, 32), bool)
    mask[4, :] = True  # a vessel along row 4: patches (0, 0..3)
    mask[20, 20] = True  # a vessel pixel in patch (2, 2) without keypoint
    kp = np.array([[3.0, 4.0], [6.0, 4.0], [12.0, 4.0]])  # (u, v): two in patch (0, 0), one in (0, 1)
    labels, pos = patch_labels(kp, np.array([2, 6, 10]), np.array([0.1, 0.5, 0.9]), mask, 8)
    assert labels[0, 0] == 2 and pos[0, 0] == pytest.approx(0.1), "the keypoint nearest the patch centre wins"
    assert labels[0, 1] == 10 and pos[0, 1] == pytest.approx(0.9)
    assert labels[0, 2] == IGNORE and np.isnan(pos[0, 2]), "vessel without keypoint is not scored"
    assert labels[2, 2] == IGNORE
    assert labels[3, 3] == 0 and np.isnan(pos[3, 3]), "no vessel -> background"


def test_branch_positions_rank_along_each_branch() -> None:
    classes, pos = _branch_positions(["LAD", "LAD", "RCA", "LAD", "XYZ"], [10, 0, 3, 5, 1])
    assert classes.tolist() == [BRANCHES.index("LAD")] * 2 + [BRANCHES.index("RCA"), BRANCHES.index("LAD"),
                                                              BRANCHES.index("other")]  # fmt: skip
    assert pos.tolist() == [1.0, 0.0, 0.0, 0.5, 0.0]


def test_dataset_rejects_other_image_size(tiny_pair_dataset: Path) -> None:
    with pytest.raises(ValueError, match="image_size"):
        FoundationTrainingViews(tiny_pair_dataset, AngioFoundationConfig(image_size=128), "all")
    item = FoundationTrainingViews(tiny_pair_dataset, AngioFoundationConfig(image_size=64), "all")[0]
    assert item["image"].shape == (2, 1, 64, 64) and item["labels"].shape == (2, 8, 8)
    assert (item["labels"] > 0).any(), "some patches carry a branch label"


def test_train_and_load_as_dinov2(tiny_pair_dataset: Path, tmp_path: Path) -> None:
    from xraycardiac.coronary.matching.foundation import FoundationSpec, load_foundation
    from xraycardiac.coronary.matching.train_foundation import AngioFoundationNet

    out = tmp_path / "fm"
    args = ["train", "coronary-foundation", "--data", str(tiny_pair_dataset), "--out", str(out), "--split", "all",
            *TINY, "steps=4", "batch_size=2", "device=cpu", "warmup_steps=1", "log_every=2"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    entry = json.loads((out / "model.json").read_text())
    assert entry["config"]["hidden_size"] == 16
    fm = load_foundation(FoundationSpec.parse(f"dinov2:{out / 'foundation'}"))
    assert fm.feature_dim == 16 and fm.patch_size == 8 and fm.input_size == 64
    # the features the matcher sees are the (normalised) tokens the heads were trained on
    net = AngioFoundationNet(AngioFoundationConfig(**{k: int(v) for k, v in (t.split("=") for t in TINY)}))
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)["ema"]
    net.load_state_dict({k.removeprefix("module."): v for k, v in state.items() if k.startswith("module.")})
    net.eval()
    img = torch.rand(1, 1, 64, 64)
    x = (img.expand(-1, 3, -1, -1) - 0.5) / 0.25
    with torch.no_grad():
        tokens = net.backbone(pixel_values=x).last_hidden_state[:, 1:]
    ref = torch.nn.functional.normalize(tokens.transpose(1, 2).reshape(1, 16, 8, 8), dim=1)
    got = fm.patch_features(img)
    assert torch.allclose(got, ref, atol=1e-5), f"max diff {float((got - ref).abs().max()):.2e}"
