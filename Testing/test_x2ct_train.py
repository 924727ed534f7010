"""XRayToCT stages 2 and 3 on the shared trainer (encoder, LDM: commands, exact resume) and the x2ct bundle."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from xraycardiac.cli import app
from xraycardiac.models import sha256_file
from xraycardiac.train_cli import app as train_app
from xraycardiac.xray2ct.autoencoder import train_x2ct_autoencoder
from xraycardiac.xray2ct.bundle import load_bundle, write_bundle
from xraycardiac.xray2ct.data import X2CTDataConfig, build_cache
from xraycardiac.xray2ct.encoder import XRayEncoder, XRayEncoderConfig, save_encoder
from xraycardiac.xray2ct.train import apply_overrides, train_x2ct_encoder, train_x2ct_ldm

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = ["batch_size=2", "device=cpu", "log_every=1", "warmup_steps=1", "checkpoint_every=1"]
AE_ARGS = ["grid=16", "channels=[8,8,8]", "norm_num_groups=4"]
ENC_ARGS = ["cnn_channels=[8,8]", "unet_channels=[8,8]", "feature_channels=4"]
LDM_ARGS = [
    "channels=[8,16]",
    "attention_levels=[false,false]",
    "num_train_timesteps=10",
    "inference_steps=5",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 4-phantom 16³ cache and 3-step autoencoder, encoder and LDM runs made from it."""
    t0 = time.perf_counter()
    root = tmp_path_factory.mktemp("x2ct_train")
    build_cache(["phantom:0-3"], root / "cache", X2CTDataConfig(grid=16, spacing_mm=16.0))
    kw = dict(split="all", command="test")
    train_x2ct_autoencoder(root / "cache", root / "ae", overrides=[*AE_ARGS, *FAST, "steps=3"], **kw)
    train_x2ct_encoder(
        root / "cache", root / "enc", root / "ae", overrides=[*ENC_ARGS, *FAST, "steps=3"], **kw
    )
    train_x2ct_ldm(root / "cache", root / "ldm", root / "ae", root / "enc",
                   overrides=[*LDM_ARGS, *FAST, "steps=3"], **kw)  # fmt: skip
    print(f"fixture: cache + 3 tiny runs in {time.perf_counter() - t0:.1f} s")
    return {
        "root": root,
        "cache": root / "cache",
        "ae": root / "ae",
        "enc": root / "enc",
        "ldm": root / "ldm",
    }


def _flat(text: str) -> str:
    """Command output with rich's line wrapping undone."""
    return " ".join(text.split())


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_encoder_command_resumes_exactly_and_reaches_the_ablation(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    runner = CliRunner()
    base = ["x2ct-encoder", "--data", str(runs["cache"]), "--autoencoder", str(runs["ae"]), "--split", "all",
            *ENC_ARGS, *FAST]  # fmt: skip
    t0 = time.perf_counter()
    first = runner.invoke(train_app, [*base, "--out", str(tmp_path / "a"), "steps=2"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(train_app, [*base, "--out", str(tmp_path / "a"), "steps=3"])
    assert again.exit_code == 0 and "trained to step 3 (1 now" in again.output, again.output
    straight = runner.invoke(train_app, [*base, "--out", str(tmp_path / "b"), "steps=3"])
    assert straight.exit_code == 0, straight.output
    print(f"encoder: 2 + 1 and 3 steps in {time.perf_counter() - t0:.1f} s")
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    worst = max(float((a["model"][k].float() - b["model"][k].float()).abs().max()) for k in a["model"])
    print(f"resumed vs uninterrupted encoder weights: max |diff| {worst:.3g}")
    assert worst == 0.0 and [r["step"] for r in _log(tmp_path / "a")] == [1, 2, 3]
    entry = json.loads((tmp_path / "a" / "model.json").read_text())
    assert entry["sha256"] == sha256_file(tmp_path / "a" / "model.pt")
    assert entry["config"]["autoencoder_sha256"] == sha256_file(runs["ae"] / "model.pt")
    assert entry["config"]["views"] == ["pa", "lateral"] and entry["config"]["n_views"] == 2
    assert (
        entry["config"]["latent_factor"] == 4 and entry["config"]["view_size"] == 16
    )  # derived from AE/cache
    # contrastive_weight=0 (CLS-DM without contrastive alignment) reaches the loss: loss = mse + reconstruction
    abl = runner.invoke(train_app, [*base, "--out", str(tmp_path / "abl"), "steps=1", "contrastive_weight=0"])
    assert abl.exit_code == 0, abl.output
    row = _log(tmp_path / "abl")[0]
    print(f"ablation step 1: loss {row['loss']:.5f}, mse {row['mse']:.5f} + rec {row['reconstruction']:.5f} "
          f"(InfoNCE {row['contrastive']:.3f} logged, not optimised)")  # fmt: skip
    assert row["loss"] == pytest.approx(row["mse"] + row["reconstruction"], rel=1e-5)
    assert row["contrastive"] > 0.1
    abl_entry = json.loads((tmp_path / "abl" / "model.json").read_text())
    assert (
        abl_entry["config"]["contrastive_weight"] == 0
        and "no contrastive alignment" in abl_entry["description"]
    )
    unknown = runner.invoke(train_app, [*base, "--out", str(tmp_path / "u"), "contrastive=0"])
    assert unknown.exit_code == 1 and "unknown key 'contrastive'" in _flat(unknown.output)
    bad = runner.invoke(train_app, [*base, "--out", str(tmp_path / "g"), "grid=32", "steps=1"])
    assert bad.exit_code == 1 and "XRayEncoderConfig.grid is 32 but the autoencoder's grid is 16" in _flat(
        bad.output
    )
    assert not (tmp_path / "g").exists()


def test_ldm_command_trains_resumes_and_checks_its_parts(runs: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "ldm"
    base = ["x2ct-ldm", "--data", str(runs["cache"]), "--out", str(out), "--autoencoder", str(runs["ae"]),
            "--encoder", str(runs["enc"]), "--split", "all", *LDM_ARGS, *FAST]  # fmt: skip
    t0 = time.perf_counter()
    first = runner.invoke(train_app, [*base, "steps=2"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(train_app, [*base, "steps=3"])
    assert again.exit_code == 0 and "trained to step 3 (1 now" in again.output, again.output
    print(f"ldm: 2 + 1 steps in {time.perf_counter() - t0:.1f} s; last {_log(out)[-1]}")
    assert [r["step"] for r in _log(out)] == [1, 2, 3] and all(r["mse"] > 0 for r in _log(out))
    entry = json.loads((out / "model.json").read_text())
    assert entry["config"]["encoder_sha256"] == sha256_file(runs["enc"] / "model.pt")
    assert entry["config"]["cond_channels"] == 4 and entry["config"]["global_embedding"] is False
    # resuming with other frozen parts is refused (the checkpoint records their sha256)
    enc3 = tmp_path / "enc3.pt"
    save_encoder(XRayEncoder(XRayEncoderConfig(view_size=16, grid=16, cnn_channels=(8, 8), unet_channels=(8, 8),
                                               feature_channels=4)), enc3)  # fmt: skip
    refused = runner.invoke(train_app, [*base, "steps=5", "--encoder", str(enc3)])
    assert refused.exit_code == 1 and "encoder_sha256" in _flat(refused.output), refused.output
    # an encoder whose latent does not fit the autoencoder's
    wide = tmp_path / "wide.pt"
    save_encoder(XRayEncoder(XRayEncoderConfig(view_size=16, grid=16, cnn_channels=(8, 8), unet_channels=(8, 8),
                                               feature_channels=4, latent_channels=8)), wide)  # fmt: skip
    bad = runner.invoke(train_app, [*base[:2], str(runs["cache"]), "--out", str(tmp_path / "w"), "--autoencoder",
                                    str(runs["ae"]), "--encoder", str(wide), "steps=1"])  # fmt: skip
    assert (
        bad.exit_code == 1
        and "does not fit" in _flat(bad.output)
        and "latent_channels is 8" in _flat(bad.output)
    )


def test_overrides_apply_together_and_reject_unknown_keys() -> None:
    from xraycardiac.trainer import TrainConfig
    from xraycardiac.xray2ct.ldm import X2CTLDMConfig

    ldm, train = apply_overrides(["channels=[8,16]", "attention_levels=[false,false]", "--lr=1e-3"],
                                 X2CTLDMConfig(), TrainConfig())  # fmt: skip
    assert ldm.channels == (8, 16) and ldm.attention_levels == (False, False) and train.lr == 1e-3
    with pytest.raises(ValueError, match="unknown key 'nope'"):
        apply_overrides(["nope=1"], X2CTLDMConfig(), TrainConfig())
    with pytest.raises(ValueError, match="expected key=value"):
        apply_overrides(["steps"], TrainConfig())


def test_bundle_round_trips_installs_and_refuses_bad_parts(
    runs: dict[str, Path], tmp_path: Path, xraycardiac_home: Path
) -> None:
    out = tmp_path / "tiny"
    cli = CliRunner().invoke(app, ["x2ct", "bundle", "--autoencoder", str(runs["ae"]), "--encoder",
                                   str(runs["enc"]), "--ldm", str(runs["ldm"]), "--out", str(out), "--name",
                                   "x2ct-tiny", "--install"])  # fmt: skip
    assert cli.exit_code == 0 and "biplanar x2ct model x2ct-tiny" in cli.output, cli.output
    info = json.loads((out / "bundle.json").read_text())
    shas = {
        p: sha256_file(runs[k] / "model.pt")
        for p, k in (("autoencoder", "ae"), ("encoder", "enc"), ("ldm", "ldm"))
    }
    assert {p: f["sha256"] for p, f in info["files"].items()} == shas
    assert (
        info["mode"] == "biplanar"
        and info["views"] == ["pa", "lateral"]
        and info["data_config"]["grid"] == 16
    )
    assert info["training"]["ldm"]["encoder_sha256"] == shas["encoder"] and info["latent_scale"] > 0
    assert info["training"]["encoder"]["training_command"] == "test"
    local, named = load_bundle(out), load_bundle("x2ct-tiny")
    assert local.source["sha256"] == named.source["sha256"] == shas and named.mode == "biplanar"
    assert named.source["folder"] != str(out) and named.view_size == 16
    for a, b in zip(local.ldm.state_dict().values(), named.ldm.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="model: .*no-such-model"):
        load_bundle("no-such-model")
    # a manifest entry whose version is not the one bundle.json was written with
    relabelled = tmp_path / "relabelled"
    shutil.copytree(out, relabelled)
    entry = json.loads((relabelled / "model.json").read_text())
    (relabelled / "model.json").write_text(json.dumps({**entry, "version": "9.9.9"}))
    with pytest.raises(ValueError, match=r"bundle.json: model_version '0.1.0' but .* says '9.9.9'"):
        load_bundle(relabelled)
    # a part whose config does not fit the others, at writing ...
    wide = tmp_path / "wide.pt"
    save_encoder(XRayEncoder(XRayEncoderConfig(view_size=16, grid=16, cnn_channels=(8, 8), unet_channels=(8, 8),
                                               feature_channels=4, latent_channels=8)), wide)  # fmt: skip
    with pytest.raises(ValueError, match=r"wide.pt: does not fit .*XRayEncoderConfig.latent_channels is 8"):
        write_bundle(tmp_path / "w", runs["ae"], wide, runs["ldm"])
    assert not (tmp_path / "w").exists()
    # ... a part trained with another encoder ...
    other = tmp_path / "enc_other"
    train_x2ct_encoder(runs["cache"], other, runs["ae"], overrides=[*ENC_ARGS, *FAST, "steps=1", "seed=1"],
                       split="all")  # fmt: skip
    with pytest.raises(ValueError, match=r"ldm was trained with another encoder \(encoder_sha256"):
        write_bundle(tmp_path / "w", runs["ae"], other, runs["ldm"])
    # ... and at loading: a modified file, a swapped file with consistent hashes, an edited bundle.json
    tampered = tmp_path / "tampered"
    shutil.copytree(out, tampered)
    data = (tampered / "ldm.pt").read_bytes()
    (tampered / "ldm.pt").write_bytes(data[:-16] + bytes(16))
    with pytest.raises(ValueError, match=r"ldm.pt: sha256 .* differs from bundle.json"):
        load_bundle(tampered)
    swapped = tmp_path / "swapped"
    shutil.copytree(out, swapped)
    shutil.copyfile(wide, swapped / "encoder.pt")
    meta = json.loads((swapped / "bundle.json").read_text())
    meta["files"]["encoder"]["sha256"] = sha256_file(wide)
    (swapped / "bundle.json").write_text(json.dumps(meta))
    entry = json.loads((swapped / "model.json").read_text())
    entry["sha256"] = sha256_file(swapped / "bundle.json")
    (swapped / "model.json").write_text(json.dumps(entry))
    with pytest.raises(
        ValueError, match=r"encoder.pt: does not fit .*latent_channels is 8 but the autoencoder's"
    ):
        load_bundle(swapped)
    edited = tmp_path / "edited"
    shutil.copytree(out, edited)
    (edited / "bundle.json").write_text(
        (edited / "bundle.json").read_text().replace('"biplanar"', '"single"')
    )
    with pytest.raises(ValueError, match=r"bundle.json: sha256 .* differs from .*model.json"):
        load_bundle(edited)
    refused = CliRunner().invoke(app, ["x2ct", "bundle", "--autoencoder", str(runs["ae"]), "--encoder", str(wide),
                                       "--ldm", str(runs["ldm"]), "--out", str(tmp_path / "cli_bad")])  # fmt: skip
    assert refused.exit_code == 1 and "latent_channels is 8" in _flat(refused.output)


def test_package_bundle_flattens_into_a_weights_folder_that_loads_by_name(
    runs: dict[str, Path], tmp_path: Path, xraycardiac_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped-weights layout: <name>.json + <name>.<part>.pt beside other models' files."""
    from xraycardiac.models import ModelEntry, manifest
    from xraycardiac.xray2ct.bundle import load_bundle, package_bundle, write_bundle

    write_bundle(tmp_path / "b", runs["ae"], runs["enc"], runs["ldm"], name="x2ct-flat")
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "encoder.pt").write_bytes(b"another model's file of the same plain name")
    entry = package_bundle(tmp_path / "b", weights, "x2ct-flat")
    assert sorted(p.name for p in weights.iterdir()) == [
        "encoder.pt",
        "x2ct-flat.autoencoder.pt",
        "x2ct-flat.encoder.pt",
        "x2ct-flat.json",
        "x2ct-flat.ldm.pt",
    ]
    (tmp_path / "manifest.json").write_text(json.dumps({"models": [ModelEntry.from_dict(entry).to_dict()]}))
    monkeypatch.setattr(manifest, "PACKAGED_MANIFEST", tmp_path / "manifest.json")
    monkeypatch.setattr(manifest, "PACKAGED_WEIGHTS_DIR", weights)
    loaded = load_bundle("x2ct-flat")
    assert loaded.mode == "biplanar" and loaded.data_config.grid == 16
    (weights / "x2ct-flat.ldm.pt").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="sha256"):
        load_bundle("x2ct-flat")


def test_latents_encoded_once_give_the_losses_of_encoding_every_step(runs: dict[str, Path]) -> None:
    from xraycardiac.xray2ct.autoencoder import load_autoencoder
    from xraycardiac.xray2ct.data import X2CTDataset
    from xraycardiac.xray2ct.encoder import load_encoder, make_encoder_loss_fn
    from xraycardiac.xray2ct.train import _WithLatents, cache_geometry

    dataset = X2CTDataset(runs["cache"], "all")
    ae, _, extras = load_autoencoder(runs["ae"])
    scale = extras["latent_scale"]

    def encode(ct: torch.Tensor) -> torch.Tensor:
        return ae.encode(ct)[0] * scale

    p, a, index = cache_geometry(dataset.config, ("pa", "lateral"))
    items = _WithLatents(dataset, index)
    items.encode(encode, torch.device("cpu"))
    enc = load_encoder(runs["enc"] / "model.pt")
    loss_fn = make_encoder_loss_fn(encode, enc.config, p, a)
    batch = torch.utils.data.default_collate([items[0], items[1]])
    with torch.no_grad():
        with_latent, _ = loss_fn(enc, {**batch, "views": batch["views"][:, index]}, torch.Generator())
        batch.pop("latent")
        every_step, _ = loss_fn(enc, {**batch, "views": batch["views"][:, index]}, torch.Generator())
    print(
        f"encoder loss: cached latents {float(with_latent):.6f}, encoded in the step {float(every_step):.6f}"
    )
    assert float(with_latent) == pytest.approx(float(every_step), rel=1e-5, abs=1e-6)
    assert torch.allclose(items[1]["latent"], encode(dataset[1]["ct"][None])[0], atol=1e-5)


def test_init_fine_tunes_from_given_weights_through_the_command(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    from xraycardiac.xray2ct.encoder import load_encoder
    from xraycardiac.xray2ct.ldm import load_ldm

    runner = CliRunner()
    still = [*FAST, "steps=1", "lr=1e-12", "ema_decay=0.5"]  # one step that cannot move the weights
    common = ["--data", str(runs["cache"]), "--autoencoder", str(runs["ae"]), "--split", "all"]
    enc = runner.invoke(train_app, ["x2ct-encoder", *common, "--out", str(tmp_path / "enc"), "--init",
                                    str(runs["enc"]), *ENC_ARGS, *still])  # fmt: skip
    assert enc.exit_code == 0, enc.output
    ldm = runner.invoke(train_app, ["x2ct-ldm", *common, "--out", str(tmp_path / "ldm"), "--encoder", str(runs["enc"]),
                                    "--init", str(runs["ldm"]), *LDM_ARGS, *still])  # fmt: skip
    assert ldm.exit_code == 0, ldm.output
    fresh = runner.invoke(train_app, ["x2ct-encoder", *common, "--out", str(tmp_path / "fresh"), *ENC_ARGS,
                                      *still, "seed=1"])  # fmt: skip
    assert fresh.exit_code == 0, fresh.output
    for part, load in (("enc", load_encoder), ("ldm", load_ldm)):
        start = load(runs[part] / "model.pt").state_dict()
        tuned = load(tmp_path / part / "model.pt").state_dict()
        assert all(torch.allclose(start[k].float(), tuned[k].float(), atol=1e-3) for k in start), part
        entry = json.loads((tmp_path / part / "model.json").read_text())
        assert entry["config"]["init_sha256"] == sha256_file(runs[part] / "model.pt")
    other = load_encoder(tmp_path / "fresh" / "model.pt").state_dict()
    start = load_encoder(runs["enc"] / "model.pt").state_dict()
    assert not all(torch.allclose(start[k].float(), other[k].float(), atol=1e-3) for k in start)
    wrong = runner.invoke(train_app, ["x2ct-encoder", *common, "--out", str(tmp_path / "w"), "--init",
                                      str(runs["ldm"]), *ENC_ARGS, *still])  # fmt: skip
    assert wrong.exit_code == 1
