"""Learned vessel segmentation of angiograms: a small 2D U-Net with a vessel probability output.

What it is (chosen for a 2-core CPU; the config fields say it): MONAI's ``UNet`` (2D, residual units,
strided-convolution down-sampling, four stride-2 levels; the demo 0.2.0: channels 16-32-64-128-128,
two residual units per level, 0.93 M parameters, 3.7 MB in float32; 0.1.0 had 12-24-48-96-96 with one
unit, 0.33 M) behind :func:`standardise`, one logit per pixel; the probability is its sigmoid.
``standardise`` is either the whole-image ``(x - mean) / std`` (``local_norm_px = 0``, the 0.1.0
weights) or a local contrast normalisation (0.2.0: sigma 20 px; ``local_norm_px`` =
sigma > 0: the 1st-99th percentile range mapped to [0, 1], minus a Gaussian-blurred background,
divided by the local standard deviation over the same Gaussian). The local form gives a vessel the
same input in a training crop and in a whole frame, whatever anatomy, window or grey range the
frame has; the whole-image form does not (a crop's std is not the frame's). Trained by
:mod:`xraycardiac.coronary.segment.train` (``xraycardiac train coronary-vessel-seg``) on synthetic
angiograms with randomised appearance (:mod:`xraycardiac.coronary.synth.appearance`); the shipped
demo weights are ``coronary-vessel-seg-demo`` (the model manifest records the exact command).

Inference (:func:`segment_vessels`): the image is padded (reflect) to a multiple of 16 and run
whole (fully convolutional, any size); ~0.3-0.5 s at 512 x 512 on one CPU thread. The mask is
``probability >= threshold``, with 8-connected specks under ``min_object_px`` and fragments under
``min_object_fraction`` of the largest component removed (all three chosen after
training on validation scenes, see ``VesselSegConfig.val_scenes``, and stored with the weights).
The Frangi segmentation (:func:`xraycardiac.coronary.matching.vessel_keypoints.detect_vessel_keypoints`)
stays the classical baseline (``benchmarks/coronary_vessel_seg.py`` compares them on held-out
appearance families).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xraycardiac.models.weights import JsonConfig, WeightsFormat

__all__ = [
    "DEFAULT_MODEL",
    "SEGMENTATIONS",
    "VesselSegConfig",
    "VesselSegmentation",
    "build_network",
    "load_segmenter",
    "save_weights",
    "segment_image",
    "segment_vessels",
    "standardise",
    "vessel_mask",
]

DEFAULT_MODEL = "coronary-vessel-seg-demo"
SEGMENTATIONS = ("network", "frangi")
WEIGHTS_FORMAT = "xraycardiac.coronary_vessel_seg"
_FILE = WeightsFormat(WEIGHTS_FORMAT, "a coronary vessel segmentation", digest_key="digest")


@dataclass(frozen=True)
class VesselSegConfig(JsonConfig):
    """The network and the training data it was made for (saved with the weights).

    Attributes:
        channels: U-Net channels per level (MONAI ``UNet``).
        strides: down-sampling stride between levels (len(channels) - 1 entries).
        num_res_units: residual units per level.
        threshold: probability at and above which a pixel is vessel.
        min_object_px: 8-connected mask components smaller than this are removed.
        min_object_fraction: components smaller than this fraction of the largest are removed too (an
            injection fills one connected tree; fragments on rib and lung edges are small beside it).
        crop_px: training crop size, pixels.
        zoom: (lo, hi) rescaling of training crops (vessel width in pixels varies with it).
        local_norm_px: Gaussian sigma (pixels) of the local contrast normalisation of the input;
            0 = whole-image standardisation (the 0.1.0 weights). See :func:`standardise`.
        p_vessel_crop: share of training crops centred near a vessel (the rest land anywhere).
        skeleton_weight: weight of the skeleton-recall loss term (1 - the predicted probability's
            mean over the label's skeleton; thin branches count as much as thick ones); 0 = off.
        n_scenes: scenes (tree + view + anatomy) in the training bank.
        scene_seed: first tree seed of the bank (held-out benchmark scenes use other seeds).
        scene_sizes: detector sizes of the bank's scenes, cycled (pixel size scales with them).
        backgrounds: background families of the bank (``appearance.BACKGROUNDS`` minus "real-ct").
        profiles, noises: vessel profiles and noise models drawn in training
            (``appearance.PROFILES`` / ``NOISES``; the held-out ones are for benchmarks).
        val_scenes: validation scenes on which ``threshold``, ``min_object_px`` and
            ``min_object_fraction`` are chosen after training (best mean Dice; training families only,
            trees ``val_seed ..``); 0 = keep the given ones. See :func:`xraycardiac.coronary.segment.train.choose_postprocessing`.
        val_seed: first tree seed of the validation scenes (apart from the training bank's seeds).
    """

    channels: tuple[int, ...] = (12, 24, 48, 96, 96)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    num_res_units: int = 1
    threshold: float = 0.5
    min_object_px: int = 20
    min_object_fraction: float = 0.0
    crop_px: int = 96
    zoom: tuple[float, float] = (0.6, 2.0)
    local_norm_px: float = 0.0
    p_vessel_crop: float = 0.8
    skeleton_weight: float = 0.0
    n_scenes: int = 16
    scene_seed: int = 50_000
    scene_sizes: tuple[int, ...] = (256, 384, 512)
    backgrounds: tuple[str, ...] = ("chest-phantom", "procedural", "lowfreq")
    profiles: tuple[str, ...] = ("beer-lambert", "flat", "blurred-edge")
    noises: tuple[str, ...] = ("poisson", "gaussian")
    val_scenes: int = 0
    val_seed: int = 70_000

    def __post_init__(self) -> None:
        for name in ("channels", "strides", "scene_sizes", "backgrounds", "profiles", "noises", "zoom"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.channels) < 2 or len(self.strides) != len(self.channels) - 1:
            raise ValueError(
                f"VesselSegConfig.strides: expected len(channels) - 1 = {len(self.channels) - 1} strides, "
                f"got {self.strides!r}"
            )
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(
                f"VesselSegConfig.threshold: expected a probability in (0, 1), got {self.threshold}"
            )
        if "real-ct" in self.backgrounds:
            raise ValueError(
                "VesselSegConfig.backgrounds: 'real-ct' is the held-out test family (the real chest CT); "
                "train on 'chest-phantom', 'procedural' and/or 'lowfreq'"
            )
        if not (self.crop_px >= 32 and self.crop_px % 16 == 0):
            raise ValueError(f"VesselSegConfig.crop_px: expected a multiple of 16 >= 32, got {self.crop_px}")
        for name, lo_, hi_ in (("local_norm_px", 0.0, 256.0), ("p_vessel_crop", 0.0, 1.0),
                               ("skeleton_weight", 0.0, 100.0), ("min_object_fraction", 0.0, 1.0)):  # fmt: skip
            v = getattr(self, name)
            if not (isinstance(v, int | float) and not isinstance(v, bool) and lo_ <= v <= hi_):
                raise ValueError(f"VesselSegConfig.{name}: expected a number in [{lo_}, {hi_}], got {v!r}")
        for name in ("val_scenes", "val_seed", "min_object_px"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
                raise ValueError(f"VesselSegConfig.{name}: expected an integer >= 0, got {v!r}")
        # tree seeds used: n_scenes from scene_seed, skipping trees outside the field of view
        bank = (self.scene_seed, self.scene_seed + 4 * self.n_scenes + 8)
        val = (self.val_seed, self.val_seed + 4 * self.val_scenes + 8)
        if self.val_scenes and max(bank[0], val[0]) < min(bank[1], val[1]):
            raise ValueError(
                f"VesselSegConfig.val_seed: the validation trees ({self.val_seed}..) overlap the training "
                f"bank's ({self.scene_seed}..); keep them at least 4 x the scene count + 8 seeds apart"
            )
        lo, hi = self.zoom
        if not 0.1 <= lo <= hi <= 10.0:
            raise ValueError(
                f"VesselSegConfig.zoom: expected (lo, hi) with 0.1 <= lo <= hi <= 10, got {self.zoom}"
            )

    @property
    def multiple(self) -> int:
        """Input sizes must divide by this (the product of the strides)."""
        return int(np.prod(self.strides))


def standardise(x: Any, local_norm_px: float = 0.0) -> Any:
    """The network's input normalisation of a (B, 1, H, W) float tensor (module docstring).

    Args:
        x: images, any grey range.
        local_norm_px: 0 = whole-image ``(x - mean) / std``; > 0 = Gaussian sigma in pixels of the
            local contrast normalisation (percentile range to [0, 1], minus the local mean, over the
            local standard deviation, floored at 0.01).

    Returns:
        The normalised tensor, same shape.
    """
    import torch
    import torch.nn.functional as F

    if local_norm_px <= 0:
        mean = x.mean(dim=(-2, -1), keepdim=True)
        std = x.std(dim=(-2, -1), keepdim=True).clamp_min(1e-3)
        return (x - mean) / std
    flat = x.flatten(-2)
    lo, hi = torch.quantile(flat, torch.tensor([0.01, 0.99], dtype=x.dtype, device=x.device), dim=-1)
    x = (x - lo[..., None, None]) / (hi - lo).clamp_min(1e-6)[..., None, None]
    radius = int(math.ceil(3 * local_norm_px))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / local_norm_px) ** 2)
    k = k / k.sum()

    def blur(a: Any) -> Any:
        a = F.conv2d(F.pad(a, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
        return F.conv2d(F.pad(a, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))

    high = x - blur(x)
    return high / blur(high * high).sqrt().clamp_min(0.01)


def build_network(config: VesselSegConfig) -> Any:
    """The network: :func:`standardise`, then MONAI's 2D UNet; (B, 1, H, W) -> logits (B, 1, H, W)."""
    import torch
    from monai.networks.nets import UNet

    class _Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = UNet(
                spatial_dims=2, in_channels=1, out_channels=1, channels=config.channels,
                strides=config.strides, num_res_units=config.num_res_units,
            )  # fmt: skip
            # the logit offset starts at the vessel prior (~12 % of the pixels, RetinaNet's prior
            # initialisation): behind instance-normalised features it is the only way to shift the
            # mean output, and Adam would need thousands of steps to walk it there from 0
            self.offset = torch.nn.Parameter(torch.tensor(-2.0))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.unet(standardise(x, config.local_norm_px)) + self.offset

    return _Net()


def save_weights(network: Any, config: VesselSegConfig, path: str | os.PathLike[str]) -> Path:
    """Write the weights file (format, config, sha256 digest, float32 tensors) atomically."""
    from xraycardiac.models.weights import write_weights_file

    return write_weights_file(path, _FILE, config.to_dict(), network)


@dataclass
class VesselSegmentation:
    """A vessel probability map and its mask.

    Attributes:
        probability: (rows, cols) float32 in [0, 1]; None for the Frangi baseline (no probability).
        mask: (rows, cols) bool, ``probability >= threshold`` without small specks (or Frangi's mask).
        seconds: inference time.
        model: provenance of the weights (model, version, file, sha256), or {"method": "frangi"}.
    """

    probability: np.ndarray | None
    mask: np.ndarray
    seconds: float
    model: dict[str, Any]


class VesselSegmenter:
    """A loaded segmentation network (use :func:`load_segmenter`, cached per process)."""

    def __init__(
        self, network: Any, config: VesselSegConfig, device: str, provenance: dict[str, Any]
    ) -> None:
        self.network, self.config, self.device, self.provenance = network, config, device, provenance

    def __call__(self, image: np.ndarray) -> VesselSegmentation:
        """Segment one (rows, cols) angiogram (any range; vessels dark or bright)."""
        import time

        import torch

        img = np.asarray(image, dtype=np.float32)
        if img.ndim != 2 or min(img.shape) < 8 or not np.all(np.isfinite(img)):
            raise ValueError(
                f"segment_vessels: expected a finite 2D image of at least 8 x 8 pixels, got shape {img.shape}"
            )
        t0 = time.perf_counter()
        m = self.config.multiple
        rows, cols = img.shape
        pr, pc = -rows % m, -cols % m
        padded = np.pad(img, ((0, pr), (0, pc)), mode="reflect" if min(rows, cols) > max(pr, pc) else "edge")
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(padded))[None, None].to(self.device)
            prob = torch.sigmoid(self.network(x))[0, 0, :rows, :cols].float().cpu().numpy()
        mask = vessel_mask(
            prob, self.config.threshold, self.config.min_object_px, self.config.min_object_fraction
        )
        return VesselSegmentation(prob.astype(np.float32), mask, time.perf_counter() - t0, self.provenance)


def vessel_mask(
    probability: np.ndarray, threshold: float, min_object_px: int, min_object_fraction: float = 0.0
) -> np.ndarray:
    """``probability >= threshold`` without the 8-connected components under ``min_object_px`` pixels or
    under ``min_object_fraction`` of the largest component (bool)."""
    from scipy import ndimage

    mask = np.asarray(probability) >= threshold
    if (min_object_px > 1 or min_object_fraction > 0) and mask.any():
        lab, n = ndimage.label(mask, structure=np.ones((3, 3)))
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        sizes[0] = 0
        keep = (sizes >= min_object_px) & (sizes >= min_object_fraction * sizes.max())
        keep[0] = False
        mask = keep[lab]
    return mask


@functools.lru_cache(maxsize=4)
def load_segmenter(model: str = DEFAULT_MODEL, device: str = "cpu") -> VesselSegmenter:
    """The segmenter of ``model`` (manifest name, run folder or weights file), cached per process.

    Raises:
        FileNotFoundError / ValueError: the model cannot be found, or its file is not a vessel
            segmentation weights file (says which kind it is) or fails its checks.
    """
    from xraycardiac.models.weights import load_state, locate_model, read_model_config

    source = locate_model(model, "vessel segmentation model")
    config, data = read_model_config(source.file, _FILE, VesselSegConfig)
    network = load_state(build_network(config), data["state_dict"], source.file, device)
    return VesselSegmenter(network, config, device, source.provenance)


def segment_vessels(image: np.ndarray, model: str = DEFAULT_MODEL, device: str = "cpu") -> VesselSegmentation:
    """Vessel probability map and mask of one angiogram with the learned network.

    Args:
        image: (rows, cols) angiogram, any grey range.
        model: manifest name (default ``coronary-vessel-seg-demo``), run folder or weights file.
        device: torch device.

    Returns:
        :class:`VesselSegmentation` (probability, mask, seconds, model provenance).
    """
    return load_segmenter(str(model), str(device))(image)


def segment_image(
    image: np.ndarray, method: str = "network", model: str = DEFAULT_MODEL, device: str = "cpu"
) -> VesselSegmentation:
    """Vessels of one angiogram by the learned network (default) or the Frangi baseline.

    Args:
        image: (rows, cols) angiogram; Frangi expects [0, 1] with dark vessels.
        method: "network" (probability + mask) or "frangi" (mask only: thresholded vesselness).
        model: the network's model (manifest name, run folder or weights file).
        device: torch device of the network.

    Raises:
        ValueError: an unknown ``method`` (names the allowed ones), or a model that cannot be used.
    """
    import time

    if method == "network":
        return segment_vessels(image, model, device)
    if method != "frangi":
        raise ValueError(f"segmentation: expected one of {SEGMENTATIONS}, got {method!r}")
    from xraycardiac.coronary.matching.vessel_keypoints import detect_vessel_keypoints

    t0 = time.perf_counter()
    mask = np.asarray(detect_vessel_keypoints(image).mask, dtype=bool)
    return VesselSegmentation(None, mask, time.perf_counter() - t0, {"method": "frangi"})
