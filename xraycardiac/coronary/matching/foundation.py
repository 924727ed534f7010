"""Image foundation models (DINOv2, CLIP, SAM) as frozen patch-feature extractors sampled at keypoints.

Zhao et al. (2025) mask the matcher's cross-attention with the similarity of foundation-model
features at the keypoints and compare which foundation model helps. This module gives the matcher
one interface over three families, each loaded with ``transformers`` from a folder the user
provides (``--foundation dinov2:/path``); nothing is ever downloaded (``local_files_only=True``):

==========  =====================================  ==============================================
family      ``config.json`` ``model_type``         class (what gives the patch grid)
==========  =====================================  ==============================================
dinov2      ``dinov2``, ``dinov2_with_registers``  ``Dinov2Model`` / ``Dinov2WithRegistersModel``:
                                                   last hidden state, CLS and register tokens dropped
clip        ``clip``, ``clip_vision_model``        ``CLIPVisionModel`` (the vision tower of a full
                                                   CLIP folder): last hidden state, CLS dropped
sam         ``sam``                                ``SamModel.get_image_embeddings``: the vision
                                                   encoder's neck output (B, 256, 64, 64 for SAM)
==========  =====================================  ==============================================

Preprocessing (:meth:`FoundationModel.patch_features`). Angiograms are grey in [0, 1], vessels
dark; they are fed as they are (no inversion), repeated to 3 channels:

1. Resize (bilinear, antialiased) keeping the aspect so that the longer side is ``input_size``
   pixels and both sides are whole numbers of patches: ``h = max(1, round(H * s / p))`` patches,
   ``w = max(1, round(W * s / p))``, ``s = input_size / max(H, W)``, ``p`` the patch size. The
   aspect changes by less than half a patch. ``input_size`` defaults to the model's
   ``image_size`` (518 for the released DINOv2, 224 for CLIP, 1024 for SAM). DINOv2 and CLIP
   interpolate their position embeddings to the (h, w) grid; SAM's are fixed, so the resized
   image is zero-padded (after normalisation, as ``SamProcessor`` does) at the bottom and right to
   ``image_size`` square and the embedding grid is cropped back to (h, w).
2. Normalise ``(x - mean) / std`` per channel with the folder's ``preprocessor_config.json``
   ``image_mean`` / ``image_std`` when it has them (``do_normalize: false`` turns this off), else
   the family's standard constants: ImageNet (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) for
   DINOv2 and SAM, OpenAI CLIP (0.4815, 0.4578, 0.4082) / (0.2686, 0.2613, 0.2758) for CLIP.
   Images are taken as already rescaled to [0, 1] (the processor's ``rescale_factor`` is not used).

The output is a (B, C, h, w) float32 map, L2-normalised along C; patch (i, j) is centred at pixel
``u = (j + 0.5) * W / w - 0.5``, ``v = (i + 0.5) * H / h - 0.5`` of the input image (pixel centres
at integers), which is the mapping :func:`sample_features` inverts. The model runs in ``eval()``
under ``torch.no_grad()``; :class:`FoundationModel` is not an ``nn.Module`` on purpose, so a
matcher holding one neither saves its weights in its checkpoints nor trains them.

``transformers`` is imported inside the functions only, so importing this module (and the command
line) stays fast.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "FAMILIES",
    "FoundationModel",
    "FoundationSpec",
    "cosine_similarity_matrix",
    "load_foundation",
    "sample_features",
]

FAMILIES = ("dinov2", "clip", "sam")

# family -> {config.json model_type: transformers class name}
_MODEL_CLASSES: dict[str, dict[str, str]] = {
    "dinov2": {"dinov2": "Dinov2Model", "dinov2_with_registers": "Dinov2WithRegistersModel"},
    "clip": {"clip": "CLIPVisionModel", "clip_vision_model": "CLIPVisionModel"},
    "sam": {"sam": "SamModel"},
}
# model_type -> family, to name what a wrong folder holds.
_FAMILY_OF_TYPE = {t: fam for fam, types in _MODEL_CLASSES.items() for t in types}

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_DEFAULT_NORM = {
    "dinov2": (_IMAGENET_MEAN, _IMAGENET_STD),
    "clip": (_CLIP_MEAN, _CLIP_STD),
    "sam": (_IMAGENET_MEAN, _IMAGENET_STD),
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass(frozen=True)
class FoundationSpec:
    """Which foundation model to load: a family and the local folder holding it.

    Attributes:
        family: one of ``FAMILIES`` ("dinov2", "clip", "sam").
        path: folder written by ``save_pretrained`` (``config.json`` + weights), as given by the user.
    """

    family: str
    path: Path

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(
                f"foundation: unknown family {self.family!r}; expected one of {', '.join(FAMILIES)}"
            )
        object.__setattr__(self, "path", Path(self.path).expanduser())

    @classmethod
    def parse(cls, text: str) -> FoundationSpec:
        """Parse ``"family:/path/to/folder"`` (the ``--foundation`` option).

        A bare name that is not a folder here names a foundation folder shipped with the package
        (``dinov2:angio-foundation-demo``, our stand-in from ``xraycardiac train coronary-foundation``).

        Raises:
            ValueError: no ``family:`` prefix, empty path or unknown family (names ``foundation``).
            FileNotFoundError: the folder does not exist.
        """
        family, sep, path = str(text).partition(":")
        family = family.strip().lower()
        if not sep or not family or not path.strip():
            raise ValueError(
                f"foundation: expected 'family:/path/to/folder' with family in {', '.join(FAMILIES)}, "
                f"got {text!r}"
            )
        folder = Path(path.strip()).expanduser()
        if not folder.exists() and len(folder.parts) == 1:
            from xraycardiac.models.manifest import PACKAGED_WEIGHTS_DIR

            if (PACKAGED_WEIGHTS_DIR / folder.name).is_dir():
                folder = PACKAGED_WEIGHTS_DIR / folder.name
        spec = cls(family, folder)
        _check_folder(spec.path)
        return spec

    def __str__(self) -> str:
        return f"{self.family}:{self.path}"


class FoundationModel:
    """A frozen foundation model that turns grey images into L2-normalised patch feature maps.

    Built by :func:`load_foundation`. Attributes: ``family``, ``model`` (the ``transformers``
    module, eval mode), ``device``, ``patch_size`` (input pixels per patch side after resizing),
    ``input_size`` (longer side of the resized input, pixels), ``feature_dim`` (C), ``info``.
    """

    def __init__(
        self,
        family: str,
        model: torch.nn.Module,
        *,
        device: torch.device,
        patch_size: int,
        input_size: int,
        model_image_size: int,
        feature_dim: int,
        mean: tuple[float, ...] | None,
        std: tuple[float, ...] | None,
        num_prefix_tokens: int,
        info: dict[str, Any],
    ) -> None:
        self.family = family
        self.model = model
        self.device = device
        self.patch_size = patch_size
        self.input_size = input_size
        self.model_image_size = model_image_size
        self.feature_dim = feature_dim
        self.num_prefix_tokens = num_prefix_tokens
        self._mean = None if mean is None else torch.tensor(mean, dtype=torch.float32, device=device)
        self._std = None if std is None else torch.tensor(std, dtype=torch.float32, device=device)
        self.info = info

    def __repr__(self) -> str:
        return (
            f"FoundationModel({self.info['family']}:{self.info['folder']}, {self.info['model_class']}, "
            f"C={self.feature_dim}, patch={self.patch_size}, input={self.input_size})"
        )

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid (h, w) for an input image of ``height`` x ``width`` pixels (module docstring)."""
        scale = self.input_size / max(height, width)
        p = self.patch_size
        return max(1, round(height * scale / p)), max(1, round(width * scale / p))

    @torch.no_grad()
    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """Patch feature map of a batch of grey images.

        Args:
            images: (B, H, W) or (B, 1, H, W) float in [0, 1] (angiograms: vessels dark), any device.

        Returns:
            (B, C, h, w) float32 on ``self.device``, L2-normalised along C; (h, w) from
            :meth:`grid_size`; patch (i, j) is centred at pixel (u, v) = ((j + 0.5) W / w - 0.5,
            (i + 0.5) H / h - 0.5).

        Raises:
            ValueError: ``images`` has another shape.
        """
        images = torch.as_tensor(images)
        if images.ndim == 4 and images.shape[1] == 1:
            images = images[:, 0]
        if images.ndim != 3 or min(images.shape) < 1:
            raise ValueError(f"images: expected (B, H, W) or (B, 1, H, W), got shape {tuple(images.shape)}")
        height, width = int(images.shape[-2]), int(images.shape[-1])
        gh, gw = self.grid_size(height, width)
        p = self.patch_size
        x = images.to(device=self.device, dtype=torch.float32)[:, None]
        if (height, width) != (gh * p, gw * p):
            x = F.interpolate(x, size=(gh * p, gw * p), mode="bilinear", align_corners=False, antialias=True)
        x = x.expand(-1, 3, -1, -1)
        if self._mean is not None:
            x = (x - self._mean[:, None, None]) / self._std[:, None, None]
        if self.family == "sam":
            side = self.model_image_size
            x = F.pad(x, (0, side - gw * p, 0, side - gh * p))
            feats = self.model.get_image_embeddings(pixel_values=x)[:, :, :gh, :gw]
        else:
            kwargs = {"interpolate_pos_encoding": True} if self.family == "clip" else {}
            tokens = self.model(pixel_values=x, **kwargs).last_hidden_state[:, self.num_prefix_tokens :]
            if tokens.shape[1] != gh * gw:  # internal invariant: one token per patch, row-major
                raise AssertionError(f"{tokens.shape[1]} patch tokens for a {gh}x{gw} grid")
            feats = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], gh, gw)
        return F.normalize(feats.float(), dim=1, eps=1e-12).contiguous()

    __call__ = patch_features


def load_foundation(
    spec: FoundationSpec, device: str | torch.device = "cpu", *, input_size: int | None = None
) -> FoundationModel:
    """Load a foundation model from its local folder (never from the network).

    Args:
        spec: family and folder (:meth:`FoundationSpec.parse`).
        device: torch device for the model and its features ("cpu", "cuda", "cuda:1", ...).
        input_size: longer side of the resized input image, pixels; default the model's
            ``image_size``. For SAM at most ``image_size`` (its position embeddings are fixed).

    Returns:
        A :class:`FoundationModel` in eval mode on ``device``, float32. Its ``info`` dict holds
        ``family``, ``folder``, ``model_type``, ``model_class``, ``hidden_size``, ``feature_dim``,
        ``patch_size``, ``input_size``, ``image_mean``, ``image_std``, ``weights_sha256``
        ({file name: sha256}) and ``transformers_version``.

    Raises:
        FileNotFoundError: the folder, its ``config.json`` or its weights are missing.
        ValueError: the folder holds another kind of model than ``spec.family``, or a bad
            ``input_size``.
    """
    from xraycardiac.models import sha256_file

    folder = _check_folder(spec.path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"foundation folder {folder} has no config.json (write it with save_pretrained)"
        )
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ValueError(f"{config_file}: not a JSON object ({exc})") from None
    classes = _MODEL_CLASSES[spec.family]
    if model_type not in classes:
        held = _FAMILY_OF_TYPE.get(model_type, model_type)
        raise ValueError(
            f"foundation folder {folder} holds a {held!r} model (config.json model_type {model_type!r}), "
            f"expected {spec.family!r} (model_type {' or '.join(map(repr, classes))})"
        )
    weights = sorted(f for f in folder.iterdir() if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES))
    if not weights:
        raise FileNotFoundError(
            f"foundation folder {folder} has no weights file ({', '.join('*' + s for s in _WEIGHT_SUFFIXES)})"
        )

    import transformers

    class_name = classes[model_type]
    model = _from_pretrained(getattr(transformers, class_name), folder)
    device = torch.device(device)
    model = model.to(device).eval().requires_grad_(False)

    config = model.config
    vision = config.vision_config if spec.family == "sam" else config
    patch_size = _as_int(vision.patch_size, "patch_size", folder)
    model_image_size = _as_int(vision.image_size, "image_size", folder)
    if input_size is None:
        input_size = model_image_size
    if int(input_size) < patch_size or (spec.family == "sam" and int(input_size) > model_image_size):
        upper = f" and <= {model_image_size} (SAM's fixed image size)" if spec.family == "sam" else ""
        raise ValueError(f"input_size: must be >= the patch size {patch_size}{upper}, got {input_size}")
    input_size = int(input_size)
    feature_dim = int(vision.output_channels) if spec.family == "sam" else int(vision.hidden_size)
    prefix = 1 + int(getattr(config, "num_register_tokens", 0)) if spec.family == "dinov2" else 1
    mean, std = _normalisation(folder, spec.family)
    info = {
        "family": spec.family,
        "folder": str(folder),
        "model_type": model_type,
        "model_class": class_name,
        "hidden_size": int(vision.hidden_size),
        "feature_dim": feature_dim,
        "patch_size": patch_size,
        "model_image_size": model_image_size,
        "input_size": input_size,
        "image_mean": None if mean is None else list(mean),
        "image_std": None if std is None else list(std),
        "weights_sha256": {f.name: sha256_file(f) for f in weights},
        "transformers_version": transformers.__version__,
    }
    return FoundationModel(
        spec.family,
        model,
        device=device,
        patch_size=patch_size,
        input_size=input_size,
        model_image_size=model_image_size,
        feature_dim=feature_dim,
        mean=mean,
        std=std,
        num_prefix_tokens=prefix,
        info=info,
    )


def sample_features(
    feats: torch.Tensor, keypoints_uv: torch.Tensor, image_size: tuple[int, int]
) -> torch.Tensor:
    """Bilinear samples of a patch feature map at pixel keypoints, L2-normalised.

    The feature map is taken to cover the whole image evenly (as :meth:`FoundationModel.patch_features`
    makes it): pixel (u, v), centres at integers, maps to ``grid_sample`` coordinates
    ``x = (2u + 1) / W - 1``, ``y = (2v + 1) / H - 1`` with ``align_corners=False``, so the image's
    outer edges (u = -0.5, u = W - 0.5) are x = -1, +1 and patch (i, j) is read exactly at its
    centre ``u = (j + 0.5) W / w - 0.5``, ``v = (i + 0.5) H / h - 0.5``. Points between the outer
    patch centres and the image edge (or outside it) take the border value.

    Args:
        feats: (B, C, h, w) feature map.
        keypoints_uv: (B, N, 2) pixel coordinates (u = column, v = row) in the image of ``image_size``.
        image_size: (H, W) of the image the keypoints refer to, pixels.

    Returns:
        (B, N, C) float32 descriptors, unit L2 norm (a zero sample stays zero).

    Raises:
        ValueError: shapes that do not fit.
    """
    if feats.ndim != 4:
        raise ValueError(f"feats: expected (B, C, h, w), got shape {tuple(feats.shape)}")
    if keypoints_uv.ndim != 3 or keypoints_uv.shape[-1] != 2 or keypoints_uv.shape[0] != feats.shape[0]:
        raise ValueError(
            f"keypoints_uv: expected (B={feats.shape[0]}, N, 2), got shape {tuple(keypoints_uv.shape)}"
        )
    height, width = (int(s) for s in image_size)
    if height < 1 or width < 1:
        raise ValueError(f"image_size: expected (H, W) >= 1 pixel, got {image_size}")
    feats = feats.float()
    uv = keypoints_uv.to(device=feats.device, dtype=torch.float32)
    size = torch.tensor([width, height], dtype=torch.float32, device=feats.device)
    grid = (2.0 * uv + 1.0) / size - 1.0  # (B, N, 2) as (x, y)
    samples = F.grid_sample(
        feats, grid[:, :, None, :], mode="bilinear", padding_mode="border", align_corners=False
    )
    return F.normalize(samples[..., 0].transpose(1, 2), dim=-1, eps=1e-12)


def cosine_similarity_matrix(desc1: torch.Tensor, desc2: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every descriptor pair.

    Args:
        desc1: (B, N, C) descriptors.
        desc2: (B, M, C) descriptors.

    Returns:
        (B, N, M) float32 in [-1, 1] (0 for a zero descriptor).
    """
    if (
        desc1.ndim != 3
        or desc2.ndim != 3
        or desc1.shape[0] != desc2.shape[0]
        or desc1.shape[2] != desc2.shape[2]
    ):
        raise ValueError(
            f"desc1, desc2: expected (B, N, C) and (B, M, C), got {tuple(desc1.shape)} and {tuple(desc2.shape)}"
        )
    a = F.normalize(desc1.float(), dim=-1, eps=1e-12)
    b = F.normalize(desc2.float(), dim=-1, eps=1e-12)
    return a @ b.transpose(1, 2)


def _from_pretrained(model_class: Any, folder: Path) -> torch.nn.Module:
    """``model_class.from_pretrained(folder)`` offline in float32, quietly; every weight must come from the folder.

    A full CLIP folder also holds the text tower: those *unexpected* weights are skipped without a
    report. A *missing* weight would be left at its random initialisation, so it is an error.
    """
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model, loading = model_class.from_pretrained(
            str(folder), local_files_only=True, dtype=torch.float32, output_loading_info=True
        )
    except (OSError, RuntimeError) as exc:  # unreadable / mismatched weights
        raise ValueError(
            f"foundation folder {folder}: {model_class.__name__} cannot load it: {exc}"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    missing = sorted(loading.get("missing_keys", ()))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(
            f"foundation folder {folder}: the weights lack {len(missing)} {model_class.__name__} tensors: {shown}"
        )
    return model


def _check_folder(path: Path) -> Path:
    """The folder as a Path, or FileNotFoundError naming it."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise FileNotFoundError(f"foundation folder {folder} {what}")
    return folder


def _as_int(value: Any, name: str, folder: Path) -> int:
    """A square config size (int or equal pair) as int."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"foundation folder {folder}: non-square {name} {value} is not supported")
        value = value[0]
    return int(value)


def _normalisation(folder: Path, family: str) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """(mean, std) per RGB channel from preprocessor_config.json, else the family's standard ones."""
    mean, std = _DEFAULT_NORM[family]
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        try:
            cfg = json.loads(pre.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{pre}: not valid JSON ({exc})") from None
        if cfg.get("do_normalize", True) is False:
            return None, None
        mean = _three(cfg.get("image_mean", mean), "image_mean", pre)
        std = _three(cfg.get("image_std", std), "image_std", pre)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _three(value: Any, name: str, source: os.PathLike[str]) -> tuple[float, ...]:
    """A per-channel constant as 3 floats (a scalar is repeated)."""
    values = [value] * 3 if isinstance(value, (int, float)) else list(value)
    if len(values) != 3 or any(not isinstance(v, (int, float)) for v in values):
        raise ValueError(f"{source}: {name} must be 3 numbers, got {value!r}")
    if name == "image_std" and any(v <= 0 for v in values):
        raise ValueError(f"{source}: {name} must be > 0, got {value!r}")
    return tuple(float(v) for v in values)
