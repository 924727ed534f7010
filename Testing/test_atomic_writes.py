"""Every atomic writer goes through ``xraycardiac.outputs``: a failed write leaves no temp file and no change.

The real fault is cheap: the destination name is an existing folder, so the final rename fails after
the temp file was written in full.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from xraycardiac.jobs.spec import JobSpec
from xraycardiac.jsonutil import is_int, is_number, json_default, json_safe
from xraycardiac.outputs import atomic_path, parse_shard, write_bytes_atomic, write_json_atomic
from xraycardiac.report import write_report
from xraycardiac.trainer import write_model_package

WRITERS: dict[str, Callable[[Path], object]] = {
    "write_json_atomic": lambda p: write_json_atomic(p, {"a": 1}),
    "write_bytes_atomic": lambda p: write_bytes_atomic(b"abc", p),
    "JobSpec.to_json": lambda p: JobSpec("selftest", {}, {}, "out").to_json(p),
    "write_report": lambda p: write_report(p, "title", []),
    "write_model_package": lambda p: write_model_package(
        p.parent, p, name="m", version="1", training_data="none", config={}, description="d", command="c"
    ),
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_failed_rename_leaves_no_temp_file(tmp_path: Path, name: str) -> None:
    target = tmp_path / ("model.json" if name == "write_model_package" else "out.json")
    target.mkdir()
    (target / "keep.txt").write_text("kept")
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"w")
    with pytest.raises(OSError):
        WRITERS[name](weights if name == "write_model_package" else target)
    assert (target / "keep.txt").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, weights.name]), name


def test_atomic_path_keeps_the_old_file_when_the_block_fails(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(path, ".bin") as tmp:
        tmp.write_bytes(b"new, half")
        raise RuntimeError("writer failed")
    assert path.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [path]
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"new")
    assert path.read_bytes() == b"new" and sorted(tmp_path.iterdir()) == [path]


def test_write_json_atomic_writes_the_same_bytes_as_json_dumps(tmp_path: Path) -> None:
    data = {"b": [1, 2.5], "a": None}
    write_json_atomic(tmp_path / "x.json", data, indent=2, allow_nan=False, default=None)
    assert (tmp_path / "x.json").read_text(
        encoding="utf-8"
    ) == '{\n  "b": [\n    1,\n    2.5\n  ],\n  "a": null\n}\n'
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "nan.json", [float("nan")], allow_nan=False)
    assert not list(tmp_path.glob(".nan.json*")) and not (tmp_path / "nan.json").exists()


def test_parse_shard_one_rule_for_every_command() -> None:
    assert parse_shard("1/4") == (1, 4) == parse_shard(" 1 / 4 ") == parse_shard((1, 4))
    for bad in ("4/4", "x", "1/0", "-1/2", (2, 2), ("1", 4)):
        with pytest.raises(ValueError, match="^shard: expected i/n"):
            parse_shard(bad)


def test_json_value_checks() -> None:
    assert is_int(3) and not is_int(True) and not is_int(2.0) and not is_int(0, 1) and is_int(1, 1)
    assert (
        not is_int(np.int64(3)) and is_int(np.int64(3), 1, numpy=True) and not is_int(np.bool_(1), numpy=True)
    )
    assert is_number(2.5) and not is_number(float("inf")) and not is_number(False)
    assert is_number(np.float32(1), numpy=True) and not is_number(np.float32(1))
    assert json_default(np.arange(3)) == [0, 1, 2] and json_default(np.float32(0.5)) == 0.5
    assert json_default(Path("a")) == "a"
    with pytest.raises(TypeError):
        json_default(object())
    assert json_safe({1: (np.float64("nan"), np.arange(2)), "p": Path("b")}) == {
        "1": [None, [0, 1]],
        "p": "b",
    }
