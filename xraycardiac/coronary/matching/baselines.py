"""Classical keypoint-matching baselines for coronary view pairs: SIFT and ORB (OpenCV).

Every matcher has one signature, ``matcher(image1, image2, projection_matrices=None, config=None)
-> MatchResult``, so the benchmark and the evaluation treat them alike (the vessel-keypoint
matcher of :mod:`xraycardiac.coronary.matching.vessel_keypoints` has it too).

Pipeline (as the classical rows of the SuperGlue / LightGlue tables): detect and describe in each
image, match descriptors by nearest neighbour with Lowe's ratio test (kept if the best distance is
below ``ratio`` x the second best, 0.8), then one geometric filter (``MatcherConfig.filter``):

- ``"ransac"``: ``cv2.findFundamentalMat`` (USAC MAGSAC++ by default, or plain RANSAC) on the
  ratio-test matches, keeping its inliers at ``ransac_threshold_px``. Fewer than 8 matches cannot
  give a fundamental matrix: then no match is kept.
- ``"epipolar"``: keep the matches whose symmetric epipolar distance under the *known* geometry
  (the two projection matrices) is ``<= epipolar_tolerance_px`` — the filter a calibrated C-arm
  allows, and an upper bound on what RANSAC could find.
- ``"none"``: the ratio-test matches.

Images are (rows, cols) float arrays in [0, 1], vessels dark (the renderer's output); they are
rounded to uint8 for OpenCV. Pixels are (u = column, v = row), pixel centres at integers (OpenCV's
keypoint convention too).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "FILTERS",
    "RANSAC_METHODS",
    "MatchResult",
    "MatcherConfig",
    "filter_matches",
    "match_orb",
    "match_sift",
    "to_uint8",
]

FILTERS = ("ransac", "epipolar", "none")
RANSAC_METHODS = ("usac_magsac", "usac_default", "ransac")
MIN_FUNDAMENTAL_MATCHES = 8


@dataclass(frozen=True)
class MatcherConfig:
    """Settings shared by the classical matchers.

    Attributes:
        max_keypoints: most keypoints detected per image (SIFT's ``nfeatures``, ORB's ``nfeatures``).
        ratio: Lowe's ratio test: keep a match if best distance < ratio x second best (0 < ratio <= 1).
        filter: "ransac", "epipolar" or "none" (module docstring).
        ransac_method: "usac_magsac" (MAGSAC++), "usac_default" or "ransac" (OpenCV's classic).
        ransac_threshold_px: inlier threshold of the fundamental-matrix fit, pixels.
        ransac_confidence: RANSAC confidence in (0, 1).
        ransac_max_iters: RANSAC iterations at most.
        epipolar_tolerance_px: largest symmetric epipolar distance kept by the "epipolar" filter, pixels.
        seed: seed of OpenCV's RNG before RANSAC, so results repeat.
    """

    max_keypoints: int = 2048
    ratio: float = 0.8
    filter: str = "ransac"
    ransac_method: str = "usac_magsac"
    ransac_threshold_px: float = 2.0
    ransac_confidence: float = 0.999
    ransac_max_iters: int = 10_000
    epipolar_tolerance_px: float = 3.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.max_keypoints, int) and self.max_keypoints > 0):
            raise ValueError(
                f"MatcherConfig.max_keypoints: expected an integer > 0, got {self.max_keypoints!r}"
            )
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"MatcherConfig.ratio: expected 0 < ratio <= 1, got {self.ratio!r}")
        if self.filter not in FILTERS:
            raise ValueError(f"MatcherConfig.filter: expected one of {FILTERS}, got {self.filter!r}")
        if self.ransac_method not in RANSAC_METHODS:
            raise ValueError(
                f"MatcherConfig.ransac_method: expected one of {RANSAC_METHODS}, got {self.ransac_method!r}"
            )
        for name in ("ransac_threshold_px", "epipolar_tolerance_px"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"MatcherConfig.{name}: expected a distance > 0 pixels, got {v!r}")
        if not 0.0 < self.ransac_confidence < 1.0:
            raise ValueError(
                f"MatcherConfig.ransac_confidence: expected a value in (0, 1), got {self.ransac_confidence!r}"
            )
        if not (isinstance(self.ransac_max_iters, int) and self.ransac_max_iters > 0):
            raise ValueError(
                f"MatcherConfig.ransac_max_iters: expected an integer > 0, got {self.ransac_max_iters!r}"
            )


@dataclass
class MatchResult:
    """What a matcher returns for one image pair.

    Attributes:
        keypoints1: (N, 2) float64 keypoints detected in image 1, pixels (u, v).
        keypoints2: (K, 2) float64 keypoints detected in image 2.
        x1, x2: (M, 2) float64 matched pixels in image 1 / image 2 (after the filter).
        scores: (M,) float64 confidence per match in [0, 1], higher is better.
        seconds: wall time of detection + description + matching + filtering, seconds.
        method: a short name, e.g. "sift+ransac".
        info: extras (counts before the filter, the RANSAC fundamental matrix, ...).
    """

    keypoints1: np.ndarray
    keypoints2: np.ndarray
    x1: np.ndarray
    x2: np.ndarray
    scores: np.ndarray
    seconds: float
    method: str = ""
    info: dict = field(default_factory=dict)

    @property
    def num_matches(self) -> int:
        """M, the number of matches."""
        return len(self.x1)


Matcher = Callable[..., MatchResult]


def to_uint8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """(rows, cols) float image in [0, 1] -> uint8 ``round(255 x)`` (values outside are clipped)."""
    a = np.asarray(image)
    if a.ndim != 2 or min(a.shape) < 8:
        raise ValueError(
            f"{name}: expected a (rows, cols) grey image of at least 8 x 8 pixels, got shape {a.shape}"
        )
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)


def check_projections(projection_matrices: np.ndarray | None) -> np.ndarray:
    """The (2, 3, 4) projection matrices of a pair as float64; a ValueError names what is wrong."""
    if projection_matrices is None:
        raise ValueError(
            'filter "epipolar" needs projection_matrices: the (2, 3, 4) matrices of the two views '
            '(read_sample(...)["projection_matrices"]); use filter "ransac" when the geometry is unknown'
        )
    pm = np.asarray(projection_matrices, dtype=np.float64)
    if pm.shape != (2, 3, 4):
        raise ValueError(f"projection_matrices: expected shape (2, 3, 4), got {pm.shape}")
    return pm


def filter_matches(
    x1: np.ndarray,
    x2: np.ndarray,
    scores: np.ndarray,
    config: MatcherConfig,
    projection_matrices: np.ndarray | None = None,
) -> tuple[np.ndarray, dict]:
    """Indices of the matches kept by ``config.filter``.

    Args:
        x1, x2: (M, 2) tentative matches, pixels (u, v).
        scores: (M,) their scores (unused by the filters, passed for symmetry).
        config: the filter and its thresholds.
        projection_matrices: (2, 3, 4) true projection matrices; needed by "epipolar".

    Returns:
        (kept (M',) int64 indices into the matches, info dict: ``fundamental_matrix`` (3, 3) for
        "ransac" when one was found, ``epipolar_error_px`` (M,) for "epipolar").
    """
    m = len(x1)
    info: dict = {}
    if config.filter == "none":
        return np.arange(m), info
    if config.filter == "epipolar":
        from xraycardiac.metrics.matching import symmetric_epipolar_error_px

        pm = check_projections(projection_matrices)
        err = symmetric_epipolar_error_px(x1, x2, pm[0], pm[1])
        info["epipolar_error_px"] = err
        return np.flatnonzero(err <= config.epipolar_tolerance_px), info
    if m < MIN_FUNDAMENTAL_MATCHES:
        return np.zeros(0, dtype=np.int64), info
    import cv2

    method = {
        "usac_magsac": cv2.USAC_MAGSAC,
        "usac_default": cv2.USAC_DEFAULT,
        "ransac": cv2.FM_RANSAC,
    }[config.ransac_method]
    cv2.setRNGSeed(config.seed)
    try:
        f, inliers = cv2.findFundamentalMat(
            np.ascontiguousarray(x1, dtype=np.float64),
            np.ascontiguousarray(x2, dtype=np.float64),
            method,
            config.ransac_threshold_px,
            config.ransac_confidence,
            config.ransac_max_iters,
        )
    except cv2.error:  # USAC asserts on some degenerate sets (e.g. near-collinear points) instead of failing
        f = inliers = None
    if f is None or inliers is None or f.shape != (3, 3):  # degenerate: OpenCV may stack several F
        return np.zeros(0, dtype=np.int64), info
    info["fundamental_matrix"] = f
    return np.flatnonzero(inliers.reshape(-1)), info


def _ratio_matches(
    d1: np.ndarray | None, d2: np.ndarray | None, ratio: float, norm: int
) -> tuple[np.ndarray, np.ndarray]:
    """(M, 2) index pairs (i in image 1, j in image 2) passing the ratio test and (M,) scores 1 - d1/d2."""
    import cv2

    if d1 is None or d2 is None or len(d1) == 0 or len(d2) < 2:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0)
    knn = cv2.BFMatcher(norm).knnMatch(d1, d2, k=2)
    pairs, scores = [], []
    for nn in knn:
        if len(nn) < 2:
            continue
        best, second = nn
        if best.distance < ratio * second.distance:
            pairs.append((best.queryIdx, best.trainIdx))
            scores.append(1.0 - best.distance / max(second.distance, 1e-12))
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2), np.asarray(scores, dtype=np.float64)


def _match_opencv(
    name: str,
    detector: object,
    norm: int,
    image1: np.ndarray,
    image2: np.ndarray,
    projection_matrices: np.ndarray | None,
    config: MatcherConfig,
) -> MatchResult:
    """Detect + describe with an OpenCV Feature2D, ratio-test match, then filter."""
    if config.filter == "epipolar":
        check_projections(projection_matrices)  # fail before the work
    a, b = to_uint8(image1, "image1"), to_uint8(image2, "image2")
    t0 = time.perf_counter()
    k1, d1 = detector.detectAndCompute(a, None)
    k2, d2 = detector.detectAndCompute(b, None)
    kp1 = np.asarray([k.pt for k in k1], dtype=np.float64).reshape(-1, 2)
    kp2 = np.asarray([k.pt for k in k2], dtype=np.float64).reshape(-1, 2)
    pairs, scores = _ratio_matches(d1, d2, config.ratio, norm)
    x1, x2 = kp1[pairs[:, 0]], kp2[pairs[:, 1]]
    keep, info = filter_matches(x1, x2, scores, config, projection_matrices)
    seconds = time.perf_counter() - t0
    info["num_ratio_matches"] = len(pairs)
    return MatchResult(
        keypoints1=kp1,
        keypoints2=kp2,
        x1=x1[keep],
        x2=x2[keep],
        scores=scores[keep],
        seconds=seconds,
        method=f"{name}+{config.filter}",
        info=info,
    )


def match_sift(
    image1: np.ndarray,
    image2: np.ndarray,
    projection_matrices: np.ndarray | None = None,
    config: MatcherConfig | None = None,
) -> MatchResult:
    """SIFT keypoints (OpenCV defaults, at most ``max_keypoints``), L2 ratio test, then ``config.filter``.

    Args:
        image1, image2: (rows, cols) float images in [0, 1], vessels dark.
        projection_matrices: (2, 3, 4) RAS mm -> pixel matrices of the two views; needed by the
            "epipolar" filter only.
        config: :class:`MatcherConfig` (None = defaults: ratio 0.8, MAGSAC++ at 2 px).

    Returns:
        :class:`MatchResult`.
    """
    import cv2

    config = config or MatcherConfig()
    detector = cv2.SIFT_create(nfeatures=config.max_keypoints)
    return _match_opencv("sift", detector, cv2.NORM_L2, image1, image2, projection_matrices, config)


def match_orb(
    image1: np.ndarray,
    image2: np.ndarray,
    projection_matrices: np.ndarray | None = None,
    config: MatcherConfig | None = None,
) -> MatchResult:
    """ORB keypoints (FAST + rotated BRIEF, at most ``max_keypoints``), Hamming ratio test, then ``config.filter``.

    ORB's FAST threshold is lowered from 20 to 10 grey levels: angiograms are low-contrast and
    the default finds few corners at 256 px. Arguments and result as :func:`match_sift`.
    """
    import cv2

    config = config or MatcherConfig()
    detector = cv2.ORB_create(nfeatures=config.max_keypoints, fastThreshold=10)
    return _match_opencv("orb", detector, cv2.NORM_HAMMING, image1, image2, projection_matrices, config)
