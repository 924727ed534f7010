"""The command line: the same job code path, readable errors, light start-up."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from typer.testing import CliRunner

from xraycardiac import Volume
from xraycardiac.cli import app
from xraycardiac.io import read_volume, write_volume

runner = CliRunner()


def test_help_does_not_import_torch():
    code = (
        "import sys; from typer.testing import CliRunner; from xraycardiac.cli import app; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
        "assert 'torch' not in sys.modules, 'torch imported by --help'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_drr_command_writes_views(tmp_path):
    hu = np.full((20, 20, 20), -1000.0, np.float32)
    hu[5:15, 5:15, 5:15] = 200.0
    ct = write_volume(Volume.from_geometry(hu, (5.0, 5.0, 5.0), (-47.5, -47.5, -47.5)), tmp_path / "ct.nrrd")
    out = tmp_path / "out"
    args = ["drr", str(ct), "--out", str(out), "--view", "pa", "--view", "RAO20:-20:15", "--size", "48"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    pa, rao = read_volume(out / "PA.nrrd"), read_volume(out / "RAO20.nrrd")
    assert pa.array.shape == (1, 256, 256) and rao.array.shape == (1, 48, 48)
    geometry = json.loads((out / "RAO20.geometry.json").read_text())
    assert (geometry["primary_angle_deg"], geometry["secondary_angle_deg"]) == (-20.0, 15.0)


def test_drr_command_errors_are_readable(tmp_path):
    result = runner.invoke(app, ["drr", str(tmp_path / "nope.nrrd"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "nope.nrrd" in result.output, result.output
    result = runner.invoke(
        app, ["drr", str(tmp_path / "x.nrrd"), "--out", str(tmp_path / "o"), "--view", "LAO"]
    )
    assert result.exit_code == 2 and "NAME:PRIMARY:SECONDARY" in result.output, result.output
    assert not (tmp_path / "o").exists()


def test_run_command_with_job_json(tmp_path):
    job = tmp_path / "job.json"
    job.write_text(
        json.dumps({"pipeline": "selftest", "params": {"n_files": 2, "delay_s": 0.0}, "output_dir": "o"})
    )
    result = runner.invoke(app, ["run", str(job)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o").is_dir()
