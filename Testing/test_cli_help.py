"""The command line says what it does: demo and drr help texts, the tcdm renderer's default model."""

from __future__ import annotations

import json
import re

from typer.testing import CliRunner

from xraycardiac.cli import app


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return re.sub(r"\s+", " ", result.output)


def test_drr_usage_names_the_ct_argument():
    text = _help("drr")
    assert "{ct}" not in text, f"drr --help shows a raw metavar: {text[:200]}"
    assert re.search(r"Usage: .*drr \[OPTIONS\] CT\b", text), text[:200]


def test_demo_help_describes_every_section_and_output():
    text = _help("demo")
    for words in ("radiograph", "coronary", "3D centreline", "CardiacSynth", "XRayToCT", "report.html",
                  "timings.json", "minutes"):  # fmt: skip
        assert words in text, f"demo --help does not mention {words!r}: {text}"


def test_cardiac_synth_tcdm_defaults_to_the_shipped_model(tmp_path):
    assert "cardiac-tcdm-demo" in _help("cardiac", "synth")
    out = tmp_path / "synth"
    result = CliRunner().invoke(
        app, ["cardiac", "synth", "--renderer", "tcdm", "--n", "1", "--steps", "1", "--ssv-steps", "1,2",
              "--device", "cpu", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    case = json.loads((out / "cases" / "case_00000.json").read_text())
    assert case["renderer"] == "tcdm" and case["model"]["model"] == "cardiac-tcdm-demo", case["model"]
