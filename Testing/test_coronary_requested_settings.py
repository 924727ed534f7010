"""A requested foundation model that cannot be used is an error naming it, never silently dropped (issue 19, item 4)."""

from __future__ import annotations

import pytest

from xraycardiac.coronary.matching.evaluate import evaluate_matchers, parse_method

DEMO = "coronary-matcher-demo"  # shipped; trained without the foundation mask


def test_foundation_for_a_matcher_trained_without_the_mask_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"foundation 'dinov2:.*coronary-matcher-demo.*foundation_mask"):
        parse_method(f"matcher:{DEMO}", foundation=f"dinov2:{tmp_path}")


def test_foundation_for_the_no_mask_ablation_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"foundation 'dinov2:.*matcher-nofm"):
        parse_method(f"matcher-nofm:{DEMO}", foundation=f"dinov2:{tmp_path}")


@pytest.mark.parametrize("method", ["vessel+epipolar", "sift"])
def test_foundation_for_a_classical_method_is_an_error(method, tmp_path):
    with pytest.raises(ValueError, match=rf"foundation 'dinov2:.*{method.split('+')[0]}"):
        parse_method(method, foundation=f"dinov2:{tmp_path}")


def test_evaluate_without_any_learned_matcher_refuses_a_foundation(tmp_path):
    with pytest.raises(ValueError, match=r"foundation 'dinov2:.*no method"):
        evaluate_matchers(tmp_path, ["sift", "vessel"], foundation=f"dinov2:{tmp_path}")


def test_train_matcher_refuses_a_foundation_it_would_not_use(tmp_path):
    from dataclasses import replace

    from xraycardiac.coronary.matching.train_matcher import parse_matcher_overrides, train_coronary_matcher

    cfg, tcfg = parse_matcher_overrides(["foundation_mask=false", "steps=1"])
    cfg = replace(cfg, foundation=f"dinov2:{tmp_path}")
    with pytest.raises(ValueError, match=r"foundation 'dinov2:.*foundation_mask"):
        train_coronary_matcher(tmp_path / "no-data", tmp_path / "out", cfg, tcfg)
