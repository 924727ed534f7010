"""IDDPM loss and sampling on MONAI schedulers, and the shared trainer (exact resume, overrides)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from xraycardiac.diffusion import (
    discretized_gaussian_nll,
    hybrid_loss,
    initial_noise,
    learned_range_variance,
    normal_kl,
    sample,
)
from xraycardiac.trainer import TrainConfig, Trainer, batch_indices, crop_batch, parse_overrides


def _oracle(scheduler, x0: torch.Tensor, v_value: float | None):
    """A 'network' that returns the exact noise of x_t relative to the fixed x0 (and a constant v)."""

    def net(inp: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        x_t = inp[:, : x0.shape[1]]
        ab = scheduler.alphas_cumprod[timesteps].float().reshape(-1, 1, 1, 1)
        eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
        if v_value is None:
            return eps
        return torch.cat([eps, torch.full_like(eps, v_value)], dim=1)

    return net


def test_normal_kl_matches_torch_distributions() -> None:
    m1, m2 = torch.tensor([0.3, -1.0]), torch.tensor([0.1, 0.5])
    lv1, lv2 = torch.tensor([-1.0, 0.2]), torch.tensor([0.5, -0.3])
    ours = normal_kl(m1, lv1, m2, lv2)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    )
    torch.testing.assert_close(ours, ref)
    assert float(normal_kl(m1, lv1, m1, lv1).abs().max()) < 1e-7


def test_discretized_gaussian_probabilities_sum_to_one_over_the_256_bins() -> None:
    bins = torch.linspace(-1, 1, 256)
    for mean, log_scale in ((0.2, -2.0), (-0.95, -4.0), (0.0, 0.5)):
        nll = discretized_gaussian_nll(bins, torch.tensor(mean), torch.tensor(log_scale), 2 / 255)
        total = float(torch.exp(-nll).sum())
        assert abs(total - 1.0) < 1e-4, f"mean {mean}, log_scale {log_scale}: probabilities sum to {total}"


def test_learned_variance_is_the_one_monai_ddpm_samples_with() -> None:
    """Our training loss's variance == DDPMScheduler._get_variance(t, v) (so training and sampling agree)."""
    sched = DDPMScheduler(num_train_timesteps=50, schedule="cosine", variance_type="learned_range")
    for t in (1, 17, 49):
        for v in (-1.0, -0.2, 0.7):
            expected = float(sched._get_variance(t, predicted_variance=torch.tensor(v)))
            ours, _ = learned_range_variance(sched, torch.tensor([t]), torch.full((1, 1, 2, 2), v))
            assert float((ours - expected).abs().max()) <= 1e-6 * expected, (
                t,
                v,
                ours.flatten()[0],
                expected,
            )


def test_hybrid_loss_vanishes_for_the_true_noise_and_posterior_variance() -> None:
    torch.manual_seed(0)
    sched = DDPMScheduler(num_train_timesteps=100, schedule="cosine", variance_type="learned_range")
    x0 = torch.round((torch.rand(16, 1, 8, 8) * 2 - 1) * 127.5) / 127.5
    gen = torch.Generator().manual_seed(1)
    exact, parts = hybrid_loss(_oracle(sched, x0, -1.0), sched, x0, None, gen)  # v = -1: beta_tilde_t
    gen = torch.Generator().manual_seed(1)
    wrong, wparts = hybrid_loss(_oracle(sched, x0, 1.0), sched, x0, None, gen)  # v = +1: beta_t
    print(f"oracle: loss {float(exact):.3g} {parts}; wrong variance: loss {float(wrong):.3g} {wparts}")
    assert parts["mse"] < 1e-8 and parts["vlb"] < 1e-4, parts
    assert wparts["vlb"] > 100 * max(parts["vlb"], 1e-6), (parts, wparts)


def test_sampling_with_an_oracle_denoiser_returns_its_target_ddim_and_ddpm() -> None:
    target = torch.linspace(-0.9, 0.9, 64).reshape(1, 1, 8, 8)
    for sched in (
        DDIMScheduler(num_train_timesteps=100, schedule="cosine"),
        DDPMScheduler(num_train_timesteps=100, schedule="cosine", variance_type="learned_range"),
    ):
        sched.set_timesteps(20 if isinstance(sched, DDIMScheduler) else 100)
        gen = torch.Generator().manual_seed(0)
        out = sample(
            _oracle(sched, target, 0.0), sched, initial_noise((1, 1, 8, 8), gen, "cpu"), generator=gen
        )
        err = float((out - target).abs().max())
        assert err < 1e-4, f"{type(sched).__name__}: max error {err}"


# ----------------------------------------------------------------------------------------- trainer


def test_batch_indices_cover_each_epoch_once_and_are_pure() -> None:
    n, bs = 10, 4
    seen = np.concatenate([batch_indices(s, bs, n, seed=3) for s in range(5)])  # 20 = two epochs
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    np.testing.assert_array_equal(batch_indices(2, bs, n, 3), batch_indices(2, bs, n, 3))
    assert not np.array_equal(batch_indices(0, bs, n, 3), batch_indices(0, bs, n, 4))
    with pytest.raises(ValueError, match="empty"):
        batch_indices(0, 4, 0, 0)


class _Toy(torch.utils.data.Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(12, 3, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5]])

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


def _toy_loss(model, batch, gen):
    noise = 0.01 * torch.randn(batch["y"].shape, generator=gen)
    loss = (model(batch["x"]) - batch["y"] - noise).pow(2).mean()
    return loss, {"mse": float(loss.detach())}


def _trainer(out: Path, steps: int, **kw) -> Trainer:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    cfg = TrainConfig(steps=steps, batch_size=4, lr=0.05, warmup_steps=2, ema_decay=0.9, device="cpu",
                      log_every=1, checkpoint_every=100, **kw)  # fmt: skip
    return Trainer(model, _toy_loss, _Toy(), cfg, out, {"kind": "toy"})


def test_resumed_training_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    straight = _trainer(tmp_path / "a", 8)
    straight.fit()
    first = _trainer(tmp_path / "b", 4)
    first.fit()
    resumed = _trainer(tmp_path / "b", 8)
    summary = resumed.fit()
    assert summary["resumed_from"] == 4 and summary["steps_run"] == 4
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(
        straight.averaged_model().parameters(), resumed.averaged_model().parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    log = (tmp_path / "b" / "log.jsonl").read_text().splitlines()
    assert len(log) == 8, log
    assert straight.fit()["steps_run"] == 0  # already at its last step


def test_training_reduces_the_loss_and_resume_rejects_other_settings(tmp_path: Path) -> None:
    t = _trainer(tmp_path, 40)
    t.fit()
    import json

    losses = [json.loads(line)["loss"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.05 * losses[0], f"loss {losses[0]:.3g} -> {losses[-1]:.3g}"
    torch.manual_seed(0)
    other = Trainer(
        torch.nn.Linear(3, 1), _toy_loss, _Toy(),
        TrainConfig(steps=50, batch_size=4, lr=0.01, device="cpu"), tmp_path, {"kind": "toy"},
    )  # fmt: skip
    with pytest.raises(
        ValueError, match=r"another training config \(differs in \['ema_decay', 'lr', 'warmup_steps'\]"
    ):
        other.fit()
    with pytest.raises(FileExistsError, match="checkpoint.pt exists"):
        _trainer(tmp_path, 50).fit(resume=False)


def test_parse_overrides_types_and_unknown_keys() -> None:
    cfg, = parse_overrides(["steps=12", "lr=1e-3", "device=cpu", "amp=false"], TrainConfig())  # fmt: skip
    assert (cfg.steps, cfg.lr, cfg.device, cfg.amp) == (12, 1e-3, "cpu", False)
    with pytest.raises(ValueError, match="unknown key 'stepz'.*allowed keys: .*steps"):
        parse_overrides(["stepz=3"], TrainConfig())
    with pytest.raises(ValueError, match="expected key=value"):
        parse_overrides(["steps"], TrainConfig())
    with pytest.raises(ValueError, match=r"TrainConfig.steps: expected an integer >= 1, got 0"):
        parse_overrides(["steps=0"], TrainConfig())


def test_crop_batch_cuts_one_block_from_every_volume() -> None:
    g = 12
    ramp = torch.arange(g**3, dtype=torch.float32).reshape(g, g, g)
    batch = {"image": ramp[None, None].repeat(2, 1, 1, 1, 1), "mask": ramp[None].repeat(2, 1, 1, 1).long(),
             "ddf": ramp[None, None].repeat(2, 3, 1, 1, 1), "views": torch.zeros(2, 2, 7, 7), "id": "x"}  # fmt: skip
    a = crop_batch(batch, 5, torch.Generator().manual_seed(3), g)
    b = crop_batch(batch, 5, torch.Generator().manual_seed(3), g)
    assert a["image"].shape == (2, 1, 5, 5, 5) and a["mask"].shape == (2, 5, 5, 5)
    assert a["ddf"].shape == (2, 3, 5, 5, 5) and a["views"] is batch["views"] and a["id"] == "x"
    corner = int(a["image"][0, 0, 0, 0, 0])
    k, j, i = corner // g**2, corner // g % g, corner % g
    print(f"block corner (k, j, i) = {(k, j, i)}")
    assert torch.equal(a["image"][0, 0], ramp[k : k + 5, j : j + 5, i : i + 5])  # a contiguous block
    assert torch.equal(a["mask"][1], a["image"][1, 0].long()) and torch.equal(
        a["ddf"][0, 2], a["image"][0, 0]
    )
    assert torch.equal(a["image"], b["image"]), "the block must be a function of the generator"
    corners = {int(crop_batch(batch, 5, torch.Generator().manual_seed(s), g)["image"][0, 0, 0, 0, 0])
               for s in range(20)}  # fmt: skip
    assert len(corners) > 10, f"only {len(corners)} distinct corners in 20 draws"
    assert crop_batch(batch, g, torch.Generator(), g)["image"] is batch["image"]
    with pytest.raises(ValueError, match="train_crop_vox: expected 1 .. 12"):
        crop_batch(batch, 13, torch.Generator(), g)
