"""The deployable coronary keypoint matcher of Zhao et al. (2025): :class:`CoronaryMatcher` and its config.

:class:`CoronaryMatcher` holds the two trained parts, a SuperPoint-style
:class:`~xraycardiac.coronary.matching.keypoint_net.KeypointNet` (keypoints + descriptors) and the
foundation-masked LightGlue-style :class:`~xraycardiac.coronary.matching.attention_matcher.AttentionMatcher`,
and matches two angiograms with :meth:`CoronaryMatcher.match`, which returns the
:class:`~xraycardiac.coronary.matching.baselines.MatchResult` of the classical baselines so that the
evaluation (:mod:`xraycardiac.coronary.matching.evaluate`) treats every method alike.

The foundation model (DINOv2-like, :mod:`xraycardiac.coronary.matching.foundation`) is **not** part of the
module's weights: it is frozen, large and licensed separately, so the user points to a local copy
(``--foundation dinov2:/path``). :class:`CoronaryMatcherConfig` records the spec it was trained
with; at match time the caller passes the loaded :class:`~xraycardiac.coronary.matching.foundation.FoundationModel`
(None, or a matcher config with ``foundation_mask=False``, runs without the mask: the ablation).
Training: :mod:`xraycardiac.coronary.matching.train_matcher`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xraycardiac.coronary.matching.attention_matcher import AttentionMatcher, AttentionMatcherConfig
from xraycardiac.coronary.matching.baselines import MatchResult
from xraycardiac.coronary.matching.keypoint_net import KeypointNet, KeypointNetConfig
from xraycardiac.coronary.matching.matcher_loss import MatcherLossConfig
from xraycardiac.models.weights import (
    JsonConfig,
    WeightsFormat,
    load_model_file,
    locate_model,
    read_weights_file,
    write_weights_file,
)

__all__ = ["SUBCONFIGS", "WEIGHTS_FORMAT", "CoronaryMatcher", "CoronaryMatcherConfig", "epipolar_band_mask"]

WEIGHTS_FORMAT = "xraycardiac.coronary_matcher"
_FILE = WeightsFormat(WEIGHTS_FORMAT, "a coronary matcher")
SUBCONFIGS = {
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
            (:meth:`~xraycardiac.coronary.matching.foundation.FoundationSpec.parse`), or None. Its weights are
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
        for key, cls in SUBCONFIGS.items():
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
            from xraycardiac.coronary.matching.foundation import FAMILIES

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
            for key, sub in SUBCONFIGS.items():
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


def epipolar_band_mask(
    keypoints1: np.ndarray, keypoints2: np.ndarray, projection_matrices: np.ndarray, band_px: float
) -> np.ndarray:
    """Which keypoint pairs the recorded geometry allows: symmetric epipolar distance <= ``band_px``.

    With a C-arm geometry known to within its tolerance (e.g. the calibration prior's sigmas), a
    correct match lies within a band about the recorded epipolar line
    (:func:`xraycardiac.coronary.recon.calibration.epipolar_band_px` gives its width); the matcher
    uses this as a cross-attention and assignment mask (``allowed`` of
    :meth:`~xraycardiac.coronary.matching.attention_matcher.AttentionMatcher.forward`).

    Args:
        keypoints1: (M, 2) pixels (u, v) of view 1; keypoints2: (N, 2) of view 2.
        projection_matrices: (2, 3, 4) recorded RAS mm -> pixel matrices of the two views.
        band_px: half width of the band, pixels (> 0).

    Returns:
        (M, N) bool.
    """
    from xraycardiac.coronary.matching.baselines import check_projections
    from xraycardiac.geometry.epipolar import fundamental_matrix, symmetric_distance_matrix

    p = check_projections(projection_matrices)
    if not (np.isfinite(band_px) and band_px > 0):
        raise ValueError(f"band_px: expected an epipolar band half width > 0 pixels, got {band_px!r}")
    return symmetric_distance_matrix(fundamental_matrix(p[0], p[1]), keypoints1, keypoints2) <= band_px


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
        """Training loss of a batch of :func:`~xraycardiac.coronary.matching.matcher_loss.collate_matcher_inputs`.

        (``forward`` so that DDP sees the whole computation; see
        :func:`~xraycardiac.coronary.matching.matcher_loss.matcher_training_step` for ``foundation`` and
        the returned dict: ``total`` loss, its parts, accuracy figures, the matcher output.)
        """
        from xraycardiac.coronary.matching.matcher_loss import matcher_training_step

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

    def _describe(
        self, image: np.ndarray, keypoints: np.ndarray, scale: float, name: str
    ) -> dict[str, torch.Tensor]:
        """KeypointNet descriptors of ``image`` (already at the working scale) at the caller's keypoints
        (input pixels, scaled here by ``scale``), in :meth:`_detect`'s layout (all valid)."""
        kp = np.asarray(keypoints, dtype=np.float64)
        if kp.ndim != 2 or kp.shape[1] != 2 or not np.all(np.isfinite(kp)):
            raise ValueError(f"{name}: expected (N, 2) finite pixels (u, v), got shape {kp.shape}")
        h, w = image.shape
        c = self.config.keypoint_net.cell
        x = F.pad(
            torch.from_numpy(image).to(self.device)[None, None], (0, (-w) % c, 0, (-h) % c), mode="replicate"
        )
        work = np.clip((kp + 0.5) * scale - 0.5, 0.0, [w - 1, h - 1])
        k = torch.from_numpy(work).float().to(self.device)[None]
        desc = self.keypoint_net.describe(self.keypoint_net(x)["descriptors_dense"], k)
        return {
            "keypoints": k,
            "descriptors": desc,
            "mask": torch.ones(1, len(kp), dtype=torch.bool, device=self.device),
        }

    @torch.no_grad()
    def match(
        self,
        image1: np.ndarray,
        image2: np.ndarray,
        foundation: Any = None,
        projection_matrices: np.ndarray | None = None,
        epipolar_tolerance_px: float | None = None,
        keypoints: tuple[np.ndarray, np.ndarray] | None = None,
        band_px: float | None = None,
    ) -> MatchResult:
        """Detect keypoints in both images, match them, optionally keep the epipolar-consistent matches.

        Args:
            image1, image2: (rows, cols) grey images, float in [0, 1] (or uint8), vessels dark; any
                size (resized to ``config.match_size_px`` when set, padded to a multiple of the
                KeypointNet cell by repeating the edge); keypoints come back in their pixels.
            foundation: the loaded foundation model
                (:func:`~xraycardiac.coronary.matching.foundation.load_foundation`), or any callable
                ``images (B, 1, H, W) -> (B, C, h, w)`` patch features; None = no cross-attention mask.
                Not used when ``config.matcher.foundation_mask`` is False.
            projection_matrices: (2, 3, 4) RAS mm -> pixel matrices of the two views; needed with
                ``epipolar_tolerance_px``.
            epipolar_tolerance_px: keep only matches whose symmetric epipolar distance under the known
                geometry is <= this, pixels (:func:`xraycardiac.coronary.matching.baselines.filter_matches`);
                None = no filter.
            keypoints: ((M, 2), (N, 2)) pixels (u, v) of the two images to match instead of the
                KeypointNet's detections (e.g. :func:`~xraycardiac.coronary.matching.vessel_keypoints.probability_keypoints`
                on the vessel probability); their descriptors are the KeypointNet's, sampled there.
            band_px: with ``projection_matrices``, only keypoint pairs within this symmetric epipolar
                distance may attend to each other and match (:func:`epipolar_band_mask`); None = no band.

        Returns:
            :class:`~xraycardiac.coronary.matching.baselines.MatchResult` with pixels (u, v) as float64;
            ``scores`` are the matcher's match probabilities; ``seconds`` covers detection,
            foundation features, matching and filtering; ``info`` holds ``num_matcher_matches``
            (before the filter), ``foundation_mask`` (whether the mask was applied) and ``band_px``.
        """
        from xraycardiac.coronary.matching.baselines import MatcherConfig, check_projections, filter_matches

        flt = None
        if epipolar_tolerance_px is not None:
            flt = MatcherConfig(filter="epipolar", epipolar_tolerance_px=float(epipolar_tolerance_px))
        if epipolar_tolerance_px is not None or band_px is not None:
            check_projections(projection_matrices)  # fail before the work
        a, b = _as_image(image1, "image1"), _as_image(image2, "image2")
        was_training = self.training
        self.eval()
        t0 = time.perf_counter()
        (wa, sa), (wb, sb) = self._working_image(a), self._working_image(b)
        if keypoints is None:
            det0, det1 = self._detect(wa), self._detect(wb)
        else:
            det0, det1 = (self._describe(img, kp, s, f"keypoints[{i}]")
                          for i, (img, kp, s) in enumerate(((wa, keypoints[0], sa), (wb, keypoints[1], sb))))  # fmt: skip
        kp0, kp1 = det0["keypoints"], det1["keypoints"]
        use_fm = foundation is not None and self.config.matcher.foundation_mask
        fdesc0 = fdesc1 = None
        if use_fm:
            from xraycardiac.coronary.matching.foundation import sample_features

            fdesc0, fdesc1 = (
                sample_features(foundation(torch.from_numpy(img)[None, None]), kp, img.shape).to(self.device)
                for img, kp in ((wa, kp0), (wb, kp1))
            )
        size0 = torch.tensor([wa.shape[1], wa.shape[0]], dtype=torch.float32, device=self.device)
        size1 = torch.tensor([wb.shape[1], wb.shape[0]], dtype=torch.float32, device=self.device)
        allowed = None
        if band_px is not None:
            k0_in, k1_in = ((k[0].double().cpu().numpy() + 0.5) / s - 0.5 for k, s in ((kp0, sa), (kp1, sb)))
            allowed = torch.from_numpy(epipolar_band_mask(k0_in, k1_in, projection_matrices, band_px))
            allowed = allowed[None].to(self.device)
        out = self.matcher(
            kp0, kp1, det0["descriptors"], det1["descriptors"], size0, size1,
            mask0=det0["mask"], mask1=det1["mask"], fdesc0=fdesc0, fdesc1=fdesc1, allowed=allowed,
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
        info: dict[str, Any] = {"num_matcher_matches": len(x1), "foundation_mask": use_fm, "band_px": band_px}
        method = ("matcher" if use_fm else "matcher-nofm") + ("+band" if band_px is not None else "")
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
