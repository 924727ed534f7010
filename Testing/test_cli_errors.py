"""Errors a user meets on the command line: one ``error:`` line naming the path or parameter (issue 17).

Item 8: every failure of a command prints one line (``error: <what>: <path>``) and exits 1 (2 for
usage errors, as click does), never a traceback; ``--debug`` or ``XRAYCARDIAC_DEBUG=1`` brings the
traceback back. Each case runs the real CLI in a child process and makes the fault for real: a
folder without write permission (as root, with the capabilities that bypass permissions dropped),
a file size limit (``RLIMIT_FSIZE``: a real short write, EFBIG), a 0-byte PNG, a file where a
folder is expected.

Item 10: messages that pointed at the wrong cause (a folder given as a radiograph "does not
exist", a truncated DICOM "has Modality 'missing'", chest labels as a cardiac template "lower
mgm.strength_mm", ``channels=8,16`` split into characters).
"""

from __future__ import annotations

import ctypes
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from xraycardiac import Volume
from xraycardiac.io import write_volume

PY = sys.executable
REPO = Path(__file__).resolve().parents[1]


def _cli(
    args: list[str | Path],
    cwd: Path,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
    timeout: float = 300,
) -> tuple[int, str, str]:
    """Run ``python -m xraycardiac.cli ARGS`` in a child process; (exit code, stdout, stderr)."""
    base = {k: v for k, v in os.environ.items() if k != "XRAYCARDIAC_DEBUG"}
    base["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    base["COLUMNS"] = "200"  # no wrapping of long lines by rich
    proc = subprocess.run(
        [PY, "-m", "xraycardiac.cli", *map(str, args)],
        cwd=cwd,
        env=base | (env or {}),
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec_fn,
    )
    return proc.returncode, proc.stdout, proc.stderr


def _one_error_line(rc: int, out: str, err: str, *names: str, code: int = 1) -> str:
    """Check: exit ``code``, no traceback, exactly one ``error:`` line, which names each of ``names``."""
    text = f"exit {rc}\n--- stdout\n{out}\n--- stderr\n{err}"
    assert rc == code, text
    assert "Traceback" not in out + err, text
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, text
    for name in names:
        assert name in lines[0], f"{name!r} not named in {lines[0]!r}"
    return lines[0]


@pytest.fixture
def ct(tmp_path: Path) -> Path:
    """A 16^3 CT (HU) with a dense cube in the middle."""
    hu = np.full((16, 16, 16), -1000.0, np.float32)
    hu[4:12, 4:12, 4:12] = 200.0
    return write_volume(
        Volume.from_geometry(hu, (5.0, 5.0, 5.0), (-37.5, -37.5, -37.5)), tmp_path / "ct.nrrd"
    )


def _selftest_job(folder: Path, output: str = "out") -> Path:
    from xraycardiac.jobs import JobSpec

    return JobSpec("selftest", {}, {"n_files": 1, "delay_s": 0.0}, output).to_json(folder / "job.json")


# ------------------------------------------------------------------------------------- item 8


def test_existing_output_folder_is_one_line(tmp_path: Path, ct: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    rc, out, err = _cli(["drr", ct, "--out", tmp_path / "full", "--size", "16"], tmp_path)
    _one_error_line(rc, out, err, str(tmp_path / "full"))


def test_output_below_a_file_is_one_line(tmp_path: Path, ct: Path) -> None:
    (tmp_path / "a_file").write_text("x")
    rc, out, err = _cli(["drr", ct, "--out", tmp_path / "a_file" / "sub" / "out"], tmp_path)
    line = _one_error_line(rc, out, err, str(tmp_path / "a_file"))
    assert "Not a directory" in line, line


def test_folder_given_as_a_job_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    rc, out, err = _cli(["run", tmp_path / "jobs"], tmp_path)
    line = _one_error_line(rc, out, err, str(tmp_path / "jobs"))
    assert "Is a directory" in line and "a file was expected" in line, line


def _drop_permission_bypass() -> None:
    """In the child: drop CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER from the bounding set
    (prctl PR_CAPBSET_DROP), so that root's exec'ed interpreter obeys file permissions."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_permission_denied_is_one_line(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    preexec = None
    if os.geteuid() == 0:
        if not sys.platform.startswith("linux"):
            pytest.skip("root ignores file permissions here and capabilities cannot be dropped")
        probe = subprocess.run(["true"], preexec_fn=_drop_permission_bypass, check=False, capture_output=True)
        if probe.returncode != 0 or b"prctl" in probe.stderr:
            pytest.skip("cannot drop CAP_DAC_OVERRIDE in a child (no CAP_SETPCAP)")
        preexec = _drop_permission_bypass
    try:
        rc, out, err = _cli(
            ["phantom", "--out", locked / "phantom", "--size", "16"], tmp_path, preexec_fn=preexec
        )
    finally:
        locked.chmod(0o755)
    line = _one_error_line(rc, out, err, str(locked / "phantom"))
    # `phantom` checks its --out up front (xraycardiac.outputs.check_output) and says the folder is
    # read-only; the OS's own PermissionError would read "Permission denied"
    assert "read-only" in line or "Permission denied" in line, line


def _file_size_limit() -> None:
    """In the child: files may not grow past 8 bytes (a real short write: EFBIG, as on a full disk)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (8, 8))


def test_short_write_is_one_line_naming_the_output(tmp_path: Path) -> None:
    job = _selftest_job(tmp_path)
    rc, out, err = _cli(["run", job], tmp_path, preexec_fn=_file_size_limit)
    line = _one_error_line(rc, out, err, str(tmp_path / "out"))
    assert "File too large" in line, line
    assert not (tmp_path / "out").exists(), "a failed job must leave no output folder"


def test_short_write_of_the_temp_folder_names_it(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    job = _selftest_job(tmp_path)
    env = {"TMPDIR": str(tmp_path / "tmp")}
    rc, out, err = _cli(["run", job, "--subprocess"], tmp_path, env=env, preexec_fn=_file_size_limit)
    line = _one_error_line(rc, out, err, str(tmp_path / "tmp"))
    assert "File too large" in line, line
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resource.prlimit on another process")
def test_short_write_in_a_child_job_is_one_line(tmp_path: Path) -> None:
    """The job process (not the CLI) meets the size limit: its error comes back as one line."""
    from xraycardiac.jobs import JobSpec

    job = JobSpec("selftest", {}, {"n_files": 2, "delay_s": 2.0}, "out").to_json(tmp_path / "job.json")
    base = {k: v for k, v in os.environ.items() if k != "XRAYCARDIAC_DEBUG"}
    base["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    cli = subprocess.Popen(
        [PY, "-m", "xraycardiac.cli", "run", str(job), "--subprocess"],
        cwd=tmp_path, env=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # limit the job process as soon as it exists (it sleeps 2 s first)
        children = [
            int(p.parent.name)
            for p in Path("/proc").glob("[0-9]*/stat")
            if _parent_pid(p) == cli.pid and "xraycardiac.jobs" in _cmdline(p.parent)
        ]
        if children:
            resource.prlimit(children[0], resource.RLIMIT_FSIZE, (8, 8))
            break
        time.sleep(0.02)
    out, err = cli.communicate(timeout=120)
    line = _one_error_line(cli.returncode, out, err, str(tmp_path / "out"))
    assert "File too large" in line, line


def _parent_pid(stat: Path) -> int | None:
    try:
        text = stat.read_text()
    except OSError:
        return None
    return int(text[text.rfind(")") + 2 :].split()[1])


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_non_finite_view_angle_names_the_option(tmp_path: Path, ct: Path) -> None:
    rc, out, err = _cli(["drr", ct, "--out", tmp_path / "o", "--view", "X:nan:0"], tmp_path)
    text = out + err
    assert rc == 2 and "Traceback" not in text, text
    assert "--view" in text and "X:nan:0" in text and "finite" in text, text
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--size", "0"),
        ("--size", "-4"),
        ("--spacing-mm", "nan"),
        ("--spacing-mm", "0"),
        ("--spacing-mm", "inf"),
    ],
)
def test_phantom_bad_parameter_names_the_option(tmp_path: Path, option: str, value: str) -> None:
    rc, out, err = _cli(["phantom", "--out", tmp_path / "p", option, value], tmp_path)
    text = out + err
    assert rc == 2 and "Traceback" not in text, text
    assert option in text and value in text, text
    assert not (tmp_path / "p").exists()


def test_empty_png_in_evaluate_names_the_file(tmp_path: Path) -> None:
    from xraycardiac.coronary.synth import SynthConfig, synthesize

    data = tmp_path / "pairs"
    synthesize(SynthConfig(trees=1, pairs_per_tree=1, image_size=32, seed=0), data)
    (png,) = data.glob("tree_*/pair_*/view1.png")
    png.write_bytes(b"")
    rc, out, err = _cli(
        ["coronary", "evaluate", "--data", data, "--method", "orb", "--split", "all"], tmp_path
    )
    _one_error_line(rc, out, err, "view1.png")


def test_debug_flag_and_env_var_show_the_traceback(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    for args, env in (
        (["run", tmp_path / "jobs", "--debug"], {}),
        (["--debug", "run", tmp_path / "jobs"], {}),
        (["run", tmp_path / "jobs"], {"XRAYCARDIAC_DEBUG": "1"}),
    ):
        rc, out, err = _cli(args, tmp_path, env=env)
        assert rc == 1 and "Traceback" in err and "IsADirectoryError" in err, (args, env, err)


def test_usage_errors_keep_exit_code_2(tmp_path: Path) -> None:
    rc, out, err = _cli(["drr", tmp_path / "ct.nrrd", "--out", tmp_path / "o", "--view", "LAO"], tmp_path)
    assert rc == 2 and "NAME:PRIMARY:SECONDARY" in out + err and "Traceback" not in out + err, out + err


def test_console_script_is_main() -> None:
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    scripts = re.search(r"\[project\.scripts\]\s*\n((?:[^\[\n].*\n)+)", text)
    assert scripts is not None and 'xraycardiac = "xraycardiac.cli:main"' in scripts.group(1), text


# ------------------------------------------------------------------------------------- item 10


def test_folder_as_radiograph_says_folder(tmp_path: Path) -> None:
    from xraycardiac.jobs.inputs import read_view

    (tmp_path / "pa").mkdir()
    with pytest.raises(IsADirectoryError) as info:
        read_view(tmp_path / "pa", "pa")
    message = str(info.value)
    assert "inputs.pa" in message and "folder" in message and "does not exist" not in message, message


def _xa_dicom(path: Path) -> Path:
    """A minimal DICOM XA header with the C-arm tags geometry_from_dicom needs."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.12.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "XA"
    ds.PositionerPrimaryAngle, ds.PositionerSecondaryAngle = -30.5, 20.0
    ds.DistanceSourceToDetector, ds.DistanceSourceToPatient = 1040.0, 765.0
    ds.ImagerPixelSpacing = [0.278, 0.279]
    ds.Rows, ds.Columns = 512, 510
    ds.save_as(path, enforce_file_format=True)
    return path


def test_truncated_dicom_says_truncated(tmp_path: Path) -> None:
    from xraycardiac.geometry import geometry_from_dicom

    data = _xa_dicom(tmp_path / "whole.dcm").read_bytes()
    assert geometry_from_dicom(tmp_path / "whole.dcm").primary_angle_deg == -30.5
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated") as info:
        geometry_from_dicom(cut)
    assert str(cut) in str(info.value) and "Modality" not in str(info.value), info.value
    for n in range(132, len(data)):  # every cut after the preamble: refused, never read as valid
        cut.write_bytes(data[:n])
        with pytest.raises(ValueError, match="truncated|not a DICOM file"):
            geometry_from_dicom(cut)


def test_folder_as_dicom_says_folder(tmp_path: Path) -> None:
    from xraycardiac.geometry import geometry_from_dicom

    with pytest.raises(IsADirectoryError, match="folder"):
        geometry_from_dicom(tmp_path)


def test_chest_labels_as_cardiac_template_say_so(tmp_path: Path) -> None:
    from xraycardiac.cardiac.mgm import MGMConfig
    from xraycardiac.cardiac.synth import CardiacSynthConfig, synthesize_dataset
    from xraycardiac.cardiac.templates import load_template
    from xraycardiac.phantoms import ChestPhantomConfig, make_chest_phantom

    ct, labels = make_chest_phantom(ChestPhantomConfig(shape_ijk=(24, 24, 24), spacing_mm=6.0))
    template = load_template(
        write_volume(ct, tmp_path / "ct.nrrd"), write_volume(labels, tmp_path / "lab.nrrd")
    )
    config = CardiacSynthConfig(n=1, device="cpu", mgm=MGMConfig(max_tries=2))
    with pytest.raises(ValueError) as info:
        synthesize_dataset(template, tmp_path / "synth", config)
    message = str(info.value)
    assert "does not look like a cardiac template" in message, message
    assert "label 6 (aorta)" in message and "(1, 0, 0)" in message, message  # found vs expected
    assert "lower mgm.strength_mm" not in message, message


def test_comma_separated_override_is_a_tuple_of_ints() -> None:
    from xraycardiac.cardiac.tcdm import TCDMConfig
    from xraycardiac.trainer import TrainConfig, parse_overrides

    cfg, tcfg = parse_overrides(["channels=8,16", "steps=3", "lr=1e-3"], TCDMConfig(), TrainConfig())
    assert cfg.channels == (8, 16) and tcfg.steps == 3 and tcfg.lr == 1e-3, (cfg.channels, tcfg)
    assert parse_overrides(["channels=[8, 16]"], TCDMConfig())[0].channels == (8, 16)
    assert parse_overrides(["channels=8"], TCDMConfig())[0].channels == (8,)
    with pytest.raises(ValueError, match=r"channels.*integers.*'8,x'"):
        parse_overrides(["channels=8,x"], TCDMConfig())
    with pytest.raises(ValueError, match=r"steps.*integer.*'many'"):
        parse_overrides(["steps=many"], TrainConfig())


def test_comma_separated_matcher_override_is_a_tuple_of_ints() -> None:
    from xraycardiac.coronary.matching.train_matcher import parse_matcher_overrides

    cfg, _ = parse_matcher_overrides(["channels=8,8,8", "cell=8"])
    assert cfg.keypoint_net.channels == (8, 8, 8), cfg.keypoint_net.channels
    with pytest.raises(ValueError, match=r"channels.*integers"):
        parse_matcher_overrides(["channels=8,x,8"])
