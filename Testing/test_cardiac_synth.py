"""Synthetic cardiac datasets: MGM masks -> images -> confidence, sharded and resumable."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xraycardiac.cardiac.synth import CardiacSynthConfig, synthesize_dataset
from xraycardiac.cardiac.templates import template_from_phantom
from xraycardiac.io import read_volume


@pytest.fixture(scope="module")
def template():
    from xraycardiac.phantoms.cardiac import CardiacPhantomConfig

    return template_from_phantom(CardiacPhantomConfig(seed=0, shape_ijk=(40, 40, 40), spacing_mm=4.0))


def test_warp_dataset_layout_and_correspondence(template, tmp_path):
    out = tmp_path / "ds"
    summary = synthesize_dataset(template, out, CardiacSynthConfig(n=2, seed=5))
    assert summary["written"] == ["case_00000", "case_00001"]
    datalist = json.loads((out / "datalist.json").read_text())["training"]
    nnunet = json.loads((out / "dataset.json").read_text())
    assert nnunet["numTraining"] == 2 and nnunet["labels"]["background"] == 0
    assert set(nnunet["labels"].values()) == {0, *template.labels_present}
    for entry in datalist:
        image, label = read_volume(out / entry["image"]), read_volume(out / entry["label"])
        conf = read_volume(out / entry["confidence"])
        assert image.array.shape == label.array.shape == template.image.array.shape
        assert np.allclose(image.ijk_to_ras, template.image.ijk_to_ras, atol=1e-4)
        assert np.all(conf.array == 1.0)
        # the warped template's blood pool is still bright inside the deformed LV label
        lv = label.array == 1
        assert lv.sum() > 50
        assert image.array[lv].mean() > image.array[label.array == 0].mean() + 150
        # a real deformation: not the template's mask
        heart = (label.array > 0) | (template.labels.array > 0)
        changed = np.mean((label.array != template.labels.array)[heart])
        assert changed > 0.005, f"only {changed:.2%} of the heart's voxels changed label"
    a, b = (read_volume(out / e["label"]).array for e in datalist)
    assert np.any(a != b), "two cases drew the same deformation"


def test_shards_match_one_run_and_resume_skips(template, tmp_path):
    cfg = CardiacSynthConfig(n=3, seed=1)
    whole = synthesize_dataset(template, tmp_path / "a", cfg)
    s0 = synthesize_dataset(template, tmp_path / "b", cfg, shard=(0, 2))
    s1 = synthesize_dataset(template, tmp_path / "b", cfg, shard=(1, 2))
    assert s0["written"] == ["case_00000", "case_00002"] and s1["written"] == ["case_00001"]
    for name in whole["written"]:
        x = read_volume(tmp_path / "a" / "labelsTr" / f"{name}.nii.gz").array
        y = read_volume(tmp_path / "b" / "labelsTr" / f"{name}.nii.gz").array
        assert np.array_equal(x, y), name
    again = synthesize_dataset(template, tmp_path / "b", cfg)
    assert again["written"] == [] and len(again["skipped"]) == 3


def test_other_settings_in_the_same_folder_are_refused(template, tmp_path):
    synthesize_dataset(template, tmp_path, CardiacSynthConfig(n=1, seed=1))
    with pytest.raises(ValueError, match="other settings"):
        synthesize_dataset(template, tmp_path, CardiacSynthConfig(n=1, seed=2))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"n": 0}, "n"), ({"renderer": "gan"}, "renderer"), ({"renderer": "tcdm"}, "model"),
     ({"ssv_steps": (10,)}, "ssv_steps"), ({"hu_harmonise": "yes"}, "hu_harmonise")],
)  # fmt: skip
def test_bad_config_names_the_field(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CardiacSynthConfig(**kwargs)


def test_bad_shard(template, tmp_path):
    with pytest.raises(ValueError, match="shard"):
        synthesize_dataset(template, tmp_path, CardiacSynthConfig(n=1), shard=(2, 2))
    assert not any(tmp_path.iterdir())


def test_cli_synth_writes_resumes_and_names_bad_options(tmp_path):
    from typer.testing import CliRunner

    from xraycardiac.cli import app

    out = tmp_path / "synth"
    args = ["cardiac", "synth", "--out", str(out), "--n", "2", "--shard", "1/2", "--seed", "3"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "1 cases written" in first.output and (out / "labelsTr" / "case_00001.nii.gz").is_file()
    assert not (out / "labelsTr" / "case_00000.nii.gz").exists()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "0 cases written, 1 already complete" in again.output
    bad = CliRunner().invoke(app, ["cardiac", "synth", "--out", str(tmp_path / "x"), "--template", str(out)])
    assert bad.exit_code == 1 and "--template-mask" in bad.output
    bad = CliRunner().invoke(app, ["cardiac", "synth", "--out", str(tmp_path / "y"), "--ssv-steps", "a,b"])
    assert bad.exit_code == 1 and "--ssv-steps" in bad.output


def test_tcdm_renderer_writes_images_and_ssv_confidence(tmp_path, one_torch_thread):
    """An untrained tiny TCDM: the plumbing (grid, condition, SSV, files) is checked, not image quality."""
    import torch

    from xraycardiac.cardiac.tcdm import TCDMConfig, build_tcdm, save_tcdm
    from xraycardiac.phantoms.cardiac import CardiacPhantomConfig

    small = template_from_phantom(CardiacPhantomConfig(seed=0, shape_ijk=(32, 32, 32), spacing_mm=5.0))
    torch.manual_seed(0)
    cfg = TCDMConfig(grid=32, channels=(8, 8, 8), attention_levels=(False, False, False), norm_num_groups=4,
                     num_train_timesteps=20)  # fmt: skip
    weights = save_tcdm(build_tcdm(cfg)[0], tmp_path / "tcdm.pt")
    config = CardiacSynthConfig(n=1, seed=2, renderer="tcdm", model=str(weights), steps=2, ssv_steps=(2, 4),
                                device="cpu")  # fmt: skip
    out = tmp_path / "ds"
    events = []
    summary = synthesize_dataset(small, out, config, progress=lambda stage, f, **_: events.append((stage, f)))
    assert summary["written"] == ["case_00000"]
    # a long case is never silent: the MGM stage and every sampler step of every SSV run are reported
    stages = [s for s, _ in events]
    assert any("MGM" in s for s in stages) and any("run 2/2 (4 DDIM steps): step" in s for s in stages), (
        stages
    )
    fractions = [f for _, f in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0, fractions
    image = read_volume(out / "imagesTr" / "case_00000_0000.nii.gz").array
    conf = read_volume(out / "confidenceTr" / "case_00000.nii.gz").array
    assert image.shape == conf.shape == (32, 32, 32)
    lo, hi = min(-1000.0, float(small.image.array.min())), max(1000.0, float(small.image.array.max()))
    assert lo - 1e-3 <= image.min() and image.max() <= hi + 1e-3  # the window, or the template beyond it
    assert 0.0 <= conf.min() and conf.max() <= 1.0 and conf.min() < 1.0, (
        "2 vs 4 steps should disagree somewhere"
    )
    case = json.loads((out / "cases" / "case_00000.json").read_text())
    assert case["renderer"] == "tcdm" and case["ssv_steps"] == [2, 4]
    with pytest.raises(ValueError, match="trained on 32"):
        synthesize_dataset(template_from_phantom(CardiacPhantomConfig(seed=0, shape_ijk=(40, 40, 40), spacing_mm=4.0)),
                           tmp_path / "other", config)  # fmt: skip


def test_cardiac_synth_job_from_files_and_bad_inputs(template, tmp_path):
    from xraycardiac.io import write_volume
    from xraycardiac.jobs import JobSpec, run_job

    write_volume(template.image, tmp_path / "image.nrrd")
    write_volume(template.labels, tmp_path / "labels.nrrd")
    inputs = {
        "template_image": str(tmp_path / "image.nrrd"),
        "template_labels": str(tmp_path / "labels.nrrd"),
    }
    events = []
    summary = run_job(
        JobSpec("cardiac-synth", inputs, {"n": 1, "seed": 4}, str(tmp_path / "out")), on_event=events.append
    )
    assert summary["written"] == ["case_00000"] and summary["labels"] == template.labels_present
    assert (tmp_path / "out" / "labelsTr" / "case_00000.nii.gz").is_file()
    assert (tmp_path / "out" / "template_labels.nrrd").is_file()
    assert any(e.get("event") == "progress" and e["stage"].startswith("case") for e in events)
    only_image = {"template_image": inputs["template_image"]}
    with pytest.raises(ValueError, match="template_labels"):
        run_job(JobSpec("cardiac-synth", only_image, {"n": 1}, str(tmp_path / "bad1")))
    with pytest.raises(ValueError, match="unknown parameter"):
        run_job(JobSpec("cardiac-synth", inputs, {"n": 1, "colour": 1}, str(tmp_path / "bad2")))
    assert not (tmp_path / "bad1").exists() and not (tmp_path / "bad2").exists()


def test_phantoms_train_tcdm_and_synth_commands_chain(tmp_path):
    """`cardiac phantoms` -> `train cardiac-tcdm` (2 steps) -> `cardiac synth --renderer tcdm`."""
    from typer.testing import CliRunner

    from xraycardiac.cli import app

    data, run, out = tmp_path / "phantoms", tmp_path / "tcdm", tmp_path / "synth"
    r = CliRunner().invoke(app, ["cardiac", "phantoms", "--out", str(data), "--n", "2", "--grid", "32",
                                 "--spacing-mm", "5"])  # fmt: skip
    assert r.exit_code == 0 and "2 phantoms written" in r.output, r.output
    r = CliRunner().invoke(app, ["train", "cardiac-tcdm", "--data", str(data), "--out", str(run), "grid=32",
                                 "channels=[8,8,8]", "attention_levels=[false,false,false]", "norm_num_groups=4",
                                 "num_train_timesteps=20", "steps=2", "batch_size=1"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (run / "model.pt").is_file() and (run / "model.json").is_file()
    r = CliRunner().invoke(app, ["cardiac", "synth", "--out", str(out), "--n", "1", "--renderer", "tcdm",
                                 "--model", str(run), "--steps", "2", "--ssv-steps", "2,3", "--phantom-grid", "32",
                                 "--phantom-spacing-mm", "5", "--device", "cpu"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (out / "confidenceTr" / "case_00000.nii.gz").is_file()
    r = CliRunner().invoke(app, ["cardiac", "synth", "--out", str(tmp_path / "bad"), "--renderer", "tcdm",
                                 "--model", str(run), "--device", "cpu"])  # fmt: skip
    assert r.exit_code == 1 and "trained on 32" in r.output and str(run) in r.output, r.output  # unwrapped


def test_template_started_sampling_keeps_the_template_and_checks_its_argument(one_torch_thread):
    """start_strength -> 0 returns (almost) the warped template; 1 is sampling from pure noise."""
    import torch

    from xraycardiac.cardiac.tcdm import TCDMConfig, build_tcdm, encode_condition, sample_tcdm

    torch.manual_seed(0)
    cfg = TCDMConfig(n_classes=3, grid=16, channels=(8, 8), attention_levels=(False, False), norm_num_groups=4,
                     num_train_timesteps=100)  # fmt: skip
    unet, scheduler = build_tcdm(cfg)
    mask = torch.zeros((1, 16, 16, 16), dtype=torch.long)
    mask[:, 4:12, 4:12, 4:12] = 1
    template = torch.where(mask[:, None] > 0, 0.5, -0.8).float()
    cond = encode_condition(cfg, mask, template, mask)
    near = sample_tcdm(
        unet.eval(), scheduler, cond, 10, torch.Generator().manual_seed(1), start_strength=0.01
    )
    far = sample_tcdm(unet, scheduler, cond, 10, torch.Generator().manual_seed(1), start_strength=1.0)
    d_near, d_far = float((near - template).abs().mean()), float((far - template).abs().mean())
    assert d_near < 0.1 < d_far, (d_near, d_far)
    with pytest.raises(ValueError, match="start_strength"):
        sample_tcdm(unet, scheduler, cond, 10, torch.Generator(), start_strength=0.0)
    with pytest.raises(ValueError, match="start_strength"):
        CardiacSynthConfig(start_strength=1.5)


def test_tcdm_hu_harmonise_brings_each_structure_to_the_template_mean(tmp_path, one_torch_thread):
    """A tiny TCDM biased off the template's HU in its structures: with ``hu_harmonise`` each
    structure's mean equals the warped template's over the same voxels; without it the image is the raw one
    (the background, which the step leaves alone, is the same in both, and so is the confidence)."""
    import torch

    from xraycardiac.cardiac.mgm import generate_masks, warp_image
    from xraycardiac.cardiac.tcdm import TCDMConfig, build_tcdm, save_tcdm
    from xraycardiac.phantoms.cardiac import CardiacPhantomConfig

    small = template_from_phantom(CardiacPhantomConfig(seed=0, shape_ijk=(32, 32, 32), spacing_mm=5.0))
    torch.manual_seed(0)
    cfg = TCDMConfig(grid=32, channels=(8, 8, 8), attention_levels=(False, False, False), norm_num_groups=4,
                     num_train_timesteps=20)  # fmt: skip
    unet = build_tcdm(cfg)[0]
    with torch.no_grad():  # a constant offset in the predicted noise: a model biased in HU in every structure
        unet.out[-1].conv.bias.fill_(6.0)
    weights = save_tcdm(unet, tmp_path / "tcdm.pt")
    out = {}
    for on in (False, True):
        config = CardiacSynthConfig(n=1, seed=2, renderer="tcdm", model=str(weights), steps=2, ssv_steps=(2, 4),
                                    device="cpu", hu_harmonise=on, texture_harmonise=False)  # fmt: skip
        synthesize_dataset(small, tmp_path / str(on), config)
        root = tmp_path / str(on)
        case = json.loads((root / "cases" / "case_00000.json").read_text())
        out[on] = (read_volume(root / "imagesTr" / "case_00000_0000.nii.gz").array,
                   read_volume(root / "confidenceTr" / "case_00000.nii.gz").array, case)  # fmt: skip
    sample = generate_masks(small.labels, 1, CardiacSynthConfig().mgm, seed=out[True][2]["case_seed"])[0][0]
    labels, warped = sample.labels.array, warp_image(small.image, sample.ddf_ras_mm).array
    structures = [int(v) for v in np.unique(labels) if v != 0]
    raw = {v: float((out[False][0] - warped)[labels == v].mean()) for v in structures}
    assert max(abs(d) for d in raw.values()) > 50.0, raw  # the raw output is biased somewhere
    for v in structures:
        assert abs(float((out[True][0] - warped)[labels == v].mean())) < 2.0, (v, raw[v])
    back = labels == 0
    np.testing.assert_array_equal(out[True][0][back], out[False][0][back])
    np.testing.assert_array_equal(
        out[True][1], out[False][1]
    )  # the SSV map is the sampler's, before the step
    # the correction is smooth: the detail (voxel-to-voxel differences) inside a structure is the raw image's
    v = max(raw, key=lambda k: abs(raw[k]))
    inner = labels == v
    inner[1:] &= labels[:-1] == v
    step = lambda im: np.diff(im, axis=0)[inner[1:]]  # noqa: E731
    assert np.std(step(out[True][0]) - step(out[False][0])) < 0.25 * np.std(step(out[False][0]))
    meta = out[True][2]["hu_harmonise"]
    assert meta["applied"] and abs(meta["structures"][str(v)]["before_hu"] - raw[v]) < 1.0
    assert out[False][2]["hu_harmonise"]["applied"] is False


def test_tcdm_texture_harmonise_gives_the_template_texture_and_keeps_the_means(tmp_path, one_torch_thread):
    """An untrained tiny TCDM paints noise far rougher than a smooth template: with ``texture_harmonise``
    the finest band's RMS inside each structure comes down to that of the template warped to the case
    (what the warp renderer gives on the same voxels; measured two voxels inside, past the edges), the
    structure means and the confidence map stay, and the case records it."""
    import torch
    from scipy import ndimage

    from xraycardiac.cardiac.harmonise import TEXTURE_SIGMA_MM
    from xraycardiac.cardiac.mgm import generate_masks, warp_image
    from xraycardiac.cardiac.tcdm import TCDMConfig, build_tcdm, save_tcdm
    from xraycardiac.phantoms.cardiac import CardiacPhantomConfig

    small = template_from_phantom(CardiacPhantomConfig(seed=0, shape_ijk=(32, 32, 32), spacing_mm=5.0))
    # a smooth template like a real CT resampled to 5 mm (the phantom's own white noise smoothed away)
    smooth = np.zeros_like(small.image.array)
    for v in np.unique(small.labels.array):  # smoothed within each label: the edges stay sharp
        w = (small.labels.array == v).astype(float)
        g = ndimage.gaussian_filter(w * small.image.array, 1.5) / np.maximum(
            ndimage.gaussian_filter(w, 1.5), 1e-9
        )
        smooth[w > 0] = g[w > 0]
    small.image.array[...] = smooth
    torch.manual_seed(0)
    cfg = TCDMConfig(grid=32, channels=(8, 8, 8), attention_levels=(False, False, False), norm_num_groups=4,
                     num_train_timesteps=20)  # fmt: skip
    weights = save_tcdm(build_tcdm(cfg)[0], tmp_path / "tcdm.pt")
    out = {}
    for on in (False, True):
        config = CardiacSynthConfig(n=1, seed=2, renderer="tcdm", model=str(weights), steps=2, ssv_steps=(2, 4),
                                    device="cpu", texture_harmonise=on)  # fmt: skip
        root = tmp_path / str(on)
        synthesize_dataset(small, root, config)
        case = json.loads((root / "cases" / "case_00000.json").read_text())
        out[on] = (read_volume(root / "imagesTr" / "case_00000_0000.nii.gz").array,
                   read_volume(root / "confidenceTr" / "case_00000.nii.gz").array, case)  # fmt: skip
    sample = generate_masks(small.labels, 1, CardiacSynthConfig().mgm, seed=out[True][2]["case_seed"])[0][0]
    labels, warped = sample.labels.array, warp_image(small.image, sample.ddf_ras_mm).array
    sigma = TEXTURE_SIGMA_MM[0] / 5.0

    def fine_rms(image: np.ndarray, region: np.ndarray) -> float:
        w = region.astype(float)
        smooth = ndimage.gaussian_filter(w * image, sigma) / np.maximum(
            ndimage.gaussian_filter(w, sigma), 1e-9
        )
        return float(np.sqrt(np.mean((image - smooth)[ndimage.binary_erosion(region, iterations=2)] ** 2)))

    checked = 0
    for v in np.unique(labels):
        region = labels == v
        if v == 0 or ndimage.binary_erosion(region, iterations=2).sum() < 27:
            continue
        want = fine_rms(warped, region)
        before, after = fine_rms(out[False][0], region), fine_rms(out[True][0], region)
        assert before > 3 * want, (v, before, want)  # the model's noise dominates without the step
        assert after < 1.2 * want + 0.5, (v, before, after, want)
        assert abs(float(out[True][0][region].mean() - out[False][0][region].mean())) < 3.0
        checked += 1
    assert checked >= 2
    np.testing.assert_array_equal(out[True][1], out[False][1])  # the SSV map is the sampler's
    meta = out[True][2]["texture_harmonise"]
    assert (
        meta["applied"]
        and meta["sigma_mm"] == list(TEXTURE_SIGMA_MM)
        and "label 1, 200..inf HU" in meta["regions"]
    )
    assert out[False][2]["texture_harmonise"] == {"applied": False, "sigma_mm": list(TEXTURE_SIGMA_MM)}
