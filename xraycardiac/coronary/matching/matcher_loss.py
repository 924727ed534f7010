"""Ground-truth partial assignments and the assignment loss of the coronary keypoint matcher.

Targets. A target is a [B x (M + 1) x (N + 1)] float matrix in the layout of the matcher's
log-assignment and of :func:`xraycardiac.coronary.synth.dataset.collate_pairs`' ``match_matrix``: 1 at
(i, j) for a true match, 1 at (i, N) / (M, j) for a keypoint known to be unmatched (dustbin), and
a row / column of zeros for a keypoint whose status is unknown (ignored by the loss). Two ways
to build one:

- :func:`matcher_inputs` (training on ground-truth keypoints; the paper does not say how it feeds
  keypoints to the matcher in training, this is our choice): the
  in-field GT keypoints of both views, jittered by up to ``jitter_px``, plus ``n_distractors``
  random vessel-mask pixels per view at least ``min_distractor_distance_px`` from every GT keypoint
  of that view. GT keypoints are matched as the dataset says; distractors, and GT keypoints
  without a partner, go to the dustbin. A distractor is a real vessel point, so its true partner
  exists somewhere on the other view's vessels, but not among that view's keypoints unless a
  random distractor lands on it; keeping them away from the GT keypoints keeps that label noise
  rare. They teach the matcher to reject look-alike vessel points, which is what detected
  keypoints will be.
- :func:`gt_assignment` (keypoints from a detector): each detected keypoint claims the nearest GT
  keypoint of its view within ``positive_radius_px`` (if it is also that GT keypoint's nearest
  detection); two claims of matched GT keypoints make a positive. A keypoint is unmatched when it
  claims a GT keypoint whose partner was not detected (nothing within ``negative_radius_px``) or
  has none, or when it is farther than ``negative_radius_px`` from every GT keypoint; everything
  else (duplicates, near misses) is ignored, as glue-factory does between its two thresholds.

Loss (:func:`assignment_nll`, glue-factory's LightGlue NLL with its defaults): per pair,
``nll = b * mean_pos(-log P_ij) + (1 - b) * (sum_unmatched0 -log P_i,dustbin + sum_unmatched1
-log P_dustbin,j) / (#unmatched0 + #unmatched1)`` with ``b = nll_balancing = 0.5``; the batch
mean of that. **Deep supervision** (:func:`matcher_loss`): every layer's assignment head is
scored against the same target and layer l of L weighs ``gamma ** (L - 1 - l)``, normalised to
sum 1 (glue-factory's rule; its default ``gamma = 1`` weighs all layers equally, ``gamma = 0``
scores the last layer only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from xraycardiac.coronary.matching.keypoint_net import detector_loss, keypoint_targets

if TYPE_CHECKING:
    from xraycardiac.coronary.matching.attention_matcher import AttentionMatcher
    from xraycardiac.coronary.matching.keypoint_net import KeypointNet

__all__ = [
    "MatcherLossConfig",
    "assignment_nll",
    "collate_matcher_inputs",
    "deep_supervision_weights",
    "gt_assignment",
    "match_accuracy",
    "matcher_inputs",
    "matcher_loss",
    "matcher_training_step",
]


@dataclass(frozen=True)
class MatcherLossConfig:
    """Weights of the matcher loss (module docstring).

    Attributes:
        nll_balancing: b, weight of the matched term; 1 - b weighs the unmatched (dustbin) term; in [0, 1].
        layer_gamma: deep-supervision decay in [0, 1]: layer l of L weighs gamma ** (L - 1 - l).
        detector_weight: weight of the KeypointNet detector cross-entropy in :func:`matcher_training_step`.
    """

    nll_balancing: float = 0.5
    layer_gamma: float = 1.0
    detector_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("nll_balancing", "layer_gamma"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"MatcherLossConfig.{name}: expected a value in [0, 1], got {v!r}")
        if not self.detector_weight >= 0.0:
            raise ValueError(
                f"MatcherLossConfig.detector_weight: expected a value >= 0, got {self.detector_weight!r}"
            )


# --- Loss ------------------------------------------------------------------------------------------


def assignment_nll(
    log_assignment: torch.Tensor, target: torch.Tensor, nll_balancing: float = 0.5
) -> dict[str, torch.Tensor]:
    """Negative log-likelihood of a partial assignment target (module docstring).

    Args:
        log_assignment: [B x (M + 1) x (N + 1)] log-probabilities, dustbins last.
        target: [B x (M + 1) x (N + 1)] weights (1 for a match / known unmatched, 0 elsewhere).
        nll_balancing: weight of the matched term.

    Returns:
        ``nll`` [B] the loss per pair; ``nll_pos``, ``nll_neg`` [B] its two terms; ``num_pos``,
        ``num_neg`` [B] the counts (matches; unmatched keypoints of both images). A pair without
        matches (or without unmatched keypoints) has 0 for that term.
    """
    if log_assignment.shape != target.shape or log_assignment.ndim != 3:
        raise ValueError(
            f"target: expected the shape of log_assignment {list(log_assignment.shape)}, got {list(target.shape)}"
        )
    w = target.to(log_assignment.dtype)
    weighted = log_assignment * w
    num_pos = w[:, :-1, :-1].sum((1, 2))
    num_neg = w[:, :-1, -1].sum(1) + w[:, -1, :-1].sum(1)
    nll_pos = -weighted[:, :-1, :-1].sum((1, 2)) / num_pos.clamp(min=1.0)
    nll_neg = -(weighted[:, :-1, -1].sum(1) + weighted[:, -1, :-1].sum(1)) / num_neg.clamp(min=1.0)
    nll = nll_balancing * nll_pos + (1.0 - nll_balancing) * nll_neg
    return {"nll": nll, "nll_pos": nll_pos, "nll_neg": nll_neg, "num_pos": num_pos, "num_neg": num_neg}


def deep_supervision_weights(n_layers: int, gamma: float = 1.0) -> torch.Tensor:
    """[L] weights of the layers' losses: gamma ** (L - 1 - l), normalised to sum 1."""
    if n_layers < 1:
        raise ValueError(f"n_layers: expected >= 1, got {n_layers!r}")
    w = torch.tensor([float(gamma) ** (n_layers - 1 - i) for i in range(n_layers)], dtype=torch.float64)
    return (w / w.sum()).float()


def matcher_loss(
    per_layer_log_assignments: Sequence[torch.Tensor],
    target: torch.Tensor,
    config: MatcherLossConfig | None = None,
) -> dict[str, torch.Tensor]:
    """Deep-supervised assignment loss over the matcher's layers.

    Args:
        per_layer_log_assignments: L tensors [B x (M + 1) x (N + 1)] (the matcher's
            ``per_layer_log_assignments``; a single tensor in a list scores one layer).
        target: [B x (M + 1) x (N + 1)] partial assignment.
        config: :class:`MatcherLossConfig`.

    Returns:
        ``total`` scalar (weighted over layers, mean over the batch); ``last`` scalar, the last
        layer's loss; ``per_layer`` [L] each layer's batch-mean loss (detached).
    """
    config = config or MatcherLossConfig()
    if len(per_layer_log_assignments) == 0:
        raise ValueError("per_layer_log_assignments: expected at least one layer's log-assignment")
    weights = deep_supervision_weights(len(per_layer_log_assignments), config.layer_gamma)
    losses = [
        assignment_nll(la, target, config.nll_balancing)["nll"].mean() for la in per_layer_log_assignments
    ]
    total = sum(float(w) * loss for w, loss in zip(weights, losses, strict=True))
    return {"total": total, "last": losses[-1], "per_layer": torch.stack([loss.detach() for loss in losses])}


# --- Targets ---------------------------------------------------------------------------------------


def _claims(kpts: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, gt_valid: torch.Tensor, radius: float):
    """Per keypoint: the GT keypoint it claims (-1: none), and its distance to the nearest valid GT keypoint."""
    d = torch.cdist(kpts.double(), gt.double())  # [B x M x K]
    bad = ~(valid[:, :, None] & gt_valid[:, None, :])
    d = d.masked_fill(bad, float("inf"))
    if d.shape[2] == 0:
        inf = torch.full(kpts.shape[:2], float("inf"), dtype=d.dtype, device=d.device)
        return torch.full(kpts.shape[:2], -1, dtype=torch.long, device=kpts.device), inf, d
    dmin, nearest_gt = d.min(2)
    if d.shape[1] == 0:
        return nearest_gt, dmin, d
    nearest_kp = d.argmin(1)  # [B x K] the closest keypoint of each GT keypoint
    mutual = nearest_kp.gather(1, nearest_gt) == torch.arange(d.shape[1], device=d.device)[None]
    own = torch.where(mutual & (dmin <= radius), nearest_gt, -1)
    return own, dmin, d


def gt_assignment(
    kpts0: torch.Tensor,
    kpts1: torch.Tensor,
    gt_kpts0: torch.Tensor,
    gt_kpts1: torch.Tensor,
    gt_match_matrix: torch.Tensor,
    mask0: torch.Tensor | None = None,
    mask1: torch.Tensor | None = None,
    gt_mask0: torch.Tensor | None = None,
    gt_mask1: torch.Tensor | None = None,
    positive_radius_px: float = 3.0,
    negative_radius_px: float = 6.0,
) -> torch.Tensor:
    """Partial assignment target for arbitrary (e.g. detected) keypoints from GT keypoints and matches.

    Args:
        kpts0: [B x M x 2] pixel (u, v) keypoints of image 0; kpts1: [B x N x 2] of image 1.
        gt_kpts0: [B x K0 x 2] GT keypoints of image 0 (``collate_pairs``' ``keypoints1``);
            gt_kpts1: [B x K1 x 2] (its ``keypoints2``).
        gt_match_matrix: [B x (K0 + 1) x (K1 + 1)] GT matches with dustbins last (``match_matrix``);
            entries > 0.5 of the [K0 x K1] block are matches.
        mask0, mask1: [B x M], [B x N] bool keypoint masks (None = all valid).
        gt_mask0, gt_mask1: [B x K0], [B x K1] bool GT masks (``keypoints1_valid`` ...).
        positive_radius_px: a keypoint claims a GT keypoint at most this far, pixels.
        negative_radius_px: a keypoint farther than this from every GT keypoint is unmatched, pixels
            (>= ``positive_radius_px``).

    Returns:
        [B x (M + 1) x (N + 1)] float32 target (module docstring); padded keypoints are ignored.
    """
    if not 0 < positive_radius_px <= negative_radius_px:
        raise ValueError(
            f"negative_radius_px: expected 0 < positive_radius_px <= negative_radius_px, got "
            f"{positive_radius_px!r} and {negative_radius_px!r}"
        )
    b, m, n = kpts0.shape[0], kpts0.shape[1], kpts1.shape[1]
    k0, k1 = gt_kpts0.shape[1], gt_kpts1.shape[1]
    if tuple(gt_match_matrix.shape) != (b, k0 + 1, k1 + 1):
        raise ValueError(
            f"gt_match_matrix: expected shape [{b}, {k0 + 1}, {k1 + 1}] (GT keypoints + dustbins), "
            f"got {list(gt_match_matrix.shape)}"
        )
    dev = kpts0.device

    def ones(*shape: int) -> torch.Tensor:
        return torch.ones(shape, dtype=torch.bool, device=dev)

    mask0 = ones(b, m) if mask0 is None else mask0.bool()
    mask1 = ones(b, n) if mask1 is None else mask1.bool()
    gt_mask0 = ones(b, k0) if gt_mask0 is None else gt_mask0.bool()
    gt_mask1 = ones(b, k1) if gt_mask1 is None else gt_mask1.bool()
    own0, dmin0, d0 = _claims(kpts0, gt_kpts0, mask0, gt_mask0, positive_radius_px)
    own1, dmin1, d1 = _claims(kpts1, gt_kpts1, mask1, gt_mask1, positive_radius_px)
    gt_pos = (gt_match_matrix[:, :k0, :k1] > 0.5) & gt_mask0[:, :, None] & gt_mask1[:, None, :]

    # positives: both ends claim GT keypoints that are matched to each other
    pos = torch.zeros(b, m, n, dtype=torch.bool, device=dev)
    if k0 and k1 and m and n:
        ii = own0.clamp(min=0)[:, :, None].expand(b, m, n)
        jj = own1.clamp(min=0)[:, None, :].expand(b, m, n)
        pos = gt_pos[torch.arange(b, device=dev)[:, None, None], ii, jj]
        pos &= (own0 >= 0)[:, :, None] & (own1 >= 0)[:, None, :]

    def unmatched(own, dmin, d_other, gt_pos_rows, valid, matched):
        """Keypoints known to be unmatched in one image (see the module docstring)."""
        # a GT keypoint's partner counts as detected when any keypoint lies within the negative radius
        detected_other = (d_other <= negative_radius_px).any(1) if d_other.shape[1] else None
        if detected_other is None or gt_pos_rows.shape[1] == 0 or gt_pos_rows.shape[2] == 0:
            partner_seen = torch.zeros(gt_pos_rows.shape[:2], dtype=torch.bool, device=dev)
        else:
            partner_seen = (gt_pos_rows & detected_other[:, None, :]).any(2)  # [B x K]
        seen = partner_seen.gather(1, own.clamp(min=0)) if partner_seen.shape[1] else torch.zeros_like(valid)
        claimed_lonely = (own >= 0) & ~seen
        far = (own < 0) & (dmin > negative_radius_px)
        return valid & ~matched & (claimed_lonely | far)

    un0 = unmatched(own0, dmin0, d1, gt_pos, mask0, pos.any(2))
    un1 = unmatched(own1, dmin1, d0, gt_pos.transpose(1, 2), mask1, pos.any(1))
    target = torch.zeros(b, m + 1, n + 1, dtype=torch.float32, device=dev)
    target[:, :m, :n] = pos.float()
    target[:, :m, n] = un0.float()
    target[:, m, :n] = un1.float()
    return target


def _as_tensor(value: Any, dtype: torch.dtype) -> torch.Tensor:
    return value.to(dtype) if isinstance(value, torch.Tensor) else torch.as_tensor(value, dtype=dtype)


def _distractors(
    mask: torch.Tensor, gt: torch.Tensor, n: int, min_distance_px: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Up to n random vessel pixels (u, v) at least ``min_distance_px`` from every GT keypoint."""
    rows, cols = torch.nonzero(mask, as_tuple=True)
    cand = torch.stack([cols, rows], -1).float()
    if len(gt) and len(cand):
        cand = cand[torch.cdist(cand, gt.float()).min(1).values >= min_distance_px]
    pick = torch.randperm(len(cand), generator=generator)[: min(n, len(cand))]
    return cand[pick]


def matcher_inputs(
    sample: dict[str, Any],
    n_distractors: int = 32,
    jitter_px: float = 1.0,
    min_distractor_distance_px: float = 8.0,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Matcher training inputs of one dataset sample: GT keypoints (jittered) + vessel distractors.

    The dataset's view 1 is the matcher's image 0 and view 2 its image 1. Keypoints are the
    in-field GT keypoints first (in the dataset's order, so the GT matches index them directly),
    then the distractors; the matcher is permutation-equivariant, so the order teaches it nothing.

    Args:
        sample: a :class:`~xraycardiac.coronary.synth.dataset.CoronaryPairDataset` item (or a dict with its
            keys ``image1``/``image2`` [1 x H x W], ``mask1``/``mask2`` [1 x H x W], ``keypoints1``
            [K1 x 2], ``keypoints2`` [K2 x 2] pixel (u, v), ``matches`` [Mgt x 2]).
        n_distractors: random vessel pixels added per view (fewer if the mask has too few).
        jitter_px: GT keypoints move by a uniform offset in [-jitter_px, jitter_px] per axis
            (detections are never exact), clamped to the image.
        min_distractor_distance_px: distractors keep at least this distance to the view's GT keypoints
            (above :func:`gt_assignment`'s ``negative_radius_px``, so that both call them unmatched).
        generator: torch RNG for jitter and distractors (None = the global one).

    Returns:
        ``image0``, ``image1`` [1 x H x W]; ``image_size0``, ``image_size1`` [2] (width, height);
        ``keypoints0`` [M x 2], ``keypoints1`` [N x 2] float32 pixel (u, v); ``gt_keypoints0`` [K1 x 2],
        ``gt_keypoints1`` [K2 x 2] un-jittered GT keypoints (for the detector loss);
        ``is_distractor0`` [M], ``is_distractor1`` [N] bool; ``assignment`` [(M + 1) x (N + 1)]
        float32 target (GT matches, everything else in the dustbins).
    """
    if n_distractors < 0:
        raise ValueError(f"n_distractors: expected an integer >= 0, got {n_distractors!r}")
    if jitter_px < 0:
        raise ValueError(f"jitter_px: expected a distance >= 0 pixels, got {jitter_px!r}")
    for key in ("image1", "image2", "mask1", "mask2", "keypoints1", "keypoints2", "matches"):
        if key not in sample:
            raise ValueError(f"sample: missing {key!r} (expected a CoronaryPairDataset item)")
    out: dict[str, torch.Tensor] = {}
    counts = []
    for v in (0, 1):
        image = _as_tensor(sample[f"image{v + 1}"], torch.float32)
        image = image[None] if image.ndim == 2 else image
        vessel = _as_tensor(sample[f"mask{v + 1}"], torch.float32).reshape(image.shape[-2:]) > 0.5
        h, w = image.shape[-2:]
        gt = _as_tensor(sample[f"keypoints{v + 1}"], torch.float32).reshape(-1, 2)
        noise = (torch.rand(gt.shape, generator=generator) * 2 - 1) * jitter_px
        size = torch.tensor([w - 1, h - 1], dtype=torch.float32)
        jittered = torch.minimum(torch.clamp(gt + noise, min=0.0), size)
        extra = _distractors(vessel, gt, n_distractors, min_distractor_distance_px, generator)
        out[f"image{v}"] = image
        out[f"image_size{v}"] = torch.tensor([w, h], dtype=torch.float32)
        out[f"keypoints{v}"] = torch.cat([jittered, extra])
        out[f"gt_keypoints{v}"] = gt
        out[f"is_distractor{v}"] = torch.arange(len(gt) + len(extra)) >= len(gt)
        counts.append((len(gt), len(gt) + len(extra)))
    (k0, m), (k1, n) = counts
    matches = _as_tensor(sample["matches"], torch.long).reshape(-1, 2)
    if len(matches) and not (bool((matches[:, 0] < k0).all()) and bool((matches[:, 1] < k1).all())):
        raise ValueError(f"sample: matches index beyond the {k0} / {k1} keypoints of the two views")
    target = torch.zeros(m + 1, n + 1, dtype=torch.float32)
    target[matches[:, 0], matches[:, 1]] = 1.0
    target[:m, n] = (target[:m, :n].sum(1) == 0).float()
    target[m, :n] = (target[:m, :n].sum(0) == 0).float()
    out["assignment"] = target
    return out


def collate_matcher_inputs(inputs: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Batch :func:`matcher_inputs` results, padding keypoints to the batch's largest counts.

    Returns:
        ``image0``, ``image1`` [B x 1 x H x W]; ``image_size0``, ``image_size1`` [B x 2];
        ``keypoints0`` [B x M x 2] with ``mask0`` [B x M] bool, ``keypoints1`` [B x N x 2] with ``mask1``;
        ``gt_keypoints0`` [B x K0 x 2] with ``gt_mask0``, ``gt_keypoints1`` with ``gt_mask1``;
        ``is_distractor0``, ``is_distractor1`` (False on padding); ``assignment`` [B x (M + 1) x (N + 1)]
        (padded rows / columns all 0, i.e. ignored, dustbins last).
    """
    if not inputs:
        raise ValueError("inputs: empty batch")
    out: dict[str, torch.Tensor] = {}
    for key in ("image0", "image1", "image_size0", "image_size1"):
        shapes = {tuple(x[key].shape) for x in inputs}
        if len(shapes) > 1:
            raise ValueError(f"inputs: {key} differs within the batch: {sorted(shapes)}")
        out[key] = torch.stack([x[key] for x in inputs])
    bsz = len(inputs)
    for key, mask_key in (("keypoints", "mask"), ("gt_keypoints", "gt_mask"), ("is_distractor", None)):
        for v in (0, 1):
            items = [x[f"{key}{v}"] for x in inputs]
            k = max(len(t) for t in items)
            padded = items[0].new_zeros((bsz, k, *items[0].shape[1:]))
            valid = torch.zeros(bsz, k, dtype=torch.bool)
            for i, t in enumerate(items):
                padded[i, : len(t)] = t
                valid[i, : len(t)] = True
            out[f"{key}{v}"] = padded
            if mask_key:
                out[f"{mask_key}{v}"] = valid
    m, n = out["keypoints0"].shape[1], out["keypoints1"].shape[1]
    target = torch.zeros(bsz, m + 1, n + 1)
    for i, x in enumerate(inputs):
        a = x["assignment"]
        mi, ni = a.shape[0] - 1, a.shape[1] - 1
        target[i, :mi, :ni] = a[:mi, :ni]
        target[i, :mi, n] = a[:mi, ni]
        target[i, m, :ni] = a[mi, :ni]
    out["assignment"] = target
    return out


# --- Training step ---------------------------------------------------------------------------------


def match_accuracy(
    matches0: torch.Tensor, target: torch.Tensor, mask0: torch.Tensor | None = None
) -> dict[str, float]:
    """Precision, recall and per-keypoint accuracy of predicted matches against a target.

    Args:
        matches0: [B x M] predicted index into image 1, -1 = unmatched.
        target: [B x (M + 1) x (N + 1)] partial assignment.
        mask0: [B x M] bool; None = all valid.

    Returns:
        ``precision`` (correct matches / predicted matches of labelled keypoints), ``recall`` (correct /
        GT matches), ``accuracy`` (labelled keypoints of image 0 whose prediction, match or dustbin, is
        right / labelled keypoints); 0 where a denominator is 0.
    """
    n = target.shape[2] - 1
    gt_match = target[:, :-1, :-1] > 0.5
    has_gt = gt_match.any(2)
    gt_index = torch.where(has_gt, gt_match.float().argmax(2), -1)
    labelled = has_gt | (target[:, :-1, n] > 0.5)
    if mask0 is not None:
        labelled &= mask0.bool()
    correct = labelled & (matches0 == gt_index)
    predicted = labelled & (matches0 >= 0)

    def ratio(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(a.sum()) / float(b.sum()) if int(b.sum()) else 0.0

    return {
        "precision": ratio(correct & (matches0 >= 0), predicted),
        "recall": ratio(correct & has_gt, has_gt & labelled),
        "accuracy": ratio(correct, labelled),
    }


def matcher_training_step(
    keypoint_net: KeypointNet | None,
    matcher: AttentionMatcher,
    batch: dict[str, torch.Tensor],
    foundation: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    config: MatcherLossConfig | None = None,
) -> dict[str, Any]:
    """Loss of one batch of :func:`collate_matcher_inputs` (the caller runs backward and the optimizer).

    Args:
        keypoint_net: gives the descriptors (sampled from its dense map at the batch's keypoints,
            differentiably, so the matcher loss trains them) and adds its detector cross-entropy on
            the GT keypoints x ``config.detector_weight``. None: the batch must hold ``descriptors0``
            [B x M x Din] and ``descriptors1`` [B x N x Din].
        matcher: the :class:`~xraycardiac.coronary.matching.attention_matcher.AttentionMatcher`.
        batch: :func:`collate_matcher_inputs` output (on the matcher's device).
        foundation: ``foundation(image [B x 1 x H x W], keypoints [B x K x 2]) -> [B x K x Cf]``
            unit-length foundation descriptors at the keypoints (frozen; run without gradients), or None.
        config: :class:`MatcherLossConfig`.

    Returns:
        ``total`` scalar loss; ``matcher`` (deep-supervised NLL), ``matcher_last``, ``detector`` (or
        None) scalars; ``per_layer`` [L]; ``precision``/``recall``/``accuracy`` floats of the last
        layer's matches; ``output`` the matcher's output dict.
    """
    config = config or MatcherLossConfig()
    kp0, kp1 = batch["keypoints0"], batch["keypoints1"]
    detector = None
    if keypoint_net is None:
        if "descriptors0" not in batch or "descriptors1" not in batch:
            raise ValueError("batch: without a keypoint_net it must hold 'descriptors0' and 'descriptors1'")
        desc0, desc1 = batch["descriptors0"], batch["descriptors1"]
    else:
        dense0, dense1 = keypoint_net(batch["image0"]), keypoint_net(batch["image1"])
        desc0 = keypoint_net.describe(dense0["descriptors_dense"], kp0)
        desc1 = keypoint_net.describe(dense1["descriptors_dense"], kp1)
        cell = keypoint_net.config.cell
        detector = 0.5 * sum(
            detector_loss(
                d["logits"],
                keypoint_targets(
                    batch[f"gt_keypoints{v}"], batch[f"gt_mask{v}"], batch[f"image{v}"].shape[-2:], cell
                ),
            )
            for v, d in ((0, dense0), (1, dense1))
        )
    fdesc0 = fdesc1 = None
    if foundation is not None:
        with torch.no_grad():
            fdesc0, fdesc1 = foundation(batch["image0"], kp0), foundation(batch["image1"], kp1)
    out = matcher(
        kp0, kp1, desc0, desc1, batch["image_size0"], batch["image_size1"],
        mask0=batch.get("mask0"), mask1=batch.get("mask1"), fdesc0=fdesc0, fdesc1=fdesc1,
    )  # fmt: skip
    loss = matcher_loss(out["per_layer_log_assignments"], batch["assignment"], config)
    total = loss["total"] if detector is None else loss["total"] + config.detector_weight * detector
    return {
        "total": total,
        "matcher": loss["total"],
        "matcher_last": loss["last"],
        "detector": detector,
        "per_layer": loss["per_layer"],
        **match_accuracy(out["matches0"], batch["assignment"], batch.get("mask0")),
        "output": out,
    }
