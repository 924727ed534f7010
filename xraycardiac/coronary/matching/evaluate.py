"""Evaluate keypoint matchers on the view pairs of a coronary pair dataset (issue 4's comparison table).

Every method is a callable ``sample -> MatchResult`` (:class:`~xraycardiac.coronary.matching.baselines.MatchResult`)
named by a short string (:func:`parse_method`):

=================================  ==============================================================
``sift``, ``orb``                  OpenCV keypoints, Lowe's ratio test, RANSAC (USAC MAGSAC++) on
                                   the fundamental matrix (:mod:`xraycardiac.coronary.matching.baselines`)
``vessel``                         Frangi/skeleton vessel keypoints, patch NCC, mutual nearest
                                   neighbours (:mod:`xraycardiac.coronary.matching.vessel_keypoints`), no filter
``matcher:<model>``                the learned :class:`~xraycardiac.coronary.matching.matcher.CoronaryMatcher`
                                   (a model name, a run / package folder or a weights file), with
                                   its foundation model's cross-attention mask
``matcher-nofm:<model>``           the same weights with ``foundation_mask=False`` (the ablation)
``vmatcher:<model>``,              the same learned matcher on **vessel-probability keypoints**: the
``vmatcher-nofm:<model>``          segmentation network's (``coronary-vessel-seg-demo``) probability map,
                                   thresholded and skeletonised
                                   (:func:`~xraycardiac.coronary.matching.vessel_keypoints.probability_keypoints`:
                                   bifurcations, endpoints, curvature points, centreline samples),
                                   described by the KeypointNet; s/pair includes the segmentation
``<matcher>+band``                 a learned matcher whose cross-attention and assignment are masked by
                                   the epipolar band that the recorded geometry's tolerance allows
                                   (the sample's ``band_px``, pixels: the evaluation computes it from the
                                   calibration prior; :func:`~xraycardiac.coronary.matching.matcher.epipolar_band_mask`)
``<any of these>+epipolar``        keep the matches within ``epipolar_tolerance_px`` of the epipolar
                                   lines of the *known* geometry (what a calibrated C-arm allows)
``sift+ransac``, ``+none`` ...     the classical methods also take ``+ransac`` or ``+none``
=================================  ==============================================================

The foundation model of ``matcher:`` is the one its config names (``foundation="dinov2:/path"``,
from training), or ``foundation=`` given here (the folder moves between machines); a model trained
without one runs unmasked.

Metrics (:mod:`xraycardiac.metrics.matching`) are computed per pair and averaged over pairs
NaN-aware, as the benchmark always did: precision and the epipolar error over the pairs that have a
match, recall and AUC over the pairs that have a GT match; "keypoints_per_image", "matches" and
"seconds_per_pair" are plain means (seconds: the method's own wall time, detection to filtering,
after one untimed warm-up call per method).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xraycardiac.jsonutil import json_safe
from xraycardiac.outputs import write_json_atomic

__all__ = [
    "foundation_per_method",
    "METHOD_FORMS",
    "METRIC_FIELDS",
    "EvalMethod",
    "dataset_summary",
    "evaluate_matchers",
    "format_table",
    "parse_method",
    "write_results",
]

RESULTS_FORMAT = "xraycardiac.coronary_match_evaluation"
METHOD_FORMS = (
    "sift, orb, vessel (each optionally +ransac, +epipolar or +none; default: sift/orb +ransac, vessel +none), "
    "matcher:<model name, run folder or .pt file>[+epipolar|+band], matcher-nofm:<...>[+epipolar|+band], "
    "vmatcher:<...>[+epipolar|+band], vmatcher-nofm:<...>[+epipolar|+band]"
)
METRIC_FIELDS = (
    "keypoints_per_image",
    "matches",
    "pairs_with_matches",
    "gt_matches",
    "precision@3px",
    "precision@5px",
    "recall@3px",
    "recall@5px",
    "epipolar_precision@3px",
    "epipolar_precision@5px",
    "matching_score@3px",
    "matching_score@5px",
    "auc@5px",
    "auc@10px",
    "auc@20px",
    "mean_epipolar_error_px",
    "seconds_per_pair",
)
_CLASSICAL = {"sift": ("SIFT", "ransac"), "orb": ("ORB", "ransac"), "vessel": ("vessel kp + NN", "none")}
_LEARNED = ("matcher", "matcher-nofm", "vmatcher", "vmatcher-nofm")
_FILTER_NAMES = {"ransac": "RANSAC", "none": "", "epipolar": "epipolar"}


@dataclass
class EvalMethod:
    """One parsed method.

    Attributes:
        spec: the string it was parsed from, e.g. ``"sift+epipolar"``.
        name: the table's display name, e.g. ``"SIFT + epipolar 3px"``.
        run: ``run(sample) -> MatchResult`` for a :func:`~xraycardiac.coronary.synth.dataset.read_sample` dict.
        info: provenance (e.g. the matcher's model, sha256 and foundation model).
    """

    spec: str
    name: str
    run: Callable[[dict[str, Any]], Any]
    info: dict[str, Any]


def _split_filter(spec: str, allowed: Sequence[str]) -> tuple[str, str | None]:
    """(base, filter or None) of ``base[+filter]``."""
    base, plus, flt = spec.rpartition("+")
    if plus and flt in allowed:
        return base, flt
    return spec, None


def parse_method(
    spec: str,
    *,
    epipolar_tolerance_px: float = 3.0,
    ransac_threshold_px: float = 2.0,
    device: str = "cpu",
    foundation: str | None = None,
    _foundations: dict[str, Any] | None = None,
) -> EvalMethod:
    """Turn a method name into a callable (module docstring for the forms).

    Args:
        spec: e.g. ``"sift"``, ``"vessel+epipolar"``, ``"matcher:runs/m1"``, ``"matcher-nofm:runs/m1"``.
        epipolar_tolerance_px: tolerance of the ``+epipolar`` filter, pixels.
        ransac_threshold_px: inlier threshold of the ``+ransac`` filter, pixels.
        device: torch device of a learned matcher and its foundation model ("cpu", "cuda", "auto").
        foundation: ``"family:/path"`` of the foundation model for ``matcher:`` (overrides the spec
            recorded in the model's config); None = the recorded one, if any.

    Returns:
        :class:`EvalMethod`.

    Raises:
        ValueError: an unknown form (lists the allowed ones), or a model that cannot be loaded.
        FileNotFoundError: a missing model folder / file or foundation folder (with a hint).
    """
    from xraycardiac.coronary.matching.baselines import MatcherConfig

    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"method {spec!r}: expected one of the forms {METHOD_FORMS}")
    spec = spec.strip()
    kind, colon, model = spec.partition(":")
    if colon and kind in _LEARNED:
        model, flt = _split_filter(model, ("epipolar", "band", "none"))
        if not model:
            raise ValueError(
                f"method {spec!r}: {kind}: needs a model name or run folder, e.g. {kind}:runs/matcher"
            )
        return _matcher_method(
            spec, kind, model, flt, epipolar_tolerance_px, device, foundation, _foundations or {}
        )
    base, flt = _split_filter(spec, ("ransac", "epipolar", "none"))
    if base not in _CLASSICAL:
        raise ValueError(f"method {spec!r}: unknown; allowed forms: {METHOD_FORMS}")
    if foundation is not None:  # never drop a requested setting silently
        raise ValueError(
            f"foundation {foundation!r}: method {spec!r} does not use a foundation model (only the learned "
            "matcher, 'matcher:<model>', does); leave foundation empty"
        )
    label, default = _CLASSICAL[base]
    flt = flt or default
    config = MatcherConfig(
        filter=flt, epipolar_tolerance_px=epipolar_tolerance_px, ransac_threshold_px=ransac_threshold_px
    )
    if base == "vessel":
        from xraycardiac.coronary.matching.vessel_keypoints import match_vessel_keypoints as fn
    else:
        from xraycardiac.coronary.matching import baselines

        fn = baselines.match_sift if base == "sift" else baselines.match_orb
    suffix = {"ransac": " + RANSAC", "none": "", "epipolar": f" + epipolar {epipolar_tolerance_px:g}px"}[flt]

    def run(sample: dict[str, Any]) -> Any:
        return fn(sample["image1"], sample["image2"], sample["projection_matrices"], config)

    return EvalMethod(spec, label + suffix, run, {"filter": flt})


def _matcher_method(
    spec: str,
    kind: str,
    model: str,
    flt: str | None,
    tolerance_px: float,
    device: str,
    foundation: str | None,
    cache: dict[str, Any],
) -> EvalMethod:
    """An :class:`EvalMethod` of a learned matcher (``matcher:`` / ``matcher-nofm:``)."""
    from xraycardiac.coronary.matching.matcher import CoronaryMatcher

    masked = not kind.endswith("-nofm")
    if foundation is not None and not masked:
        raise ValueError(
            f"foundation {foundation!r}: method {spec!r} (matcher-nofm:) runs without the foundation mask by "
            "definition; leave foundation empty, or use matcher:<model>"
        )
    net = CoronaryMatcher.load(model, device=device, foundation_mask=None if masked else False)
    if foundation is not None and not net.config.matcher.foundation_mask:
        raise ValueError(
            f"foundation {foundation!r}: the matcher {net.source.get('model')!r} of method {spec!r} was trained "
            "without the foundation mask (matcher.foundation_mask=false), so no foundation model can be used "
            "with it; leave foundation empty, or train a matcher with one"
        )
    fm = None
    fm_spec = foundation or net.config.foundation
    if masked and net.config.matcher.foundation_mask and fm_spec is not None:
        from xraycardiac.coronary.matching.foundation import FoundationSpec, load_foundation

        key = f"{fm_spec}|{net.config.foundation_input_size}|{device}"
        if key not in cache:
            try:
                parsed = FoundationSpec.parse(fm_spec)
            except FileNotFoundError as exc:
                raise FileNotFoundError(
                    f"method {spec!r}: {exc}; the model was trained with foundation {net.config.foundation!r}: "
                    "pass the folder on this machine (--foundation family:/path), or use matcher-nofm:"
                ) from None
            cache[key] = load_foundation(parsed, net.device, input_size=net.config.foundation_input_size)
        fm = cache[key]
    tol = tolerance_px if flt == "epipolar" else None
    label = ("matcher" if masked else "matcher w/o FM mask") + (" on vessel kp" if kind[0] == "v" else "")
    name = f"{label} ({net.source.get('model')})" + (f" + epipolar {tolerance_px:g}px" if tol else "")
    name += " + band mask" if flt == "band" else ""
    vessel_keypoints = _probability_keypoints(device) if kind[0] == "v" else None

    def run(sample: dict[str, Any]) -> Any:
        band = None
        if flt == "band":
            band = sample.get("band_px")
            if band is None:
                raise ValueError(
                    f"method {spec!r}: the epipolar band mask needs the band's half width, the sample's "
                    "'band_px' (pixels; from the recorded geometry's tolerance), which this sample lacks"
                )
        seconds, keypoints = 0.0, None
        if vessel_keypoints is not None:
            t0 = time.perf_counter()
            keypoints = (vessel_keypoints(sample["image1"]), vessel_keypoints(sample["image2"]))
            seconds = time.perf_counter() - t0
        r = net.match(
            sample["image1"], sample["image2"], foundation=fm, projection_matrices=sample["projection_matrices"],
            epipolar_tolerance_px=tol, keypoints=keypoints, band_px=band,
        )  # fmt: skip
        r.seconds += seconds
        return r

    info = {
        "filter": flt or "none",
        "model": dict(net.source),
        "foundation_mask": fm is not None,
        "foundation": None if fm is None else {k: fm.info[k] for k in ("family", "folder", "weights_sha256")},
    }
    return EvalMethod(spec, name, run, info)


def _probability_keypoints(device: str) -> Callable[[np.ndarray], np.ndarray]:
    """``image -> (N, 2)`` keypoints on the vessel probability of the shipped segmentation network."""
    from xraycardiac.coronary.matching.vessel_keypoints import probability_keypoints
    from xraycardiac.coronary.segment.vessel_seg import DEFAULT_MODEL, load_segmenter
    from xraycardiac.runtime import select_device

    segmenter = load_segmenter(DEFAULT_MODEL, str(select_device(device)))

    def keypoints(image: np.ndarray) -> np.ndarray:
        seg = segmenter(image)
        return probability_keypoints(seg.probability, segmenter.config.threshold).keypoints

    return keypoints


def foundation_per_method(methods: Sequence[str], foundation: str | None) -> list[str | None]:
    """The foundation model each of several methods gets: ``foundation`` for ``matcher:`` methods, None
    for the others (classical methods, the ``matcher-nofm:`` ablation, ``gt``), so one ``--foundation``
    serves a comparison of methods.

    Raises:
        ValueError: ``foundation`` is given but no method is ``matcher:`` (it would be dropped silently).
    """
    uses = [str(m).strip().startswith("matcher:") for m in methods]
    if foundation is not None and not any(uses):
        raise ValueError(
            f"foundation {foundation!r}: no method of {list(methods)} uses a foundation model (only "
            "'matcher:<model>' does); leave foundation empty"
        )
    return [foundation if u else None for u in uses]


def nanmean(values: Sequence[float]) -> float:
    """Mean of the finite values; NaN when there is none (no warning)."""
    a = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


def split_samples(data_dir: str | os.PathLike[str], split: str) -> list[Path]:
    """The sample folders of a pair dataset's ``split`` (``'all'`` or one of the dataset's splits)."""
    from xraycardiac.coronary.synth.dataset import SPLITS, list_samples

    if split != "all" and split not in SPLITS:
        raise ValueError(f"split: expected 'all' or one of {SPLITS}, got {split!r}")
    paths = list_samples(data_dir, None if split == "all" else split)
    if not paths:
        raise ValueError(f"{data_dir}: no sample in split {split!r} (use split 'all' for every sample)")
    return paths


def dataset_summary(data_dir: str | os.PathLike[str], split: str = "test") -> dict[str, Any]:
    """Pairs, image size and mean in-field GT keypoints per view of a dataset's split (for a table's header)."""
    from xraycardiac.coronary.synth.dataset import read_json

    paths = split_samples(data_dir, split)
    metas = [read_json(p / "sample.json", "coronary pair sample") for p in paths]
    gt = [m.get("counts", {}).get(f"view{v}", 0) for m in metas for v in (1, 2)]
    return {
        "pairs": len(paths),
        "image_shape": metas[0].get("image_shape", [None])[0],
        "gt_keypoints_per_view": float(np.mean(gt)),
    }


def evaluate_matchers(
    data_dir: str | os.PathLike[str],
    methods: Sequence[str],
    split: str = "test",
    *,
    epipolar_tolerance_px: float = 3.0,
    ransac_threshold_px: float = 2.0,
    device: str = "cpu",
    foundation: str | None = None,
    max_pairs: int | None = None,
    warmup: bool = True,
    progress: Callable[[str, float], None] | None = None,
    band_px: Callable[[dict[str, Any]], float] | None = None,
    pair_metrics: Callable[[Path, dict[str, Any], Any], dict[str, float]] | None = None,
) -> list[dict[str, Any]]:
    """Run each method on every view pair of a split and average the matching metrics.

    Args:
        data_dir: a coronary pair dataset (``xraycardiac coronary synth``).
        methods: method names (:func:`parse_method`; all are parsed before any work).
        split: "train", "val", "test" or "all".
        epipolar_tolerance_px, ransac_threshold_px, device, foundation: see :func:`parse_method`.
        max_pairs: evaluate the first N pairs only (None = all).
        warmup: run each method once on the first pair, untimed (imports, allocator, kernels).
        progress: ``progress(stage, fraction)``.
        band_px: ``band_px(sample)``, the half width (pixels) of the epipolar band of ``+band`` methods
            for one pair (e.g. from its recorded geometry and the calibration prior); None = no band.
        pair_metrics: ``pair_metrics(sample folder, sample, MatchResult) -> {name: value}``, more
            per-pair figures (averaged NaN-aware into the row under their names).

    Returns:
        One row per method, in order: ``method`` (the spec), ``name`` (display name), ``pairs``,
        every key of :data:`METRIC_FIELDS` (float; NaN where no pair defines it), the keys of
        ``pair_metrics``, ``info`` (provenance) and ``per_pair`` (the sample name and its metrics, one dict per pair).

    Raises:
        ValueError: unknown method (lists the allowed forms), bad split or empty split.
    """
    from xraycardiac.coronary.synth.dataset import read_sample
    from xraycardiac.metrics.matching import sample_matching_metrics

    if isinstance(methods, str) or not methods:
        raise ValueError(
            f"methods: expected a non-empty list of method names ({METHOD_FORMS}), got {methods!r}"
        )
    foundation_per_method(methods, foundation)
    paths = split_samples(data_dir, split)
    if max_pairs is not None:
        if not (isinstance(max_pairs, int) and max_pairs >= 1):
            raise ValueError(f"max_pairs: expected None or an integer >= 1, got {max_pairs!r}")
        paths = paths[:max_pairs]
    foundations: dict[str, Any] = {}
    parsed = [
        parse_method(
            m,
            epipolar_tolerance_px=epipolar_tolerance_px,
            ransac_threshold_px=ransac_threshold_px,
            device=device,
            foundation=fm,
            _foundations=foundations,
        )  # fmt: skip
        for m, fm in zip(methods, foundation_per_method(methods, foundation), strict=True)
    ]
    samples = [read_sample(p, load_thickness=False) for p in paths]
    if band_px is not None:
        for sample in samples:
            sample["band_px"] = float(band_px(sample))
    rows = []
    total = len(parsed) * len(samples)
    for i, method in enumerate(parsed):
        if warmup:
            method.run(samples[0])
        per_pair, extra_keys = [], set()
        for j, sample in enumerate(samples):
            if progress is not None:
                progress(f"{method.name}: pair {j + 1}/{len(samples)}", (i * len(samples) + j) / total)
            r = method.run(sample)
            m = sample_matching_metrics(r.x1, r.x2, sample, keypoints1=r.keypoints1).as_dict()
            m["keypoints_per_image"] = (len(r.keypoints1) + len(r.keypoints2)) / 2
            m["seconds"] = float(r.seconds)
            if pair_metrics is not None:
                extra = pair_metrics(paths[j], sample, r)
                extra_keys.update(extra)
                m.update(extra)
            per_pair.append({"sample": f"{paths[j].parent.name}/{paths[j].name}", **m})
        row: dict[str, Any] = {"method": method.spec, "name": method.name, "pairs": len(samples)}
        row["keypoints_per_image"] = float(np.mean([p["keypoints_per_image"] for p in per_pair]))
        row["matches"] = float(np.mean([p["num_matches"] for p in per_pair]))
        row["pairs_with_matches"] = int(sum(p["num_matches"] > 0 for p in per_pair))
        row["gt_matches"] = float(np.mean([p["num_gt_matches"] for p in per_pair]))
        for key in METRIC_FIELDS[4:-1]:
            row[key] = nanmean([p.get(key, float("nan")) for p in per_pair])
        row["seconds_per_pair"] = float(np.mean([p["seconds"] for p in per_pair]))
        for key in sorted(extra_keys):
            row[key] = nanmean([p.get(key, float("nan")) for p in per_pair])
        row["info"] = method.info
        row["per_pair"] = per_pair
        rows.append(row)
    if progress is not None:
        progress("done", 1.0)
    return rows


# --- Output ----------------------------------------------------------------------------------------

_COLUMNS = (
    ("kp/img", 7, "keypoints_per_image", "{:.0f}"), ("matches", 8, "matches", "{:.1f}"),
    ("n>0", 4, "pairs_with_matches", "{:d}"), ("P@3", 6, "precision@3px", "{:.3f}"),
    ("P@5", 6, "precision@5px", "{:.3f}"), ("R@3", 6, "recall@3px", "{:.3f}"), ("R@5", 6, "recall@5px", "{:.3f}"),
    ("epiP@3", 7, "epipolar_precision@3px", "{:.3f}"), ("epiP@5", 7, "epipolar_precision@5px", "{:.3f}"),
    ("AUC@5", 6, "auc@5px", "{:.3f}"), ("AUC@10", 7, "auc@10px", "{:.3f}"), ("AUC@20", 7, "auc@20px", "{:.3f}"),
    ("epi err", 8, "mean_epipolar_error_px", "{:.1f}"), ("s/pair", 7, "seconds_per_pair", "{:.3f}"),
)  # fmt: skip
LEGEND = (
    "P@t: keypoint-correct precision (both ends within t px of one GT keypoint's projections); "
    "R@t: GT matches recovered; epiP@t: symmetric epipolar distance <= t px under the true geometry; "
    "AUC@T: cumulative per-GT-match transfer-error AUC; epi err: mean symmetric epipolar distance, px. "
    "Means over pairs; precision and epi err over the n>0 pairs that have a match ('-': none had)."
)


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return fmt.format(value)


def format_table(rows: Sequence[dict[str, Any]], legend: bool = True) -> str:
    """The rows of :func:`evaluate_matchers` as a fixed-width text table (plus the legend)."""
    width = max([34, *(len(r["name"]) for r in rows)])
    lines = [f"{'method':<{width}} " + " ".join(f"{h:>{w}}" for h, w, _, _ in _COLUMNS)]
    for r in rows:
        cells = [_cell(r.get(key), fmt) for _, _, key, fmt in _COLUMNS]
        lines.append(
            f"{r['name']:<{width}} "
            + " ".join(f"{c:>{w}}" for c, (_, w, _, _) in zip(cells, _COLUMNS, strict=True))
        )
    if legend:
        lines.append(LEGEND)
    return "\n".join(lines)


def write_results(
    rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], meta: dict[str, Any] | None = None
) -> Path:
    """Write the rows (and ``meta``: data, split, settings) as strict JSON, atomically; NaN is written as null.

    Returns:
        The path written.
    """
    path = Path(path)
    doc = {
        "format": RESULTS_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "intended_use": "research only, not for clinical use",
        **(meta or {}),
        "metrics": list(METRIC_FIELDS),
        "methods": list(rows),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(path, json_safe(doc), indent=1, allow_nan=False, default=None, fsync=False)
