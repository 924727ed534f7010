"""A LightGlue-style keypoint matcher whose cross-attention is masked by foundation-feature similarity.

Zhao et al. (2025) match the keypoints of two coronary angiograms with alternating self- and
cross-attention (SuperGlue / LightGlue) and let an image foundation model (DINOv2-like) decide
*where* cross-attention may look: a keypoint of image 0 attends only to the keypoints of image 1
whose foundation descriptors are most similar to its own, and vice versa. Angiograms are nearly
textureless and full of look-alike vessel segments, so unrestricted cross-attention spreads over
every similar-looking piece of vessel; the foundation features carry the semantic context
(which artery, which part of the tree) that narrows it down.

Architecture (per image pair; M and N keypoints, D = ``descriptor_dim``, L = ``n_layers``):

1. Input projection of the keypoint descriptors to D (identity when they are D-dimensional).
2. Keypoints are normalised to about [-1, 1] (centred, divided by half the longer image side, as
   LightGlue does) and turned into a **rotary** positional encoding: a learned linear map of the
   2D position gives one angle per pair of channels of an attention head (LightGlue's "learnable
   Fourier" rotary encoding). Rotating queries and keys by angles linear in position makes the
   attention logits depend only on the *difference* of two positions, so the matcher is
   invariant to translating a keypoint set; it is applied in self-attention only (positions in
   the two images are not comparable).
3. L blocks of self-attention (each image on its own) followed by bidirectional cross-attention:
   one similarity matrix from shared query/key projections, softmax over its rows for 0 -> 1 and
   over its columns for 1 -> 0 (LightGlue). Messages go through LightGlue's MLP on
   ``[x, message]`` with a residual connection.
4. Cross-attention mask (:func:`foundation_attention_mask`): keypoint i of image 0 may attend to
   keypoint j of image 1 only if j is among the ``foundation_top_k`` most cosine-similar keypoints
   of image 1 to i by foundation descriptor, and/or (both set: both) its similarity is at least
   ``foundation_threshold``; image 1 -> 0 symmetrically (its own top-k, so the two masks are not
   transposes of each other). The most similar keypoint is always allowed, so no row is ever
   empty and softmax stays finite. ``foundation_mask=False`` (ablation), or no foundation
   descriptors, turns it off.
5. After every block a match-assignment head (LightGlue's): projected descriptors give the
   similarity S [M x N], a linear "matchability" gives sigma_i, sigma_j, and the log-assignment
   with dustbins is ``log softmax_row(S) + log softmax_col(S) + log sigma_i + log sigma_j`` on
   [M x N], ``log(1 - sigma_i)`` in the dustbin column and ``log(1 - sigma_j)`` in the dustbin
   row: [B x (M + 1) x (N + 1)]. Every layer's head is kept for deep supervision
   (:mod:`xraycardiac.coronary.matching.matcher_loss`); the last one gives the matches.
6. Optional **geometric prior** (``allowed``, e.g. the epipolar band that the recorded C-arm
   geometry and its tolerance allow: :func:`xraycardiac.coronary.matching.matcher.epipolar_band_mask`):
   keypoint i may attend to, and be matched with, keypoint j only where ``allowed[i, j]``; it is
   combined (logical and) with the foundation mask, and the log-assignment outside it is
   :data:`IMPOSSIBLE`, so a pair outside the band is never matched.
7. :func:`filter_matches`: mutual argmax of the [M x N] block with ``exp(score) > filter_threshold``.

Padded keypoints (``mask0`` / ``mask1`` False) take no part: they are masked out of self- and
cross-attention as keys, their own rows receive nothing from cross-attention, their entries in
the log-assignment are :data:`IMPOSSIBLE` (finite, so that zero-weighted loss terms stay 0) and
they are never matched. Valid outputs do not depend on what padded rows hold.

Choices where the paper is silent (config fields): LightGlue's sizes (D = 256, 9 layers, 4 heads),
foundation top-k = 8, the same mask in every cross-attention layer, and an assignment head per
layer (glue-factory's deep supervision; computed in eval too, one [M x N] product per layer).
LightGlue's adaptive depth and point pruning are not implemented (LightGlue itself prunes only
above ~1000 keypoints, on GPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "IMPOSSIBLE",
    "AttentionMatcher",
    "AttentionMatcherConfig",
    "apply_rotary",
    "filter_matches",
    "foundation_attention_mask",
    "log_double_softmax",
    "normalize_keypoints",
]

IMPOSSIBLE = -1e4
"""Log-assignment of padded keypoints: exp() is exactly 0 in float32, yet finite (0 x it is 0)."""


@dataclass(frozen=True)
class AttentionMatcherConfig:
    """Settings of :class:`AttentionMatcher` (module docstring for each part).

    Attributes:
        input_dim: length of the input keypoint descriptors; None = ``descriptor_dim``.
        descriptor_dim: D, the width of the attention layers; a multiple of ``num_heads`` whose
            per-head size is even (rotary encoding rotates channel pairs).
        n_layers: L, the self + cross attention blocks.
        num_heads: attention heads.
        foundation_mask: mask cross-attention by foundation-descriptor similarity (when given).
        foundation_top_k: k of the mask: each keypoint attends to its k most similar; None = no
            top-k limit (then ``foundation_threshold`` must be set).
        foundation_threshold: smallest cosine similarity (in [-1, 1]) allowed by the mask; None = no
            threshold. With both set, a keypoint must pass both (the top-1 always passes).
        filter_threshold: smallest match probability kept by :func:`filter_matches`, in [0, 1).
        rotary_init_std: standard deviation of the initial rotary frequencies, radians per unit of
            normalised coordinate (LightGlue: 1).
    """

    input_dim: int | None = None
    descriptor_dim: int = 256
    n_layers: int = 9
    num_heads: int = 4
    foundation_mask: bool = True
    foundation_top_k: int | None = 8
    foundation_threshold: float | None = None
    filter_threshold: float = 0.1
    rotary_init_std: float = 1.0

    def __post_init__(self) -> None:
        name = "AttentionMatcherConfig"
        for field in ("descriptor_dim", "n_layers", "num_heads"):
            v = getattr(self, field)
            if not (isinstance(v, int) and v > 0):
                raise ValueError(f"{name}.{field}: expected an integer > 0, got {v!r}")
        if self.input_dim is not None and not (isinstance(self.input_dim, int) and self.input_dim > 0):
            raise ValueError(f"{name}.input_dim: expected None or an integer > 0, got {self.input_dim!r}")
        if self.descriptor_dim % self.num_heads or (self.descriptor_dim // self.num_heads) % 2:
            raise ValueError(
                f"{name}.descriptor_dim: expected a multiple of num_heads={self.num_heads} with an even "
                f"per-head size (rotary encoding), got {self.descriptor_dim}"
            )
        if self.foundation_top_k is not None and not (
            isinstance(self.foundation_top_k, int) and self.foundation_top_k > 0
        ):
            raise ValueError(
                f"{name}.foundation_top_k: expected None or an integer > 0, got {self.foundation_top_k!r}"
            )
        if self.foundation_threshold is not None and not -1.0 <= self.foundation_threshold <= 1.0:
            raise ValueError(
                f"{name}.foundation_threshold: expected None or a cosine similarity in [-1, 1], "
                f"got {self.foundation_threshold!r}"
            )
        if self.foundation_mask and self.foundation_top_k is None and self.foundation_threshold is None:
            raise ValueError(
                f"{name}.foundation_top_k: with foundation_mask=True, set foundation_top_k and/or "
                "foundation_threshold (or set foundation_mask=False)"
            )
        if not 0.0 <= self.filter_threshold < 1.0:
            raise ValueError(
                f"{name}.filter_threshold: expected a probability in [0, 1), got {self.filter_threshold!r}"
            )
        if not self.rotary_init_std > 0:
            raise ValueError(f"{name}.rotary_init_std: expected a value > 0, got {self.rotary_init_std!r}")

    @property
    def head_dim(self) -> int:
        """Channels per attention head."""
        return self.descriptor_dim // self.num_heads


# --- Pure functions --------------------------------------------------------------------------------


def normalize_keypoints(kpts: torch.Tensor, image_size: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """Pixel keypoints to about [-1, 1]: centred, divided by half the longer image side (aspect kept).

    Args:
        kpts: [B x M x 2] pixel (u, v).
        image_size: (width, height) in pixels: a pair, a [2] tensor or a [B x 2] tensor.

    Returns:
        [B x M x 2] normalised coordinates.
    """
    size = torch.as_tensor(image_size, dtype=kpts.dtype, device=kpts.device)
    if size.shape not in ((2,), (kpts.shape[0], 2)):
        raise ValueError(
            f"image_size: expected (width, height) as a pair or [{kpts.shape[0]} x 2], got shape {tuple(size.shape)}"
        )
    size = size.expand(kpts.shape[0], 2)
    if not bool((size > 0).all()):
        raise ValueError(f"image_size: expected positive (width, height) pixels, got {size.tolist()}")
    half = size.max(-1).values / 2
    return (kpts - size[:, None] / 2) / half[:, None, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2c, 2c + 1) of ``x`` by the angles whose cosines / sines are given.

    Args:
        x: [B x H x M x Dh].
        cos, sin: [B x 1 x M x Dh/2].

    Returns:
        [B x H x M x Dh].
    """
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1).flatten(-2)


def _masked_softmax(sim: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last axis where ``mask``; masked entries are exactly 0, empty rows all 0."""
    if mask is None:
        return sim.softmax(-1)
    # the dtype's lowest finite value, not -inf: exp() still underflows to exactly 0, and a fully
    # masked row gives a finite uniform softmax (then zeroed) instead of NaN in forward and backward
    attn = sim.masked_fill(~mask, torch.finfo(sim.dtype).min).softmax(-1)
    return attn * mask.any(-1, keepdim=True)


def _similar(
    sim: torch.Tensor, valid: torch.Tensor, top_k: int | None, threshold: float | None
) -> torch.Tensor:
    """[B x M x N] bool: for each row, the valid columns in its top-k and/or above threshold, plus its top-1."""
    n = sim.shape[-1]
    sim = sim.masked_fill(~valid[:, None, :], float("-inf"))
    allowed = valid[:, None, :].expand_as(sim).clone()
    if top_k is not None:
        idx = sim.topk(min(top_k, n), dim=-1).indices
        allowed &= torch.zeros_like(allowed).scatter_(-1, idx, True)
    if threshold is not None:
        allowed &= sim >= threshold
    allowed.scatter_(-1, sim.argmax(-1, keepdim=True), True)  # never an empty row
    return allowed & valid[:, None, :]  # the top-1 of a row whose columns are all padding is padding


def foundation_attention_mask(
    fdesc0: torch.Tensor,
    fdesc1: torch.Tensor,
    mask0: torch.Tensor | None = None,
    mask1: torch.Tensor | None = None,
    top_k: int | None = 8,
    threshold: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which keypoints may attend to which across the two images, by foundation-descriptor similarity.

    Args:
        fdesc0: [B x M x Cf] foundation descriptors of image 0 (normalised here to unit length).
        fdesc1: [B x N x Cf] of image 1.
        mask0: [B x M] bool, False for padded keypoints; None = all valid.
        mask1: [B x N] bool.
        top_k: each keypoint may attend to its ``top_k`` most cosine-similar valid keypoints of the
            other image; None = no limit.
        threshold: ... only to those with cosine similarity >= ``threshold``; None = no threshold.
            With both, both must hold. Each valid keypoint may always attend to its most similar one.

    Returns:
        mask01: [B x M x N] bool, True where keypoint i of image 0 may attend to j of image 1.
        mask10: [B x N x M] bool, the same from image 1 to image 0 (not ``mask01``'s transpose: each
        side takes its own top-k). Rows of padded keypoints are all False; so are the rows of an
        image whose partner has no valid keypoint.
    """
    if top_k is None and threshold is None:
        raise ValueError("top_k: set top_k and/or threshold for a foundation attention mask")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k: expected None or an integer >= 1, got {top_k!r}")
    if (
        fdesc0.ndim != 3
        or fdesc1.ndim != 3
        or fdesc0.shape[0] != fdesc1.shape[0]
        or fdesc0.shape[2] != fdesc1.shape[2]
    ):
        raise ValueError(
            f"fdesc0, fdesc1: expected [B x M x Cf] and [B x N x Cf], got {tuple(fdesc0.shape)} and {tuple(fdesc1.shape)}"
        )
    b, m, n = fdesc0.shape[0], fdesc0.shape[1], fdesc1.shape[1]
    dev = fdesc0.device
    mask0 = torch.ones(b, m, dtype=torch.bool, device=dev) if mask0 is None else mask0.bool()
    mask1 = torch.ones(b, n, dtype=torch.bool, device=dev) if mask1 is None else mask1.bool()
    if m == 0 or n == 0:
        return torch.zeros(b, m, n, dtype=torch.bool, device=dev), torch.zeros(
            b, n, m, dtype=torch.bool, device=dev
        )
    sim = F.normalize(fdesc0.float(), dim=-1) @ F.normalize(fdesc1.float(), dim=-1).transpose(1, 2)
    mask01 = _similar(sim, mask1, top_k, threshold) & mask0[:, :, None]
    mask10 = _similar(sim.transpose(1, 2), mask0, top_k, threshold) & mask1[:, :, None]
    return mask01, mask10


def log_double_softmax(
    sim: torch.Tensor,
    z0: torch.Tensor,
    z1: torch.Tensor,
    mask0: torch.Tensor | None = None,
    mask1: torch.Tensor | None = None,
) -> torch.Tensor:
    """LightGlue's log-assignment: dual softmax of the similarity plus sigmoid matchability, with dustbins.

    Args:
        sim: [B x M x N] similarity.
        z0: [B x M x 1] matchability logits of image 0; z1: [B x N x 1] of image 1.
        mask0, mask1: [B x M], [B x N] bool, False for padding; None = all valid.

    Returns:
        [B x (M + 1) x (N + 1)] float32 log-probabilities; the last row / column are the dustbins
        (unmatched), entries of padded keypoints are :data:`IMPOSSIBLE`.
    """
    b, m, n = sim.shape
    sim, z0, z1 = sim.float(), z0.float(), z1.float()
    valid = None
    if mask0 is not None or mask1 is not None:
        v0 = torch.ones(b, m, dtype=torch.bool, device=sim.device) if mask0 is None else mask0.bool()
        v1 = torch.ones(b, n, dtype=torch.bool, device=sim.device) if mask1 is None else mask1.bool()
        valid = v0[:, :, None] & v1[:, None, :]
        # a large finite fill keeps padded columns out of each row's normaliser (exp() = 0) and fully
        # padded rows finite; their entries are overwritten below
        sim = sim.masked_fill(~valid, -1e9)
    certainties = F.logsigmoid(z0) + F.logsigmoid(z1).transpose(1, 2)
    scores = sim.new_zeros(b, m + 1, n + 1)
    scores[:, :m, :n] = sim.log_softmax(2) + sim.log_softmax(1) + certainties
    scores[:, :m, n] = F.logsigmoid(-z0[..., 0])
    scores[:, m, :n] = F.logsigmoid(-z1[..., 0])
    if valid is not None:
        full = F.pad(v0, (0, 1), value=True)[:, :, None] & F.pad(v1, (0, 1), value=True)[:, None, :]
        scores = scores.masked_fill(~full, IMPOSSIBLE)
    return scores


def filter_matches(
    scores: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mutual-argmax matches of a log-assignment whose probability exceeds ``threshold``.

    Args:
        scores: [B x (M + 1) x (N + 1)] log-assignment (dustbins last).
        threshold: smallest match probability kept, in [0, 1).

    Returns:
        matches0: [B x M] int64 index into image 1 of each keypoint of image 0, -1 if unmatched.
        matches1: [B x N] int64 index into image 0, -1 if unmatched (consistent with ``matches0``).
        mscores0: [B x M] match probability (0 where not a mutual best match).
        mscores1: [B x N].
    """
    b, m, n = scores.shape[0], scores.shape[1] - 1, scores.shape[2] - 1
    if m == 0 or n == 0:
        dev = scores.device
        return (
            torch.full((b, m), -1, dtype=torch.long, device=dev),
            torch.full((b, n), -1, dtype=torch.long, device=dev),
            scores.new_zeros(b, m),
            scores.new_zeros(b, n),
        )
    core = scores[:, :-1, :-1]
    max0, max1 = core.max(2), core.max(1)
    m0, m1 = max0.indices, max1.indices
    mutual0 = torch.arange(m, device=scores.device)[None] == m1.gather(1, m0)
    mutual1 = torch.arange(n, device=scores.device)[None] == m0.gather(1, m1)
    zero = scores.new_zeros(())
    mscores0 = torch.where(mutual0, max0.values.exp(), zero)
    mscores1 = torch.where(mutual1, mscores0.gather(1, m1), zero)
    valid0 = mutual0 & (mscores0 > threshold)
    valid1 = mutual1 & valid0.gather(1, m1)
    return torch.where(valid0, m0, -1), torch.where(valid1, m1, -1), mscores0, mscores1


# --- Modules ---------------------------------------------------------------------------------------


class RotaryEncoding(nn.Module):
    """Learned rotary encoding of 2D positions: angles = W p, one per channel pair of a head."""

    def __init__(self, head_dim: int, init_std: float = 1.0) -> None:
        super().__init__()
        self.proj = nn.Linear(2, head_dim // 2, bias=False)
        nn.init.normal_(self.proj.weight, std=init_std)

    def forward(self, kpts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each [B x 1 x M x Dh/2], of normalised keypoints [B x M x 2]."""
        angles = self.proj(kpts)[:, None]
        return angles.cos(), angles.sin()


def _ffn(dim: int) -> nn.Sequential:
    """LightGlue's update MLP on [x, message]."""
    return nn.Sequential(
        nn.Linear(2 * dim, 2 * dim),
        nn.LayerNorm(2 * dim, elementwise_affine=True),
        nn.GELU(),
        nn.Linear(2 * dim, dim),
    )


class SelfBlock(nn.Module):
    """Self-attention with rotary positions, then the residual MLP update."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ffn = _ffn(dim)

    def forward(
        self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None
    ) -> torch.Tensor:
        """x: [B x M x D]; mask: [B x 1 x M x M] bool (True = may attend) or None."""
        b, m, d = x.shape
        q, k, v = self.qkv(x).view(b, m, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        msg = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        msg = self.out(msg.transpose(1, 2).reshape(b, m, d))
        return x + self.ffn(torch.cat([x, msg], -1))


class CrossBlock(nn.Module):
    """Bidirectional cross-attention (one similarity matrix for both directions), then the MLP update."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qk = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.ffn = _ffn(dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, m, d = x.shape
        return x.view(b, m, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(
        self,
        x0: torch.Tensor,
        x1: torch.Tensor,
        mask01: torch.Tensor | None,
        mask10: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Update x0 [B x M x D] and x1 [B x N x D].

        Args:
            mask01: [B x 1 x M x N] bool or None; mask10: [B x 1 x N x M] bool or None.

        Returns:
            x0, x1 updated; attn01 [B x H x M x N] and attn10 [B x H x N x M], the attention weights.
        """
        qk0, qk1 = self._heads(self.qk(x0)), self._heads(self.qk(x1))
        v0, v1 = self._heads(self.v(x0)), self._heads(self.v(x1))
        scale = qk0.shape[-1] ** -0.25  # split between both sides: sim = q.k / sqrt(Dh)
        sim = (qk0 * scale) @ (qk1 * scale).transpose(-1, -2)
        attn01 = _masked_softmax(sim, mask01)
        attn10 = _masked_softmax(sim.transpose(-1, -2), mask10)
        m0 = (attn01 @ v1).transpose(1, 2).flatten(2)
        m1 = (attn10 @ v0).transpose(1, 2).flatten(2)
        x0 = x0 + self.ffn(torch.cat([x0, self.out(m0)], -1))
        x1 = x1 + self.ffn(torch.cat([x1, self.out(m1)], -1))
        return x0, x1, attn01, attn10


class MatchAssignment(nn.Module):
    """LightGlue's assignment head: projected similarity + matchability -> log-assignment."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.matchability = nn.Linear(dim, 1)

    def forward(
        self, x0: torch.Tensor, x1: torch.Tensor, mask0: torch.Tensor | None, mask1: torch.Tensor | None
    ) -> torch.Tensor:
        """[B x (M + 1) x (N + 1)] log-assignment of x0 [B x M x D], x1 [B x N x D]."""
        d = x0.shape[-1]
        p0, p1 = self.proj(x0) / d**0.25, self.proj(x1) / d**0.25
        sim = p0 @ p1.transpose(1, 2)
        return log_double_softmax(sim, self.matchability(x0), self.matchability(x1), mask0, mask1)


class AttentionMatcher(nn.Module):
    """Foundation-masked LightGlue-style matcher (module docstring).

    Args:
        config: :class:`AttentionMatcherConfig`; None = defaults.
    """

    def __init__(self, config: AttentionMatcherConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or AttentionMatcherConfig()
        d = c.descriptor_dim
        in_dim = c.input_dim or d
        self.input_proj = nn.Linear(in_dim, d) if in_dim != d else nn.Identity()
        self.rotary = RotaryEncoding(c.head_dim, c.rotary_init_std)
        self.self_blocks = nn.ModuleList([SelfBlock(d, c.num_heads) for _ in range(c.n_layers)])
        self.cross_blocks = nn.ModuleList([CrossBlock(d, c.num_heads) for _ in range(c.n_layers)])
        self.assignment = nn.ModuleList([MatchAssignment(d) for _ in range(c.n_layers)])

    def cross_attention_mask(
        self,
        fdesc0: torch.Tensor | None,
        fdesc1: torch.Tensor | None,
        mask0: torch.Tensor | None = None,
        mask1: torch.Tensor | None = None,
        sizes: tuple[int, int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The cross-attention masks ``forward`` uses: (mask01 [B x M x N], mask10 [B x N x M]) bool.

        With ``config.foundation_mask`` and both foundation descriptors: :func:`foundation_attention_mask`
        with the config's top-k / threshold. Otherwise only padding is masked (valid rows may attend to
        every valid keypoint); None when there is nothing to mask at all.

        Args:
            fdesc0, fdesc1: [B x M x Cf], [B x N x Cf] foundation descriptors, or None.
            mask0, mask1: [B x M], [B x N] bool keypoint masks, or None (all valid).
            sizes: (B, M, N) when no foundation descriptors are given and masks are None.
        """
        c = self.config
        if c.foundation_mask and fdesc0 is not None and fdesc1 is not None:
            return foundation_attention_mask(
                fdesc0, fdesc1, mask0, mask1, top_k=c.foundation_top_k, threshold=c.foundation_threshold
            )
        if mask0 is None and mask1 is None:
            return None
        ref = mask0 if mask0 is not None else mask1
        if sizes is None:
            if mask0 is None or mask1 is None:
                raise ValueError("sizes: give (B, M, N) when only one keypoint mask is given")
            sizes = (mask0.shape[0], mask0.shape[1], mask1.shape[1])
        b, m, n = sizes
        v0 = torch.ones(b, m, dtype=torch.bool, device=ref.device) if mask0 is None else mask0.bool()
        v1 = torch.ones(b, n, dtype=torch.bool, device=ref.device) if mask1 is None else mask1.bool()
        return v0[:, :, None] & v1[:, None, :], v1[:, :, None] & v0[:, None, :]

    def forward(
        self,
        kpts0: torch.Tensor,
        kpts1: torch.Tensor,
        desc0: torch.Tensor,
        desc1: torch.Tensor,
        image_size0: torch.Tensor | Sequence[float],
        image_size1: torch.Tensor | Sequence[float],
        mask0: torch.Tensor | None = None,
        mask1: torch.Tensor | None = None,
        fdesc0: torch.Tensor | None = None,
        fdesc1: torch.Tensor | None = None,
        return_attention: bool = False,
        allowed: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | list]:
        """Match two keypoint sets.

        Args:
            kpts0: [B x M x 2] pixel (u, v) keypoints of image 0; kpts1: [B x N x 2] of image 1.
            desc0: [B x M x Din] keypoint descriptors; desc1: [B x N x Din].
            image_size0, image_size1: (width, height) pixels, a pair or [B x 2].
            mask0: [B x M] bool, False for padded keypoints; mask1: [B x N]; None = all valid.
            fdesc0: [B x M x Cf] foundation descriptors (L2-normalised; normalised again here);
                fdesc1: [B x N x Cf]. None (either) = no foundation mask.
            return_attention: also return every layer's cross-attention weights.
            allowed: [B x M x N] bool geometric prior (module docstring, step 6): keypoint i of image 0
                and j of image 1 may attend to each other and be matched only where True; None = no prior.

        Returns:
            ``log_assignment`` [B x (M + 1) x (N + 1)] (last layer; dustbins last);
            ``matches0`` [B x M] int64 index into image 1 or -1; ``matches1`` [B x N];
            ``matching_scores0`` [B x M], ``matching_scores1`` [B x N] match probabilities (0 when
            unmatched); ``per_layer_log_assignments`` list of L [B x (M + 1) x (N + 1)], the last
            being ``log_assignment``; with ``return_attention``, ``cross_attention`` a list of L
            pairs (attn01 [B x H x M x N], attn10 [B x H x N x M]).
        """
        c = self.config
        in_dim = c.input_dim or c.descriptor_dim
        b, m, n = kpts0.shape[0], kpts0.shape[1], kpts1.shape[1]
        for name, t, shape in (
            ("kpts0", kpts0, (b, m, 2)),
            ("kpts1", kpts1, (b, n, 2)),
            ("desc0", desc0, (b, m, in_dim)),
            ("desc1", desc1, (b, n, in_dim)),
        ):
            if tuple(t.shape) != shape:
                raise ValueError(f"{name}: expected shape {list(shape)}, got {list(t.shape)}")
        for name, t, shape in (("mask0", mask0, (b, m)), ("mask1", mask1, (b, n))):
            if t is not None and tuple(t.shape) != shape:
                raise ValueError(f"{name}: expected shape {list(shape)} bool, got {list(t.shape)}")
        for name, t, k in (("fdesc0", fdesc0, m), ("fdesc1", fdesc1, n)):
            if t is not None and (t.ndim != 3 or tuple(t.shape[:2]) != (b, k)):
                raise ValueError(f"{name}: expected shape [{b} x {k} x Cf], got {list(t.shape)}")
        if allowed is not None and tuple(allowed.shape) != (b, m, n):
            raise ValueError(f"allowed: expected shape {[b, m, n]} bool, got {list(allowed.shape)}")
        if mask0 is not None:
            mask0 = mask0.bool()
        if mask1 is not None:
            mask1 = mask1.bool()

        rot0 = self.rotary(normalize_keypoints(kpts0.float(), image_size0))
        rot1 = self.rotary(normalize_keypoints(kpts1.float(), image_size1))
        x0, x1 = self.input_proj(desc0.float()), self.input_proj(desc1.float())
        self_mask0, self_mask1 = _self_mask(mask0), _self_mask(mask1)
        cross = self.cross_attention_mask(fdesc0, fdesc1, mask0, mask1, sizes=(b, m, n))
        if allowed is not None:
            allowed = allowed.bool()
            cross = (allowed, allowed.transpose(1, 2)) if cross is None else (
                cross[0] & allowed, cross[1] & allowed.transpose(1, 2)
            )  # fmt: skip
        mask01, mask10 = (None, None) if cross is None else (cross[0][:, None], cross[1][:, None])

        per_layer, attention = [], []
        for self_block, cross_block, head in zip(
            self.self_blocks, self.cross_blocks, self.assignment, strict=True
        ):
            x0 = self_block(x0, rot0, self_mask0)
            x1 = self_block(x1, rot1, self_mask1)
            x0, x1, attn01, attn10 = cross_block(x0, x1, mask01, mask10)
            if return_attention:
                attention.append((attn01, attn10))
            scores = head(x0, x1, mask0, mask1)
            if allowed is not None:  # outside the prior: never a match (the dustbins are untouched)
                scores = scores.clone()
                scores[:, :m, :n] = scores[:, :m, :n].masked_fill(~allowed, IMPOSSIBLE)
            per_layer.append(scores)

        scores = per_layer[-1]
        m0, m1, ms0, ms1 = filter_matches(scores, c.filter_threshold)
        if mask0 is not None:  # belt and braces: IMPOSSIBLE already keeps padded rows out
            m0, ms0 = torch.where(mask0, m0, -1), torch.where(mask0, ms0, 0.0)
        if mask1 is not None:
            m1, ms1 = torch.where(mask1, m1, -1), torch.where(mask1, ms1, 0.0)
        out: dict[str, torch.Tensor | list] = {
            "log_assignment": scores,
            "matches0": m0,
            "matches1": m1,
            "matching_scores0": ms0,
            "matching_scores1": ms1,
            "per_layer_log_assignments": per_layer,
        }
        if return_attention:
            out["cross_attention"] = attention
        return out


def _self_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """[B x 1 x M x M] self-attention mask: valid keys, plus the diagonal so no row is empty."""
    if mask is None or bool(mask.all()):
        return None
    eye = torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
    return (mask[:, None, :] | eye)[:, None]
