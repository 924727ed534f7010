"""Under torchrun only rank 0 prints: training progress and the final "model package" line.

torchrun starts two CPU ranks (gloo) that run the real printing path (``train_cli._train`` around
``Trainer.fit`` on a 3-parameter model); each rank's stdout and stderr go to its own log file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import sys
from pathlib import Path

import torch

from xraycardiac.train_cli import _train
from xraycardiac.trainer import TrainConfig, Trainer


class Toy(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        x = torch.full((3,), float(i))
        return {"x": x, "y": x.sum(0, keepdim=True)}


def loss(model, batch, gen):
    value = (model(batch["x"]) - batch["y"]).pow(2).mean()
    return value, {}


out = Path(sys.argv[1])
torch.manual_seed(0)
cfg = TrainConfig(steps=3, batch_size=2, lr=0.01, device="cpu", log_every=1, checkpoint_every=100)
trainer = Trainer(torch.nn.Linear(3, 1), loss, Toy(), cfg, out, {"kind": "toy"})
_train(out, lambda progress, command: trainer.fit(progress=progress))
"""


CLI_ONLY = r"""
import sys
from pathlib import Path

from xraycardiac.train_cli import _train


def train(progress, command):
    progress("step 1/1 loss 0.5", 1.0, eta_s=0)
    return {"step": 1, "steps_run": 1, "seconds": 0.1, "entry": {"sha256": "0" * 64}}


_train(Path(sys.argv[1]), train)
"""


@pytest.mark.parametrize("rank", ["0", "1"])
def test_train_cli_prints_on_rank_zero_only(tmp_path, rank):
    """The CLI's printing path with RANK set as torchrun sets it (no process group needed)."""
    env = {**os.environ, "RANK": rank, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    run = subprocess.run([sys.executable, "-c", CLI_ONLY, str(tmp_path)], env=env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    printed = run.stdout + run.stderr
    if rank == "0":
        assert "step 1/1" in printed and "model package" in printed, printed
    else:
        assert printed.strip() == "", f"rank {rank} printed:\n{printed}"


@pytest.mark.slow
def test_only_rank_zero_prints_progress_and_the_model_package(tmp_path):
    """torchrun, 2 CPU ranks (gloo): rank 0's stdout/stderr hold the progress and the model package line,
    rank 1's are empty."""
    script = tmp_path / "train_toy.py"
    script.write_text(CHILD)
    logs = tmp_path / "logs"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--log-dir", str(logs), "--redirects", "3", str(script), str(tmp_path / "run")]  # fmt: skip
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    printed = {}
    for rank in (0, 1):
        files = [f for f in logs.rglob("*") if f.is_file() and f.parent.name == str(rank)]
        assert files, f"no log files of rank {rank} under {logs}: {sorted(logs.rglob('*'))}"
        printed[rank] = "".join(f.read_text() for f in files)
    assert "step 3/3" in printed[0] and "model package" in printed[0], printed[0]
    assert printed[1].strip() == "", f"rank 1 printed:\n{printed[1]}"
