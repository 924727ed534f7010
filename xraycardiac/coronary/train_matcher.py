"""The coronary keypoint matcher of Zhao et al. (2025) as one model, and ``xraycardiac train coronary-matcher``.

:class:`CoronaryMatcher` holds the two trained parts, a SuperPoint-style
:class:`~xraycardiac.coronary.keypoint_net.KeypointNet` (keypoints + descriptors) and the
foundation-masked LightGlue-style :class:`~xraycardiac.coronary.attention_matcher.AttentionMatcher`,
and matches two angiograms with :meth:`CoronaryMatcher.match`, which returns the
:class:`~xraycardiac.coronary.baselines.MatchResult` of the classical baselines so that the
evaluation (:mod:`xraycardiac.coronary.evaluate`) treats every method alike.

The foundation model (DINOv2-like, :mod:`xraycardiac.coronary.foundation`) is **not** part of the
module's weights: it is frozen, large and licensed separately, so the user points to a local copy
(``--foundation dinov2:/path``). :class:`CoronaryMatcherConfig` records the spec it was trained
with; at match time the caller passes the loaded :class:`~xraycardiac.coronary.foundation.FoundationModel`
(None, or a matcher config with ``foundation_mask=False``, runs without the mask: the ablation).

Training (:func:`train_coronary_matcher`, on the shared :class:`xraycardiac.trainer.Trainer`):
each step takes whole samples of a coronary pair dataset (``xraycardiac coronary synth``), and the
loss function builds the matcher's inputs with :func:`~xraycardiac.coronary.matcher_loss.matcher_inputs`
(the in-field GT keypoints jittered by ``jitter_px`` plus ``n_distractors`` random vessel pixels per
view) from the trainer's per-step generator, so a resumed run sees exactly the inputs an
uninterrupted one would have. :func:`~xraycardiac.coronary.matcher_loss.matcher_training_step`
gives the loss: the matcher's deep-supervised assignment NLL (which also trains the descriptors)
plus the detector cross-entropy on the GT keypoints. Foundation features, when a spec is given,
are computed inside the loss function without gradients, every step (the images are not
augmented, but caching the maps of a large dataset would not fit in GPU memory).

Output folder ``OUT``: ``checkpoint.pt`` (resumable: rerun the same command), ``log.jsonl`` and,
at the end, the importable package ``model.pt`` (EMA weights, float32) + ``model.json`` (the
manifest entry: name, version, sha256, training data and command, config), so
``xraycardiac models import OUT`` installs it and ``matcher:OUT`` evaluates it directly.

Settings (``key=value`` on the command line, :func:`parse_matcher_overrides`): the fields of
:class:`CoronaryMatcherConfig` by name; those of its sub-configs as ``keypoint_net.<field>``,
``matcher.<field>``, ``loss.<field>``, or by the bare field name where only one config has it
(``channels=[8,8,8]``; ``descriptor_dim`` is in two and needs its prefix); those of
:class:`~xraycardiac.trainer.TrainConfig` by name.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xraycardiac.coronary.attention_matcher import AttentionMatcher, AttentionMatcherConfig
from xraycardiac.coronary.baselines import MatchResult
from xraycardiac.coronary.keypoint_net import KeypointNet, KeypointNetConfig
from xraycardiac.coronary.matcher_loss import MatcherLossConfig
from xraycardiac.models.weights import (
    JsonConfig,
    WeightsFormat,
    load_model_file,
    locate_model,
    read_weights_file,
    write_weights_file,
)

__all__ = [
    "WEIGHTS_FORMAT",
    "CoronaryMatcher",
    "CoronaryMatcherConfig",
    "MatcherTrainingPairs",
    "parse_matcher_overrides",
    "train_coronary_matcher",
]

WEIGHTS_FORMAT = "xraycardiac.coronary_matcher"
_FILE = WeightsFormat(WEIGHTS_FORMAT, "a coronary matcher")
_SUBCONFIGS = {
    "keypoint_net": KeypointNetConfig,
    "matcher": AttentionMatcherConfig,
    "loss": MatcherLossConfig,
}


@dataclass(frozen=True)
class CoronaryMatcherConfig(JsonConfig):
    """What a :class:`CoronaryMatcher` is and how its training inputs are made.

    Attributes:
        keypoint_net: the detector / descriptor (:class:`KeypointNetConfig`).
        matcher: the attention matcher (:class:`AttentionMatcherConfig`); its ``input_dim`` is set
            to ``keypoint_net.descriptor_dim`` (None is filled in; another value is an error).
        loss: loss weights (:class:`MatcherLossConfig`).
        n_distractors: random vessel pixels added per view to the GT keypoints in training.
        jitter_px: GT keypoints move by a uniform offset in [-jitter_px, jitter_px] per axis in
            training, pixels.
        min_distractor_distance_px: distractors keep at least this distance to the GT keypoints, pixels.
        foundation: ``"family:/path/to/folder"`` of the frozen foundation model used in training
            (:meth:`~xraycardiac.coronary.foundation.FoundationSpec.parse`), or None. Its weights are
            not part of the matcher's: training and the evaluation open the folder, loading the
            matcher does not (pass the foundation model to :meth:`CoronaryMatcher.match`).
        foundation_input_size: longer side of the foundation model's input, pixels; None = the
            model's own ``image_size``.
        match_size_px: :meth:`CoronaryMatcher.match` resizes each image (bilinear, antialiased,
            aspect kept) so that its longer side has this many pixels before detection and maps the
            keypoints back, so that vessels have the pixel scale the matcher was trained at; None =
            native size. :func:`train_coronary_matcher` sets it to the training images' side
            when it is None.
    """

    keypoint_net: KeypointNetConfig = field(default_factory=KeypointNetConfig)
    matcher: AttentionMatcherConfig = field(default_factory=AttentionMatcherConfig)
    loss: MatcherLossConfig = field(default_factory=MatcherLossConfig)
    n_distractors: int = 32
    jitter_px: float = 1.0
    min_distractor_distance_px: float = 8.0
    foundation: str | None = None
    foundation_input_size: int | None = None
    match_size_px: int | None = None

    def __post_init__(self) -> None:
        name = "CoronaryMatcherConfig"
        for key, cls in _SUBCONFIGS.items():
            if not isinstance(getattr(self, key), cls):
                raise ValueError(
                    f"{name}.{key}: expected a {cls.__name__}, got {type(getattr(self, key)).__name__}"
                )
        d_in = self.keypoint_net.descriptor_dim
        if self.matcher.input_dim is None:
            object.__setattr__(self, "matcher", replace(self.matcher, input_dim=d_in))
        elif self.matcher.input_dim != d_in:
            raise ValueError(
                f"{name}.matcher.input_dim: must equal keypoint_net.descriptor_dim={d_in} (or be None), "
                f"got {self.matcher.input_dim}"
            )
        if not (isinstance(self.n_distractors, int) and not isinstance(self.n_distractors, bool)) or (
            self.n_distractors < 0
        ):
            raise ValueError(f"{name}.n_distractors: expected an integer >= 0, got {self.n_distractors!r}")
        for key, lo in (("jitter_px", 0.0), ("min_distractor_distance_px", 0.0)):
            v = getattr(self, key)
            if not (isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v) and v >= lo):
                raise ValueError(f"{name}.{key}: expected a distance >= {lo} pixels, got {v!r}")
        if self.foundation is not None:
            from xraycardiac.coronary.foundation import FAMILIES

            family, sep, path = str(self.foundation).partition(":")
            if not sep or family.strip().lower() not in FAMILIES or not path.strip():
                raise ValueError(
                    f"{name}.foundation: expected None or 'family:/path/to/folder' with family in "
                    f"{', '.join(FAMILIES)}, got {self.foundation!r}"
                )
        for key in ("foundation_input_size", "match_size_px"):
            v = getattr(self, key)
            if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v >= 8):
                raise ValueError(f"{name}.{key}: expected None or an integer >= 8 (pixels), got {v!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "matcher config") -> CoronaryMatcherConfig:
        """The config of a weights file / manifest entry; a ValueError naming ``where`` on unknown keys."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unknown CoronaryMatcherConfig field(s) {unknown}")
        kwargs = dict(data)
        try:
            for key, sub in _SUBCONFIGS.items():
                if key in kwargs:
                    value = kwargs[key]
                    if not isinstance(value, Mapping):
                        raise ValueError(f"{key} must be a JSON object, got {type(value).__name__}")
                    bad = sorted(set(value) - {f.name for f in fields(sub)})
                    if bad:
                        raise ValueError(f"unknown {sub.__name__} field(s) {bad}")
                    kwargs[key] = sub(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None


def _norm_key(key: str) -> str:
    return key.strip().lstrip("-").replace("-", "_")


def _apply(base: Any, items: list[tuple[str, str]]) -> Any:
    """``replace(base, **items)`` in one go, so that dependent fields (cell and channels) change together;
    each value read by its field's type (:func:`xraycardiac.trainer.parse_override_value`)."""
    from xraycardiac.trainer import parse_override_value

    if not items:
        return base
    values = {}
    for key, raw in items:
        try:
            values[key] = parse_override_value(base, key, raw)
        except ValueError as exc:
            raise ValueError(f"setting {key}={raw}: {exc}") from None
    try:
        return replace(base, **values)
    except TypeError as exc:  # a value of the wrong type compared in __post_init__
        shown = ", ".join(f"{k}={v}" for k, v in items)
        raise ValueError(
            f"settings {shown}: a value of the wrong type for {type(base).__name__} ({exc})"
        ) from None


def parse_matcher_overrides(
    pairs: Sequence[str],
    config: CoronaryMatcherConfig | None = None,
    train_config: Any = None,
) -> tuple[CoronaryMatcherConfig, Any]:
    """Apply ``key=value`` settings to a matcher config and a training config (unknown keys are errors).

    Keys (module docstring): a :class:`CoronaryMatcherConfig` field; ``keypoint_net.<f>``,
    ``matcher.<f>``, ``loss.<f>``; a sub-config field by its bare name when no other config has it;
    a :class:`~xraycardiac.trainer.TrainConfig` field. Values are read by the field's type, as
    :func:`xraycardiac.trainer.parse_overrides` does (``channels=8,16,32`` or ``[8,16,32]``);
    the settings of one config are applied together, so ``cell=16 channels=8,16,32`` works.

    Args:
        pairs: e.g. ``["steps=500", "channels=[8,8,8]", "matcher.descriptor_dim=32"]``.
        config: the matcher config to start from (default: defaults).
        train_config: the ``TrainConfig`` to start from (default: defaults).

    Returns:
        (matcher config, training config), checked by their ``__post_init__``.

    Raises:
        ValueError: a pair without "=", an unknown key (names the allowed keys) or an ambiguous
            bare key (names its prefixed forms), or a bad value (names the field).
    """
    from xraycardiac.trainer import TrainConfig

    config = config or CoronaryMatcherConfig()
    train_config = train_config or TrainConfig()
    top = {f.name for f in fields(CoronaryMatcherConfig)} - set(_SUBCONFIGS)
    sub_fields = {k: {f.name for f in fields(c)} for k, c in _SUBCONFIGS.items()}
    train_fields = {f.name for f in fields(TrainConfig)}
    owners: dict[str, list[str]] = {}
    for prefix, names in sub_fields.items():
        for n in names:
            owners.setdefault(n, []).append(prefix)
    routed: dict[str, list[tuple[str, str]]] = {"top": [], "train": [], **{k: [] for k in _SUBCONFIGS}}
    for pair in pairs:
        raw_key, sep, value = pair.partition("=")
        key = _norm_key(raw_key)
        if not sep or not key:
            raise ValueError(f"setting {pair!r}: expected key=value")
        prefix, dot, leaf = key.partition(".")
        if dot and prefix in sub_fields and leaf in sub_fields[prefix]:
            routed[prefix].append((leaf, value))
        elif not dot and key in top:
            routed["top"].append((key, value))
        elif not dot and key in train_fields:
            routed["train"].append((key, value))
        elif not dot and len(owners.get(key, [])) == 1:
            routed[owners[key][0]].append((key, value))
        elif not dot and key in owners:
            forms = " or ".join(f"{p}.{key}" for p in owners[key])
            raise ValueError(f"setting {pair!r}: {key!r} is in several configs; write {forms}")
        else:
            allowed = sorted(top | train_fields) + sorted(
                f"{p}.{n}" for p, names in sub_fields.items() for n in names
            )
            raise ValueError(f"setting {pair!r}: unknown key {key!r}; allowed keys: {', '.join(allowed)}")
    subs = {key: _apply(getattr(config, key), routed[key]) for key in _SUBCONFIGS}
    if not any(k == "input_dim" for k, _ in routed["matcher"]):
        subs["matcher"] = replace(subs["matcher"], input_dim=None)  # follows the (new) descriptor size
    config = _apply(replace(config, **subs), routed["top"])
    return config, _apply(train_config, routed["train"])


# --- The model -------------------------------------------------------------------------------------


def _as_image(image: Any, name: str) -> np.ndarray:
    """(rows, cols) float32 in [0, 1] (uint8 is divided by 255), or a ValueError naming ``name``."""
    a = np.asarray(image)
    if a.ndim != 2 or min(a.shape) < 8:
        raise ValueError(
            f"{name}: expected a (rows, cols) grey image of at least 8 x 8 pixels, got shape {a.shape}"
        )
    a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return a


class CoronaryMatcher(nn.Module):
    """KeypointNet + foundation-masked AttentionMatcher: two angiograms in, matched pixels out.

    Args:
        config: :class:`CoronaryMatcherConfig`; None = defaults.

    Attributes:
        keypoint_net: the :class:`KeypointNet`.
        matcher: the :class:`AttentionMatcher`.
        source: provenance of loaded weights (model, version, file, sha256), empty when built here.
    """

    def __init__(self, config: CoronaryMatcherConfig | None = None) -> None:
        super().__init__()
        self.config = config or CoronaryMatcherConfig()
        self.keypoint_net = KeypointNet(self.config.keypoint_net)
        self.matcher = AttentionMatcher(self.config.matcher)
        self.source: dict[str, Any] = {}

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return next(self.parameters()).device

    def forward(
        self,
        batch: dict[str, torch.Tensor],
        foundation: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> dict[str, Any]:
        """Training loss of a batch of :func:`~xraycardiac.coronary.matcher_loss.collate_matcher_inputs`.

        (``forward`` so that DDP sees the whole computation; see
        :func:`~xraycardiac.coronary.matcher_loss.matcher_training_step` for ``foundation`` and
        the returned dict: ``total`` loss, its parts, accuracy figures, the matcher output.)
        """
        from xraycardiac.coronary.matcher_loss import matcher_training_step

        return matcher_training_step(self.keypoint_net, self.matcher, batch, foundation, self.config.loss)

    def _working_image(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """``image`` resized to ``config.match_size_px`` on its longer side (or as is), and the scale used."""
        side = self.config.match_size_px
        h, w = image.shape
        if side is None or max(h, w) == side:
            return image, 1.0
        s = side / max(h, w)
        size = (max(8, round(h * s)), max(8, round(w * s)))
        x = F.interpolate(torch.from_numpy(image)[None, None], size=size, mode="bilinear", antialias=True)
        return x[0, 0].numpy(), s

    def _detect(self, image: np.ndarray) -> dict[str, torch.Tensor]:
        """KeypointNet detections on one image, replicate-padded to a multiple of the cell."""
        h, w = image.shape
        c = self.config.keypoint_net.cell
        x = torch.from_numpy(image).to(self.device)[None, None]
        ph, pw = (-h) % c, (-w) % c
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        det = self.keypoint_net.detect(x)
        kp = det["keypoints"]
        det["mask"] = det["mask"] & (kp[..., 0] <= w - 1) & (kp[..., 1] <= h - 1)  # not in the padding
        return det

    @torch.no_grad()
    def match(
        self,
        image1: np.ndarray,
        image2: np.ndarray,
        foundation: Any = None,
        projection_matrices: np.ndarray | None = None,
        epipolar_tolerance_px: float | None = None,
    ) -> MatchResult:
        """Detect keypoints in both images, match them, optionally keep the epipolar-consistent matches.

        Args:
            image1, image2: (rows, cols) grey images, float in [0, 1] (or uint8), vessels dark; any
                size (resized to ``config.match_size_px`` when set, padded to a multiple of the
                KeypointNet cell by repeating the edge); keypoints come back in their pixels.
            foundation: the loaded foundation model
                (:func:`~xraycardiac.coronary.foundation.load_foundation`), or any callable
                ``images (B, 1, H, W) -> (B, C, h, w)`` patch features; None = no cross-attention mask.
                Not used when ``config.matcher.foundation_mask`` is False.
            projection_matrices: (2, 3, 4) RAS mm -> pixel matrices of the two views; needed with
                ``epipolar_tolerance_px``.
            epipolar_tolerance_px: keep only matches whose symmetric epipolar distance under the known
                geometry is <= this, pixels (:func:`xraycardiac.coronary.baselines.filter_matches`);
                None = no filter.

        Returns:
            :class:`~xraycardiac.coronary.baselines.MatchResult` with pixels (u, v) as float64;
            ``scores`` are the matcher's match probabilities; ``seconds`` covers detection,
            foundation features, matching and filtering; ``info`` holds ``num_matcher_matches``
            (before the filter) and ``foundation_mask`` (whether the mask was applied).
        """
        from xraycardiac.coronary.baselines import MatcherConfig, _check_projections, filter_matches

        flt = None
        if epipolar_tolerance_px is not None:
            flt = MatcherConfig(filter="epipolar", epipolar_tolerance_px=float(epipolar_tolerance_px))
            _check_projections(projection_matrices)  # fail before the work
        a, b = _as_image(image1, "image1"), _as_image(image2, "image2")
        was_training = self.training
        self.eval()
        t0 = time.perf_counter()
        (wa, sa), (wb, sb) = self._working_image(a), self._working_image(b)
        det0, det1 = self._detect(wa), self._detect(wb)
        kp0, kp1 = det0["keypoints"], det1["keypoints"]
        use_fm = foundation is not None and self.config.matcher.foundation_mask
        fdesc0 = fdesc1 = None
        if use_fm:
            from xraycardiac.coronary.foundation import sample_features

            fdesc0, fdesc1 = (
                sample_features(foundation(torch.from_numpy(img)[None, None]), kp, img.shape).to(self.device)
                for img, kp in ((wa, kp0), (wb, kp1))
            )
        size0 = torch.tensor([wa.shape[1], wa.shape[0]], dtype=torch.float32, device=self.device)
        size1 = torch.tensor([wb.shape[1], wb.shape[0]], dtype=torch.float32, device=self.device)
        out = self.matcher(
            kp0, kp1, det0["descriptors"], det1["descriptors"], size0, size1,
            mask0=det0["mask"], mask1=det1["mask"], fdesc0=fdesc0, fdesc1=fdesc1,
        )  # fmt: skip
        m0, ms0 = out["matches0"][0], out["matching_scores0"][0]
        valid = (m0 >= 0) & det0["mask"][0]
        k0 = (
            kp0[0].double().cpu().numpy() + 0.5
        ) / sa - 0.5  # back to the input's pixels (centres at integers)
        k1 = (kp1[0].double().cpu().numpy() + 0.5) / sb - 0.5
        valid_np, m0_np = valid.cpu().numpy(), m0.cpu().numpy()
        x1, x2 = k0[valid_np], k1[m0_np[valid_np]]
        scores = ms0[valid].double().cpu().numpy()
        keypoints1 = k0[det0["mask"][0].cpu().numpy()]
        keypoints2 = k1[det1["mask"][0].cpu().numpy()]
        info: dict[str, Any] = {"num_matcher_matches": len(x1), "foundation_mask": use_fm}
        method = "matcher" if use_fm else "matcher-nofm"
        if flt is not None:
            keep, extra = filter_matches(x1, x2, scores, flt, projection_matrices)
            x1, x2, scores = x1[keep], x2[keep], scores[keep]
            info.update(extra)
            method += "+epipolar"
        seconds = time.perf_counter() - t0
        self.train(was_training)
        return MatchResult(
            keypoints1.reshape(-1, 2), keypoints2.reshape(-1, 2), x1.reshape(-1, 2), x2.reshape(-1, 2),
            scores.reshape(-1), seconds, method, info,
        )  # fmt: skip

    # --- weights -----------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``{"format", "config", "state_dict"}`` (float32) atomically; returns the path."""
        return write_weights_file(path, _FILE, self.config.to_dict(), self)

    @staticmethod
    def read_weights(path: str | os.PathLike[str]) -> tuple[CoronaryMatcherConfig, dict[str, torch.Tensor]]:
        """(config, state dict) of a weights file written by :meth:`save` (``weights_only`` loading).

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a coronary matcher weights file (names the file).
        """
        config, state = read_weights_file(path, _FILE)
        return CoronaryMatcherConfig.from_dict(config, where=str(path)), state

    @classmethod
    def load(
        cls,
        model: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        foundation_mask: bool | None = None,
    ) -> CoronaryMatcher:
        """Load by manifest name (sha256-checked), from a run / package folder, or from a weights file.

        Args:
            model: a model name (``xraycardiac models list``), a folder with ``model.json`` and its
                weights (the output of ``xraycardiac train coronary-matcher``), or a ``.pt`` file.
            device: "cpu", "cuda[:N]", "mps" or "auto".
            foundation_mask: override ``config.matcher.foundation_mask`` (False: the ablation
                without the foundation mask; the weights are the same); None keeps it.

        Returns:
            The matcher in eval mode on ``device``, ``source`` set (model, version, file, sha256).

        Raises:
            FileNotFoundError: a missing folder file or weights file.
            ValueError: unknown name, a sha256 that differs from ``model.json``, a config other than
                the entry's, or a foreign file.
        """
        from xraycardiac.runtime import select_device

        dev = select_device(str(device)) if not isinstance(device, torch.device) else device
        found = locate_model(model, what=None)
        expected = None
        if found.entry is not None:
            where = f"model {found.provenance['model']} ({found.file})"
            expected = CoronaryMatcherConfig.from_dict(found.config, where=where)

        def build(config: CoronaryMatcherConfig) -> CoronaryMatcher:
            if foundation_mask is None:
                return cls(config)
            # the ablation: the same weights, another mask switch
            return cls(
                replace(config, matcher=replace(config.matcher, foundation_mask=bool(foundation_mask)))
            )

        net = load_model_file(found.file, _FILE, CoronaryMatcherConfig, build, expected, str(dev))
        net.source = found.provenance
        return net


# --- Training --------------------------------------------------------------------------------------


class MatcherTrainingPairs(torch.utils.data.Dataset):
    """Samples of a coronary pair dataset as fixed-size tensors (the trainer's default collate stacks them).

    Each item: ``image1``, ``image2`` [1 x H x W] float32 in [0, 1]; ``mask1``, ``mask2`` [1 x H x W]
    float32; ``keypoints1`` [K x 2], ``keypoints2`` [K x 2] float32 pixel (u, v) of the in-field GT
    keypoints, zero-padded to K (the dataset's largest count) with their counts ``num_keypoints1``,
    ``num_keypoints2``; ``matches`` [Mmax x 2] int64 with ``num_matches``; ``index``.

    Args:
        root: a coronary pair dataset (``xraycardiac coronary synth``).
        split: "train", "val", "test" or "all".

    Raises:
        ValueError: no sample in the split, or images of different sizes.
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "train") -> None:
        from xraycardiac.coronary import dataset as ds

        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"training data folder {self.root} not found")
        self.pairs = ds.CoronaryPairDataset(
            self.root, split=None if split == "all" else split, load_thickness=False
        )
        if len(self.pairs) == 0:
            raise ValueError(f"{self.root}: the coronary pair dataset has no sample in split {split!r}")
        shapes, k, mm = set(), 0, 0
        for sample in self.pairs.samples:
            meta = ds.read_json(sample / "sample.json", "coronary pair sample")
            counts = meta.get("counts", {})
            shapes.update(tuple(s) for s in meta.get("image_shape", []))
            k = max(k, int(counts.get("view1", 0)), int(counts.get("view2", 0)))
            mm = max(mm, int(counts.get("matches", 0)))
        if len(shapes) > 1:
            raise ValueError(
                f"{self.root}: images of several sizes {sorted(shapes)}; train on a dataset of one image size"
            )
        self.image_shape = next(iter(shapes)) if shapes else None
        self.max_keypoints, self.max_matches = k, mm

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.pairs[index]
        out = {key: item[key] for key in ("image1", "image2", "mask1", "mask2")}
        for v in (1, 2):
            kp = item[f"keypoints{v}"]
            if len(kp) > self.max_keypoints:  # internal invariant: sample.json counts the in-field keypoints
                raise AssertionError(f"{self.pairs.samples[index]}: more keypoints than sample.json counts")
            out[f"keypoints{v}"] = F.pad(kp, (0, 0, 0, self.max_keypoints - len(kp)))
            out[f"num_keypoints{v}"] = torch.tensor(len(kp), dtype=torch.int64)
        matches = item["matches"].reshape(-1, 2)
        out["matches"] = F.pad(matches, (0, 0, 0, self.max_matches - len(matches)))
        out["num_matches"] = torch.tensor(len(matches), dtype=torch.int64)
        out["index"] = torch.tensor(int(item["index"]), dtype=torch.int64)
        return out


def _matcher_batch(
    batch: dict[str, torch.Tensor], config: CoronaryMatcherConfig, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Collated matcher inputs of a trainer batch; jitter and distractors come from ``generator``."""
    from xraycardiac.coronary.matcher_loss import collate_matcher_inputs, matcher_inputs

    # matcher_inputs draws on the CPU; a CPU generator seeded from the step's keeps resume exact
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    cpu_gen = torch.Generator().manual_seed(seed)
    device, c = batch["image1"].device, config
    items = []
    for b in range(batch["image1"].shape[0]):
        sample = {key: batch[key][b].cpu() for key in ("image1", "image2", "mask1", "mask2")}
        sample["keypoints1"] = batch["keypoints1"][b, : int(batch["num_keypoints1"][b])].cpu()
        sample["keypoints2"] = batch["keypoints2"][b, : int(batch["num_keypoints2"][b])].cpu()
        sample["matches"] = batch["matches"][b, : int(batch["num_matches"][b])].cpu()
        items.append(
            matcher_inputs(sample, c.n_distractors, c.jitter_px, c.min_distractor_distance_px, cpu_gen)
        )
    return {k: v.to(device) for k, v in collate_matcher_inputs(items).items()}


def _init_from(model: CoronaryMatcher, init: str | os.PathLike[str]) -> str:
    """Copy the weights of matcher ``init`` into ``model``; returns the note for ``model.json``."""
    source = CoronaryMatcher.load(init)
    mine, theirs = model.state_dict(), source.state_dict()
    wrong = sorted(k for k in mine.keys() | theirs.keys() if k not in mine or k not in theirs
                   or mine[k].shape != theirs[k].shape)  # fmt: skip
    if wrong:
        raise ValueError(
            f"init={init}: its networks differ from the configured ones in {len(wrong)} tensor(s) "
            f"(first: {wrong[0]}); give the same keypoint_net / matcher settings as it was trained with"
        )
    model.load_state_dict(theirs)
    src = source.source or {}
    return f", initialised from {src.get('model', init)} (sha256 {str(src.get('sha256', '?'))[:12]}...)"


def train_coronary_matcher(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: CoronaryMatcherConfig | None = None,
    train_config: Any = None,
    name: str = "coronary-matcher",
    version: str = "0.1.0",
    split: str = "train",
    progress: Callable[..., None] | None = None,
    command: str | None = None,
    init: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Train (or resume) a :class:`CoronaryMatcher` and write an importable model package into ``out``.

    Args:
        data: a coronary pair dataset (``xraycardiac coronary synth``); images of one size, a
            multiple of ``config.keypoint_net.cell``.
        out: run folder (``checkpoint.pt``, ``log.jsonl``, at the end ``model.pt`` + ``model.json``).
        config: :class:`CoronaryMatcherConfig` (default: defaults).
        train_config: :class:`xraycardiac.trainer.TrainConfig` (default: its defaults).
        name, version: manifest name and version of the result.
        split: which split of the dataset to train on ("train", "val", "test", "all").
        progress: ``progress(stage, fraction, **extra)``.
        command: the command line recorded in ``model.json`` (default: this process's argv).
        init: fine-tune: start from this matcher's weights (model name, run folder or ``.pt``); its
            networks must have ``config``'s shapes (``match_size_px`` and the foundation may differ).
            A resumed run continues from its checkpoint instead.

    Returns:
        The trainer summary plus ``"model"`` (path of model.pt) and ``"entry"`` (the manifest entry).

    Raises:
        FileNotFoundError: ``data`` or the foundation folder is missing.
        ValueError: an empty split, images of several sizes or not a multiple of the cell, a run
            folder holding a checkpoint of other settings, an ``init`` model of other shapes.
    """
    from xraycardiac.coronary.foundation import FoundationSpec, load_foundation, sample_features
    from xraycardiac.trainer import TrainConfig, Trainer, write_model_package

    cfg = config or CoronaryMatcherConfig()
    tcfg = train_config or TrainConfig()
    spec = FoundationSpec.parse(cfg.foundation) if cfg.foundation is not None else None
    dataset = MatcherTrainingPairs(data, split)
    cell = cfg.keypoint_net.cell
    if dataset.image_shape is not None and any(s % cell for s in dataset.image_shape):
        raise ValueError(
            f"{data}: images of {dataset.image_shape[0]} x {dataset.image_shape[1]} pixels are not a multiple "
            f"of keypoint_net.cell={cell}; synthesize with another --size or set keypoint_net.cell"
        )
    if cfg.match_size_px is None and dataset.image_shape is not None:
        cfg = replace(cfg, match_size_px=int(max(dataset.image_shape)))
    torch.manual_seed(tcfg.seed)
    model = CoronaryMatcher(cfg)
    init_text = ""
    if init is not None:
        init_text = _init_from(model, init)
    out = Path(out)
    fm_holder: dict[str, Any] = {}

    def foundation_fn(image: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
        feats = fm_holder["model"].patch_features(image)
        return sample_features(feats, keypoints, tuple(image.shape[-2:])).to(keypoints.device)

    use_fm = spec is not None and cfg.matcher.foundation_mask

    def loss_fn(net: nn.Module, batch: dict[str, torch.Tensor], gen: torch.Generator):
        inputs = _matcher_batch(batch, cfg, gen)
        res = net(inputs, foundation=foundation_fn if use_fm else None)
        metrics = {key: res[key] for key in ("precision", "recall", "accuracy")}
        metrics["matcher"] = float(res["matcher"].detach())
        if res["detector"] is not None:
            metrics["detector"] = float(res["detector"].detach())
        return res["total"], metrics

    trainer = Trainer(model, loss_fn, dataset, tcfg, out, cfg.to_dict())
    if use_fm:
        fm_holder["model"] = load_foundation(spec, trainer.device, input_size=cfg.foundation_input_size)
    summary = trainer.fit(progress=progress)
    if not trainer.is_main:
        return summary
    averaged = trainer.averaged_model()
    weights = averaged.save(out / "model.pt")
    fm_text = "none"
    if use_fm:
        info = fm_holder["model"].info
        shas = ", ".join(f"{k} {v[:12]}..." for k, v in sorted(info["weights_sha256"].items()))
        fm_text = f"{info['family']} {info['model_class']} ({shas}; not included)"
    shape = dataset.image_shape
    entry = write_model_package(
        out, weights, name=name, version=version, command=command, config=cfg.to_dict(),
        training_data=(
            f"{len(dataset)} coronary view pairs"
            + (f" of {shape[0]} x {shape[1]} px" if shape else "")
            + f" from {Path(data).name} (split {split})"
        ),
        description=(
            f"coronary keypoint matcher (KeypointNet {list(cfg.keypoint_net.channels)} D={cfg.keypoint_net.descriptor_dim}"
            f" + attention matcher {cfg.matcher.n_layers} layers D={cfg.matcher.descriptor_dim}, foundation mask "
            f"{cfg.matcher.foundation_mask}); foundation model: {fm_text}; {summary['step']} steps x batch "
            f"{tcfg.batch_size}, EMA {tcfg.ema_decay}{init_text}; train config "
            + json.dumps(asdict(tcfg), sort_keys=True)
        ),
    )  # fmt: skip
    return {**summary, "model": str(weights), "entry": entry}
