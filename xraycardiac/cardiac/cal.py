"""Confidence-aware Adaptive Learning (CAL, FCaS): segmentation pretraining on synthetic volumes.

FCaS pretrains a segmentation network on its synthetic (CT, label map) pairs, trusting each voxel
as much as its Skip-Sampling-Variance confidence (:mod:`xraycardiac.cardiac.ssv`), then fine-tunes
on the few real labelled cases. The paper gives no formula; ours, :class:`ConfidenceWeightedDiceCE`,
weights MONAI's Dice + cross-entropy loss voxel by voxel. With softmax probabilities p (B, C, ...),
one-hot targets g and voxel weights w in [0, 1]::

    CE   = 1/(B V) sum_{b,v} w_bv * (-log p_{b, y_bv, v})
    Dice = mean_{b,c} [ 1 - (2 sum_v w p g + smooth_nr) / (sum_v w p + sum_v w g + smooth_dr) ]
    L    = lambda_dice * Dice + lambda_ce * CE

With w = 1 everywhere this is ``monai.losses.DiceCELoss(to_onehot_y=True, softmax=True)`` (same
smoothing, background included, per-item Dice); a voxel with w = 0 contributes nothing and gets no
gradient, whatever its label. CE is divided by the voxel count, not by sum(w): a volume the
synthesis is unsure of weighs less overall, which is the "adaptive" part (dividing by sum(w)
would give it full weight back). Weights from a confidence map c: ``w = c ** confidence_power``
where ``c >= confidence_threshold``, else 0 (:func:`confidence_weights`).

Networks (``CALConfig.network``): ``monai.networks.nets.UNet`` (``channels`` per level, strides 2,
``num_res_units``) or ``SegResNet`` (``init_filters = channels[0]``, one block per level, filters
doubling per level). Training runs on the shared :class:`xraycardiac.trainer.Trainer` (seeded
batches and noise, checkpoints, resume), AdamW at a constant rate without EMA, in two stages:
:func:`pretrain_segmenter` (synthetic, confidence-weighted) and :func:`finetune` (real, w = 1).

Evaluation (:func:`evaluate_segmentation`): Dice and the 95th-percentile Hausdorff distance in mm
per structure, with ``monai.metrics.compute_dice`` / ``compute_hausdorff_distance``.
"""

from __future__ import annotations

import json
import math
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xraycardiac.cardiac.labels import FINE_LABELS
from xraycardiac.jsonutil import is_int

__all__ = [
    "NETWORKS", "CALConfig", "ConfidenceWeightedDiceCE", "SegmentationVolumes", "build_segmenter",
    "confidence_weights", "evaluate_segmentation", "finetune", "predict_labels", "pretrain_segmenter",
]  # fmt: skip

NETWORKS = ("unet", "segresnet")


@dataclass(frozen=True)
class CALConfig:
    """Segmentation network and the two CAL training stages.

    Attributes:
        network: "unet" (MONAI UNet) or "segresnet" (MONAI SegResNet).
        n_classes: output classes including background (default 10: the nine FCaS structures).
        channels: channels per level (SegResNet: ``channels[0]`` filters, a multiple of 8, doubling
            over ``len(channels)`` levels).
        num_res_units: residual units per UNet level.
        lr: pretraining learning rate (AdamW).
        steps: pretraining steps.
        finetune_lr: fine-tuning learning rate.
        finetune_steps: fine-tuning steps.
        batch_size: volumes per step.
        confidence_power: w = confidence ** power (0: confidence only thresholds).
        confidence_threshold: voxels whose confidence is below it get w = 0.
        lambda_dice: weight of the Dice term.
        lambda_ce: weight of the cross-entropy term.
        seed: seeds the initial weights, the batch order and the trainer's noise.
        device: "auto", "cpu", "cuda[:N]" or "mps".
    """

    network: str = "unet"
    n_classes: int = 1 + len(FINE_LABELS)
    channels: tuple[int, ...] = (16, 32, 64, 128)
    num_res_units: int = 1
    lr: float = 1e-3
    steps: int = 500
    finetune_lr: float = 1e-4
    finetune_steps: int = 200
    batch_size: int = 2
    confidence_power: float = 1.0
    confidence_threshold: float = 0.0
    lambda_dice: float = 1.0
    lambda_ce: float = 1.0
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        def fail(name: str, expected: str) -> None:
            raise ValueError(f"CALConfig.{name}: expected {expected}, got {getattr(self, name)!r}")

        def number(v: Any, lo: float, hi: float) -> bool:
            return (
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi
            )

        object.__setattr__(self, "channels", tuple(self.channels))
        if self.network not in NETWORKS:
            fail("network", f"one of {NETWORKS}")
        if len(self.channels) < 2 or not all(is_int(c, 1) for c in self.channels):
            fail("channels", "a tuple of at least 2 positive integers")
        if self.network == "segresnet" and self.channels[0] % 8:
            fail("channels", "channels[0] a multiple of 8 for segresnet (GroupNorm of 8 groups)")
        if not is_int(self.n_classes, 2):
            fail("n_classes", "an integer >= 2")
        for name, lo in (("num_res_units", 0), ("steps", 1), ("finetune_steps", 1), ("batch_size", 1)):
            if not is_int(getattr(self, name), lo):
                fail(name, f"an integer >= {lo}")
        if not is_int(self.seed, 0):
            fail("seed", "an integer >= 0")
        ranges = (("lr", 0.0, 1.0), ("finetune_lr", 0.0, 1.0), ("confidence_power", 0.0, 10.0),
                  ("confidence_threshold", 0.0, 1.0), ("lambda_dice", 0.0, 1e3),
                  ("lambda_ce", 0.0, 1e3))  # fmt: skip
        for name, lo, hi in ranges:
            if not number(getattr(self, name), lo, hi):
                fail(name, f"a number in [{lo}, {hi}]")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return json.loads(json.dumps(asdict(self)))


def build_segmenter(config: CALConfig) -> nn.Module:
    """The 3D segmentation network of ``config``: (B, 1, D, H, W) image -> (B, n_classes, D, H, W) logits.

    D, H, W must be multiples of 2^(len(channels) - 1).
    """
    from monai.networks.nets import SegResNet, UNet

    levels = len(config.channels)
    if config.network == "segresnet":
        return SegResNet(spatial_dims=3, init_filters=config.channels[0], in_channels=1,
                         out_channels=config.n_classes, blocks_down=(1,) * levels,
                         blocks_up=(1,) * (levels - 1))  # fmt: skip
    return UNet(spatial_dims=3, in_channels=1, out_channels=config.n_classes, channels=config.channels,
                strides=(2,) * (levels - 1), num_res_units=config.num_res_units)  # fmt: skip


def confidence_weights(confidence: torch.Tensor, power: float = 1.0, threshold: float = 0.0) -> torch.Tensor:
    """Voxel weights ``confidence ** power`` where ``confidence >= threshold``, else 0 (same shape)."""
    c = confidence.float().clamp(0.0, 1.0)
    return torch.where(c >= threshold, c.pow(power), torch.zeros_like(c))


class ConfidenceWeightedDiceCE(nn.Module):
    """Voxel-weighted Dice + cross-entropy on softmax logits (see the module docstring).

    Args:
        lambda_dice: weight of the Dice term (>= 0).
        lambda_ce: weight of the cross-entropy term (>= 0).
        smooth_nr: added to the Dice numerator (MONAI's default 1e-5).
        smooth_dr: added to the Dice denominator (MONAI's default 1e-5).
    """

    def __init__(
        self,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
    ) -> None:
        super().__init__()
        for name, v in (("lambda_dice", lambda_dice), ("lambda_ce", lambda_ce), ("smooth_dr", smooth_dr)):
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"ConfidenceWeightedDiceCE.{name}: expected a finite number >= 0, got {v!r}")
        self.lambda_dice, self.lambda_ce = float(lambda_dice), float(lambda_ce)
        self.smooth_nr, self.smooth_dr = float(smooth_nr), float(smooth_dr)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scalar loss.

        Args:
            logits: (B, C, D, H, W) unnormalised scores.
            target: (B, 1, D, H, W) or (B, D, H, W) integer labels in 0 .. C - 1.
            weight: (B, 1, D, H, W) or (B, D, H, W) voxel weights in [0, 1]; None = 1.

        Raises:
            ValueError: shapes that do not match, labels outside 0 .. C - 1, weights outside [0, 1].
        """
        b, c = logits.shape[:2]
        spatial = tuple(logits.shape[2:])
        y = target[:, 0] if target.ndim == logits.ndim else target
        if tuple(y.shape) != (b, *spatial):
            raise ValueError(f"target: expected shape (B, [1,] {spatial}), got {tuple(target.shape)}")
        y = y.long()
        if int(y.min()) < 0 or int(y.max()) >= c:
            raise ValueError(
                f"target: labels must be in 0..{c - 1} (logit channels), found {int(y.min())}..{int(y.max())}"
            )
        if weight is None:
            w = torch.ones_like(y, dtype=logits.dtype)
        else:
            w = weight[:, 0] if weight.ndim == logits.ndim else weight
            if tuple(w.shape) != (b, *spatial):
                raise ValueError(f"weight: expected shape (B, [1,] {spatial}), got {tuple(weight.shape)}")
            if float(w.min()) < 0 or float(w.max()) > 1:
                raise ValueError(
                    f"weight: expected values in [0, 1], found {float(w.min()):.4g}..{float(w.max()):.4g}"
                )
            w = w.to(logits.dtype)
        ce = (w * F.cross_entropy(logits, y, reduction="none")).mean()
        p = torch.softmax(logits, dim=1)
        g = F.one_hot(y, c).movedim(-1, 1).to(p.dtype)
        wc = w[:, None]
        axes = tuple(range(2, logits.ndim))
        inter = (wc * p * g).sum(axes)
        denom = (wc * p).sum(axes) + (wc * g).sum(axes)
        dice = (1.0 - (2.0 * inter + self.smooth_nr) / (denom + self.smooth_dr)).mean()
        return self.lambda_dice * dice + self.lambda_ce * ce


class SegmentationVolumes(torch.utils.data.Dataset):
    """In-memory training volumes: ``{"image": (1, D, H, W), "label": (1, D, H, W) int64, "confidence"}``.

    Args:
        images: (D, H, W) images in [-1, 1] (e.g. TCDM samples, or HU mapped by the same window).
        labels: (D, H, W) label maps, values 0 .. n_classes - 1.
        confidences: (D, H, W) SSV confidence maps in [0, 1]; None = 1 everywhere (real data).
        n_classes: number of classes the labels must fit.

    Raises:
        ValueError: different counts or shapes, labels outside 0 .. n_classes - 1, confidence
            outside [0, 1] (names the item).
    """

    def __init__(
        self, images: Sequence[Any], labels: Sequence[Any], confidences: Sequence[Any] | None = None,
        n_classes: int = 1 + len(FINE_LABELS),
    ) -> None:  # fmt: skip
        if len(images) != len(labels) or (confidences is not None and len(confidences) != len(images)):
            raise ValueError("images/labels/confidences: expected the same number of volumes")
        self.items = []
        for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
            x = torch.as_tensor(np.asarray(img, dtype=np.float32))
            y = torch.as_tensor(np.asarray(lab)).long()
            c = (
                torch.ones_like(x)
                if confidences is None
                else torch.as_tensor(np.asarray(confidences[i], np.float32))
            )
            if x.ndim != 3 or y.shape != x.shape or c.shape != x.shape:
                raise ValueError(
                    f"labels/confidences[{i}]: shapes {tuple(y.shape)}, {tuple(c.shape)} differ from "
                    "the image's "
                    f"{tuple(x.shape)} (3D)"
                )
            if int(y.min()) < 0 or int(y.max()) >= n_classes:
                raise ValueError(
                    f"labels[{i}]: values must be in 0..{n_classes - 1}, found {int(y.min())}..{int(y.max())}"
                )
            if float(c.min()) < 0 or float(c.max()) > 1:
                raise ValueError(f"confidences[{i}]: expected values in [0, 1]")
            self.items.append({"image": x[None], "label": y[None], "confidence": c[None]})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.items[index]


def _fit(
    network: nn.Module, dataset: Any, config: CALConfig, stage: str, steps: int, lr: float,
    out: str | Path | None, progress: Callable[..., None] | None,
) -> tuple[nn.Module, dict[str, Any]]:  # fmt: skip
    from xraycardiac.trainer import TrainConfig, Trainer

    criterion = ConfidenceWeightedDiceCE(config.lambda_dice, config.lambda_ce)
    use_conf = stage == "pretrain"

    def loss_fn(net: nn.Module, batch: dict[str, torch.Tensor], gen: torch.Generator):
        w = None
        if use_conf and "confidence" in batch:
            w = confidence_weights(batch["confidence"], config.confidence_power, config.confidence_threshold)
        loss = criterion(net(batch["image"]), batch["label"], w)
        return loss, {"weight_mean": float(w.mean()) if w is not None else 1.0}

    tcfg = TrainConfig(steps=steps, batch_size=config.batch_size, lr=lr, warmup_steps=0, ema_decay=0.0,
                       seed=config.seed, device=config.device, log_every=max(1, steps // 20),
                       checkpoint_every=steps)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="xraycardiac-cal-") as tmp:
        folder = Path(out) / stage if out is not None else Path(tmp)
        trainer = Trainer(network, loss_fn, dataset, tcfg, folder, {**config.to_dict(), "stage": stage})
        summary = trainer.fit(progress=progress)
    return trainer.model.eval(), summary


def pretrain_segmenter(
    dataset: Any, config: CALConfig, out: str | Path | None = None, network: nn.Module | None = None,
    progress: Callable[..., None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:  # fmt: skip
    """CAL stage 1: train on synthetic volumes with confidence-weighted Dice + CE.

    Args:
        dataset: map-style dataset of ``{"image", "label", "confidence"}`` (:class:`SegmentationVolumes`).
        config: :class:`CALConfig` (``steps``, ``lr``, confidence mapping).
        out: run folder (checkpoints in ``out/pretrain``, resumable); None = a temporary folder.
        network: start from this network (default: a fresh one of ``config``, seeded).
        progress: ``progress(stage, fraction, **extra)``.

    Returns:
        (trained network in eval mode, trainer summary).
    """
    if network is None:
        torch.manual_seed(config.seed)
        network = build_segmenter(config)
    return _fit(network, dataset, config, "pretrain", config.steps, config.lr, out, progress)


def finetune(
    network: nn.Module, dataset: Any, config: CALConfig, out: str | Path | None = None,
    progress: Callable[..., None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:  # fmt: skip
    """CAL stage 2: fine-tune on real labelled volumes (unweighted Dice + CE; ``finetune_lr``, ``_steps``).

    Args and returns as :func:`pretrain_segmenter` (checkpoints in ``out/finetune``); a
    ``"confidence"`` entry of the dataset is ignored.
    """
    return _fit(
        network, dataset, config, "finetune", config.finetune_steps, config.finetune_lr, out, progress
    )


@torch.no_grad()
def predict_labels(network: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Arg-max labels (B, D, H, W) int64 of a (B, 1, D, H, W) image batch (the network in eval mode)."""
    return network(image).argmax(dim=1)


def evaluate_segmentation(
    pred: Any, target: Any, labels: Iterable[int] = FINE_LABELS, spacing_mm: float | Sequence[float] = 1.0
) -> dict[int, dict[str, float]]:
    """Dice and HD95 (mm) per structure of one predicted label map against the reference.

    Args:
        pred: (D, H, W) predicted label map (numpy or torch, integers).
        target: (D, H, W) reference label map.
        labels: label values to evaluate.
        spacing_mm: voxel size in mm, one number or one per axis (D, H, W) = (K, J, I).

    Returns:
        ``{label: {"dice": ..., "hd95_mm": ...}}``: Dice in [0, 1] and the symmetric 95th-percentile
        Hausdorff distance between the surfaces, mm. A label absent from both maps gives NaN for
        both; present in only one: Dice 0 and HD95 inf.

    Raises:
        ValueError: shapes differ or are not 3D, non-integer labels, a bad spacing.
    """
    from monai.metrics import compute_dice, compute_hausdorff_distance

    p, t = torch.as_tensor(np.asarray(pred)), torch.as_tensor(np.asarray(target))
    if p.ndim != 3 or p.shape != t.shape:
        raise ValueError(
            f"pred: expected a (D, H, W) map of the target's shape {tuple(t.shape)}, got {tuple(p.shape)}"
        )
    for name, v in (("pred", p), ("target", t)):
        if v.is_floating_point() and not torch.equal(v, v.round()):
            raise ValueError(f"{name}: a label map must hold integers, found fractional values")
    spacing = [float(spacing_mm)] * 3 if np.ndim(spacing_mm) == 0 else [float(s) for s in spacing_mm]
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing_mm: expected one or three finite numbers > 0 (mm), got {spacing_mm!r}")
    out: dict[int, dict[str, float]] = {}
    for label in labels:
        pm, tm = (p == int(label))[None, None].float(), (t == int(label))[None, None].float()
        has_p, has_t = bool(pm.any()), bool(tm.any())
        if not (has_p or has_t):
            out[int(label)] = {"dice": math.nan, "hd95_mm": math.nan}
        elif has_p != has_t:
            out[int(label)] = {"dice": 0.0, "hd95_mm": math.inf}
        else:
            dice = float(compute_dice(pm, tm, include_background=True)[0, 0])
            with warnings.catch_warnings():  # MONAI 1.5+'s own deprecated-argument warning from inside
                warnings.filterwarnings(
                    "ignore", category=FutureWarning, message=".*always_return_as_numpy.*"
                )
                hd = compute_hausdorff_distance(
                    pm, tm, include_background=True, percentile=95, spacing=spacing
                )
            out[int(label)] = {"dice": dice, "hd95_mm": float(hd[0, 0])}
    return out
