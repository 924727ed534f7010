"""Device selection with CPU fallback, seeding, structured logging."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from xraycardiac.runtime import configure_logging, get_logger, seed_everything, select_device


@contextmanager
def _records(name: str = "xraycardiac.runtime") -> Iterator[list[logging.LogRecord]]:
    """Collect records emitted on logger ``name`` (independent of propagation and other handlers)."""
    got: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = got.append  # type: ignore[method-assign]
    logger = logging.getLogger(name)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield got
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    """Undo configure_logging so that other tests see the library's default logging state."""
    logger = logging.getLogger("xraycardiac")
    state = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = state[0]
    logger.setLevel(state[1])
    logger.propagate = state[2]


def test_cpu_and_auto() -> None:
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(" CPU ") == torch.device("cpu")
    auto = select_device()
    if torch.cuda.is_available():
        assert auto.type == "cuda", auto
    else:
        assert auto.type in ("cpu", "mps"), auto


def test_cuda_unavailable_falls_back_to_cpu_with_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    for spec in ("cuda", "cuda:1", "CUDA:0"):
        with _records() as got:
            dev = select_device(spec)
        assert dev == torch.device("cpu"), f"{spec} -> {dev}"
        text = " ".join(r.getMessage() for r in got if r.levelno == logging.WARNING)
        assert "torch.cuda.is_available() is False" in text and "CPU build of torch" in text, text
        assert "using CPU" in text, text


def test_cuda_index_out_of_range_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert select_device("cuda:1") == torch.device("cuda", 1)
    with _records() as got:
        dev = select_device("cuda:2")
    assert dev == torch.device("cpu"), dev
    text = " ".join(r.getMessage() for r in got)
    assert "only 2 CUDA device(s)" in text, text


def test_mps_unavailable_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with _records() as got:
        dev = select_device("mps")
    assert dev == torch.device("cpu"), dev
    assert any("MPS requested" in r.getMessage() for r in got), [r.getMessage() for r in got]


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:-1", "cuda0", "", "tpu", 0])
def test_invalid_device_spec(bad: object) -> None:
    with pytest.raises(ValueError) as err:
        select_device(bad)  # type: ignore[arg-type]
    msg = str(err.value)
    assert "spec" in msg and "--device" in msg and "auto, cpu, cuda" in msg and "mps" in msg, msg


def test_seed_everything_repeats_all_three_generators() -> None:
    def draw() -> tuple[float, float, list[float]]:
        return random.random(), float(np.random.rand()), torch.rand(3).tolist()  # noqa: NPY002

    seed_everything(1234)
    first = draw()
    seed_everything(1234)
    second = draw()
    seed_everything(1235)
    third = draw()
    assert first == second, f"same seed gave {first} then {second}"
    for a, b, which in zip(first, third, ("random", "numpy", "torch"), strict=True):
        assert a != b, f"{which}: seeds 1234 and 1235 gave the same draw {a}"
    for bad in (-1, 2**32, 1.5, "7", True):
        with pytest.raises(ValueError, match="seed"):
            seed_everything(bad)  # type: ignore[arg-type]


def test_get_logger_namespaces() -> None:
    assert get_logger("jobs").name == "xraycardiac.jobs"
    assert get_logger("xraycardiac.io").name == "xraycardiac.io"
    assert get_logger("xraycardiac").name == "xraycardiac"
    assert get_logger("xraycardiacfoo").name == "xraycardiac.xraycardiacfoo"


def test_configure_logging_json_lines(capsys: pytest.CaptureFixture[str], restore_root_logger: None) -> None:
    configure_logging("info", json_lines=True)
    configure_logging("DEBUG", json_lines=True)  # a second call must not duplicate lines
    log = get_logger("jobs")
    log.debug("stage %s", "load", extra={"stage": "load", "progress": 0.25})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 2, f"expected 2 JSON lines, got {len(lines)}: {lines}"
    first, second = (json.loads(ln) for ln in lines)
    assert first["level"] == "DEBUG" and first["logger"] == "xraycardiac.jobs", first
    assert first["message"] == "stage load" and first["stage"] == "load" and first["progress"] == 0.25, first
    assert "T" in first["time"] and first["time"].endswith("+00:00"), first["time"]
    assert second["level"] == "ERROR" and "RuntimeError: boom" in second["exception"], second


def test_configure_logging_text_and_level(
    capsys: pytest.CaptureFixture[str], restore_root_logger: None
) -> None:
    configure_logging("WARNING", json_lines=False)
    log = get_logger("io")
    log.info("hidden")
    log.warning("shown %d", 3)
    err = capsys.readouterr().err
    assert "hidden" not in err, err
    assert "WARNING xraycardiac.io: shown 3" in err, err
    with pytest.raises(ValueError, match="level='loud'"):
        configure_logging("loud")
