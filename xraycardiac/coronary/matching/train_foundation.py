"""Our own small angiogram "foundation" encoder, and ``xraycardiac train coronary-foundation``.

Zhao et al. (2025) mask the matcher's cross-attention with DINOv2 feature similarity. DINOv2's
weights cannot be downloaded on an offline site, and the released ViT-S/14 is 21 M parameters,
so the offline demo needs a stand-in that a user can rebuild from our phantoms. This module
trains one, **in the architecture of DINOv2** (``transformers.Dinov2Model``), so that it is saved
with ``save_pretrained`` and loaded by the matcher through the very path a real DINOv2 takes
(``--foundation dinov2:OUT/foundation``, :func:`xraycardiac.coronary.matching.foundation.load_foundation`).

What it learns, and why that is a fair stand-in. The paper's argument is that foundation features
carry *semantic context* (which artery, which part of it) that vessel-level descriptors lack.
DINOv2 gets that from self-supervision on 142 M natural images; we cannot. We give the encoder the
same kind of context by supervision on synthetic angiograms, where it is known exactly: each
patch predicts (a) the **branch** under it (LM, LAD, D1..., LCx, OM1..., RCA, AM1..., PDA, other,
or background) and (b) the **position along that branch** (0 at its proximal end, 1 at its
distal end). Labels come from the dataset's ground-truth keypoints (``keypoints.json``: branch
and order along the tree): a patch holding a non-ambiguous in-field keypoint takes its branch and
position (the one nearest the patch centre when several fall in it); a patch with no vessel pixel
is background; other vessel patches (overlaps, keypoint-free stretches) are not scored. This is
supervised, not self-supervised: it is *not* DINOv2 and results with DINOv2 need its weights.

Loss: cross-entropy of the branch logits (every scored patch) + ``position_weight`` x L1 of the
sigmoid position (branch patches only), on a linear head over ``last_hidden_state`` patch tokens,
which are the features :meth:`FoundationModel.patch_features` returns. Inputs go through the same
preprocessing as at match time: grey in [0, 1] repeated to 3 channels, ``(x - 0.5) / 0.25`` (the
``image_mean`` / ``image_std`` written into ``preprocessor_config.json``); training images must be
``image_size`` square (the matcher resizes other sizes to it).

Output folder ``OUT``: ``checkpoint.pt``, ``log.jsonl`` (resumable, the shared trainer), and at the
end ``OUT/foundation/`` (``config.json``, ``model.safetensors``, ``preprocessor_config.json``; the
heads are dropped: only the backbone is a foundation model) plus ``OUT/model.json`` recording
how it was made.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xraycardiac.models.weights import JsonConfig

__all__ = [
    "BRANCHES",
    "AngioFoundationConfig",
    "AngioFoundationNet",
    "FoundationTrainingViews",
    "patch_labels",
    "train_coronary_foundation",
]

BRANCHES = ("background", "LM", "LAD", "D1", "D2", "D3", "LCx", "OM1", "OM2", "OM3",
            "RCA", "AM1", "AM2", "PDA", "other")  # fmt: skip
"""Branch classes of the patch head; names of the coronary generator, anything else is "other"."""

IMAGE_MEAN, IMAGE_STD = 0.5, 0.25
IGNORE = -100


@dataclass(frozen=True)
class AngioFoundationConfig(JsonConfig):
    """The encoder (a ``Dinov2Config``'s main fields) and its training loss.

    Attributes:
        image_size: square input side, pixels (training images must have it).
        patch_size: pixels per patch side.
        hidden_size: token width C (the feature dimension the matcher sees).
        num_hidden_layers, num_attention_heads, mlp_ratio: the ViT.
        position_weight: weight of the along-branch position L1 term.
    """

    image_size: int = 128
    patch_size: int = 8
    hidden_size: int = 64
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    mlp_ratio: int = 2
    position_weight: float = 1.0

    def __post_init__(self) -> None:
        name = "AngioFoundationConfig"
        for key in ("image_size", "patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "mlp_ratio"):  # fmt: skip
            v = getattr(self, key)
            if not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
                raise ValueError(f"{name}.{key}: expected an integer > 0, got {v!r}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"{name}.image_size: expected a multiple of patch_size={self.patch_size}, got {self.image_size}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"{name}.hidden_size: expected a multiple of num_attention_heads={self.num_attention_heads}, "
                f"got {self.hidden_size}"
            )
        if not (isinstance(self.position_weight, int | float) and self.position_weight >= 0):
            raise ValueError(f"{name}.position_weight: expected a weight >= 0, got {self.position_weight!r}")

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size


class AngioFoundationNet(nn.Module):
    """``Dinov2Model`` backbone + per-patch branch and position heads (training only)."""

    def __init__(self, config: AngioFoundationConfig | None = None) -> None:
        super().__init__()
        from transformers import Dinov2Config, Dinov2Model

        self.config = c = config or AngioFoundationConfig()
        self.backbone = Dinov2Model(
            Dinov2Config(
                image_size=c.image_size, patch_size=c.patch_size, hidden_size=c.hidden_size,
                num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                mlp_ratio=c.mlp_ratio,
            )
        )  # fmt: skip
        self.branch_head = nn.Linear(c.hidden_size, len(BRANCHES))
        self.position_head = nn.Linear(c.hidden_size, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B x 1 x S x S] in [0, 1] -> (branch logits [B x K x g x g], position [B x g x g] in (0, 1))."""
        g = self.config.grid
        x = (images.expand(-1, 3, -1, -1) - IMAGE_MEAN) / IMAGE_STD
        tokens = self.backbone(pixel_values=x).last_hidden_state[:, 1:]  # drop CLS
        logits = self.branch_head(tokens).transpose(1, 2).reshape(len(images), len(BRANCHES), g, g)
        position = torch.sigmoid(self.position_head(tokens)[..., 0]).reshape(len(images), g, g)
        return logits, position

    def save_foundation(self, folder: str | os.PathLike[str]) -> Path:
        """Write the backbone as a DINOv2 folder (``save_pretrained`` + ``preprocessor_config.json``)."""
        folder = Path(folder)
        self.backbone.save_pretrained(folder, safe_serialization=True)
        pre = {"do_normalize": True, "image_mean": [IMAGE_MEAN] * 3, "image_std": [IMAGE_STD] * 3,
               "note": "grey angiogram in [0, 1] repeated to 3 channels (xraycardiac.coronary.matching.train_foundation)"}  # fmt: skip
        (folder / "preprocessor_config.json").write_text(json.dumps(pre, indent=1) + "\n")
        return folder


def patch_labels(
    keypoints: np.ndarray,
    branch: np.ndarray,
    position: np.ndarray,
    vessel_mask: np.ndarray,
    patch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-patch branch class and along-branch position of one view (module docstring).

    Args:
        keypoints: (K, 2) pixel (u, v) of the view's usable keypoints (in field, not ambiguous).
        branch: (K,) branch class indices into :data:`BRANCHES`.
        position: (K,) along-branch position in [0, 1].
        vessel_mask: (H, W) bool, H and W multiples of ``patch_size``.
        patch_size: pixels per patch side.

    Returns:
        labels (h, w) int64 (class, or ``IGNORE``), positions (h, w) float32 (NaN where no branch).
    """
    h, w = vessel_mask.shape[0] // patch_size, vessel_mask.shape[1] // patch_size
    vessel = vessel_mask[: h * patch_size, : w * patch_size].reshape(h, patch_size, w, patch_size).any((1, 3))
    labels = np.where(vessel, IGNORE, 0).astype(np.int64)
    positions = np.full((h, w), np.nan, np.float32)
    best = np.full((h, w), np.inf)
    for (u, v), b, p in zip(keypoints, branch, position, strict=True):
        j, i = int(np.floor((u + 0.5) / patch_size)), int(np.floor((v + 0.5) / patch_size))
        if not (0 <= i < h and 0 <= j < w):
            continue
        d = np.hypot(u + 0.5 - (j + 0.5) * patch_size, v + 0.5 - (i + 0.5) * patch_size)
        if d < best[i, j]:
            best[i, j], labels[i, j], positions[i, j] = d, b, p
    return labels, positions


def _branch_positions(branch: list[str], point_index: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Class index and 0..1 rank along its branch of every keypoint of a sample."""
    classes = np.array([BRANCHES.index(b) if b in BRANCHES[1:] else len(BRANCHES) - 1 for b in branch])
    order = np.asarray(point_index, dtype=np.float64)
    pos = np.zeros(len(branch), np.float32)
    for name in set(branch):
        ids = np.flatnonzero(np.asarray(branch) == name)
        ranks = np.argsort(np.argsort(order[ids]))
        pos[ids] = ranks / max(len(ids) - 1, 1)
    return classes, pos


class FoundationTrainingViews(torch.utils.data.Dataset):
    """Both views of each pair of a coronary pair dataset, with their patch labels.

    Items: ``image`` [2 x 1 x S x S] float32 in [0, 1], ``labels`` [2 x g x g] int64, ``position``
    [2 x g x g] float32 (NaN where not scored).

    Raises:
        FileNotFoundError: no such folder. ValueError: empty split, or images other than S x S.
    """

    def __init__(
        self, root: str | os.PathLike[str], config: AngioFoundationConfig, split: str = "train"
    ) -> None:
        from xraycardiac.coronary.matching.train_matcher import MatcherTrainingPairs

        # the matcher's training set checks the folder, the split and that all images share one size
        views = MatcherTrainingPairs(root, split)
        self.root, self.config, self.pairs = views.root, config, views.pairs
        s = config.image_size
        if views.image_shape is not None and tuple(views.image_shape) != (s, s):
            raise ValueError(
                f"{self.root}: images of {list(views.image_shape)} pixels; AngioFoundationConfig.image_size "
                f"is {s} (train on a dataset of {s} x {s} images or set image_size)"
            )

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from xraycardiac.coronary.synth import dataset as ds

        sample = ds.read_sample(self.pairs.samples[index], False)
        kp = sample["keypoints"]
        classes, pos = _branch_positions(list(kp["branch"]), list(kp["point_index"]))
        images, labels, positions = [], [], []
        for v in (1, 2):
            use = np.asarray(kp[f"in_field{v}"], bool) & ~np.asarray(kp[f"ambiguous{v}"], bool)
            lab, p = patch_labels(
                np.asarray(kp[f"uv{v}"])[use], classes[use], pos[use], sample[f"mask{v}"] > 0,
                self.config.patch_size,
            )  # fmt: skip
            images.append(torch.from_numpy(sample[f"image{v}"].astype(np.float32))[None])
            labels.append(torch.from_numpy(lab))
            positions.append(torch.from_numpy(p))
        return {
            "image": torch.stack(images),
            "labels": torch.stack(labels),
            "position": torch.stack(positions),
        }


def foundation_loss(
    net: AngioFoundationNet, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Branch cross-entropy + weighted position L1 of a batch; metrics: branch accuracy, position MAE."""
    images = batch["image"].flatten(0, 1)
    labels, target = batch["labels"].flatten(0, 1), batch["position"].flatten(0, 1)
    logits, position = net(images)
    ce = F.cross_entropy(logits, labels, ignore_index=IGNORE)
    on_branch = torch.isfinite(target)
    l1 = (position[on_branch] - target[on_branch]).abs().mean() if on_branch.any() else position.sum() * 0
    scored = labels != IGNORE
    vessel = scored & (labels > 0)
    pred = logits.argmax(1)
    metrics = {
        "ce": float(ce.detach()),
        "position_mae": float(l1.detach()),
        "accuracy": float((pred[scored] == labels[scored]).float().mean()) if scored.any() else 0.0,
        "branch_accuracy": float((pred[vessel] == labels[vessel]).float().mean()) if vessel.any() else 0.0,
    }
    return ce + net.config.position_weight * l1, metrics


def train_coronary_foundation(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: AngioFoundationConfig | None = None,
    train_config: Any = None,
    name: str = "angio-foundation",
    version: str = "0.1.0",
    split: str = "train",
    progress: Callable[..., None] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Train (or resume) the angiogram encoder and write ``OUT/foundation`` (a DINOv2 folder) + ``model.json``.

    Args:
        data: a coronary pair dataset of ``image_size`` square images (``xraycardiac coronary synth``).
        out: run folder.
        config: :class:`AngioFoundationConfig`; train_config: :class:`xraycardiac.trainer.TrainConfig`.
        name, version: recorded in ``model.json``.
        split: "train", "val", "test" or "all".
        progress: ``progress(stage, fraction, **extra)``.
        command: command line recorded in ``model.json`` (default: this process's argv).

    Returns:
        The trainer summary plus ``"model"`` (the foundation folder) and ``"entry"``.
    """
    from xraycardiac.trainer import TrainConfig, Trainer, write_model_package

    cfg = config or AngioFoundationConfig()
    tcfg = train_config or TrainConfig()
    dataset = FoundationTrainingViews(data, cfg, split)
    torch.manual_seed(tcfg.seed)
    net = AngioFoundationNet(cfg)
    out = Path(out)
    trainer = Trainer(net, lambda m, b, g: foundation_loss(m, b), dataset, tcfg, out, cfg.to_dict())
    summary = trainer.fit(progress=progress)
    if not trainer.is_main:
        return summary
    folder = trainer.averaged_model().save_foundation(out / "foundation")
    entry = write_model_package(
        out, folder / "model.safetensors", name=name, version=version, command=command, config=cfg.to_dict(),
        training_data=f"{2 * len(dataset)} angiogram views of {len(dataset)} pairs from {Path(data).name} "
                      f"(split {split}); patch labels from the ground-truth keypoints",
        description=(
            f"angiogram encoder in the DINOv2 architecture (ViT {cfg.num_hidden_layers} layers, C={cfg.hidden_size}, "
            f"patch {cfg.patch_size}) trained to predict branch + position along it per patch; load with "
            f"--foundation dinov2:{folder}; {summary['step']} steps x batch {tcfg.batch_size}; train config "
            + json.dumps(asdict(tcfg), sort_keys=True)
        ),
    )  # fmt: skip
    return {**summary, "model": str(folder), "entry": entry}
