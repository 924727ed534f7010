"""Resume trusts records, not existence; failed runs leave truthful index files; one overwrite rule.

Issue 17, items 3, 4, 9 and 10 (the ``cardiac synth`` settings mismatch). Every fault is real: a file
deleted or cut to 0 bytes, a folder where a file must go (the OS refuses the rename), a child process
that SIGKILLs itself, a read-only folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xraycardiac.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _text(result) -> str:
    """What a failed CLI call said: its output and the exception it ended with (if any)."""
    return result.output + ("" if result.exception is None else f"\n{result.exception!r}")


def _hashes(root: Path, pattern: str = "**/*") -> dict[str, str]:
    """sha256 of every file under ``root`` matching ``pattern``, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.glob(pattern))
        if p.is_file()
    }


def _empty_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.stat().st_size == 0)


# --------------------------------------------------------------------------------- coronary synth


@pytest.fixture(scope="module")
def coronary_base(tmp_path_factory) -> Path:
    """One clean coronary synth run: 1 tree x 2 pairs at 64 x 64 px."""
    from xraycardiac.coronary.synth import synthesize

    root = tmp_path_factory.mktemp("coronary") / "base"
    summary = synthesize(_coronary_config(), root)
    assert summary["written"] == 2, summary
    return root


def _coronary_config():
    from xraycardiac.coronary.synth import SynthConfig

    return SynthConfig(trees=1, pairs_per_tree=2, image_size=64, pixel_spacing_mm=2.4, seed=0)


def test_coronary_synth_redoes_a_pair_missing_a_view_or_with_an_empty_view(coronary_base, tmp_path):
    from xraycardiac.coronary.synth import synthesize

    root = tmp_path / "broken"
    shutil.copytree(coronary_base, root)
    (root / "tree_00000" / "pair_00000_00" / "view2.png").unlink()
    (root / "tree_00000" / "pair_00000_01" / "view1.png").write_bytes(b"")
    summary = synthesize(_coronary_config(), root)
    assert (summary["written"], summary["resumed"]) == (2, 0), summary
    assert _hashes(root, "tree_*/**/*") == _hashes(coronary_base, "tree_*/**/*"), (
        "the rerun did not regenerate the damaged pairs byte for byte"
    )
    again = synthesize(_coronary_config(), root)
    assert (again["written"], again["resumed"]) == (0, 2), again


def test_coronary_evaluate_refuses_an_existing_out_before_any_work(coronary_base, tmp_path):
    existing = tmp_path / "results.json"
    existing.write_text('{"mine": true}\n')
    args = ["coronary", "evaluate", "--data", str(coronary_base), "--method", "sift", "--split", "all"]
    result = runner.invoke(app, [*args, "--out", str(existing)])
    assert result.exit_code != 0, result.output
    assert str(existing) in _text(result) and "--overwrite" in _text(result), _text(result)
    assert "pairs of" not in result.output, f"the evaluation ran before the check:\n{result.output}"
    assert existing.read_text() == '{"mine": true}\n'
    folder = tmp_path / "a_folder"
    folder.mkdir()
    result = runner.invoke(app, [*args, "--out", str(folder)])
    assert result.exit_code != 0 and str(folder) in _text(result), _text(result)
    assert "pairs of" not in result.output, f"the evaluation ran before the check:\n{result.output}"
    result = runner.invoke(app, [*args, "--out", str(existing), "--overwrite"])
    assert result.exit_code == 0, _text(result)
    assert json.loads(existing.read_text())["methods"], existing.read_text()


# ------------------------------------------------------------------------------- cardiac phantoms


def _phantoms(out: Path, *extra: str):
    return runner.invoke(
        app, ["cardiac", "phantoms", "--out", str(out), "--n", "2", "--spacing-mm", "6", *extra]
    )


def test_cardiac_phantoms_redo_a_truncated_phantom(tmp_path):
    out = tmp_path / "phantoms"
    first = _phantoms(out, "--grid", "16")
    assert first.exit_code == 0 and "2 phantoms written" in first.output, _text(first)
    clean = _hashes(out, "*/phantom_*")
    victim = out / "images" / "phantom_00001.nii.gz"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    again = _phantoms(out, "--grid", "16")
    assert again.exit_code == 0 and "1 phantoms written" in again.output, _text(again)
    assert _hashes(out, "*/phantom_*") == clean, "the truncated phantom was not rewritten"


def test_cardiac_phantoms_refuse_another_grid_or_redo_with_overwrite(tmp_path):
    from xraycardiac.io import read_volume

    out = tmp_path / "phantoms"
    assert _phantoms(out, "--grid", "16").exit_code == 0
    before = _hashes(out)
    other = _phantoms(out, "--grid", "20")
    assert other.exit_code != 0, _text(other)
    assert "grid" in _text(other) and "16" in _text(other) and "20" in _text(other), _text(other)
    assert _hashes(out) == before, "a refused run changed the folder"
    redo = _phantoms(out, "--grid", "20", "--overwrite")
    assert redo.exit_code == 0 and "2 phantoms written" in redo.output, _text(redo)
    shapes = {read_volume(p).array.shape for p in sorted(out.glob("*/phantom_*.nii.gz"))}
    assert shapes == {(20, 20, 20)}, shapes


# ---------------------------------------------------------------------------------- cardiac synth


@pytest.fixture(scope="module")
def template():
    from xraycardiac.cardiac.templates import template_from_phantom
    from xraycardiac.phantoms.cardiac import CardiacPhantomConfig

    return template_from_phantom(CardiacPhantomConfig(seed=0, shape_ijk=(24, 24, 24), spacing_mm=6.0))


def _listed(out: Path) -> dict[str, list[str]]:
    """The case names each index file lists."""
    datalist = json.loads((out / "datalist.json").read_text())["training"]
    dataset = json.loads((out / "dataset.json").read_text())
    synth = json.loads((out / "synth.json").read_text())
    return {
        "datalist": [Path(e["label"]).name.removesuffix(".nii.gz") for e in datalist],
        "dataset.json": [f"{dataset['numTraining']} cases"],
        "synth.json": synth["cases"] if isinstance(synth["cases"], list) else [f"{synth['cases']} cases"],
    }


def test_cardiac_synth_redoes_a_truncated_case(template, tmp_path):
    from xraycardiac.cardiac.synth import CardiacSynthConfig, synthesize_dataset

    out = tmp_path / "synth"
    cfg = CardiacSynthConfig(n=2, seed=1)
    synthesize_dataset(template, out, cfg)
    label = out / "labelsTr" / "case_00001.nii.gz"
    clean = label.read_bytes()
    label.write_bytes(b"")
    summary = synthesize_dataset(template, out, cfg)
    assert summary["written"] == ["case_00001"] and summary["skipped"] == ["case_00000"], summary
    assert label.read_bytes() == clean, "the 0-byte label file was not regenerated"


def test_failed_cardiac_synth_lists_only_verified_cases_and_reruns_to_completion(template, tmp_path):
    from xraycardiac.cardiac.synth import CardiacSynthConfig, synthesize_dataset
    from xraycardiac.io import read_volume

    out = tmp_path / "synth"
    cfg = CardiacSynthConfig(n=3, seed=1)
    # while case 0 is made, a folder appears where case 1's confidence file must go: the OS refuses
    # the final rename of that file (a real fault, midway through case 1)
    obstacle = out / "confidenceTr" / "case_00001.nii.gz"

    def block_case_1(stage: str, fraction: float, **extra) -> None:
        if extra.get("case") == "case_00000":
            obstacle.mkdir(exist_ok=True)  # progress comes at every stage of a case

    with pytest.raises(IsADirectoryError):
        synthesize_dataset(template, out, cfg, progress=block_case_1)
    listed = _listed(out)
    assert listed == {
        "datalist": ["case_00000"],
        "dataset.json": ["1 cases"],
        "synth.json": ["case_00000"],
    }, f"index files after a failure at case 1: {listed}"
    assert _empty_files(out) == [], _empty_files(out)
    leftovers = sorted(p.name for p in out.glob("*Tr/case_00001*") if p.is_file())
    assert leftovers == [], f"files of the failed case remain: {leftovers}"
    obstacle.rmdir()
    summary = synthesize_dataset(template, out, cfg)
    assert summary["written"] == ["case_00001", "case_00002"], summary
    names = [f"case_{i:05d}" for i in range(3)]
    assert _listed(out) == {"datalist": names, "dataset.json": ["3 cases"], "synth.json": names}
    for name in names:
        assert read_volume(out / "labelsTr" / f"{name}.nii.gz").array.max() > 0, name


def test_sigkilled_cardiac_synth_lists_only_verified_cases(template, tmp_path):
    from xraycardiac.cardiac.synth import CardiacSynthConfig, synthesize_dataset

    out = tmp_path / "killed"
    code = (
        "import os, signal, sys\n"
        "from xraycardiac.cardiac.synth import CardiacSynthConfig, synthesize_dataset\n"
        "from xraycardiac.cardiac.templates import template_from_phantom\n"
        "from xraycardiac.phantoms.cardiac import CardiacPhantomConfig\n"
        "t = template_from_phantom(CardiacPhantomConfig(seed=0, shape_ijk=(24, 24, 24), spacing_mm=6.0))\n"
        "kill = lambda stage, fraction, **extra: os.kill(os.getpid(), signal.SIGKILL)\n"
        "synthesize_dataset(t, sys.argv[1], CardiacSynthConfig(n=3, seed=1), progress=kill)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code, str(out)], env=env, timeout=300, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    listed = _listed(out)
    on_disk = sorted(p.name.removesuffix(".nii.gz") for p in (out / "labelsTr").glob("case_*.nii.gz"))
    assert set(listed["datalist"]) <= set(on_disk) and len(listed["datalist"]) <= 1, (listed, on_disk)
    assert listed["dataset.json"] == [f"{len(listed['datalist'])} cases"], listed
    assert _empty_files(out) == [], _empty_files(out)
    summary = synthesize_dataset(template, out, CardiacSynthConfig(n=3, seed=1))
    assert len(summary["written"]) + len(summary["skipped"]) == 3, summary
    names = [f"case_{i:05d}" for i in range(3)]
    assert _listed(out) == {"datalist": names, "dataset.json": ["3 cases"], "synth.json": names}


def test_cardiac_synth_settings_mismatch_names_the_setting_and_both_values(template, tmp_path):
    from xraycardiac.cardiac.synth import CardiacSynthConfig, synthesize_dataset

    synthesize_dataset(template, tmp_path, CardiacSynthConfig(n=1, seed=1))
    with pytest.raises(ValueError, match=r"seed was 1, now 2"):
        synthesize_dataset(template, tmp_path, CardiacSynthConfig(n=1, seed=2))


# ------------------------------------------------------------------------- phantom, job runner


def test_phantom_refuses_a_non_empty_folder_without_overwrite(tmp_path):
    out = tmp_path / "chest"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["phantom", "--out", str(out), "--size", "16", "--spacing-mm", "20"]
    result = runner.invoke(app, args)
    assert result.exit_code != 0, _text(result)
    assert str(out) in _text(result) and "--overwrite" in _text(result), _text(result)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    result = runner.invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, _text(result)
    assert (out / "chest_ct.nrrd").is_file() and (out / "chest_labels.nrrd").is_file()


def test_job_runner_refuses_a_read_only_empty_output_folder(tmp_path):
    from xraycardiac.jobs import JobProcess, JobSpec, run_job

    out = tmp_path / "read_only"
    out.mkdir()
    out.chmod(0o555)
    try:
        spec = JobSpec("selftest", {}, {"n_files": 1, "delay_s": 0}, str(out))
        with pytest.raises(PermissionError, match=str(out)):
            run_job(spec)
        with pytest.raises(PermissionError, match=str(out)):
            JobProcess.start(spec)
        assert stat.S_IMODE(out.stat().st_mode) == 0o555 and not any(out.iterdir())
    finally:
        out.chmod(0o755)


def test_recorded_sample_records_last_and_leaves_nothing_of_a_failed_sample(tmp_path):
    """The one write-then-record step of the dataset writers: a record only after every file; a failure
    (here in the body, after one of two files) leaves neither file nor record, and a rerun completes."""
    from xraycardiac.outputs import recorded_sample, verify_record

    record, files = tmp_path / "s.done.json", ["a.bin", "b.bin"]
    (tmp_path / "a.bin").write_bytes(b"left by an earlier try")
    with pytest.raises(RuntimeError, match="killed"):
        with recorded_sample(record, tmp_path, files):
            assert not (tmp_path / "a.bin").exists()  # what an earlier try left is cleared first
            (tmp_path / "a.bin").write_bytes(b"a")
            raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    with recorded_sample(record, tmp_path, files):
        for name in files:
            (tmp_path / name).write_bytes(name.encode())
    assert verify_record(record, tmp_path) is None
    with pytest.raises(FileNotFoundError, match="c.bin"):  # a file the body did not write: no record
        with recorded_sample(tmp_path / "t.done.json", tmp_path, ["c.bin"]):
            pass
    assert not (tmp_path / "t.done.json").exists()
