"""A stopped ``xraycardiac run job.json --subprocess`` leaves no temporary folder behind (issue 17, item 7).

Real processes and real signals: the CLI runs a ``selftest`` job (a file every 0.2 s, with a helper
grandchild) in a child process; each test has its own ``TMPDIR``. SIGTERM, SIGHUP and Ctrl-C
(SIGINT) end the child's process tree and delete the private ``xraycardiac-job-*`` folder before the
CLI exits by that signal; after a SIGKILL (which nothing can catch) the folder stays, and the next
job start deletes it because its owner process is gone, while folders of live processes stay.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xraycardiac.jobs import JobSpec

PY = sys.executable
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals and /proc")


def _start(cwd: Path, job: Path, tmpdir: Path) -> subprocess.Popen:
    """``python -m xraycardiac.cli run JOB --subprocess`` with TMPDIR=tmpdir; output to files in cwd."""
    env = {k: v for k, v in os.environ.items() if k != "XRAYCARDIAC_DEBUG"}
    env |= {
        "TMPDIR": str(tmpdir),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    with open(cwd / f"{job.stem}.stdout", "w") as out, open(cwd / f"{job.stem}.stderr", "w") as err:
        return subprocess.Popen(
            [PY, "-m", "xraycardiac.cli", "run", str(job), "--subprocess"],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=err,
        )


def _job(folder: Path, name: str, n_files: int, output: str) -> Path:
    params = {"n_files": n_files, "delay_s": 0.2, "spawn_helper": n_files > 1}
    return JobSpec("selftest", {}, params, output).to_json(folder / f"{name}.json")


def _private(tmpdir: Path) -> list[Path]:
    return sorted(tmpdir.glob("xraycardiac-job-*"))


def _start_time(pid: int) -> int | None:
    """/proc/<pid>/stat field 22 (start time); None when the process is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    return _start_time(pid) is not None


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (by parent pid in /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(text[text.rfind(")") + 2 :].split()[1])
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found += kids
        todo += kids
    return found


def _wait_until_working(proc: subprocess.Popen, cwd: Path, tmpdir: Path) -> list[int]:
    """Wait until the child job has written its first file; return the parent's descendants."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, (cwd / "job.stderr").read_text()
        if _private(tmpdir) and list(cwd.glob(".out.tmp-*/file_000.txt")):
            tree = _descendants(proc.pid)
            if len(tree) >= 2:  # the job process and its helper
                return tree
        time.sleep(0.05)
    raise AssertionError("the job did not start writing within 120 s")


def _wait_gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(map(_alive, pids)):
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


@pytest.mark.parametrize(
    ("sig", "status"),
    [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGHUP, -signal.SIGHUP), (signal.SIGINT, 130)],
)
def test_caught_signal_removes_temp_folder_and_child_tree(tmp_path: Path, sig: int, status: int) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    proc = _start(tmp_path, _job(tmp_path, "job", 100, "out"), tmpdir)
    try:
        tree = _wait_until_working(proc, tmp_path, tmpdir)
        proc.send_signal(sig)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = (tmp_path / "job.stderr").read_text()
    assert rc == status, (rc, stderr)
    assert _private(tmpdir) == [], f"temp folder left behind: {_private(tmpdir)}"
    assert _wait_gone(tree) == [], f"processes left running: {_wait_gone(tree)} of {tree}"
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*")), sorted(os.listdir(tmp_path))


def test_sigkill_leaves_folder_that_the_next_start_sweeps(tmp_path: Path) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    proc = _start(tmp_path, _job(tmp_path, "job", 100, "out"), tmpdir)
    try:
        tree = _wait_until_working(proc, tmp_path, tmpdir)
        proc.kill()
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    (stale,) = _private(tmpdir)
    assert (stale / "job.json").is_file(), sorted(os.listdir(stale))
    # the orphaned job process fails on its closed stdout and cleans up its own work folder
    assert _wait_gone(tree, timeout=30) == [], tree

    # folders whose owner is alive stay; a reused pid (other start time) does not make an owner alive
    me = {"pid": os.getpid(), "start_time": _start_time(os.getpid()), "host": socket.gethostname()}
    live, reused = tmpdir / "xraycardiac-job-live", tmpdir / "xraycardiac-job-reused"
    for folder, owner in ((live, me), (reused, me | {"start_time": me["start_time"] - 1})):
        folder.mkdir()
        (folder / "owner.json").write_text(json.dumps(owner))

    second = _start(tmp_path, _job(tmp_path, "again", 1, "out2"), tmpdir)
    assert second.wait(timeout=120) == 0, (tmp_path / "again.stderr").read_text()
    assert _private(tmpdir) == [live], _private(tmpdir)
    assert (tmp_path / "out2" / "file_000.txt").is_file()


def test_sweep_keeps_young_unowned_folders(tmp_path: Path) -> None:
    from xraycardiac.jobs.process import sweep_stale_job_dirs

    young, old = tmp_path / "xraycardiac-job-young", tmp_path / "xraycardiac-job-old"
    for folder in (young, old):
        folder.mkdir()
        (folder / "job.json").write_text("{}")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert sweep_stale_job_dirs(tmp_path) == [old]
    assert young.is_dir() and not old.exists()
