"""KeypointNet, the foundation-masked attention matcher and its loss (Zhao et al. 2025, issue 4).

Tiny networks (8-32 channels, 64 x 64 images, <= 32 keypoints) on synthetic problems with exact
ground truth; the foundation descriptors are random unit vectors built here.
"""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F

from xraycardiac.coronary.matching.attention_matcher import (
    IMPOSSIBLE,
    AttentionMatcher,
    AttentionMatcherConfig,
    apply_rotary,
    filter_matches,
)
from xraycardiac.coronary.matching.keypoint_net import (
    KeypointNet,
    KeypointNetConfig,
    cell_logits_to_scores,
    detector_loss,
    keypoint_targets,
    nms_topk,
    sample_descriptors,
)
from xraycardiac.coronary.matching.matcher_loss import (
    MatcherLossConfig,
    assignment_nll,
    collate_matcher_inputs,
    deep_supervision_weights,
    gt_assignment,
    match_accuracy,
    matcher_inputs,
    matcher_loss,
    matcher_training_step,
)

SIZE = 64  # image side, pixels


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these tensors are tiny, and on a shared 2-core machine a second thread
    waiting for a busy core makes each step ~100x slower (2.4 s instead of 19 ms measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_net(**kw) -> KeypointNet:
    cfg = dict(channels=(8, 16, 16), head_channels=16, descriptor_dim=16, max_keypoints=32)
    return KeypointNet(KeypointNetConfig(**{**cfg, **kw}))


def tiny_matcher(**kw) -> AttentionMatcher:
    cfg = dict(input_dim=16, descriptor_dim=32, n_layers=2, num_heads=2)
    return AttentionMatcher(AttentionMatcherConfig(**{**cfg, **kw}))


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def matching_problem(seed: int, m: int = 16, outliers: int = 4, noise: float = 1.0, dim: int = 16):
    """m points in image 0, their images under a known small affine map (shuffled) in image 1, plus
    ``outliers`` unmatched points per image; descriptors are shared random vectors plus noise."""
    g = torch.Generator().manual_seed(seed)
    p0 = 8 + torch.rand(m, 2, generator=g) * (SIZE - 16)
    angle = math.radians(10.0)
    a = 1.05 * torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    centre = torch.tensor([SIZE / 2, SIZE / 2])
    p1 = (p0 - centre) @ a.T + centre + torch.tensor([2.0, -1.5])
    perm = torch.randperm(m, generator=g)  # image-1 keypoint j is image-0 keypoint perm[j]
    shared = torch.randn(m, dim, generator=g)
    kpts0 = torch.cat([p0, 4 + torch.rand(outliers, 2, generator=g) * (SIZE - 8)])
    kpts1 = torch.cat([p1[perm], 4 + torch.rand(outliers, 2, generator=g) * (SIZE - 8)])
    desc0 = torch.cat([shared, torch.randn(outliers, dim, generator=g)]) + noise * torch.randn(
        m + outliers, dim, generator=g
    )
    desc1 = torch.cat([shared[perm], torch.randn(outliers, dim, generator=g)])
    desc1 = desc1 + noise * torch.randn(m + outliers, dim, generator=g)
    target = torch.zeros(m + outliers + 1, m + outliers + 1)
    target[perm, torch.arange(m)] = 1.0
    target[m : m + outliers, -1] = 1.0
    target[-1, m : m + outliers] = 1.0
    return kpts0[None], kpts1[None], unit(desc0)[None], unit(desc1)[None], target[None], perm


# --- KeypointNet -----------------------------------------------------------------------------------


def test_keypoint_net_shapes_and_fixed_size_padded_detections():
    torch.manual_seed(0)
    net = tiny_net().eval()
    image = torch.rand(2, 1, SIZE, SIZE)
    out = net(image)
    assert out["scores"].shape == (2, SIZE, SIZE)
    assert out["logits"].shape == (2, 65, 8, 8)
    assert out["descriptors_dense"].shape == (2, 16, 8, 8)
    torch.testing.assert_close(out["descriptors_dense"].norm(dim=1), torch.ones(2, 8, 8))
    total = out["scores"].view(2, 8, 8, 8, 8).sum((2, 4))  # per cell: 1 - dustbin probability
    assert bool((total > 0).all() and (total < 1).all())
    det = net.detect(image)
    assert det["keypoints"].shape == (2, 32, 2) and det["descriptors"].shape == (2, 32, 16)
    assert det["mask"].shape == (2, 32) and det["keypoint_scores"].shape == (2, 32)
    # a threshold no score reaches: every row padded, with zeros
    det = tiny_net(detection_threshold=0.999).eval().detect(image)
    assert det["keypoints"].shape == (2, 32, 2) and not bool(det["mask"].any())
    assert float(det["descriptors"].abs().sum()) == 0.0 and float(det["keypoints"].abs().sum()) == 0.0
    with pytest.raises(ValueError, match="image"):
        net(torch.rand(1, 1, 60, SIZE))
    with pytest.raises(ValueError, match="channels"):
        KeypointNetConfig(channels=(8, 16), cell=8)
    with pytest.raises(ValueError, match="cell"):
        KeypointNetConfig(cell=6)


def test_nms_topk_keeps_local_maxima_sorted_and_pads():
    scores = torch.zeros(2, 32, 32)
    peaks = [((10, 12), 0.9), ((20, 5), 0.7), ((11, 13), 0.8), ((1, 1), 0.95)]  # (u, v), score
    for (u, v), s in peaks:
        scores[0, v, u] = s
    kp, sc, mask = nms_topk(scores, nms_radius_px=2, threshold=0.1, max_keypoints=4, border_px=2)
    # (11, 13) is within 2 px of the stronger (10, 12); (1, 1) is inside the border
    assert kp[0, :2].tolist() == [[10.0, 12.0], [20.0, 5.0]] and sc[0, :2].tolist() == pytest.approx(
        [0.9, 0.7]
    )
    assert mask.tolist() == [[True, True, False, False], [False] * 4]
    assert float(kp[~mask].abs().sum()) == 0.0
    kp, _, mask = nms_topk(scores, nms_radius_px=0, threshold=0.1, max_keypoints=None)
    assert kp.shape == (2, 4, 2) and mask.sum(1).tolist() == [4, 0]  # N = the largest count


def test_keypoint_targets_round_trip_to_cell_positions():
    g = torch.Generator().manual_seed(1)
    uv = torch.rand(2, 24, 2, generator=g) * (SIZE - 1)
    uv[0, 5] = uv[0, 2] + 0.2  # same pixel cell as keypoint 2: the lower index wins
    uv[1, 3] = torch.tensor([-3.0, 10.0])  # outside the image: ignored
    valid = torch.ones(2, 24, dtype=torch.bool)
    valid[1, 20:] = False
    targets = keypoint_targets(uv, valid, (SIZE, SIZE), cell=8)
    assert targets.shape == (2, 8, 8) and targets.dtype == torch.long
    # decode the way the network does: one-hot logits -> score map -> local maxima
    scores = cell_logits_to_scores(F.one_hot(targets, 65).permute(0, 3, 1, 2).float() * 30.0)
    kp, _, mask = nms_topk(scores, nms_radius_px=0, threshold=0.5, max_keypoints=None)
    for b in range(2):
        expected, seen = set(), set()
        for k in range(24):
            u, v = (int(x) for x in torch.round(uv[b, k]).tolist())
            if not (valid[b, k] and 0 <= u < SIZE and 0 <= v < SIZE) or (v // 8, u // 8) in seen:
                continue
            seen.add((v // 8, u // 8))
            expected.add((u, v))
        decoded = {tuple(int(x) for x in p) for p in kp[b][mask[b]].tolist()}
        assert decoded == expected, (
            f"batch {b}: decoded {sorted(decoded)} != GT cell positions {sorted(expected)}"
        )
        assert int((targets[b] < 64).sum()) == len(expected)
    # and the cross-entropy of those logits against the targets is ~0, of shuffled targets large
    logits = F.one_hot(targets, 65).permute(0, 3, 1, 2).float() * 30.0
    assert float(detector_loss(logits, targets)) < 1e-6
    assert float(detector_loss(logits, targets.flip(-1))) > 1.0


def test_sample_descriptors_reads_cell_centres():
    g = torch.Generator().manual_seed(2)
    dense = torch.randn(1, 4, 8, 8, generator=g)
    # the centre of cell (row 3, col 5) is pixel (u, v) = (5 * 8 + 3.5, 3 * 8 + 3.5)
    centres = torch.tensor([[[43.5, 27.5], [3.5, 3.5], [59.5, 59.5]]])
    got = sample_descriptors(dense, centres, cell=8)
    want = unit(torch.stack([dense[0, :, 3, 5], dense[0, :, 0, 0], dense[0, :, 7, 7]]))[None]
    torch.testing.assert_close(got, want)
    midway = sample_descriptors(dense, torch.tensor([[[47.5, 27.5]]]), cell=8)  # between cols 5 and 6
    torch.testing.assert_close(midway[0, 0], unit(dense[0, :, 3, 5] + dense[0, :, 3, 6]))


# --- Attention matcher -----------------------------------------------------------------------------


def test_matcher_outputs_and_padded_keypoints_never_matched_nor_heard():
    torch.manual_seed(3)
    matcher = tiny_matcher(foundation_top_k=4).eval()
    k0, k1, d0, d1, _, perm = matching_problem(seed=3, m=12, outliers=2)
    g = torch.Generator().manual_seed(30)
    f0 = unit(torch.randn(1, 14, 8, generator=g))
    f1 = unit(torch.randn(1, 14, 8, generator=g))
    # pad image 0 with 6 keypoints that copy image 1's descriptors and positions: perfect matches if heard
    pad = 6
    k0p = torch.cat([k0, k1[:, :pad]], 1)
    d0p = torch.cat([d0, d1[:, :pad]], 1)
    f0p = torch.cat([f0, f1[:, :pad]], 1)
    mask0 = torch.cat([torch.ones(1, 14), torch.zeros(1, pad)], 1).bool()
    with torch.no_grad():
        ref = matcher(k0, k1, d0, d1, (SIZE, SIZE), (SIZE, SIZE), fdesc0=f0, fdesc1=f1)
        out = matcher(k0p, k1, d0p, d1, (SIZE, SIZE), (SIZE, SIZE), mask0=mask0, fdesc0=f0p, fdesc1=f1)
    la = out["log_assignment"]
    assert la.shape == (1, 21, 15) and out["matches0"].shape == (1, 20) and out["matches1"].shape == (1, 14)
    assert len(out["per_layer_log_assignments"]) == 2 and out["per_layer_log_assignments"][-1] is la
    assert bool(torch.isfinite(la).all())
    assert bool((la[0, 14:20] == IMPOSSIBLE).all())
    assert out["matches0"][0, 14:].tolist() == [-1] * pad
    assert bool((out["matches1"] < 14).all()), f"matched to padding: {out['matches1'].tolist()}"
    # the valid part is exactly what the unpadded problem gives: padding is never heard
    keep = list(range(14)) + [20]
    torch.testing.assert_close(la[:, keep], ref["log_assignment"], atol=1e-5, rtol=1e-5)
    assert out["matches1"].tolist() == ref["matches1"].tolist()
    # an image whose keypoints are all padding: nothing to attend to, nothing matched, all finite
    none1 = torch.zeros(1, 14, dtype=torch.bool)
    mask01, mask10 = matcher.cross_attention_mask(f0, f1, None, none1)
    assert not bool(mask01.any()) and not bool(mask10.any())
    with torch.no_grad():
        empty = matcher(k0, k1, d0, d1, (SIZE, SIZE), (SIZE, SIZE), mask1=none1, fdesc0=f0, fdesc1=f1)
    assert bool(torch.isfinite(empty["log_assignment"]).all())
    assert bool((empty["matches0"] == -1).all()) and bool((empty["matches1"] == -1).all())


def test_foundation_mask_top1_partner_zeroes_every_other_cross_attention_weight():
    torch.manual_seed(4)
    matcher = tiny_matcher(foundation_top_k=1).eval()
    m, n_valid, pad = 10, 10, 3
    g = torch.Generator().manual_seed(40)
    perm = torch.randperm(m, generator=g)  # image-1 keypoint j is image-0 keypoint perm[j]
    f0 = unit(torch.randn(1, m, 32, generator=g))
    f1 = unit(
        torch.cat([f0[:, perm] + 0.05 * torch.randn(1, m, 32, generator=g), torch.randn(1, pad, 32)], 1)
    )
    mask1 = torch.cat([torch.ones(1, n_valid), torch.zeros(1, pad)], 1).bool()
    mask01, mask10 = matcher.cross_attention_mask(f0, f1, None, mask1)
    partner = torch.zeros(m, n_valid + pad, dtype=torch.bool)
    partner[perm, torch.arange(n_valid)] = True
    assert torch.equal(mask01[0], partner), "image 0 -> 1 mask is not the top-1 partner"
    assert torch.equal(mask10[0], partner.T), (
        "image 1 -> 0 mask is not the top-1 partner (or padding attends)"
    )

    k0 = torch.rand(1, m, 2) * SIZE
    k1 = torch.rand(1, n_valid + pad, 2) * SIZE
    d0, d1 = unit(torch.randn(1, m, 16)), unit(torch.randn(1, n_valid + pad, 16))
    with torch.no_grad():
        out = matcher(k0, k1, d0, d1, (SIZE, SIZE), (SIZE, SIZE), None, mask1, f0, f1, return_attention=True)
    for layer, (a01, a10) in enumerate(out["cross_attention"]):
        assert a01.shape == (1, 2, m, n_valid + pad) and a10.shape == (1, 2, n_valid + pad, m)
        off = a01[:, :, ~partner]
        assert bool((off == 0).all()), f"layer {layer}: weight {float(off.abs().max())} off the partner"
        torch.testing.assert_close(a01[:, :, partner], torch.ones_like(a01[:, :, partner]))
        assert bool((a10[:, :, ~partner.T] == 0).all())
        assert bool((a10[0, :, n_valid:] == 0).all()), "padded keypoints of image 1 receive attention"


def test_foundation_mask_threshold_top1_fallback_and_ablation_switch():
    g = torch.Generator().manual_seed(5)
    f0, f1 = unit(torch.randn(2, 9, 16, generator=g)), unit(torch.randn(2, 11, 16, generator=g))
    sim = f0 @ f1.transpose(1, 2)
    # a threshold no random pair reaches: each row keeps exactly its most similar keypoint
    mask01, mask10 = tiny_matcher(foundation_top_k=None, foundation_threshold=0.99).cross_attention_mask(
        f0, f1
    )
    assert mask01.sum(-1).tolist() == [[1] * 9] * 2 and mask10.sum(-1).tolist() == [[1] * 11] * 2
    assert torch.equal(mask01.float().argmax(-1), sim.argmax(-1))
    # threshold 0 with top-3: both must hold (the top-1 always does)
    mask01, _ = tiny_matcher(foundation_top_k=3, foundation_threshold=0.0).cross_attention_mask(f0, f1)
    top3 = torch.zeros_like(mask01).scatter_(-1, sim.topk(3, -1).indices, True)
    want = (top3 & (sim >= 0)) | F.one_hot(sim.argmax(-1), 11).bool()
    assert torch.equal(mask01, want)

    torch.manual_seed(6)
    k0, k1, d0, d1, *_ = matching_problem(seed=6, m=12, outliers=0)
    fa, fb = unit(torch.randn(1, 12, 8, generator=g)), unit(torch.randn(1, 12, 8, generator=g))
    on = tiny_matcher(foundation_top_k=2).eval()
    off = tiny_matcher(foundation_mask=False).eval()
    off.load_state_dict(on.state_dict())
    assert off.cross_attention_mask(fa, fb) is None
    with torch.no_grad():
        plain = on(k0, k1, d0, d1, (SIZE, SIZE), (SIZE, SIZE))["log_assignment"]
        masked = on(k0, k1, d0, d1, (SIZE, SIZE), (SIZE, SIZE), fdesc0=fa, fdesc1=fb)["log_assignment"]
        ablated = off(k0, k1, d0, d1, (SIZE, SIZE), (SIZE, SIZE), fdesc0=fa, fdesc1=fb)["log_assignment"]
    assert torch.equal(ablated, plain), "foundation_mask=False still uses the foundation descriptors"
    assert float((masked - plain).abs().max()) > 1e-3, "the foundation mask changes nothing"


def test_rotary_encoding_makes_attention_depend_on_relative_position_only():
    g = torch.Generator().manual_seed(7)
    q, k = torch.randn(1, 1, 5, 8, generator=g), torch.randn(1, 1, 5, 8, generator=g)
    w = torch.randn(2, 4, generator=g)
    p = torch.randn(1, 5, 2, generator=g)

    def logits(points):
        ang = (points @ w)[:, None]
        return apply_rotary(q, ang.cos(), ang.sin()) @ apply_rotary(k, ang.cos(), ang.sin()).transpose(-1, -2)

    torch.testing.assert_close(logits(p + torch.tensor([0.7, -1.3])), logits(p), atol=1e-5, rtol=1e-5)
    assert float((logits(p * 1.5) - logits(p)).abs().max()) > 1e-2  # but relative positions matter

    torch.manual_seed(8)
    # a larger rotary init than the default makes positions matter more in an untrained network
    matcher = tiny_matcher(foundation_mask=False, rotary_init_std=4.0).eval()
    k0, k1, d0, d1, *_ = matching_problem(seed=8, m=12, outliers=2)
    shift = torch.tensor([7.5, -3.25])
    with torch.no_grad():
        ref = matcher(k0, k1, d0, d1, (SIZE, SIZE), (SIZE, SIZE))["log_assignment"]
        moved = matcher(k0 + shift, k1 + shift, d0, d1, (SIZE, SIZE), (SIZE, SIZE))["log_assignment"]
        k0b = k0.clone()
        k0b[0, 0] += torch.tensor([10.0, 6.0])
        one = matcher(k0b, k1, d0, d1, (SIZE, SIZE), (SIZE, SIZE))["log_assignment"]
    # an untrained network barely uses positions, so compare with what moving one keypoint does: a
    # position-dependent (absolute) encoding would change the output by a similar amount
    effect, error = float((one - ref).abs().max()), float((moved - ref).abs().max())
    assert effect > 1e-4, f"moving one keypoint changes the output by {effect:.2e}: positions unused"
    assert error < 0.01 * effect, (
        f"a common translation changes the output by {error:.2e} (one keypoint: {effect:.2e})"
    )


def test_filter_matches_is_mutual_and_thresholded():
    p = torch.full((1, 4, 4), 1e-3)
    p[0, 0, 1], p[0, 1, 1], p[0, 2, 0], p[0, 2, 3] = 0.9, 0.5, 0.05, 0.9  # 0 and 1 both want 1; 2 is weak
    m0, m1, s0, _ = filter_matches(p.log(), threshold=0.1)
    assert m0.tolist() == [[1, -1, -1]] and m1.tolist() == [[-1, 0, -1]]
    assert s0[0, 0].item() == pytest.approx(0.9)


# --- Loss and targets ------------------------------------------------------------------------------


def test_assignment_loss_prefers_the_true_assignment_and_ignores_unlabelled():
    g = torch.Generator().manual_seed(9)
    m = n = 8
    perm = torch.randperm(n, generator=g)
    target = torch.zeros(1, m + 1, n + 1)
    target[0, torch.arange(6), perm[:6]] = 1.0
    target[0, 6, n] = 1.0  # keypoint 6 unmatched; keypoint 7 unlabelled
    target[0, m, perm[6:7]] = 1.0

    def log_assignment(t):  # a confident prediction of assignment t
        return (6.0 * t + 0.3 * torch.randn(t.shape, generator=g)).flatten(1).log_softmax(-1).view_as(t)

    shuffled = target.clone()
    shuffled[0, :6, :n] = target[0, :6, :n][torch.randperm(6, generator=g)]
    good, bad = (
        assignment_nll(log_assignment(target), target),
        assignment_nll(log_assignment(shuffled), target),
    )
    assert float(good["nll"]) < float(bad["nll"]) - 1.0, (
        f"true {float(good['nll']):.3f}, shuffled {float(bad['nll']):.3f}"
    )
    assert good["num_pos"].tolist() == [6.0] and good["num_neg"].tolist() == [2.0]
    # exact value: balanced mean of the matched and of the unmatched terms
    la = torch.randn(1, m + 1, n + 1, generator=g)
    want = 0.5 * -(la * target)[0, :m, :n].sum() / 6 + 0.5 * -(la[0, 6, n] + la[0, m, perm[6]]) / 2
    got = assignment_nll(la, target)["nll"]
    torch.testing.assert_close(got, want[None])
    la2 = la.clone()
    la2[0, 7] = -50.0  # the unlabelled row does not count
    torch.testing.assert_close(assignment_nll(la2, target)["nll"], got)
    assert float(assignment_nll(torch.zeros_like(la), target)["nll"]) == 0.0  # P = 1 where labelled


def test_deep_supervision_weights_layers_as_documented():
    torch.testing.assert_close(deep_supervision_weights(3, 1.0), torch.full((3,), 1 / 3))
    torch.testing.assert_close(deep_supervision_weights(3, 0.0), torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(deep_supervision_weights(3, 0.5), torch.tensor([0.25, 0.5, 1.0]) / 1.75)
    g = torch.Generator().manual_seed(10)
    target = torch.zeros(2, 5, 5)
    target[:, torch.arange(4), torch.arange(4)] = 1.0
    layers = [torch.randn(2, 5, 5, generator=g) for _ in range(3)]
    loss = matcher_loss(layers, target, MatcherLossConfig(layer_gamma=0.5))
    each = [assignment_nll(la, target)["nll"].mean() for la in layers]
    torch.testing.assert_close(loss["total"], (0.25 * each[0] + 0.5 * each[1] + each[2]) / 1.75)
    torch.testing.assert_close(loss["last"], each[2])
    with pytest.raises(ValueError, match="layer_gamma"):
        MatcherLossConfig(layer_gamma=1.5)


def vessel_sample(seed: int = 11) -> dict[str, torch.Tensor]:
    """A CoronaryPairDataset-like item: two 64 px views with two straight vessels and GT keypoints on them."""
    g = torch.Generator().manual_seed(seed)
    item = {}
    for v in (1, 2):
        mask = torch.zeros(1, SIZE, SIZE)
        mask[0, 10 + v : 13 + v, 4:60] = 1.0  # a horizontal vessel
        mask[0, 4:60, 40 - v : 43 - v] = 1.0  # a vertical one
        item[f"mask{v}"] = mask
        item[f"image{v}"] = 0.8 - 0.5 * mask + 0.05 * torch.rand(1, SIZE, SIZE, generator=g)
    # view 1: 6 keypoints along the vessels, 12 px apart; view 2: 5 (one out of field)
    item["keypoints1"] = torch.tensor(
        [[6.0, 12.0], [18.0, 12.0], [30.0, 12.0], [41.0, 24.0], [41.0, 36.0], [41.0, 48.0]]
    )
    item["keypoints2"] = torch.tensor([[8.0, 13.0], [20.0, 13.0], [39.0, 25.0], [39.0, 37.0], [52.0, 13.0]])
    item["matches"] = torch.tensor(
        [[0, 0], [1, 1], [3, 2], [4, 3]]
    )  # GT 2, 5 of view 1 and 4 of view 2 unmatched
    return item


def test_matcher_inputs_from_a_sample_and_collate():
    item = vessel_sample()
    a = matcher_inputs(
        item,
        n_distractors=8,
        jitter_px=1.0,
        min_distractor_distance_px=8.0,
        generator=torch.Generator().manual_seed(0),
    )
    b = matcher_inputs(
        item,
        n_distractors=8,
        jitter_px=1.0,
        min_distractor_distance_px=8.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert all(torch.equal(a[k], b[k]) for k in a), "not deterministic for a seeded generator"
    assert a["keypoints0"].shape == (14, 2) and a["keypoints1"].shape == (13, 2)
    assert a["is_distractor0"].tolist() == [False] * 6 + [True] * 8
    assert float((a["keypoints0"][:6] - item["keypoints1"]).abs().max()) <= 1.0
    for v in (0, 1):
        d = a[f"keypoints{v}"][a[f"is_distractor{v}"]]
        uv = d.long()
        assert bool((item[f"mask{v + 1}"][0, uv[:, 1], uv[:, 0]] == 1).all()), "distractor off the vessels"
        assert float(torch.cdist(d, item[f"keypoints{v + 1}"]).min()) >= 8.0
    t = a["assignment"]
    assert t.shape == (15, 14)
    assert [tuple(x) for x in torch.nonzero(t[:14, :13]).tolist()] == [(0, 0), (1, 1), (3, 2), (4, 3)]
    assert t[:14].sum(1).tolist() == [1.0] * 14 and t[:, :13].sum(0).tolist() == [1.0] * 13  # all labelled
    assert t[[2, 5] + list(range(6, 14)), 13].tolist() == [1.0] * 10
    torch.testing.assert_close(a["image_size0"], torch.tensor([64.0, 64.0]))

    c = matcher_inputs(item, n_distractors=3, generator=torch.Generator().manual_seed(1))
    batch = collate_matcher_inputs([a, c])
    assert batch["keypoints0"].shape == (2, 14, 2) and batch["mask0"].sum(1).tolist() == [14, 9]
    assert batch["assignment"].shape == (2, 15, 14) and batch["image0"].shape == (2, 1, SIZE, SIZE)
    assert batch["gt_keypoints1"].shape == (2, 5, 2) and bool(batch["gt_mask1"].all())
    # the short item's dustbins moved to the batch's last row / column; its padding is unlabelled
    assert batch["assignment"][1, 2, 13].item() == 1.0 and batch["assignment"][1, 9:14].sum().item() == 0.0
    assert batch["assignment"][1, 14, 4].item() == 1.0  # view-2 GT keypoint 4 unmatched


def test_gt_assignment_for_detected_keypoints():
    item = vessel_sample()
    gt0, gt1 = item["keypoints1"][None], item["keypoints2"][None]
    from xraycardiac.coronary.synth.dataset import match_matrix

    mm = torch.from_numpy(match_matrix(item["matches"].numpy(), 6, 5))[None]
    kp0 = torch.tensor(
        [
            [
                [7.0, 13.0],
                [18.5, 12.0],
                [30.0, 13.0],
                [41.0, 26.0],
                [45.0, 36.0],
                [60.0, 60.0],
                [41.0, 48.0],
                [6.0, 14.5],
            ]
        ]
    )
    kp1 = torch.tensor([[[8.0, 12.0], [21.0, 13.0], [39.0, 26.0], [52.0, 13.0], [5.0, 55.0]]])
    t = gt_assignment(kp0, kp1, gt0, gt1, mm, positive_radius_px=3.0, negative_radius_px=6.0)[0]
    rows = {i: (torch.nonzero(t[i]).flatten().tolist()) for i in range(8)}
    assert rows[0] == [0] and rows[1] == [1] and rows[3] == [2]  # near matched GT keypoints on both sides
    assert rows[2] == [5], "claims GT 2, which has no partner: unmatched"
    assert rows[4] == [], "4 px from GT 4 (between the radii): ignored"
    assert rows[5] == [5], "far from every GT keypoint: unmatched"
    assert rows[6] == [5], "claims GT 5, which has no partner: unmatched"
    assert rows[7] == [], "a duplicate of GT 0 (keypoint 0 is nearer): ignored"
    cols = {j: torch.nonzero(t[:, j]).flatten().tolist() for j in range(5)}
    assert cols[3] == [8] and cols[4] == [8], (
        "GT 4 of view 2 has no partner; keypoint 4 is far: both unmatched"
    )
    # GT keypoints + far distractors through gt_assignment give matcher_inputs' own target
    x = matcher_inputs(
        item,
        n_distractors=8,
        jitter_px=1.0,
        min_distractor_distance_px=8.0,
        generator=torch.Generator().manual_seed(2),
    )
    t2 = gt_assignment(x["keypoints0"][None], x["keypoints1"][None], gt0, gt1, mm)
    assert torch.equal(t2[0], x["assignment"])


# --- Training --------------------------------------------------------------------------------------


def test_training_step_with_keypoint_net_and_foundation_trains_every_part():
    torch.manual_seed(12)
    net, matcher = tiny_net(), tiny_matcher(foundation_top_k=4)
    item = vessel_sample()
    gen = torch.Generator().manual_seed(3)
    batch = collate_matcher_inputs([matcher_inputs(item, n_distractors=6, generator=gen) for _ in range(2)])
    proj = torch.randn(2, 8)

    def foundation(image, keypoints):  # a stand-in: unit vectors from the positions
        return unit(torch.tanh(keypoints / SIZE @ proj))

    res = matcher_training_step(net, matcher, batch, foundation=foundation)
    assert (
        bool(torch.isfinite(res["total"])) and res["detector"] is not None and res["per_layer"].shape == (2,)
    )
    torch.testing.assert_close(res["total"], res["matcher"] + res["detector"])
    res["total"].backward()
    for name, module in (
        ("descriptor head", net.descriptor),
        ("detector head", net.detector),
        ("first assignment head", matcher.assignment[0]),
        ("first cross block", matcher.cross_blocks[0]),
        ("rotary encoding", matcher.rotary),
    ):
        grad = sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)
        assert grad > 0, f"no gradient reaches the {name}"
    with pytest.raises(ValueError, match="descriptors0"):
        matcher_training_step(None, matcher, batch)


def test_tiny_matcher_overfits_one_problem():
    torch.manual_seed(13)
    k0, k1, d0, d1, target, _ = matching_problem(seed=13, m=16, outliers=4, noise=1.0)
    matcher = tiny_matcher()
    nn_match = (d0 @ d1.transpose(1, 2)).argmax(-1)
    gt = torch.where(target[:, :-1, :-1].any(2), target[:, :-1, :-1].argmax(2), -1)
    nn_acc = float((nn_match == gt)[gt >= 0].float().mean())
    opt = torch.optim.Adam(matcher.parameters(), lr=3e-3)
    start = time.perf_counter()
    for _ in range(150):
        out = matcher(k0, k1, d0, d1, (SIZE, SIZE), (SIZE, SIZE))
        loss = matcher_loss(out["per_layer_log_assignments"], target)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = matcher.eval()(k0, k1, d0, d1, (SIZE, SIZE), (SIZE, SIZE))
    acc = match_accuracy(out["matches0"], target)
    print(
        f"overfit: accuracy {acc['accuracy']:.3f} (precision {acc['precision']:.3f}, recall {acc['recall']:.3f}) "
        f"after 150 steps, {time.perf_counter() - start:.1f} s; descriptor nearest neighbour {nn_acc:.3f}; "
        f"final loss {float(loss.detach()):.3f}"
    )
    assert acc["accuracy"] >= 0.9, f"overfit accuracy {acc['accuracy']:.3f} < 0.9"


def test_matcher_config_errors_name_the_argument():
    with pytest.raises(ValueError, match="descriptor_dim"):
        AttentionMatcherConfig(descriptor_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="foundation_top_k"):
        AttentionMatcherConfig(foundation_top_k=0)
    with pytest.raises(ValueError, match="foundation_top_k"):
        AttentionMatcherConfig(foundation_top_k=None, foundation_threshold=None)
    with pytest.raises(ValueError, match="foundation_threshold"):
        AttentionMatcherConfig(foundation_threshold=1.5)
    matcher = tiny_matcher()
    k = torch.rand(1, 4, 2)
    with pytest.raises(ValueError, match="desc0"):
        matcher(k, k, torch.rand(1, 4, 8), torch.rand(1, 4, 16), (SIZE, SIZE), (SIZE, SIZE))
    with pytest.raises(ValueError, match="image_size"):
        matcher(k, k, torch.rand(1, 4, 16), torch.rand(1, 4, 16), (SIZE, 0), (SIZE, SIZE))
