"""``xraycardiac x2ct ...`` commands."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from xraycardiac.cli import app


def test_cache_command_builds_resumes_and_refuses_a_bad_shard(tmp_path):
    out = tmp_path / "cache"
    args = [
        "x2ct",
        "cache",
        "--source",
        "phantom:0-1",
        "--out",
        str(out),
        "--grid",
        "16",
        "--spacing-mm",
        "16",
    ]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "2 cases written" in first.output
    info = json.loads((out / "dataset.json").read_text())
    assert info["config"]["grid"] == 16 and len(info["cases"]) == 2
    again = CliRunner().invoke(app, [*args, "--shard", "1/2"])
    assert again.exit_code == 0 and "0 cases written, 1 already complete" in again.output, again.output
    bad = CliRunner().invoke(app, [*args, "--shard", "3/2"])
    assert bad.exit_code == 1 and "shard" in bad.output
    bad = CliRunner().invoke(app, [*args, "--preset", "huge"])
    assert bad.exit_code == 1 and "preset" in bad.output
