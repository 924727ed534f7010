"""A SuperPoint-style vessel keypoint detector and descriptor, trained on ground-truth vessel keypoints.

Zhao et al. (2025) match coronary angiograms with SuperPoint keypoints and a LightGlue-style matcher
(:mod:`xraycardiac.coronary.matching.attention_matcher`). This module is the SuperPoint part:

- a shared VGG-like encoder (two 3x3 conv + ReLU per stage, a 2x2 max-pool after each stage) that
  brings an image to 1/``cell`` resolution (``len(channels) == log2(cell)`` stages);
- a **detector head**: per cell of ``cell x cell`` pixels, ``cell**2 + 1`` logits, one per pixel of
  the cell plus a "no keypoint" dustbin (SuperPoint's 65-way softmax for ``cell = 8``); the softmax
  without the dustbin, pixel-shuffled back to full resolution, is the keypoint score map;
- a **descriptor head**: ``descriptor_dim`` channels at 1/``cell`` resolution, L2-normalised per
  position, sampled bilinearly at keypoints (:func:`sample_descriptors`).

Supervision. SuperPoint's self-supervised recipe (a detector pretrained on synthetic shapes, then
"homographic adaptation" pseudo-labels) is known to fail on angiograms: there are few corners, the
strongest ones are on ribs, catheters and the table, and a homography is not how two C-arm views of
a 3D vessel tree relate. Our synthetic pairs come with exact ground-truth vessel keypoints
(bifurcations, endpoints, centreline samples; :mod:`xraycardiac.coronary.synth.dataset`), so the detector
is trained with a plain cross-entropy against the class map of those keypoints
(:func:`keypoint_targets`, :func:`detector_loss`). The descriptors get no loss of their own here:
they are trained end-to-end through the matcher's assignment loss
(:func:`xraycardiac.coronary.matching.matcher_loss.matcher_training_step`), as the descriptor of
SuperPoint's hinge loss would need dense correspondences we only have at keypoints.

Choices where the paper is silent (all config fields): SuperPoint's layout with channels
(32, 64, 128) and a 128-d descriptor (SuperPoint uses (64, 64, 128, 128) and 256: vessel images
carry less texture and train on a CPU at demo size); no batch norm (SuperPoint's released
network has none, and small batches of similar angiograms make batch statistics noisy); each image
is standardised to zero mean and unit variance first, so renderers with different brightness look
alike; non-maximum suppression by a max-pool of radius ``nms_radius_px``; keypoints within
``border_px`` of the image edge are dropped (their 3x3 receptive fields are mostly zero padding).

Pixels are (u = column, v = row), pixel centres at integers, origin top-left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "KeypointNet",
    "KeypointNetConfig",
    "cell_logits_to_scores",
    "detector_loss",
    "keypoint_targets",
    "nms_topk",
    "sample_descriptors",
]


@dataclass(frozen=True)
class KeypointNetConfig:
    """Settings of :class:`KeypointNet`.

    Attributes:
        channels: output channels of the encoder stages; one stage per halving, so
            ``len(channels) == log2(cell)``.
        head_channels: channels of the 3x3 conv that starts each head.
        descriptor_dim: D, the length of a descriptor.
        cell: detector cell size in pixels, a power of two (the detector and the descriptors live at
            1/``cell`` resolution; images must be multiples of it).
        nms_radius_px: non-maximum suppression radius, pixels (a keypoint is the maximum of its
            (2 r + 1)^2 window); 0 turns NMS off.
        detection_threshold: smallest keypoint score kept by :meth:`KeypointNet.detect`, in [0, 1).
        max_keypoints: N, the keypoints per image kept by :meth:`KeypointNet.detect` (highest scores);
            None keeps all above the threshold.
        border_px: keypoints closer than this to the image edge are dropped, pixels.
    """

    channels: tuple[int, ...] = (32, 64, 128)
    head_channels: int = 128
    descriptor_dim: int = 128
    cell: int = 8
    nms_radius_px: int = 4
    detection_threshold: float = 0.005
    max_keypoints: int | None = 512
    border_px: int = 4

    def __post_init__(self) -> None:
        if not (isinstance(self.cell, int) and self.cell >= 2 and self.cell & (self.cell - 1) == 0):
            raise ValueError(f"KeypointNetConfig.cell: expected a power of two >= 2, got {self.cell!r}")
        stages = int(math.log2(self.cell))
        channels = tuple(self.channels)
        if len(channels) != stages or not all(isinstance(c, int) and c > 0 for c in channels):
            raise ValueError(
                f"KeypointNetConfig.channels: expected {stages} positive integers (one stage per halving "
                f"down to 1/{self.cell}), got {self.channels!r}"
            )
        object.__setattr__(self, "channels", channels)
        for name in ("head_channels", "descriptor_dim"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v > 0):
                raise ValueError(f"KeypointNetConfig.{name}: expected an integer > 0, got {v!r}")
        for name in ("nms_radius_px", "border_px"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 0):
                raise ValueError(f"KeypointNetConfig.{name}: expected an integer >= 0 pixels, got {v!r}")
        if not 0.0 <= self.detection_threshold < 1.0:
            raise ValueError(
                f"KeypointNetConfig.detection_threshold: expected a score in [0, 1), got {self.detection_threshold!r}"
            )
        if self.max_keypoints is not None and not (
            isinstance(self.max_keypoints, int) and self.max_keypoints > 0
        ):
            raise ValueError(
                f"KeypointNetConfig.max_keypoints: expected None or an integer > 0, got {self.max_keypoints!r}"
            )


# --- Pure functions around the network -------------------------------------------------------------


def cell_logits_to_scores(logits: torch.Tensor) -> torch.Tensor:
    """Keypoint score map from the detector's cell logits (softmax, drop the dustbin, pixel shuffle).

    Args:
        logits: [B x (c^2 + 1) x Hc x Wc], class k < c^2 is pixel (k // c, k % c) (row, col) of
            the cell, class c^2 the "no keypoint" dustbin.

    Returns:
        scores: [B x Hc*c x Wc*c] in [0, 1], the probability that each pixel is a keypoint.
    """
    c = math.isqrt(logits.shape[1] - 1)
    if c * c + 1 != logits.shape[1]:
        raise ValueError(f"logits: expected c^2 + 1 channels, got {logits.shape[1]}")
    prob = logits.softmax(1)[:, :-1]
    return F.pixel_shuffle(prob, c)[:, 0]


def keypoint_targets(
    uv: torch.Tensor, valid: torch.Tensor | None, image_shape: tuple[int, int], cell: int = 8
) -> torch.Tensor:
    """Detector class map of ground-truth keypoints: the in-cell position of the keypoint, or the dustbin.

    Each keypoint is rounded to its pixel; the cell holding it gets class ``(v % c) * c + u % c``
    (row-major position in the cell), cells without a keypoint get the dustbin ``c * c``. When
    several keypoints fall into one cell, the one with the lowest index wins (deterministic; at
    1/8 resolution this happens at bifurcations, where the first sampled keypoint is the
    bifurcation itself).

    Args:
        uv: [B x K x 2] pixel (u, v).
        valid: [B x K] bool, False for padding or keypoints to ignore; None = all valid.
        image_shape: (rows, cols) of the images, multiples of ``cell``.
        cell: c, the detector cell size in pixels.

    Returns:
        [B x rows/c x cols/c] int64 classes in [0, c^2]. Keypoints outside the image are ignored.
    """
    rows, cols = (int(s) for s in image_shape)
    if rows % cell or cols % cell or rows <= 0 or cols <= 0:
        raise ValueError(f"image_shape: expected positive multiples of cell={cell}, got {image_shape!r}")
    if uv.ndim != 3 or uv.shape[-1] != 2:
        raise ValueError(f"uv: expected [B x K x 2] pixel (u, v), got shape {tuple(uv.shape)}")
    b, k = uv.shape[:2]
    hc, wc = rows // cell, cols // cell
    ij = torch.round(uv).long()
    u, v = ij[..., 0], ij[..., 1]
    ok = (u >= 0) & (u < cols) & (v >= 0) & (v < rows)
    if valid is not None:
        ok &= valid.bool()
    flat_cell = torch.where(ok, (v // cell) * wc + u // cell, hc * wc)  # an extra slot for the ignored
    in_cell = (v % cell) * cell + u % cell
    order = torch.arange(k, device=uv.device).expand(b, k)
    # lowest keypoint index per cell: scatter-min of the indices, K marks "none"
    winner = torch.full((b, hc * wc + 1), k, dtype=torch.long, device=uv.device)
    winner.scatter_reduce_(1, flat_cell, order, reduce="amin")
    winner = winner[:, :-1]
    has = winner < k
    cls = torch.gather(in_cell, 1, winner.clamp(max=max(k - 1, 0))) if k else winner
    out = torch.where(has, cls, torch.full_like(winner, cell * cell))
    return out.view(b, hc, wc)


def detector_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the detector's cell logits against :func:`keypoint_targets` (mean over cells).

    Args:
        logits: [B x (c^2 + 1) x Hc x Wc].
        targets: [B x Hc x Wc] int64 classes.

    Returns:
        Scalar loss.
    """
    if logits.shape[0] != targets.shape[0] or logits.shape[2:] != targets.shape[1:]:
        raise ValueError(
            f"targets: shape {tuple(targets.shape)} does not fit logits {tuple(logits.shape)} ([B x Hc x Wc])"
        )
    return F.cross_entropy(logits.float(), targets)


def nms_topk(
    scores: torch.Tensor,
    nms_radius_px: int,
    threshold: float,
    max_keypoints: int | None,
    border_px: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keypoints from a score map: local maxima above ``threshold``, the best ``max_keypoints`` per image.

    Args:
        scores: [B x H x W] keypoint scores.
        nms_radius_px: r; a pixel is kept only if it is the maximum of its (2 r + 1)^2 window
            (ties keep both). 0 disables NMS.
        threshold: smallest score kept (strictly greater).
        max_keypoints: N per image; None = all kept ones (N = the largest count in the batch).
        border_px: pixels closer than this to the edge are dropped.

    Returns:
        keypoints: [B x N x 2] float pixel (u, v), sorted by decreasing score; padded rows are (0, 0).
        keypoint_scores: [B x N], 0 on padded rows.
        mask: [B x N] bool, False on padded rows (an image with fewer than N keypoints).
    """
    b, h, w = scores.shape
    keep = scores > threshold
    if nms_radius_px > 0:
        pooled = F.max_pool2d(scores[:, None], 2 * nms_radius_px + 1, stride=1, padding=nms_radius_px)[:, 0]
        keep &= scores == pooled
    if border_px > 0:
        inner = torch.zeros_like(keep)
        inner[:, border_px : h - border_px, border_px : w - border_px] = True
        keep &= inner
    counts = keep.flatten(1).sum(1)
    n = int(counts.max()) if max_keypoints is None else int(max_keypoints)
    n = min(n, h * w)
    masked = torch.where(keep, scores, torch.full_like(scores, -1.0)).flatten(1)
    top_scores, top_idx = masked.topk(n, dim=1) if n > 0 else (masked[:, :0], masked[:, :0].long())
    mask = top_scores >= 0  # the -1 fill marks pixels that were not kept
    keypoints = torch.stack([top_idx % w, top_idx // w], -1).to(scores.dtype)
    keypoints = torch.where(mask[..., None], keypoints, torch.zeros_like(keypoints))
    top_scores = torch.where(mask, top_scores, torch.zeros_like(top_scores))
    return keypoints, top_scores, mask


def sample_descriptors(descriptors_dense: torch.Tensor, keypoints: torch.Tensor, cell: int) -> torch.Tensor:
    """Bilinear samples of a 1/``cell`` descriptor map at full-resolution keypoints, L2-normalised.

    Cell (i, j) of the map covers pixels ``[c j, c j + c - 1]`` x ``[c i, c i + c - 1]``, so its value
    sits at the cell centre ``(c j + (c - 1) / 2, c i + (c - 1) / 2)``; keypoints beyond the outermost
    centres take the border value.

    Args:
        descriptors_dense: [B x D x Hc x Wc].
        keypoints: [B x N x 2] pixel (u, v).
        cell: c, the map's stride in pixels.

    Returns:
        descriptors: [B x N x D], unit length.
    """
    b, d, hc, wc = descriptors_dense.shape
    if keypoints.ndim != 3 or keypoints.shape[0] != b or keypoints.shape[-1] != 2:
        raise ValueError(
            f"keypoints: expected [{b} x N x 2] pixel (u, v), got shape {tuple(keypoints.shape)}"
        )
    xy = (keypoints.to(descriptors_dense.dtype) - (cell - 1) / 2) / cell  # in cell units, centres at integers
    size = xy.new_tensor([max(wc - 1, 1), max(hc - 1, 1)])
    grid = 2 * xy / size - 1
    out = F.grid_sample(
        descriptors_dense, grid[:, None], mode="bilinear", padding_mode="border", align_corners=True
    )
    return F.normalize(out[:, :, 0].transpose(1, 2), dim=-1)


# --- The network -----------------------------------------------------------------------------------


def _conv(cin: int, cout: int, k: int = 3) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class KeypointNet(nn.Module):
    """SuperPoint-style keypoint detector and descriptor for angiograms (module docstring).

    Args:
        config: :class:`KeypointNetConfig`; None = defaults.
    """

    def __init__(self, config: KeypointNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or KeypointNetConfig()
        layers: list[nn.Module] = []
        cin = 1
        for cout in config.channels:
            layers += [_conv(cin, cout), nn.ReLU(inplace=True), _conv(cout, cout), nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool2d(2, 2))
            cin = cout
        self.encoder = nn.Sequential(*layers)
        n_classes = config.cell**2 + 1
        self.detector = nn.Sequential(
            _conv(cin, config.head_channels), nn.ReLU(inplace=True), _conv(config.head_channels, n_classes, 1)
        )
        self.descriptor = nn.Sequential(
            _conv(cin, config.head_channels),
            nn.ReLU(inplace=True),
            _conv(config.head_channels, config.descriptor_dim, 1),
        )

    def _check(self, image: torch.Tensor) -> None:
        c = self.config.cell
        if image.ndim != 4 or image.shape[1] != 1:
            raise ValueError(f"image: expected [B x 1 x H x W], got shape {tuple(image.shape)}")
        if image.shape[2] % c or image.shape[3] % c or image.shape[2] == 0 or image.shape[3] == 0:
            raise ValueError(
                f"image: height and width must be positive multiples of cell={c}, got {tuple(image.shape[2:])}"
            )

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Dense outputs.

        Args:
            image: [B x 1 x H x W] angiogram (any range; standardised per image), H, W multiples of cell.

        Returns:
            ``scores`` [B x H x W] keypoint probability per pixel; ``logits`` [B x (c^2 + 1) x H/c x W/c]
            detector logits (for :func:`detector_loss`); ``descriptors_dense`` [B x D x H/c x W/c],
            unit length along D.
        """
        self._check(image)
        x = image.float()
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = x.std(dim=(2, 3), keepdim=True).clamp(min=1e-6)  # a blank image stays finite
        feats = self.encoder((x - mean) / std)
        logits = self.detector(feats)
        return {
            "scores": cell_logits_to_scores(logits),
            "logits": logits,
            "descriptors_dense": F.normalize(self.descriptor(feats), dim=1),
        }

    def describe(self, descriptors_dense: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
        """Descriptors [B x N x D] at keypoints [B x N x 2] (u, v) from ``forward``'s dense map."""
        return sample_descriptors(descriptors_dense, keypoints, self.config.cell)

    @torch.no_grad()
    def detect(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Keypoints, scores and descriptors, padded to a fixed N per batch.

        N is ``config.max_keypoints`` when set (so batches of any content stack), otherwise the largest
        number of detections in the batch. An image with fewer detections than N gets padded rows:
        keypoint (0, 0), score 0, descriptor 0 and ``mask`` False; pass ``mask`` on to the matcher.

        Args:
            image: [B x 1 x H x W], H and W multiples of ``config.cell``.

        Returns:
            ``keypoints`` [B x N x 2] float pixel (u, v) sorted by decreasing score;
            ``keypoint_scores`` [B x N]; ``descriptors`` [B x N x D] unit length (0 on padding);
            ``mask`` [B x N] bool.
        """
        c = self.config
        out = self.forward(image)
        keypoints, scores, mask = nms_topk(
            out["scores"], c.nms_radius_px, c.detection_threshold, c.max_keypoints, c.border_px
        )
        desc = self.describe(out["descriptors_dense"], keypoints) * mask[..., None]
        return {"keypoints": keypoints, "keypoint_scores": scores, "descriptors": desc, "mask": mask}
