"""How unlike the training views an input is: reference statistics of the training DRRs, and a score.

The reference (:class:`InputStats`, a few KB of JSON shipped beside the model's weights as
``<model>.input_stats.json``, or ``input_stats.json`` in a bundle folder) is computed by
:func:`compute_input_stats` (``xraycardiac x2ct input-stats``) from the views of a training cache
split: the views exactly as the encoder sees them (the model's view size, in view units = line
integral / (mu_water * drr_water_mm)). Per view it holds

* computed over the clean training views and ``augmentations`` draws of the training augmentation
  each (the views as the encoder saw them in training);
* the median and a robust spread (1.4826 x MAD, floored: ``FEATURE_FLOORS``) of a few image features
  (:data:`FEATURES`): five quantiles of the values, the lag-1 autocorrelation of neighbouring pixels
  (a radiograph is smooth, noise is not), and the correlation of the 16 x 16 block-averaged view with
  the training views' mean image (an inverted or foreign picture does not correlate);
* the mean quantile function (101 quantiles), the target of :func:`xraycardiac.xray2ct.intensity`'s
  scale fit for inputs whose absolute scale is unknown;
* the threshold: an input is flagged when any feature of any view lies more than ``threshold`` robust
  spreads from its median (the score). The threshold is fixed by the rule in
  :func:`compute_input_stats` from the training split alone (never tuned on held-out or real data).

:func:`check_not_blank` refuses blank / constant images before anything else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xraycardiac.outputs import read_format_json, write_json_atomic

__all__ = [
    "FEATURES",
    "FEATURE_FLOORS",
    "FORMAT",
    "InputStats",
    "check_not_blank",
    "compute_input_stats",
    "find_input_stats",
    "score_views",
    "view_features",
]

FORMAT = "xraycardiac.x2ct_input_stats"
FEATURES = ("q02", "q25", "q50", "q75", "q98", "smoothness", "mean_image_corr")
FEATURE_FLOORS = {"q02": 0.02, "q25": 0.02, "q50": 0.02, "q75": 0.02, "q98": 0.02, "smoothness": 0.01,
                  "mean_image_corr": 0.02}  # fmt: skip
"""Smallest robust spread per feature (view units for the quantiles; 0.02 = 8 mm of water at 400 mm)."""
THRESHOLD_RULE = "max(8, 1.5 x the largest score over the training views)"
_BLOCK = 16  # side of the block-averaged image compared with the mean image
_QUANTILES = np.linspace(0.0, 1.0, 101)


def _blocks(view: np.ndarray) -> np.ndarray:
    """(16, 16) block average of an (S, S) view (S divisible by 16), else bilinear-free area sampling."""
    s = view.shape[0]
    if s % _BLOCK == 0:
        b = s // _BLOCK
        return view.reshape(_BLOCK, b, _BLOCK, b).mean(axis=(1, 3))
    idx = (np.arange(_BLOCK) + 0.5) * s / _BLOCK
    i = np.clip(idx.astype(int), 0, s - 1)
    return view[np.ix_(i, i)]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    den = float(np.sqrt((a @ a) * (b @ b)))
    return float(a @ b / den) if den > 0 else 0.0


def view_features(view: np.ndarray, mean_image: np.ndarray | None) -> np.ndarray:
    """The :data:`FEATURES` of one (S, S) view in view units; ``mean_image`` (16, 16) or None (corr 0)."""
    v = np.asarray(view, dtype=np.float64)
    q = np.quantile(v, [0.02, 0.25, 0.5, 0.75, 0.98])
    smooth = 0.5 * (_corr(v[:, :-1], v[:, 1:]) + _corr(v[:-1, :], v[1:, :]))
    corr = _corr(_blocks(v), mean_image) if mean_image is not None else 0.0
    return np.array([*q, smooth, corr])


@dataclass(frozen=True)
class InputStats:
    """Reference statistics of one model's training views (module docstring).

    Attributes:
        views: view names ("pa", "lateral").
        view_size: S, pixels per side.
        data_config: the model's data config fields that fix what a view is (sid_mm, sod_mm,
            drr_water_mm, image_size, detector_pixel_mm).
        median, spread: per view, per feature (:data:`FEATURES`).
        quantiles: per view, the mean quantile function (101 values, view units).
        mean_image: per view, the mean 16 x 16 block-averaged view.
        threshold: the score above which an input is flagged.
        source: what the statistics were computed from (cache, split, cases, command).
    """

    views: tuple[str, ...]
    view_size: int
    data_config: dict[str, float]
    median: dict[str, list[float]]
    spread: dict[str, list[float]]
    quantiles: dict[str, list[float]]
    mean_image: dict[str, list[list[float]]]
    threshold: float
    source: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (with ``format`` and the feature names)."""
        return {"format": FORMAT, "version": 1, "features": list(FEATURES), "threshold_rule": THRESHOLD_RULE,
                **asdict(self), "views": list(self.views)}  # fmt: skip

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> InputStats:
        """Read a file written by :func:`compute_input_stats`.

        Raises:
            ValueError: not such a file, or features of another version (naming the file).
        """
        d = read_format_json(path, "input statistics", FORMAT, FEATURES, "x2ct input-stats")
        keep = {k: d[k] for k in ("view_size", "data_config", "median", "spread", "quantiles", "mean_image",
                                  "threshold", "source")}  # fmt: skip
        return cls(views=tuple(d["views"]), **keep)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write as JSON (atomically)."""
        write_json_atomic(Path(path), self.to_dict(), indent=1, allow_nan=False, default=None)
        return Path(path)


def _data_config_key(config: Any) -> dict[str, float]:
    return {"sid_mm": float(config.sid_mm), "sod_mm": float(config.sod_mm),
            "drr_water_mm": float(config.drr_water_mm), "image_size": float(config.image_size),
            "detector_pixel_mm": round(float(config.detector_pixel_mm), 9)}  # fmt: skip


def compute_input_stats(
    cache: str | os.PathLike[str],
    split: str = "train",
    command: str = "",
    augmentations: int = 4,
    seed: int = 0,
) -> InputStats:
    """Reference statistics of the ``split`` views of an x2ct cache (the training data recipe).

    The views are taken as the encoder saw them in training: each clean view plus ``augmentations``
    draws of the training augmentation (:func:`xraycardiac.xray2ct.data.augment_views`, the cache
    config's ranges of gamma, contrast, brightness and noise; torch generator seeded with ``seed``).

    The threshold is ``max(8, 1.5 x the largest training score)``: every training view passes with a
    margin, and nothing held out is looked at.

    Raises:
        ValueError: the cache or split is unusable (see :class:`xraycardiac.xray2ct.data.X2CTDataset`).
    """
    import torch

    from xraycardiac.xray2ct.data import X2CTDataset, augment_views

    data = X2CTDataset(cache, split)
    names = [str(v) for v in data.config.views]
    clean = torch.stack([data[i]["views"] for i in range(len(data))])  # (N, V, S, S)
    gen = torch.Generator().manual_seed(seed)
    drawn = [augment_views(clean, data.config, gen) for _ in range(augmentations)]
    views = torch.cat([clean, *drawn]).double().numpy()
    mean_images = {n: np.mean([_blocks(v) for v in views[:, k]], axis=0) for k, n in enumerate(names)}
    feats = {
        n: np.stack([view_features(v, mean_images[n]) for v in views[:, k]]) for k, n in enumerate(names)
    }
    floors = np.array([FEATURE_FLOORS[f] for f in FEATURES])
    median = {n: np.median(f, axis=0) for n, f in feats.items()}
    spread = {
        n: np.maximum(1.4826 * np.median(np.abs(f - median[n]), axis=0), floors) for n, f in feats.items()
    }
    train_scores = np.max([np.abs((feats[n] - median[n]) / spread[n]).max(axis=1) for n in names], axis=0)
    stats = InputStats(
        views=tuple(names),
        view_size=int(views.shape[-1]),
        data_config=_data_config_key(data.config),
        median={n: median[n].round(6).tolist() for n in names},
        spread={n: spread[n].round(6).tolist() for n in names},
        quantiles={
            n: np.quantile(views[:, k], _QUANTILES, axis=(1, 2)).mean(axis=1).round(6).tolist()
            for k, n in enumerate(names)
        },  # fmt: skip
        mean_image={n: mean_images[n].round(5).tolist() for n in names},
        threshold=round(max(8.0, 1.5 * float(train_scores.max())), 3),
        source={
            "cache": str(cache),
            "split": split,
            "cases": len(data),
            "command": command,
            "largest_training_score": round(float(train_scores.max()), 3),
        },  # fmt: skip
    )
    return stats


def find_input_stats(
    folder: str | os.PathLike[str], model: str, data_config: Any
) -> tuple[InputStats | None, str]:
    """(the model's input statistics, where from) or (None, why not): ``<model>.input_stats.json`` or
    ``input_stats.json`` in the model's folder, checked against the model's data config."""
    folder = Path(folder)
    for path in (folder / f"{model}.input_stats.json", folder / "input_stats.json"):
        if path.is_file():
            stats = InputStats.load(path)
            if stats.data_config != _data_config_key(data_config):
                raise ValueError(
                    f"{path}: computed for views {stats.data_config}, but model {model!r} takes "
                    f"{_data_config_key(data_config)}; recompute it (xraycardiac x2ct input-stats)"
                )
            return stats, str(path)
    return None, f"no input statistics beside model {model!r} (xraycardiac x2ct input-stats makes them)"


def score_views(views: Mapping[str, np.ndarray], stats: InputStats) -> dict[str, Any]:
    """Score (S, S) views in view units against ``stats``: the largest robust z over features and views.

    Returns:
        {"score", "threshold", "flagged", "views": {view: {"score", "worst_feature", "features"}}}.
    """
    out: dict[str, Any] = {"threshold": stats.threshold, "views": {}}
    worst = 0.0
    for name, view in views.items():
        mean_image = np.asarray(stats.mean_image[name])
        f = view_features(view, mean_image)
        z = (f - np.asarray(stats.median[name])) / np.asarray(stats.spread[name])
        k = int(np.argmax(np.abs(z)))
        out["views"][name] = {
            "score": round(float(abs(z[k])), 3),
            "worst_feature": FEATURES[k],
            "features": {n: round(float(v), 5) for n, v in zip(FEATURES, f, strict=True)},
        }
        worst = max(worst, float(abs(z[k])))
    out["score"] = round(worst, 3)
    out["flagged"] = bool(worst > stats.threshold)
    return out


def check_not_blank(pixels: np.ndarray, key: str, name: str = "") -> None:
    """Refuse a blank or constant image (98 % or more of its pixels at one value), naming the input.

    Raises:
        ValueError: naming ``inputs.<key>`` and the value.
    """
    p = np.asarray(pixels)
    lo, hi = np.quantile(p, [0.01, 0.99])
    if hi - lo <= 1e-9 * max(1.0, abs(float(hi))):
        what = (
            f"constant ({float(p.flat[0]):g})"
            if np.ptp(p) == 0
            else f"blank (98 % of its pixels are {float(lo):g})"
        )
        raise ValueError(
            f"inputs.{key}: {name or 'the image'} is {what}; it holds no radiograph. Refused: a CT from it "
            "would be the model's prior, not this patient"
        )
