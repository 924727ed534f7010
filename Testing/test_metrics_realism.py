"""Fréchet distance, MMD and the fixed random-feature encoder."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from xraycardiac.metrics import EncoderConfig, FixedEncoder, frechet_distance, mmd2_rbf


def test_frechet_distance_of_a_shift_is_its_squared_length() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 4))
    shift = np.array([1.0, -2.0, 0.0, 0.5])
    assert abs(frechet_distance(a, a)) < 1e-6
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    with pytest.raises(ValueError, match="frechet_distance: expected two"):
        frechet_distance(a[:1], a)


def test_mmd_separates_distributions_and_not_samples_of_one() -> None:
    rng = np.random.default_rng(1)
    same = mmd2_rbf(rng.normal(size=(100, 8)), rng.normal(size=(100, 8)))
    other = mmd2_rbf(rng.normal(size=(100, 8)), rng.normal(0.5, 1.0, size=(100, 8)))
    print(f"MMD^2 same {same:.4f}, shifted by 0.5 sd {other:.4f}")
    assert abs(same) < 0.005 and other > 0.03 and other > 20 * abs(same)


def test_fixed_encoder_is_deterministic_and_sees_blur() -> None:
    rng = np.random.default_rng(2)

    def textures(n: int) -> np.ndarray:
        return np.clip(0.5 + 0.2 * rng.normal(size=(n, 32, 32)), 0, 1)

    enc = FixedEncoder()
    a, b = textures(40), textures(40)
    blurred = np.stack([ndimage.gaussian_filter(x, 1.5) for x in textures(40)])
    np.testing.assert_array_equal(enc(a), FixedEncoder()(a))
    fa = enc(a)
    assert fa.shape == (40, 2 * sum(EncoderConfig().channels))
    same, blur = frechet_distance(fa, enc(b)), frechet_distance(fa, enc(blurred))
    print(f"FD sharp vs sharp {same:.4g}, sharp vs blurred {blur:.4g}")
    assert blur > 5 * same
    vol = FixedEncoder(EncoderConfig(spatial_dims=3, channels=(4, 8)))(rng.random((3, 16, 16, 16)))
    assert vol.shape == (3, 24)
    with pytest.raises(ValueError, match=r"images: expected \(N, H, W\)"):
        enc(rng.random((2, 3, 8, 8)))
