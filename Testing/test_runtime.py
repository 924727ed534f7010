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

from xraycardiac.runtime import configure_logging, get_logger, onednn_conv3d, seed_everything, select_device


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


# --- onednn_conv3d ---------------------------------------------------------------------------------


def _conv_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv3d(2, 16, 3, padding=1),
        torch.nn.SiLU(),
        torch.nn.Conv3d(16, 16, 3, padding=1, stride=2),
        torch.nn.Conv3d(16, 4, 1),
        torch.nn.Conv3d(4, 4, 3, padding=1, padding_mode="circular"),  # not patched: its own forward
    ).eval()


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN not in this torch build")
def test_onednn_conv3d_same_result_native_kernel_avoided_and_restored() -> None:
    """Batch-1 16-channel 32³: PyTorch's own choice is its native kernel; inside the block oneDNN
    runs it (seen in the profiler), the output agrees to float rounding, and the layers come back."""
    net, x = _conv_net(), torch.randn(1, 2, 32, 32, 32)

    def ops(fn) -> list[str]:
        with torch.profiler.profile() as prof:
            fn()
        return [e.name for e in prof.events()]

    with torch.inference_mode():
        plain = net(x)
        assert ops(lambda: net(x)).count("aten::slow_conv3d_forward") >= 2
        with onednn_conv3d(net):
            fast = net(x)
            names = ops(lambda: net(x))
        # the three zero-padded layers through oneDNN, the circular one through its own forward
        assert names.count("aten::mkldnn_convolution") == 3, names
        assert "aten::_pad_circular" in names
        torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
        assert all("forward" not in m.__dict__ for m in net.modules())
        assert torch.equal(net(x), plain)


def test_onednn_conv3d_leaves_training_calls_alone() -> None:
    """With gradients on, the layers' own forward (PyTorch's own backend choice: here its native
    kernel) runs and the gradient reaches the weights."""
    net, x = _conv_net(), torch.randn(1, 2, 8, 8, 8)
    with onednn_conv3d(net), torch.profiler.profile() as prof:
        net(x).square().mean().backward()
    assert "aten::mkldnn_convolution" not in {e.name for e in prof.events()}
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
