"""``coronary-synth`` with its tree from a coronary label map (``inputs.labelmap`` / ``--labelmap``).

The label map is a procedural tree voxelised at 0.5 mm (``CoronaryTree.voxelize``), so the tree the
job extracts is known: ``tree_from_labelmap`` of the same file, within a voxel of the procedural truth.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from coronary_helpers import voxelised_tree
from typer.testing import CliRunner

import xraycardiac.jobs.coronary_synth  # noqa: F401 -- registers "coronary-synth"
from xraycardiac.anatomy.coronary_tree import CoronaryTree
from xraycardiac.coronary.cli import app
from xraycardiac.coronary.from_labelmap import tree_from_labelmap
from xraycardiac.coronary.synth import SynthConfig, synthesize
from xraycardiac.coronary.synth import dataset as ds
from xraycardiac.io import read_volume, write_volume
from xraycardiac.jobs import JobSpec, run_job
from xraycardiac.phantoms.coronary import CoronaryPhantomConfig, make_coronary_tree
from xraycardiac.volume import Volume

TREE_SEED = 3
PARAMS = {"pairs_per_tree": 1, "image_size": 128, "injection": "left", "device": "cpu"}


def _distance_to_points(query: np.ndarray, points: np.ndarray) -> np.ndarray:
    from scipy.spatial import cKDTree

    return cKDTree(points).query(query)[0]


@pytest.fixture(scope="module")
def labelmaps(tmp_path_factory) -> dict[str, Path]:
    """NRRD files: "both" (left 1, right 2), "left_only" (right tree erased), "empty" (all 0)."""
    folder = tmp_path_factory.mktemp("labelmaps")
    _, labels = voxelised_tree()
    left_only = np.where(labels.array == 2, 0, labels.array).astype(np.uint8)
    return {
        "both": write_volume(labels, folder / "coronary_labels.nrrd"),
        "left_only": write_volume(Volume(left_only, labels.ijk_to_ras), folder / "left_only.nrrd"),
        "empty": write_volume(
            Volume(np.zeros((8, 9, 10), np.uint8), labels.ijk_to_ras), folder / "empty.nrrd"
        ),
    }


@pytest.fixture(scope="module")
def job_output(labelmaps, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("job") / "out"
    spec = JobSpec(
        "coronary-synth", inputs={"labelmap": str(labelmaps["both"])}, params=PARAMS, output_dir=str(out)
    )
    return out, run_job(spec)


def test_job_makes_the_pair_of_the_labelmap_tree(labelmaps, job_output) -> None:
    out, summary = job_output
    assert (summary["written"], summary["skipped"]) == (1, 0), summary
    extracted = tree_from_labelmap(read_volume(labelmaps["both"]), 1, 2)
    stored = CoronaryTree.load_json(ds.tree_dir(out, 0) / "tree.json")
    np.testing.assert_allclose(stored.points, extracted.points, atol=1e-9)
    truth = make_coronary_tree(CoronaryPhantomConfig(seed=TREE_SEED))
    # the extracted tree, not the procedural one: label-map branch names, points off by up to a voxel
    assert stored.branch_names[0] == "L0" and "LAD" in truth.branch_names, stored.branch_names
    error = _distance_to_points(stored.points, truth.points).max()
    assert error < 1.0, f"the label-map tree lies {error:.2f} mm from the voxelised tree"
    sample = ds.read_sample(ds.sample_path(out, 0, 0), load_thickness=False)
    kp = sample["keypoints"]
    assert len(kp["points_ras_mm"]) > 10 and np.all(kp["tree"] == 0), (len(kp["points_ras_mm"]), kp["tree"])
    np.testing.assert_allclose(kp["points_ras_mm"], stored.points[kp["point_index"]], atol=1e-9)
    assert sample["meta"]["tree_source"] == "coronary_labels.nrrd" and sample["meta"]["tree_seed"] is None
    source = json.loads((out / ds.INFO_NAME).read_text())["generator"]["tree_source"]
    sha = hashlib.sha256(labelmaps["both"].read_bytes()).hexdigest()
    assert source == {
        "kind": "labelmap",
        "file": "coronary_labels.nrrd",
        "sha256": sha,
        "left_label": 1,
        "right_label": 2,
    }, source


def test_a_run_with_another_labelmap_or_labels_is_refused(labelmaps, job_output) -> None:
    out, _ = job_output
    base = {"trees": 1, "pairs_per_tree": 1, "image_size": 128, "injection": "left"}
    other = SynthConfig(**base, labelmap=str(labelmaps["left_only"]))
    with pytest.raises(ValueError, match=r"generator\.tree_source\.file was 'coronary_labels.nrrd'"):
        synthesize(other, out)
    relabelled = SynthConfig(**base, labelmap=str(labelmaps["both"]), right_label=None)
    with pytest.raises(ValueError, match=r"generator\.tree_source\.right_label was 2, now None"):
        synthesize(relabelled, out)
    with pytest.raises(
        ValueError, match=r"generator\.tree_source was \{.*coronary_labels\.nrrd.*\}, now None"
    ):
        synthesize(SynthConfig(**base), out)
    # the same map and parameters: everything is there already
    same = SynthConfig(**base, labelmap=str(labelmaps["both"]))
    summary = synthesize(same, out)
    assert (summary["written"], summary["resumed"]) == (0, 1), summary


def test_an_empty_labelmap_names_the_file_and_writes_nothing(labelmaps, tmp_path) -> None:
    path = labelmaps["empty"]
    spec = JobSpec(
        "coronary-synth", inputs={"labelmap": str(path)}, params=PARAMS, output_dir=str(tmp_path / "j")
    )
    with pytest.raises(
        ValueError, match=rf"labelmap: .*{path.name}: .*no voxel of the requested labels \[1, 2\]"
    ):
        run_job(spec)
    assert not (tmp_path / "j").exists()
    with pytest.raises(ValueError, match=path.name):
        synthesize(SynthConfig(trees=1, labelmap=str(path)), tmp_path / "direct")
    assert not (tmp_path / "direct").exists()


def test_a_labelmap_without_tubes_names_the_file(tmp_path) -> None:
    z, y, x = np.mgrid[:60, :60, :60] * 0.5 - 15.0
    ball = Volume.from_geometry((x**2 + y**2 + z**2 <= 8.0**2).astype(np.uint8), (0.5, 0.5, 0.5))
    path = write_volume(ball, tmp_path / "ball.nrrd")
    with pytest.raises(ValueError, match=r"labelmap: .*ball\.nrrd: .*no tubular structure"):
        synthesize(SynthConfig(trees=1, labelmap=str(path), right_label=None), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_injected_side_must_be_in_the_labelmap(labelmaps, tmp_path) -> None:
    config = SynthConfig(trees=1, injection="right", labelmap=str(labelmaps["left_only"]))
    with pytest.raises(ValueError, match=r"no right coronary tree \(right_label 2 has no voxel in it\)"):
        synthesize(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_labelmap_parameters_are_named(labelmaps, tmp_path) -> None:
    path = str(labelmaps["both"])
    with pytest.raises(ValueError, match="trees: .*trees must be 1 with labelmap, got 2"):
        SynthConfig(trees=2, labelmap=path)
    with pytest.raises(ValueError, match="trees: .*got 2"):
        run_job(JobSpec("coronary-synth", inputs={"labelmap": path}, params={**PARAMS, "trees": 2},
                        output_dir=str(tmp_path / "j")))  # fmt: skip
    with pytest.raises(ValueError, match="left_label: expected an integer label >= 1"):
        SynthConfig(trees=1, labelmap=path, left_label=0)
    with pytest.raises(ValueError, match="both are None"):
        SynthConfig(trees=1, labelmap=path, left_label=None, right_label=None)
    with pytest.raises(FileNotFoundError, match="labelmap: .*nowhere.nrrd"):
        SynthConfig(trees=1, labelmap=str(tmp_path / "nowhere.nrrd"))
    with pytest.raises(ValueError, match="params.left_label: applies to a label map input"):
        run_job(JobSpec("coronary-synth", params={**PARAMS, "trees": 1, "left_label": 3},
                        output_dir=str(tmp_path / "j")))  # fmt: skip
    assert not (tmp_path / "j").exists()


runner = CliRunner()


def test_cli_labelmap(labelmaps, job_output, tmp_path) -> None:
    out, _ = job_output
    args = ["synth", "--out", str(out), "--labelmap", str(labelmaps["both"]), "--pairs-per-tree", "1",
            "--size", "128", "--injection", "left"]  # fmt: skip
    result = runner.invoke(app, args)  # the job's dataset: continued, nothing left to make
    assert result.exit_code == 0 and "0 pair(s) written, 1 already there" in result.output, result.output
    result = runner.invoke(app, [*args, "--right-label", "0"])
    text = " ".join(result.output.split())  # rich wraps lines
    assert result.exit_code == 1 and "tree_source.right_label was 2, now None" in text, result.output
    result = runner.invoke(app, [*args, "--trees", "2"])
    assert result.exit_code == 2 and "--trees" in result.output, result.output
    never = tmp_path / "never"
    result = runner.invoke(app, ["synth", "--out", str(never), "--labelmap", str(labelmaps["empty"])])
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and "labelmap:" in text and "empty.nrrd" in text, result.output
    assert not never.exists()
