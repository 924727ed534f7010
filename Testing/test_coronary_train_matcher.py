"""``xraycardiac train coronary-matcher``: the CoronaryMatcher model, its package and exact resume (issue 4).

A 3-pair synthetic dataset at 64 x 64 pixels and a tiny matcher (8-channel KeypointNet, 16-d
descriptors, one attention layer) trained for 6 steps on the CPU.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from xraycardiac.cli import app
from xraycardiac.coronary.matching.matcher import CoronaryMatcher, CoronaryMatcherConfig
from xraycardiac.coronary.matching.train_matcher import parse_matcher_overrides, train_coronary_matcher

runner = CliRunner()
TINY = [
    "channels=[8,8,8]", "head_channels=8", "keypoint_net.descriptor_dim=16", "max_keypoints=48",
    "matcher.descriptor_dim=16", "n_layers=1", "num_heads=2", "filter_threshold=0", "n_distractors=8",
    "batch_size=2", "device=cpu", "warmup_steps=1", "log_every=2",
]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tiny_pair_dataset: Path) -> Path:
    return tiny_pair_dataset


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 uninterrupted steps through the command line."""
    out = tmp_path_factory.mktemp("matcher_run") / "run"
    args = ["train", "coronary-matcher", "--data", str(data), "--out", str(out), "--name", "tiny-matcher"]
    result = runner.invoke(app, [*args, *TINY, "steps=6"])
    assert result.exit_code == 0, result.output
    return out


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_training_writes_an_importable_package(run: Path, xraycardiac_home: Path) -> None:
    from xraycardiac.models import import_model, list_models, sha256_file

    entry = json.loads((run / "model.json").read_text())
    assert entry["sha256"] == sha256_file(run / "model.pt")
    config, _ = parse_matcher_overrides(TINY)
    # training records the image side it saw as the size match() resizes to
    assert CoronaryMatcherConfig.from_dict(entry["config"]) == replace(config, match_size_px=64)
    assert entry["config"]["matcher"]["input_dim"] == 16 and entry["config"]["foundation"] is None
    assert "3 coronary view pairs of 64 x 64 px" in entry["training_data"], entry["training_data"]
    assert (run / "checkpoint.pt").is_file() and len((run / "log.jsonl").read_text().splitlines()) == 3
    import_model(run)
    assert "tiny-matcher" in [m.name for m in list_models()]
    by_name, by_folder = CoronaryMatcher.load("tiny-matcher"), CoronaryMatcher.load(run)
    assert by_name.source["sha256"] == by_folder.source["sha256"] == entry["sha256"]
    for key, value in by_folder.state_dict().items():
        assert torch.equal(value, by_name.state_dict()[key]), key


def test_resume_continues_exactly(run: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    first = train_coronary_matcher(data, out, *parse_matcher_overrides([*TINY, "steps=3"]), command="pytest")
    assert first["step"] == 3
    second = train_coronary_matcher(data, out, *parse_matcher_overrides([*TINY, "steps=6"]), command="pytest")
    assert (second["resumed_from"], second["steps_run"], second["step"]) == (3, 3, 6)
    resumed, straight = _weights(out / "model.pt"), _weights(run / "model.pt")
    assert resumed.keys() == straight.keys()
    differ = [k for k in straight if not torch.equal(resumed[k], straight[k])]
    assert not differ, f"resumed weights differ from the uninterrupted run's in {differ[:5]}"
    with pytest.raises(ValueError, match="another model config"):
        train_coronary_matcher(data, out, *parse_matcher_overrides([*TINY, "n_distractors=4", "steps=7"]))


def test_loaded_matcher_matches_an_image_pair(run: Path, data: Path) -> None:
    from xraycardiac.coronary.synth.dataset import list_samples, read_sample
    from xraycardiac.metrics.matching import symmetric_epipolar_error_px

    sample = read_sample(list_samples(data)[0], load_thickness=False)
    matcher = CoronaryMatcher.load(run)
    r = matcher.match(sample["image1"], sample["image2"])
    assert r.keypoints1.dtype == np.float64 and r.keypoints1.ndim == 2 and r.keypoints1.shape[1] == 2
    assert 0 < len(r.keypoints1) <= 48 and 0 < len(r.keypoints2) <= 48
    assert r.x1.shape == r.x2.shape == (r.num_matches, 2) and r.scores.shape == (r.num_matches,)
    assert r.num_matches > 0, "filter_threshold=0 keeps every mutual nearest neighbour"
    assert np.all((r.scores >= 0) & (r.scores <= 1)) and r.seconds > 0
    assert all((r.keypoints1 == x).all(1).any() for x in r.x1), "a match end that is not a keypoint"
    assert r.method == "matcher-nofm" and r.info["foundation_mask"] is False

    pm = sample["projection_matrices"]
    f = matcher.match(sample["image1"], sample["image2"], projection_matrices=pm, epipolar_tolerance_px=3.0)
    assert f.method == "matcher-nofm+epipolar" and f.num_matches <= r.num_matches
    assert np.all(symmetric_epipolar_error_px(f.x1, f.x2, pm[0], pm[1]) <= 3.0)
    with pytest.raises(ValueError, match="projection_matrices"):
        matcher.match(sample["image1"], sample["image2"], epipolar_tolerance_px=3.0)

    odd = matcher.match(sample["image1"][:60, :62], (sample["image2"] * 255).astype(np.uint8))
    assert np.all(odd.keypoints1 <= [61, 59]), "a keypoint in the edge padding of a 62 x 60 image"

    def patch_features(images: torch.Tensor) -> torch.Tensor:  # a stand-in foundation model: 4 x 4 patches
        return torch.nn.functional.normalize(torch.nn.functional.avg_pool2d(images, 16).expand(-1, 4, -1, -1))

    masked = matcher.match(sample["image1"], sample["image2"], foundation=patch_features)
    assert masked.method == "matcher" and masked.info["foundation_mask"] is True
    ablation = CoronaryMatcher.load(run, foundation_mask=False)
    assert not ablation.config.matcher.foundation_mask
    unmasked = ablation.match(sample["image1"], sample["image2"], foundation=patch_features)
    assert unmasked.info["foundation_mask"] is False and np.array_equal(unmasked.x1, r.x1)


def test_unknown_or_ambiguous_settings_are_rejected(data: Path, tmp_path: Path) -> None:
    config, train = parse_matcher_overrides(["channels=[16,16,32]", "n_layers=2", "lr=1e-3", "jitter_px=0.5"])
    assert config.keypoint_net.channels == (16, 16, 32) and config.matcher.n_layers == 2
    assert train.lr == 1e-3 and config.jitter_px == 0.5 and config.matcher.input_dim == 128
    config, _ = parse_matcher_overrides(["keypoint_net.descriptor_dim=32"])
    assert config.matcher.input_dim == 32, "the matcher's input follows the descriptor size"
    with pytest.raises(ValueError, match=r"unknown key 'bogus'; allowed keys: .*steps.*matcher\.n_layers"):
        parse_matcher_overrides(["bogus=1"])
    with pytest.raises(ValueError, match=r"keypoint_net\.descriptor_dim or matcher\.descriptor_dim"):
        parse_matcher_overrides(["descriptor_dim=32"])
    with pytest.raises(ValueError, match="TrainConfig.steps"):
        parse_matcher_overrides(["steps=0"])
    with pytest.raises(ValueError, match="CoronaryMatcherConfig.foundation"):
        CoronaryMatcherConfig(foundation="resnet:/x")
    out = tmp_path / "never"
    result = runner.invoke(
        app, ["train", "coronary-matcher", "--data", str(data), "--out", str(out), "bogus=1"]
    )
    assert result.exit_code == 1 and "allowed keys" in result.output and "channels" in result.output
    assert not out.exists()
    result = runner.invoke(
        app, ["train", "coronary-matcher", "--data", str(data), "--out", str(out), *TINY, "cell=128",
              "channels=[8,8,8,8,8,8,8]"],
    )  # fmt: skip
    assert result.exit_code == 1 and "not a multiple of keypoint_net.cell=128" in result.output, result.output
    assert not out.exists()


def test_foreign_or_tampered_weights_are_refused(run: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.pt"
    torch.save({"format": "something-else", "state_dict": {}}, foreign)
    with pytest.raises(ValueError, match=r"foreign\.pt: not a coronary matcher weights file"):
        CoronaryMatcher.load(foreign)
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"junk\.pt: not a readable torch weights file"):
        CoronaryMatcher.load(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="model.json"):
        CoronaryMatcher.load(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "model.pt").write_bytes((copy / "model.pt").read_bytes() + b"\0")
    with pytest.raises(ValueError, match=r"model\.pt: sha256 .* differs from"):
        CoronaryMatcher.load(copy)


def test_training_with_a_foundation_model(data: Path, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "dino"
    cfg = transformers.Dinov2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, patch_size=8, image_size=64
    )
    transformers.Dinov2Model(cfg).save_pretrained(folder)
    out = tmp_path / "fm_run"
    args = [
        "train",
        "coronary-matcher",
        "--data",
        str(data),
        "--out",
        str(out),
        "--foundation",
        f"dinov2:{folder}",
    ]
    result = runner.invoke(app, [*args, *TINY, "steps=2", "foundation_top_k=2"])
    assert result.exit_code == 0, result.output
    entry = json.loads((out / "model.json").read_text())
    assert (
        entry["config"]["foundation"] == f"dinov2:{folder}"
        and entry["config"]["matcher"]["foundation_top_k"] == 2
    )
    assert "foundation model: dinov2 Dinov2Model" in entry["description"], entry["description"]
    weights = _weights(out / "model.pt")
    assert not any("embeddings" in k or "encoder.layer" in k for k in weights), "foundation weights saved"
    result = runner.invoke(app, [*args[:-1], str(tmp_path / "nowhere"), *TINY, "steps=2"])
    assert result.exit_code == 1 and "nowhere" in result.output, result.output


def test_match_size_maps_keypoints_back_to_the_input_pixels(run: Path, data: Path) -> None:
    from xraycardiac.coronary.matching.train_matcher import MatcherTrainingPairs

    net = CoronaryMatcher.load(run)
    assert net.config.match_size_px == 64
    image = MatcherTrainingPairs(data, "all")[0]["image1"][0].numpy()
    ref = net.match(image, image).keypoints1  # native 64 px
    big = np.kron(image, np.ones((2, 2), np.float32))  # the same view at 128 px
    got = net.match(big, big).keypoints1
    assert len(got) > 5 and got.max() > 64, "keypoints are reported in the 128 px input's pixels"
    expected = 2 * (ref + 0.5) - 0.5
    d = np.linalg.norm(got[:, None] - expected[None], axis=-1).min(1)
    assert np.mean(d <= 2.0) >= 0.7, f"only {np.mean(d <= 2.0):.2f} of keypoints map back within 2 px"


def test_init_fine_tunes_from_another_matcher(run: Path, data: Path, tmp_path: Path) -> None:
    """--init copies the weights (one step at a negligible lr keeps them); other shapes are refused."""
    out = tmp_path / "finetuned"
    args = ["train", "coronary-matcher", "--data", str(data), "--out", str(out), "--init", str(run)]
    result = runner.invoke(app, [*args, *TINY, "steps=1", "lr=1e-12"])
    assert result.exit_code == 0, result.output
    tuned, start = _weights(out / "model.pt"), _weights(run / "model.pt")
    far = {k: float((tuned[k] - start[k]).abs().max()) for k in start if tuned[k].is_floating_point()}
    assert max(far.values()) < 1e-5, (
        f"fine-tuned weights moved from the init: {max(far.items(), key=lambda kv: kv[1])}"
    )
    entry = json.loads((out / "model.json").read_text())
    assert "initialised from" in entry["description"], entry["description"]
    fresh = tmp_path / "fresh"
    train_coronary_matcher(
        data, fresh, *parse_matcher_overrides([*TINY, "steps=1", "lr=1e-12"]), command="pytest"
    )
    assert any(not torch.allclose(_weights(fresh / "model.pt")[k], start[k]) for k in start), (
        "init had no effect"
    )
    other = parse_matcher_overrides([*TINY, "matcher.descriptor_dim=8", "steps=1"])
    with pytest.raises(ValueError, match=r"init=.*differ from the configured ones"):
        train_coronary_matcher(data, tmp_path / "other", *other, init=run)
    assert not (tmp_path / "other" / "model.pt").exists()
