"""XRayToCT 3D KL autoencoder: shapes, loss, weights files, training command with resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from xraycardiac.train_cli import app as train_app
from xraycardiac.xray2ct.autoencoder import (
    X2CTAutoencoderConfig,
    autoencoder_loss,
    build_autoencoder,
    load_autoencoder,
    load_weights,
    save_weights,
    train_x2ct_autoencoder,
)
from xraycardiac.xray2ct.data import X2CTDataConfig, X2CTDataset, build_cache

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(grid=16, channels=(8, 8, 8), attention_levels=(False, False, False), norm_num_groups=4)
TINY_ARGS = ["grid=16", "channels=[8,8,8]", "attention_levels=[false,false,false]", "norm_num_groups=4"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three 16³ phantom cases (16 mm voxels), all in the split 'all'."""
    root = tmp_path_factory.mktemp("x2ct") / "cache"
    build_cache(["phantom:0-2"], root, X2CTDataConfig(grid=16, spacing_mm=16.0))
    return root


def _eval_output(model: torch.nn.Module, ct: torch.Tensor) -> torch.Tensor:
    """Deterministic reconstruction: decode the latent mean."""
    with torch.no_grad():
        mu, _ = model.eval().encode(ct)
        return model.decode(mu)


def test_config_errors_name_the_field_and_shapes() -> None:
    cfg = X2CTAutoencoderConfig(**TINY)
    assert cfg.downsample_factor == 4 and cfg.latent_shape == (4, 4, 4, 4)
    assert X2CTAutoencoderConfig().latent_shape == (4, 16, 16, 16)  # demo: 64³ -> 16³ (1/4)
    paper = X2CTAutoencoderConfig.preset("paper")
    assert paper.downsample_factor == 8 and paper.latent_shape == (4, 16, 16, 16)  # 128³ -> 16³ (1/8)
    for kwargs, field in (
        (dict(TINY, grid=18), "grid"),
        (dict(TINY, norm_num_groups=3), "norm_num_groups"),
        (dict(TINY, attention_levels=(False,)), "attention_levels"),
        (dict(TINY, channels=(8,), attention_levels=(False,)), "channels"),
        (dict(TINY, kl_weight=-1.0), "kl_weight"),
        (dict(TINY, latent_channels=0), "latent_channels"),
        (dict(TINY, train_crop_vox=6), "train_crop_vox"),  # not a multiple of the factor 4
        (dict(TINY, train_crop_vox=20), "train_crop_vox"),  # larger than the cube
    ):
        with pytest.raises(ValueError, match=rf"X2CTAutoencoderConfig\.{field}: expected"):
            X2CTAutoencoderConfig(**kwargs)
    model = build_autoencoder(cfg)
    recon, mu, sigma = model(torch.zeros(2, 1, 16, 16, 16), generator=torch.Generator().manual_seed(0))
    assert recon.shape == (2, 1, 16, 16, 16) and mu.shape == sigma.shape == (2, 4, 4, 4, 4)
    a, _, _ = model(torch.zeros(1, 1, 16, 16, 16), generator=torch.Generator().manual_seed(1))
    b, _, _ = model(torch.zeros(1, 1, 16, 16, 16), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b), "the reparameterisation noise must come from the generator"


def test_loss_decreases_on_one_phantom_case(cache: Path) -> None:
    cfg = X2CTAutoencoderConfig(**TINY)
    ct = X2CTDataset(cache, "all")[0]["ct"][None]
    torch.manual_seed(0)
    model = build_autoencoder(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    l1s = []
    for _ in range(30):
        loss, metrics = autoencoder_loss(model, ct, cfg.kl_weight, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        l1s.append(metrics["l1"])
    print("L1 over 30 steps:", " ".join(f"{v:.3f}" for v in l1s))
    first, last = sum(l1s[:3]) / 3, sum(l1s[-3:]) / 3
    assert last < 0.7 * first, f"L1 went from {first:.3f} to {last:.3f} in 30 steps"
    assert metrics["kl"] > 0.0


def test_weights_round_trip_tamper_and_config_checks(tmp_path: Path) -> None:
    cfg = X2CTAutoencoderConfig(**TINY)
    torch.manual_seed(0)
    model = build_autoencoder(cfg)
    x = torch.rand(1, 1, 16, 16, 16) * 2 - 1
    path = save_weights(model, cfg, tmp_path / "ae.pt", latent_scale=1.7, data_config={"grid": 16})
    loaded, loaded_cfg, extras = load_weights(path)
    assert loaded_cfg == cfg and extras == {"latent_scale": 1.7, "data_config": {"grid": 16}}
    assert torch.equal(_eval_output(model, x), _eval_output(loaded, x))
    half, _, _ = load_weights(save_weights(model, cfg, tmp_path / "half.pt", half=True))
    assert (_eval_output(model, x) - _eval_output(half, x)).abs().max() < 2e-2
    with pytest.raises(
        ValueError, match=r"weights of another autoencoder config.*'kl_weight': \(1e-06, 0.001\)"
    ):
        load_weights(path, expected_config=X2CTAutoencoderConfig(**TINY, kl_weight=1e-3))
    data = torch.load(path, weights_only=True)
    key = next(iter(data["state_dict"]))
    data["state_dict"][key] = data["state_dict"][key] + 0.01
    torch.save(data, tmp_path / "tampered.pt")
    with pytest.raises(ValueError, match="tampered.pt: the weights fail their sha256 digest"):
        load_weights(tmp_path / "tampered.pt")
    (tmp_path / "junk.pt").write_bytes(b"not torch")
    with pytest.raises(ValueError, match="junk.pt: not a readable torch weights file"):
        load_weights(tmp_path / "junk.pt")
    torch.save({"format": "xraycardiac.angio_diffusion"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not an X2CT autoencoder weights file"):
        load_weights(tmp_path / "other.pt")


def test_train_command_writes_a_package_and_resumes(
    cache: Path, tmp_path: Path, xraycardiac_home: Path
) -> None:
    runner = CliRunner()
    out = tmp_path / "run"
    base = ["x2ct-autoencoder", "--data", str(cache), "--out", str(out), "--split", "all", *TINY_ARGS,
            "batch_size=1", "device=cpu", "log_every=1", "warmup_steps=1", "checkpoint_every=2"]  # fmt: skip
    first = runner.invoke(train_app, [*base, "steps=3"])
    assert first.exit_code == 0, first.output
    entry = json.loads((out / "model.json").read_text())
    from xraycardiac.models import sha256_file

    assert entry["name"] == "x2ct-autoencoder" and entry["sha256"] == sha256_file(out / "model.pt")
    assert entry["config"]["latent_scale"] > 0 and entry["config"]["data_config"]["grid"] == 16
    model, cfg, extras = load_autoencoder(out)
    assert cfg == X2CTAutoencoderConfig(**TINY) and extras["latent_scale"] == entry["config"]["latent_scale"]
    assert extras["source"]["sha256"] == entry["sha256"]
    from xraycardiac.models import import_model

    import_model(out)
    assert load_autoencoder("x2ct-autoencoder")[2]["source"]["sha256"] == entry["sha256"]
    second = runner.invoke(train_app, [*base, "steps=5"])
    assert second.exit_code == 0, second.output
    assert "trained to step 5 (2 now" in second.output
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 5
    # a package whose weights changed after model.json was written is refused
    (out / "model.pt").write_bytes((out / "model.pt").read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ValueError, match=r"model.pt: sha256 .* differs from .*model.json"):
        load_autoencoder(out)
    wrong = runner.invoke(train_app, ["x2ct-autoencoder", "--data", str(cache), "--out", str(tmp_path / "w"),
                                      "grid=32", "channels=[8,8,8]", "steps=1"])  # fmt: skip
    assert wrong.exit_code == 1 and "grid: the model's grid 32 differs from the cache's 16" in wrong.output


def test_block_training_reaches_the_loss_and_the_whole_cube_still_encodes(
    cache: Path, tmp_path: Path
) -> None:
    args = [*TINY_ARGS, "batch_size=1", "device=cpu", "log_every=1", "warmup_steps=1", "steps=1"]
    whole = train_x2ct_autoencoder(cache, tmp_path / "whole", overrides=args, split="all", command="test")
    block = train_x2ct_autoencoder(
        cache, tmp_path / "block", overrides=[*args, "train_crop_vox=8"], split="all", command="test"
    )
    l1_whole, l1_block = whole["last_log"]["l1"], block["last_log"]["l1"]
    print(f"step-1 L1: whole 16^3 cube {l1_whole:.5f}, 8^3 block {l1_block:.5f}")
    assert l1_whole != pytest.approx(l1_block, rel=1e-6), "the block must reach the loss"
    assert "random 8^3 blocks" in block["entry"]["description"]
    model, cfg, _ = load_autoencoder(tmp_path / "block")
    assert cfg.train_crop_vox == 8
    mu, _ = model.encode(X2CTDataset(cache, "all")[0]["ct"][None])
    assert mu.shape == (1, 4, 4, 4, 4)
