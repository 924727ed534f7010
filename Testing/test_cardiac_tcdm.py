"""TCDM (template-conditioned cardiac CT diffusion): loss, conditioning, sampling, weights, training."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from xraycardiac.cardiac.tcdm import (
    TCDMConfig,
    build_tcdm,
    encode_condition,
    load_tcdm,
    sample_tcdm,
    save_tcdm,
    tcdm_loss,
    template_consistency,
    warp,
)
from xraycardiac.cardiac.tcdm_train import make_self_template, random_deformation, train_cardiac_tcdm

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = TCDMConfig(
    n_classes=3, grid=16, channels=(8, 16), attention_levels=(False, False), num_train_timesteps=10
)
N = 16


def _case(shift: int = 0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A (1, 1, 16, 16, 16) image in [-1, 1] and its (1, 16, 16, 16) labels: a ball (1) and a box (2)."""
    k, j, i = torch.meshgrid(*(torch.arange(N, dtype=torch.float32),) * 3, indexing="ij")
    labels = torch.zeros((N, N, N), dtype=torch.long)
    labels[(k - 7 - shift) ** 2 + (j - 8) ** 2 + (i - 7) ** 2 <= 16] = 1
    labels[10 + shift : 13 + shift, 3:7, 9:13] = 2
    g = torch.Generator().manual_seed(seed)
    texture = torch.nn.functional.avg_pool3d(torch.randn(1, 1, N, N, N, generator=g), 3, 1, 1)[0, 0]
    image = torch.tensor([-0.6, 0.5, 0.1])[labels] + 0.15 * texture
    return image.clamp(-1, 1)[None, None], labels[None]


def _batch(config: TCDMConfig = TINY) -> dict[str, torch.Tensor]:
    image, labels = _case()
    t_image, t_labels = _case(shift=1, seed=1)
    ddf = torch.zeros((1, 3, N, N, N))
    ddf[:, 0] = 1.0  # target at k is the template at k + 1
    inv = -ddf
    return {"image": image, "mask": labels, "template_image": t_image, "template_mask": t_labels,
            "ddf": ddf, "inverse_ddf": inv}  # fmt: skip


def _randomise_output(unet: torch.nn.Module, seed: int = 0) -> None:
    """MONAI zero-initialises the last conv: give it weights so inputs reach the output."""
    torch.manual_seed(seed)
    for p in unet.out.parameters():
        torch.nn.init.normal_(p, std=0.1)


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="TCDMConfig.grid"):
        replace(TINY, grid=12, channels=(8, 16, 16, 16), attention_levels=(False,) * 4)
    with pytest.raises(ValueError, match="TCDMConfig.prediction_type"):
        replace(TINY, prediction_type="x0")
    with pytest.raises(ValueError, match="TCDMConfig.consistency_weight"):
        replace(TINY, consistency_weight=-1.0)
    for crop in (3, 18):  # TINY's two levels need a multiple of 2; 18 > grid 16
        with pytest.raises(ValueError, match="TCDMConfig.train_crop_vox"):
            replace(TINY, train_crop_vox=crop)
    assert TCDMConfig().n_classes == 11 and TCDMConfig().in_channels == 1 + 11 + 1 + 11  # 10: undivided heart
    with pytest.raises(ValueError, match="TCDMConfig.label_merge_prob"):
        replace(TINY, label_merge_prob=1.5)
    # a config written before random label merging existed (cardiac-tcdm-demo 0.2.0) was trained without it
    old = {k: v for k, v in TCDMConfig(n_classes=10).to_dict().items() if k != "label_merge_prob"}
    assert TCDMConfig.from_dict(old).label_merge_prob == 0.0


def test_random_label_merging_is_one_heart_in_mask_and_template() -> None:
    """label_merge_prob: per case, chambers + myocardium -> the heart label 10 in mask and template alike,
    the coronaries merged into it in some cases and kept in others; unmerged cases untouched."""
    from xraycardiac.cardiac.tcdm_train import merge_labels

    cfg = TCDMConfig(n_classes=11, label_merge_prob=1.0)
    labels = torch.arange(10).repeat_interleave(10)[None].repeat(32, 1).view(32, 10, 10, 1)
    batch = {"mask": labels, "template_mask": labels.flip(1), "image": torch.zeros(32, 1, 10, 10, 1)}
    out = merge_labels(batch, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(out["image"], batch["image"])
    for m, t in zip(out["mask"], out["template_mask"], strict=True):
        assert sorted(set(m.unique().tolist())) == sorted(set(t.unique().tolist()))
        assert not set(m.unique().tolist()) & {1, 2, 3, 4, 5} and {0, 6, 7, 10} <= set(m.unique().tolist())
    kept = [bool((m == 8).any()) for m in out["mask"]]
    assert 0 < sum(kept) < len(kept), kept  # coronaries merged or not
    half = merge_labels(batch, replace(cfg, label_merge_prob=0.5), torch.Generator().manual_seed(1))["mask"]
    merged = [bool((m == 10).any()) for m in half]
    assert 0 < sum(merged) < len(merged)
    assert all(torch.equal(m, labels[0]) for m, x in zip(half, merged, strict=True) if not x)
    for quiet in (TCDMConfig(n_classes=10), replace(cfg, label_merge_prob=0.0)):
        assert merge_labels(batch, quiet, torch.Generator())["mask"] is batch["mask"]


def test_structure_hu_jitter_shifts_each_structure_by_one_offset() -> None:
    from xraycardiac.cardiac.tcdm_train import jitter_structures

    image, labels = _case()
    cfg = replace(TINY, structure_hu_jitter=50.0)
    out = jitter_structures({"image": image, "mask": labels}, cfg, torch.Generator().manual_seed(0))
    shift = (out["image"] - image)[0, 0] * 1000.0  # [-1, 1] spans 2000 HU
    inside = (image[0, 0] > -0.99) & (image[0, 0] < 0.99)
    offsets = [shift[(labels[0] == v) & inside] for v in range(3)]
    assert all(float(o.std()) < 1e-3 for o in offsets)
    assert (
        len({round(float(o.mean()), 2) for o in offsets}) == 3
        and max(abs(float(o.mean())) for o in offsets) > 5
    )


def test_widening_to_more_classes_keeps_the_old_models_first_layer() -> None:
    """init from a model of fewer classes: the added one-hot channels are inserted, and for voxels of the
    old classes the first convolution gives the old model's activations (inside the padding border)."""
    from xraycardiac.cardiac.tcdm_train import widen_classes

    torch.manual_seed(0)
    old = build_tcdm(TINY)[0]
    wide_cfg = replace(TINY, n_classes=4)
    wide = build_tcdm(wide_cfg)[0]
    wide.load_state_dict(widen_classes(old.state_dict(), TINY, wide_cfg))
    image, labels = _case()
    x = torch.randn(1, 1, N, N, N)
    a = old.conv_in(torch.cat([x, encode_condition(TINY, labels, image, labels)], 1))
    b = wide.conv_in(torch.cat([x, encode_condition(wide_cfg, labels, image, labels)], 1))
    assert torch.allclose(a[..., 1:-1, 1:-1, 1:-1], b[..., 1:-1, 1:-1, 1:-1], atol=1e-5)
    heart = labels.clone()
    heart[labels == 1] = 3  # the new class starts as the mean of the known heart structures
    c = wide.conv_in(torch.cat([x, encode_condition(wide_cfg, heart, image, heart)], 1))
    assert torch.isfinite(c).all() and not torch.allclose(c, b)
    with pytest.raises(ValueError, match="init: .*differing \\['channels'\\]"):
        widen_classes(old.state_dict(), TINY, replace(wide_cfg, channels=(8, 8)))


def test_loss_is_finite_and_decreases() -> None:
    torch.manual_seed(0)
    unet, scheduler = build_tcdm(TINY)
    opt = torch.optim.Adam(unet.parameters(), lr=3e-3)
    batch = _batch()
    losses, t0 = [], time.perf_counter()
    for step in range(30):
        loss, metrics = tcdm_loss(unet, scheduler, batch, torch.Generator().manual_seed(step))
        assert torch.isfinite(loss), (step, metrics)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    first, last = np.mean(losses[:6]), np.mean(losses[-6:])
    print(f"TCDM losses {np.round(losses, 3).tolist()} ({(time.perf_counter() - t0) / 30:.3f} s/step)")
    assert last < 0.6 * first, f"loss did not decrease: first 6 mean {first:.4f}, last 6 mean {last:.4f}"


def test_template_channels_reach_the_network() -> None:
    unet, _ = build_tcdm(TINY)
    _randomise_output(unet)
    batch = _batch()
    x = torch.randn((1, 1, N, N, N), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([5])

    def predict(cfg: TCDMConfig, net: torch.nn.Module, template_image: torch.Tensor) -> torch.Tensor:
        cond = encode_condition(cfg, batch["mask"], template_image, batch["template_mask"], batch["ddf"])
        with torch.no_grad():
            return net(torch.cat([x, cond], 1), timesteps=t)

    a = predict(TINY, unet, batch["template_image"])
    b = predict(TINY, unet, -batch["template_image"])
    assert float((a - b).abs().max()) > 1e-3, "changing the template did not change the prediction"

    mask_only = replace(TINY, use_template=False)
    net2, _ = build_tcdm(mask_only)
    _randomise_output(net2)
    assert mask_only.in_channels == 1 + 3 and TINY.in_channels == 1 + 3 + 1 + 3
    assert net2.conv_in.conv.in_channels == mask_only.in_channels
    a2 = predict(mask_only, net2, batch["template_image"])
    b2 = predict(mask_only, net2, -batch["template_image"])
    assert torch.equal(a2, b2), "use_template=False must ignore the template"
    l1, _ = tcdm_loss(net2, build_tcdm(mask_only)[1], batch, torch.Generator().manual_seed(3))
    other = {**batch, "template_image": torch.zeros_like(batch["template_image"])}
    l2, m2 = tcdm_loss(net2, build_tcdm(mask_only)[1], other, torch.Generator().manual_seed(3))
    assert float(l1.detach()) == float(l2.detach()) and m2["consistency"] == 0.0


def test_consistency_is_zero_for_the_true_deformation_only() -> None:
    template, t_labels = _case(shift=0, seed=2)
    shift = 2
    target = torch.roll(template, shifts=shift, dims=2)  # target(k) = template(k - 2)
    inv = torch.zeros((1, 3, N, N, N))
    inv[:, 0] = shift  # template point y sits at y + 2 in the target
    exact = template_consistency(target, template, t_labels, inv)
    wrong = template_consistency(target, template, t_labels, torch.zeros_like(inv))
    jitter = 0.1 * torch.randn(target.shape, generator=torch.Generator().manual_seed(0))
    noisy = template_consistency(target + jitter, template, t_labels, inv)
    print(f"consistency exact {float(exact):.2e}, wrong ddf {float(wrong):.4f}, noisy {float(noisy):.4f}")
    assert float(exact) < 1e-10
    assert float(wrong) > 1e-2 and float(noisy) > 5e-3
    # random diffeomorphism: the self-template is consistent with the case it came from
    gen = torch.Generator().manual_seed(0)
    st = make_self_template({"image": template, "mask": t_labels}, TINY, gen)
    t_img, t_lab, st_inv = st["template_image"], st["template_mask"], st["inverse_ddf"]
    assert float(template_consistency(template, t_img, t_lab, st_inv)) < 1e-12
    assert float(template_consistency(-template, t_img, t_lab, st_inv)) > 0.1


def test_loss_reports_consistency_only_with_an_inverse_ddf() -> None:
    unet, scheduler = build_tcdm(replace(TINY, consistency_weight=1.0))
    _randomise_output(unet)
    batch = _batch()
    _, with_inv = tcdm_loss(unet, scheduler, batch, torch.Generator().manual_seed(0))
    without = {k: v for k, v in batch.items() if k != "inverse_ddf"}
    _, no_inv = tcdm_loss(unet, scheduler, without, torch.Generator().manual_seed(0))
    assert with_inv["consistency"] > 0 and no_inv["consistency"] == 0.0, (with_inv, no_inv)
    assert with_inv["mse"] == no_inv["mse"]


def test_random_deformation_inverse_and_determinism() -> None:
    ddf, inv = random_deformation((N, N, N), 2.0, 8, torch.Generator().manual_seed(1))
    again, _ = random_deformation((N, N, N), 2.0, 8, torch.Generator().manual_seed(1))
    assert torch.equal(ddf, again)
    composed = ddf + warp(inv, ddf)  # x + u(x) + u⁻(x + u(x)) - x
    inner = composed[:, :, 3:-3, 3:-3, 3:-3]
    print(
        f"max |ddf| {float(ddf.abs().max()):.2f} vox, max inverse residual {float(inner.abs().max()):.3f} vox"
    )
    assert 0.5 < float(ddf.norm(dim=1).max()) < 4.0
    assert float(inner.abs().max()) < 0.1


def test_sampling_is_deterministic_per_seed() -> None:
    unet, scheduler = build_tcdm(TINY)
    _randomise_output(unet)
    unet.eval()
    batch = _batch()
    cond = encode_condition(
        TINY, batch["mask"], batch["template_image"], batch["template_mask"], batch["ddf"]
    )
    a = sample_tcdm(unet, scheduler, cond, 5, torch.Generator().manual_seed(7))
    b = sample_tcdm(unet, scheduler, cond, 5, torch.Generator().manual_seed(7))
    c = sample_tcdm(unet, scheduler, cond, 5, torch.Generator().manual_seed(8))
    assert a.shape == (1, 1, N, N, N) and float(a.abs().max()) <= 1.0
    assert torch.equal(a, b)
    assert float((a - c).abs().max()) > 1e-3
    noise = torch.randn((1, 1, N, N, N), generator=torch.Generator().manual_seed(7))
    assert torch.equal(sample_tcdm(unet, scheduler, cond, 5, noise=noise), a)
    with pytest.raises(ValueError, match="steps"):
        sample_tcdm(unet, scheduler, cond, 11, noise=noise)
    with pytest.raises(ValueError, match="cond"):
        sample_tcdm(unet, scheduler, cond[:, :4], 5, noise=noise)


def test_save_load_round_trip_and_refusals(tmp_path: Path) -> None:
    from xraycardiac.trainer import write_model_package

    unet, scheduler = build_tcdm(TINY)
    _randomise_output(unet)
    path = save_tcdm(unet, tmp_path / "model.pt")
    loaded, info = load_tcdm(path, expected_config=TINY)
    assert loaded.config == TINY and info["file"] == str(path)
    x = torch.randn((1, TINY.in_channels, N, N, N))
    with torch.no_grad():
        assert torch.equal(
            unet.eval()(x, timesteps=torch.tensor([3])), loaded(x, timesteps=torch.tensor([3]))
        )

    with pytest.raises(ValueError, match="consistency_weight"):
        load_tcdm(path, expected_config=replace(TINY, consistency_weight=0.5))
    data = torch.load(path, weights_only=True)
    edited = {**data, "config": {**data["config"], "consistency_weight": 0.5}}
    torch.save(edited, tmp_path / "edited_config.pt")
    with pytest.raises(ValueError, match="sha256"):
        load_tcdm(tmp_path / "edited_config.pt")
    state = dict(data["state_dict"])
    key = next(iter(state))
    state[key] = state[key] + 1e-3
    torch.save({**data, "state_dict": state}, tmp_path / "edited_tensor.pt")
    with pytest.raises(ValueError, match="sha256"):
        load_tcdm(tmp_path / "edited_tensor.pt")
    torch.save({**data, "format": "xraycardiac.angio_diffusion"}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a TCDM weights file"):
        load_tcdm(tmp_path / "foreign.pt")

    write_model_package(tmp_path, path, name="t", version="0", training_data="none", config=TINY.to_dict(),
                        description="test", command="test")  # fmt: skip
    assert load_tcdm(tmp_path)[1]["model"] == "t"
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(ValueError, match="sha256"):
        load_tcdm(tmp_path)


def test_bad_inputs_name_the_parameter() -> None:
    batch = _batch()
    bad = batch["mask"].clone()
    bad[0, 0, 0, 0] = 3
    with pytest.raises(ValueError, match=r"mask: label values must be in 0\.\.2"):
        encode_condition(TINY, bad, batch["template_image"], batch["template_mask"])
    with pytest.raises(ValueError, match="template_image"):
        encode_condition(TINY, batch["mask"], batch["template_image"][..., :8], batch["template_mask"])
    with pytest.raises(ValueError, match="mask: .*empty"):
        encode_condition(
            TINY, torch.zeros_like(batch["mask"]), batch["template_image"], batch["template_mask"]
        )
    with pytest.raises(ValueError, match="template_mask: .*empty"):
        encode_condition(TINY, batch["mask"], batch["template_image"], torch.zeros_like(batch["mask"]))
    with pytest.raises(ValueError, match="template_image/template_mask"):
        encode_condition(TINY, batch["mask"])
    with pytest.raises(ValueError, match="ddf"):
        encode_condition(
            TINY, batch["mask"], batch["template_image"], batch["template_mask"], batch["ddf"][:, :2]
        )


def test_train_cardiac_tcdm_writes_a_loadable_package(tmp_path: Path) -> None:
    from xraycardiac.io import write_volume
    from xraycardiac.volume import Volume

    data = tmp_path / "data"
    for sub in ("images", "labels"):
        (data / sub).mkdir(parents=True)
    for n in range(2):
        image, labels = _case(shift=n, seed=n)
        hu = (image[0, 0].numpy() + 1.0) / 2.0 * 2000.0 - 1000.0
        affine = np.diag([2.0, 2.0, 2.0, 1.0])
        write_volume(Volume(hu.astype(np.float32), affine), data / "images" / f"case{n}.nii.gz")
        write_volume(Volume(labels[0].numpy().astype(np.uint8), affine), data / "labels" / f"case{n}.nii.gz")
    overrides = ["grid=16", "channels=[8,16]", "n_classes=3",
                 "num_train_timesteps=10", "steps=3", "batch_size=2", "log_every=1", "device=cpu",
                 "warmup_steps=0", "ema_decay=0.5"]  # fmt: skip
    t0 = time.perf_counter()
    summary = train_cardiac_tcdm(data, tmp_path / "run", overrides=overrides, command="test")
    print(f"3 training steps at 16^3, batch 2: {time.perf_counter() - t0:.2f} s; {summary['last_log']}")
    assert summary["step"] == 3 and np.isfinite(summary["last_log"]["loss"])
    assert summary["last_log"]["consistency"] > 0  # self-templates carry their inverse deformation
    net, info = load_tcdm(tmp_path / "run")
    assert (
        net.config.grid == 16
        and json.loads((tmp_path / "run" / "model.json").read_text())["name"] == info["model"]
    )
    wide = train_cardiac_tcdm(data, tmp_path / "wide", overrides=[*overrides, "n_classes=4", "steps=1"],
                              init=tmp_path / "run")  # fmt: skip
    assert (
        load_tcdm(tmp_path / "wide")[0].config.n_classes == 4
        and "started from" in wide["entry"]["description"]
    )
    block = train_cardiac_tcdm(
        data, tmp_path / "block", overrides=[*overrides, "train_crop_vox=8", "steps=1"]
    )
    print(f"1 step on 8^3 blocks: {block['last_log']}")
    assert np.isfinite(block["last_log"]["loss"]) and "random 8^3 blocks" in block["entry"]["description"]
    assert load_tcdm(tmp_path / "block")[0].config.train_crop_vox == 8
    bad = tmp_path / "bad"
    (bad / "images").mkdir(parents=True)
    (bad / "labels").mkdir()
    (bad / "images" / "x.nii.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="no label map"):
        train_cardiac_tcdm(bad, tmp_path / "run2", overrides=overrides)
