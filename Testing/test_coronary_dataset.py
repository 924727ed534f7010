"""Synthetic coronary view-pair datasets: on-disk format, geometric consistency, torch Dataset, resume, shards, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

import xraycardiac.jobs.coronary_synth  # noqa: F401 -- registers "coronary-synth" until PIPELINE_MODULES lists it
from xraycardiac.anatomy.coronary_tree import CoronaryTree
from xraycardiac.coronary.cli import app
from xraycardiac.coronary.synth import SynthConfig, parse_shard, synthesize
from xraycardiac.coronary.synth import dataset as ds
from xraycardiac.geometry import CArmGeometry, epipolar_distance, fundamental_matrix, project_points
from xraycardiac.jobs import JobSpec, run_job

# small and fast: 128 x 128 detector at 1.2 mm (field of view of a 512 x 0.3-0.4 mm one), 0.5 mm voxels
CFG = SynthConfig(trees=2, pairs_per_tree=2, image_size=128, pixel_spacing_mm=1.2, seed=0)
CLI_ARGS = ["--trees", "2", "--pairs-per-tree", "2", "--size", "128", "--pixel-mm", "1.2", "--seed", "0"]
NAMES = ["pair_00000_00", "pair_00000_01", "pair_00001_00", "pair_00001_01"]


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under the tree folders (samples and tree.json), by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.glob("tree_*/**/*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """One uninterrupted, unsharded run of CFG."""
    root = tmp_path_factory.mktemp("coronary_synth") / "base"
    summary = synthesize(CFG, root)
    assert (summary["written"], summary["skipped"], summary["resumed"]) == (4, 0, 0), summary
    return root


def test_every_sample_has_its_files(base):
    samples = ds.list_samples(base)
    assert [p.name for p in samples] == NAMES
    for p in samples:
        missing = [f for f in ds.SAMPLE_FILES if not (p / f).is_file()]
        assert not missing, f"{p.name} lacks {missing}"
        s = ds.read_sample(p)
        for v in (1, 2):
            assert s[f"image{v}"].shape == (128, 128) and s[f"image{v}"].dtype == np.float32
            assert s[f"image{v}"].std() > 0.02, f"{p.name} view {v} is flat (std {s[f'image{v}'].std():.4f})"
            thickness, mask = s[f"thickness{v}"], s[f"mask{v}"]
            assert np.load(p / f"thickness{v}.npy").dtype == np.float16
            assert mask.sum() > 50, f"{p.name} mask {v} has {mask.sum()} vessel pixels"
            agree = np.mean(mask == (thickness > 0.05))
            assert agree > 0.999, (
                f"{p.name} view {v}: mask and thickness > 0.05 mm agree on {agree:.4%} of pixels"
            )
            # the image shows these vessels, dark, in the same pixels: high-passed image and thickness
            # anti-correlate (a flipped or foreign mask would not)
            hp_image = s[f"image{v}"] - ndimage.gaussian_filter(s[f"image{v}"], 4.0)
            hp_thick = thickness - ndimage.gaussian_filter(thickness, 4.0)
            corr = np.corrcoef(hp_image.ravel(), hp_thick.ravel())[0, 1]
            assert corr < -0.05, f"{p.name} view {v}: image vs vessel thickness correlation {corr:.3f}"
    for t in (0, 1):
        assert (base / f"tree_{t:05d}" / "tree.json").is_file()
    hidden = [p for p in base.rglob(".*")]
    assert not hidden, f"temp files left behind: {hidden}"
    info = ds.dataset_info(base)
    assert info["counts"] == {"trees": 2, "samples": 4}, info["counts"]
    assert "0/1" in info["shards"] and info["renderer"]["name"] == "physics"
    meta = json.loads((base / "tree_00001" / NAMES[2] / "sample.json").read_text())
    assert meta["opacified_trees"] == ["right"], (
        "odd trees must show the right coronary (alternate injection)"
    )
    assert json.loads((base / "tree_00000" / NAMES[0] / "sample.json").read_text())["opacified_trees"] == [
        "left"
    ]


def test_stored_geometry_reproduces_keypoint_pixels_and_epipolar_constraint(base):
    for p in ds.list_samples(base):
        s = ds.read_sample(p, load_thickness=False)
        kp = s["keypoints"]
        t = int(p.name.split("_")[1])
        tree = CoronaryTree.load_json(base / f"tree_{t:05d}" / "tree.json")
        assert np.array_equal(kp["points_ras_mm"], tree.points[kp["point_index"]]), (
            "keypoints are not tree points"
        )
        assert set(kp["tree"].tolist()) == {t % 2}, (
            f"{p.name}: keypoints of tree(s) {set(kp['tree'].tolist())}"
        )
        for v in (1, 2):
            g = s["geometry"][f"view{v}"]
            assert np.array_equal(
                CArmGeometry.from_dict(g).projection_matrix(), s["projection_matrices"][v - 1]
            )
            uv = project_points(s["projection_matrices"][v - 1], kp["points_ras_mm"])
            err = np.abs(uv - kp[f"uv{v}"]).max()
            assert err < 1e-6, f"{p.name} view {v}: stored uv off the projection by {err:.3g} px"
        m = kp["matches"]
        i1, i2 = np.flatnonzero(kp["in_field1"]), np.flatnonzero(kp["in_field2"])
        assert len(m) == np.count_nonzero(kp["in_field1"] & kp["in_field2"]) and len(m) > 5, (
            f"{p.name}: {len(m)}"
        )
        assert np.array_equal(i1[m[:, 0]], i2[m[:, 1]]), f"{p.name}: a match pairs two different keypoints"
        x1, x2 = kp["uv1"][i1[m[:, 0]]], kp["uv2"][i2[m[:, 1]]]
        p1, p2 = s["projection_matrices"]
        err = max(
            epipolar_distance(fundamental_matrix(p1, p2), x1, x2).max(),
            epipolar_distance(fundamental_matrix(p2, p1), x2, x1).max(),
        )
        assert err < 1e-3, f"{p.name}: epipolar error of a stored match {err:.3g} px"


def test_torch_dataset_and_dataloader(base):
    import torch
    from torch.utils.data import DataLoader, Dataset

    from xraycardiac.coronary.synth.dataset import CoronaryPairDataset, collate_pairs

    data = CoronaryPairDataset(base)
    assert isinstance(data, Dataset) and len(data) == 4
    item = data[2]
    for key in ("image1", "image2", "mask1", "mask2", "thickness1", "thickness2"):
        assert item[key].shape == (1, 128, 128) and item[key].dtype == torch.float32, (key, item[key].shape)
    assert 0.0 <= float(item["image1"].min()) and float(item["image1"].max()) <= 1.0
    assert set(torch.unique(item["mask1"]).tolist()) == {0.0, 1.0}
    k1, k2 = len(item["keypoints1"]), len(item["keypoints2"])
    assert item["keypoints1"].shape == (k1, 2) and item["keypoints1"].dtype == torch.float32
    assert item["ambiguous2"].shape == (k2,) and item["ambiguous2"].dtype == torch.bool
    assert (
        item["projection_matrices"].shape == (2, 3, 4) and item["projection_matrices"].dtype == torch.float64
    )
    mm = item["match_matrix"]
    assert mm.shape == (k1 + 1, k2 + 1)
    assert torch.all(mm[:k1].sum(1) == 1) and torch.all(mm[:, :k2].sum(0) == 1), (
        "each keypoint: one match or dustbin"
    )
    i, j = item["matches"].T
    assert torch.all(mm[i, j] == 1) and int(mm[:k1, :k2].sum()) == len(item["matches"])
    # keypoints1 are the projections of points3d through P1
    p1 = item["projection_matrices"][0].numpy()
    uv = project_points(p1, item["points3d"][item["keypoint_ids1"]].numpy())
    assert np.abs(uv - item["keypoints1"].numpy()).max() < 1e-3
    assert pickle.loads(pickle.dumps(data)).samples == data.samples, (
        "dataset must pickle for DataLoader workers"
    )

    batches = list(DataLoader(data, batch_size=3, collate_fn=collate_pairs))
    b = batches[0]
    assert b["image1"].shape == (3, 1, 128, 128) and b["projection_matrices"].shape == (3, 2, 3, 4)
    counts = [len(data[n]["keypoints1"]) for n in range(3)]
    assert b["keypoints1"].shape == (3, max(counts), 2)
    assert b["keypoints1_valid"].sum(1).tolist() == counts
    kmax1, kmax2 = b["keypoints1"].shape[1], b["keypoints2"].shape[1]
    assert b["match_matrix"].shape == (3, kmax1 + 1, kmax2 + 1)
    rows = b["match_matrix"][:, :kmax1].sum(2)
    assert torch.equal(rows, b["keypoints1_valid"].float()), "valid rows sum to 1, padded rows to 0"
    assert len(b["matches"]) == 3 and b["name"] == NAMES[:3] and batches[1]["image2"].shape[0] == 1

    splits = {s: [p.name for p in ds.list_samples(base, split=s)] for s in ds.SPLITS}
    assert sorted(sum(splits.values(), [])) == NAMES, splits
    for names in splits.values():  # whole trees per split
        trees = {n.split("_")[1] for n in names}
        assert all(f"pair_{t}_{k:02d}" in names for t in trees for k in range(2)), splits


def test_importing_the_modules_does_not_import_torch():
    # dataset.py and cli.py are loaded as files, and the coronary-synth job (which imports the engine,
    # xraycardiac.coronary.synth): none of them may pull in torch (directly or via xraycardiac.geometry)
    # or the engine's heavy modules (renderers, projection), which it imports only when it runs
    root = Path(ds.__file__).parents[3]
    code = (
        "import sys, importlib.util as u\n"
        "def load(name, rel):\n"
        "    spec = u.spec_from_file_location(name, rel)\n"
        "    m = u.module_from_spec(spec); spec.loader.exec_module(m); return m\n"
        "d = load('ds_file', 'xraycardiac/coronary/synth/dataset.py')\n"
        "load('cli_file', 'xraycardiac/coronary/cli.py')\n"
        "import xraycardiac.jobs.coronary_synth\n"
        "heavy = ('torch', 'xraycardiac.geometry', 'xraycardiac.coronary.synth.projection',\n"
        "         'xraycardiac.coronary.synth.render_physics', 'xraycardiac.coronary.synth.render_diffusion')\n"
        "heavy = sorted(m for m in heavy if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "assert callable(d.collate_pairs)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_shards_together_equal_one_run_byte_for_byte(base, tmp_path):
    root = tmp_path / "sharded"
    s1 = synthesize(CFG, root, shard="1/2")
    s0 = synthesize(CFG, root, shard="0/2")
    assert s0["trees"] == [0] and s1["trees"] == [1] and s0["written"] == s1["written"] == 2
    assert file_hashes(root) == file_hashes(base), "shards 0/2 + 1/2 differ from the unsharded run"
    info = ds.dataset_info(root)
    assert set(info["shards"]) == {"0/2", "1/2"} and info["counts"]["samples"] == 4, info


def test_another_seed_gives_other_images(base, tmp_path):
    other = SynthConfig(**{**CFG.__dict__, "trees": 1, "pairs_per_tree": 1, "seed": 7})
    synthesize(other, tmp_path / "seed7")
    a = (base / "tree_00000" / NAMES[0] / "view1.png").read_bytes()
    b = (tmp_path / "seed7" / "tree_00000" / NAMES[0] / "view1.png").read_bytes()
    assert a != b, "the seed does not reach the images"


def test_interrupted_run_resumes_to_the_same_files(base, tmp_path):
    root = tmp_path / "resumed"

    def stop_after_first_sample(stage: str, fraction: float, **extra) -> None:
        if stage.endswith(": written"):
            raise KeyboardInterrupt  # what Ctrl-C or a cancelled job does mid-run

    with pytest.raises(KeyboardInterrupt):
        synthesize(CFG, root, progress=stop_after_first_sample)
    assert [p.name for p in ds.list_samples(root)] == NAMES[:1]
    # what a SIGKILL while writing would leave: a half-written hidden temp folder
    stale = root / "tree_00000" / f".{NAMES[1]}.tmp-deadbeef"
    stale.mkdir()
    (stale / "view1.png").write_bytes(b"\x89PNG half")
    assert [p.name for p in ds.list_samples(root)] == NAMES[:1], "a temp folder was listed as a sample"
    with pytest.raises(FileExistsError, match="resume"):
        synthesize(CFG, root, resume=False)
    summary = synthesize(CFG, root, resume=True)
    assert (summary["written"], summary["resumed"], summary["skipped"]) == (3, 1, 0), summary
    assert not stale.exists(), "the stale temp folder was not cleaned"
    assert file_hashes(root) == file_hashes(base), "kill + resume differs from one uninterrupted run"


def test_sigkilled_process_resumes_to_the_same_files(base, tmp_path):
    root = tmp_path / "killed"
    code = (
        "import sys; from xraycardiac.coronary.synth import SynthConfig, synthesize; "
        f"synthesize(SynthConfig(**{CFG.__dict__!r}), sys.argv[1])"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and not list(root.glob("tree_*/pair_*")):
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # a sample is done once its record is written (last, atomically): a pair folder caught between
    # its rename and its record is made again, so it counts as written, not resumed
    done = len(list(root.glob("tree_*/pair_*.done.json")))
    summary = synthesize(CFG, root, resume=True)
    assert summary["written"] + summary["resumed"] == 4 and summary["resumed"] == done, (done, summary)
    assert file_hashes(root) == file_hashes(base), "SIGKILL + resume differs from one uninterrupted run"


def test_pairs_outside_the_field_of_view_are_skipped_not_fatal(tmp_path):
    # a 0.4 mm detector centred near the tree's centroid misses most vessels
    tiny = SynthConfig(trees=2, pairs_per_tree=2, image_size=8, pixel_spacing_mm=0.05, seed=0)
    summary = synthesize(tiny, tmp_path / "tiny")
    assert summary["skipped"] >= 1 and summary["written"] + summary["skipped"] == 4, summary
    assert all("field of view" in s["reason"] for s in summary["skipped_pairs"]), summary["skipped_pairs"]
    on_disk = {p.name for p in ds.list_samples(tmp_path / "tiny")}
    assert len(on_disk) == summary["written"] and not on_disk & {
        s["sample"] for s in summary["skipped_pairs"]
    }


def test_a_dataset_made_with_other_parameters_is_refused(base, tmp_path):
    with pytest.raises(ValueError, match=r"generator\.seed was 0, now 3"):
        synthesize(SynthConfig(**{**CFG.__dict__, "seed": 3}), base)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a coronary pair dataset"):
        synthesize(CFG, foreign)
    with pytest.raises(FileNotFoundError):
        ds.list_samples(tmp_path / "nowhere")


def test_bad_parameters_are_named():
    for bad in ("3/2", "1/0", "a/b", "1"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    assert parse_shard("1/3") == (1, 3)
    with pytest.raises(ValueError, match="renderer: expected one of"):
        SynthConfig(renderer="gan")
    with pytest.raises(ValueError, match="renderer_config.model: model 'no-such-model' is not known"):
        SynthConfig(renderer="diffusion", renderer_config={"model": "no-such-model"})
    with pytest.raises(ValueError, match="pairs_per_tree"):
        SynthConfig(pairs_per_tree=101)
    with pytest.raises(ValueError, match="injection"):
        SynthConfig(injection="lad")
    with pytest.raises(ValueError, match="renderer_config"):
        SynthConfig(renderer_config={"no_such_field": 1})


def test_job_writes_a_dataset_or_continues_one_in_place(base, tmp_path):
    params = {"trees": 1, "pairs_per_tree": 1, "image_size": 64, "pixel_spacing_mm": 2.4, "seed": 0}
    summary = run_job(JobSpec("coronary-synth", params=params, output_dir=str(tmp_path / "job")))
    assert summary["written"] + summary["skipped"] == 1 and summary["outputs"] == {"dataset": "dataset.json"}
    assert (tmp_path / "job" / "dataset.json").is_file() and (tmp_path / "job" / "job_report.json").is_file()
    # in place: the existing dataset is an input; everything is there, so nothing is made
    cfg = {"trees": 2, "pairs_per_tree": 2, "image_size": [128, 128], "pixel_spacing_mm": 1.2, "seed": 0}
    spec = JobSpec(
        "coronary-synth", inputs={"dataset": str(base)}, params=cfg, output_dir=str(tmp_path / "j2")
    )
    summary = run_job(spec)
    assert (summary["written"], summary["resumed"], summary["in_place"]) == (0, 4, True), summary
    bad = {"renderer": "diffusion", "renderer_config": {"model": "no-such-model"}}
    with pytest.raises(ValueError, match="renderer_config.model: model 'no-such-model' is not known"):
        run_job(JobSpec("coronary-synth", params=bad, output_dir=str(tmp_path / "j3")))
    assert not (tmp_path / "j3").exists()


runner = CliRunner()


def test_cli_synth_writes_and_resumes(base, tmp_path):
    out = tmp_path / "cli"
    result = runner.invoke(app, ["synth", "--out", str(out), "--trees", "1", "--pairs-per-tree", "1", "--size", "64",
                                 "--pixel-mm", "2.4"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "1 pair(s) written" in result.output or "1 skipped" in result.output, result.output
    result = runner.invoke(app, ["synth", "--out", str(base), *CLI_ARGS])
    assert result.exit_code == 0 and "0 pair(s) written, 4 already there" in result.output, result.output
    result = runner.invoke(app, ["synth", "--out", str(base), *CLI_ARGS, "--no-resume"])
    assert result.exit_code == 1 and "resume" in result.output, result.output
    result = runner.invoke(app, ["synth", "--out", str(base), *CLI_ARGS, "--seed", "5"])
    assert result.exit_code == 1 and "other parameters" in result.output, result.output


def test_cli_bad_inputs_name_the_option(tmp_path):
    out = str(tmp_path / "never")
    result = runner.invoke(app, ["synth", "--out", out, "--shard", "3/2"])
    assert result.exit_code == 2 and "--shard" in result.output and "3/2" in result.output, result.output
    result = runner.invoke(app, ["synth", "--out", out, "--renderer", "gan"])
    assert result.exit_code == 2 and "expected one of" in result.output, result.output
    assert "--renderer" in result.output, result.output
    result = runner.invoke(
        app, ["synth", "--out", out, "--renderer", "diffusion", "--diffusion-model", "no-such-model"]
    )
    assert result.exit_code == 2 and "'no-such-model' is not known" in result.output, result.output
    assert "--diffusion-model" in result.output, result.output
    result = runner.invoke(app, ["synth", "--out", out, "--injection", "lad"])
    assert result.exit_code == 2 and "--injection" in result.output, result.output
    result = runner.invoke(app, ["synth", "--out", out, "--trees", "0"])
    assert result.exit_code == 2 and "--trees" in result.output, result.output
    assert not Path(out).exists()
