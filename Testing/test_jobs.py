"""The job layer: spec validation, in-process and subprocess runs, JSON-lines protocol, cancel, overwrite."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from xraycardiac.jobs import (
    REPORT_NAME,
    JobCancelled,
    JobError,
    JobProcess,
    JobSpec,
    Progress,
    get,
    register,
    run_in_subprocess,
    run_job,
)
from xraycardiac.jobs.process import parse_event_line

PY = sys.executable
REPO = Path(__file__).resolve().parents[1]


def _leftovers(folder: Path) -> list[str]:
    """Hidden work/aside folders the runner may have left next to an output folder."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _cli(args: list[str], cwd: Path, timeout: float = 30) -> tuple[int, list[dict], str, list[str]]:
    """Run ``python -m xraycardiac.jobs``; return (rc, events, stderr, stdout lines that are not events)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [PY, "-m", "xraycardiac.jobs", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    events, junk = [], []
    for line in proc.stdout.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            junk.append(line)
            continue
        if isinstance(obj, dict) and "event" in obj:
            events.append(obj)
        else:
            junk.append(line)
    return proc.returncode, events, proc.stderr, junk


# ------------------------------------------------------------------------------------------- spec


def test_spec_rejects_unknown_and_mistyped_fields(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="outputdir"):
        JobSpec.from_dict({"pipeline": "selftest", "output_dir": "o", "outputdir": "x"})
    with pytest.raises(ValueError, match="inputs.ct"):
        JobSpec.from_dict({"pipeline": "selftest", "output_dir": "o", "inputs": {"ct": 3}})
    with pytest.raises(ValueError, match="params"):
        JobSpec.from_dict({"pipeline": "selftest", "output_dir": "o", "params": [1, 2]})
    with pytest.raises(ValueError, match="output_dir"):
        JobSpec.from_dict({"pipeline": "selftest"})
    with pytest.raises(ValueError, match="overwrite"):
        JobSpec("selftest", {}, {"overwrite": "yes"}, "o")
    with pytest.raises(ValueError, match="pipeline"):
        JobSpec("../evil", {}, {}, "o")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        JobSpec.from_json(bad)


def test_spec_json_round_trip_resolves_relative_paths_against_job_folder(tmp_path: Path) -> None:
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "ct.nrrd").write_bytes(b"x")
    path = JobSpec("selftest", {"ct": "ct.nrrd"}, {"n_files": 2}, "out").to_json(job_dir / "job.json")
    spec = JobSpec.from_json(path)
    assert spec.inputs["ct"] == str(job_dir / "ct.nrrd"), spec.inputs
    assert spec.output_dir == str(job_dir / "out"), spec.output_dir
    assert spec.params == {"n_files": 2}
    spec.check_inputs()
    assert spec.param("n_files", 5, int) == 2
    assert spec.param("delay_s", 0.5, float) == 0.5
    with pytest.raises(ValueError, match="params.n_files"):
        JobSpec("selftest", {}, {"n_files": True}, "o").param("n_files", 5, int)


def test_missing_input_names_key_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "ct.nrrd"
    spec = JobSpec("selftest", {"ct": str(missing)}, {"n_files": 1, "delay_s": 0}, str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError) as info:
        run_job(spec)
    assert "'ct'" in str(info.value) and str(missing) in str(info.value), str(info.value)
    assert not (tmp_path / "out").exists()
    # The same message reaches a caller of the command line.
    spec.to_json(tmp_path / "job.json")
    rc, events, _, _ = _cli(["selftest", "job.json"], cwd=tmp_path)
    assert rc == 1, (rc, events)
    assert events[-1]["event"] == "error" and events[-1]["type"] == "FileNotFoundError", events[-1]
    assert "'ct'" in events[-1]["error"] and str(missing) in events[-1]["error"], events[-1]
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == [], _leftovers(tmp_path)


# ------------------------------------------------------------------------------------- progress


def test_progress_eta_and_monotonic_fraction() -> None:
    now = [100.0]
    events: list[dict] = []
    progress = Progress(events.append, clock=lambda: now[0])
    progress("a", 0.0)
    now[0] = 110.0
    progress("b", 0.25, item=3)
    now[0] = 112.0
    progress("c", 0.2)  # going backwards is held at the previous value
    assert events[0]["eta_s"] is None, events[0]
    assert events[1]["eta_s"] == pytest.approx(30.0), events[1]  # 10 s for 25 % -> 30 s left
    assert events[1]["item"] == 3
    assert events[2]["progress"] == 0.25, events[2]
    with pytest.raises(ValueError, match="reserved"):
        progress("d", 0.5, eta_s=1)
    with pytest.raises(ValueError, match="finite"):
        progress("d", float("nan"))


def test_parse_event_line_never_fails() -> None:
    assert parse_event_line('{"event": "progress", "progress": 0.5}')["progress"] == 0.5
    assert parse_event_line('{"stage": "x", "progress": 0.5}')["event"] == "progress"
    for junk in ("hello", "[1, 2]", '{"a": 1}', "{broken"):
        event = parse_event_line(junk)
        assert event["event"] == "log" and event["message"] == junk, event


# ------------------------------------------------------------------------------------- in-process


def test_run_job_in_process_writes_outputs_report_and_increasing_progress(tmp_path: Path) -> None:
    (tmp_path / "in.bin").write_bytes(b"abc")
    out = tmp_path / "out"
    events: list[dict] = []
    spec = JobSpec("selftest", {"data": str(tmp_path / "in.bin")}, {"n_files": 4, "delay_s": 0.01}, str(out))
    summary = run_job(spec, on_event=events.append)

    names = sorted(p.name for p in out.iterdir())
    assert names == ["file_000.txt", "file_001.txt", "file_002.txt", "file_003.txt", REPORT_NAME], names
    assert summary["outputs"]["file_002"] == "file_002.txt"
    assert summary["inputs"]["data"]["bytes"] == 3, summary["inputs"]
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["summary"] == summary
    assert report["spec"]["pipeline"] == "selftest" and report["spec"]["output_dir"] == str(out), report[
        "spec"
    ]
    assert report["xraycardiac_version"] and report["duration_s"] >= 0.04, report["duration_s"]
    for key in ("started_at", "finished_at", "python", "host", "platform"):
        assert report[key], key

    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("done") == 1, kinds
    fractions = [e["progress"] for e in events if e["event"] == "progress"]
    assert len(fractions) >= 4 and fractions[-1] == 1.0, fractions
    assert all(b >= a for a, b in zip(fractions, fractions[1:], strict=False)), fractions
    assert len(set(fractions)) >= 4, fractions
    assert _leftovers(tmp_path) == [], _leftovers(tmp_path)


def test_failing_pipeline_in_process_leaves_nothing(tmp_path: Path) -> None:
    events: list[dict] = []
    spec = JobSpec("selftest", {}, {"n_files": 5, "delay_s": 0, "fail_at": 2}, str(tmp_path / "out"))
    with pytest.raises(RuntimeError, match="fail_at"):
        run_job(spec, on_event=events.append)
    assert events[-1] == {"event": "error", "error": events[-1]["error"], "type": "RuntimeError"}, events[-1]
    assert sorted(os.listdir(tmp_path)) == [], os.listdir(tmp_path)


def test_pipeline_that_lists_an_unwritten_output_fails(tmp_path: Path) -> None:
    @register("test_liar")
    def liar(spec, work_dir, progress):  # noqa: ANN001, ANN202
        (work_dir / "a.txt").write_text("a")
        return {"outputs": {"a": "a.txt", "b": "b.nrrd"}}

    with pytest.raises(RuntimeError, match="b.nrrd"):
        run_job(JobSpec("test_liar", {}, {}, str(tmp_path / "out")))
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)


def test_unknown_pipeline_lists_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="selftest"):
        get("no_such_pipeline")
    with pytest.raises(ValueError, match="no_such_pipeline"):
        run_job(JobSpec("no_such_pipeline", {}, {}, str(tmp_path / "out")))


def test_existing_output_dir_needs_overwrite_then_is_replaced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    spec = JobSpec("selftest", {}, {"n_files": 2, "delay_s": 0}, str(out))
    with pytest.raises(FileExistsError, match="overwrite"):
        run_job(spec)
    assert sorted(os.listdir(out)) == ["old.txt"], os.listdir(out)
    with pytest.raises(FileExistsError, match="overwrite"):
        JobProcess.start(spec)

    run_job(JobSpec("selftest", {}, {"n_files": 2, "delay_s": 0, "overwrite": True}, str(out)))
    names = sorted(os.listdir(out))
    assert names == ["file_000.txt", "file_001.txt", REPORT_NAME], names
    assert _leftovers(tmp_path) == [], _leftovers(tmp_path)

    # An existing empty folder is no output: no overwrite needed.
    empty = tmp_path / "empty"
    empty.mkdir()
    run_job(JobSpec("selftest", {}, {"n_files": 1, "delay_s": 0}, str(empty)))
    assert (empty / "file_000.txt").is_file()


def test_import_stays_light() -> None:
    code = "import sys, xraycardiac.jobs as j; j.get('selftest'); print(sorted(m for m in sys.modules if m == 'torch'))"
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=30, check=True).stdout
    assert out.strip() == "[]", out


# ------------------------------------------------------------------------------------ subprocess


def test_cli_prints_only_json_lines_and_succeeds(tmp_path: Path) -> None:
    JobSpec("selftest", {}, {"n_files": 3, "delay_s": 0.01}, "result").to_json(tmp_path / "job.json")
    rc, events, stderr, junk = _cli(["selftest", "job.json"], cwd=tmp_path)
    assert rc == 0, stderr
    assert junk == [], junk
    assert events[0]["event"] == "start" and events[-1]["event"] == "done", events
    assert events[-1]["output_dir"] == str(tmp_path / "result"), events[-1]
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and all({"stage", "progress", "eta_s"} <= e.keys() for e in progress), progress
    assert (tmp_path / "result" / "file_002.txt").is_file()


def test_cli_keeps_stray_output_off_stdout(tmp_path: Path) -> None:
    # A pipeline that prints, writes to fd 1 directly, warns and logs: stdout must stay pure JSON.
    script = tmp_path / "noisy.py"
    script.write_text(
        textwrap.dedent(
            """
            import logging, os, sys, warnings
            from xraycardiac.jobs import register
            from xraycardiac.jobs.__main__ import main

            @register("noisy")
            def noisy(spec, work_dir, progress):
                print("a stray print")
                os.write(1, b"raw bytes on fd 1\\n")
                warnings.warn("a warning")
                logging.getLogger("xraycardiac.test").info("an info record")
                progress("working", 1.0)
                return {}

            sys.exit(main(sys.argv[1:]))
            """
        )
    )
    JobSpec("noisy", {}, {}, "out").to_json(tmp_path / "job.json")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [PY, str(script), "noisy", "job.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]  # fails on any non-JSON line
    messages = [e["message"] for e in events if e["event"] == "log"]
    assert any("a warning" in m for m in messages) and "an info record" in messages, messages
    assert "a stray print" in proc.stderr and "raw bytes on fd 1" in proc.stderr, proc.stderr


def test_cli_failing_job_exits_1_and_leaves_nothing(tmp_path: Path) -> None:
    JobSpec("selftest", {}, {"n_files": 5, "delay_s": 0.01, "fail_at": 3}, "out").to_json(
        tmp_path / "job.json"
    )
    rc, events, stderr, junk = _cli(["selftest", "job.json"], cwd=tmp_path)
    assert rc == 1, (rc, stderr)
    assert junk == [], junk
    assert events[-1]["event"] == "error" and events[-1]["type"] == "RuntimeError", events[-1]
    assert "fail_at" in events[-1]["error"], events[-1]
    assert sorted(os.listdir(tmp_path)) == ["job.json"], os.listdir(tmp_path)


@pytest.mark.parametrize(
    ("job", "args", "needle"),
    [
        ({"pipeline": "selftest", "output_dir": "o", "colour": 1}, ["selftest", "job.json"], "colour"),
        ({"pipeline": "selftest", "output_dir": "o"}, ["other", "job.json"], "other"),
        ({"pipeline": "selftest", "output_dir": "o"}, ["selftest"], "job_json"),
        ({"pipeline": "selftest", "output_dir": "o"}, ["selftest", "missing.json"], "missing.json"),
    ],
)
def test_cli_bad_spec_or_command_line_exits_2(
    tmp_path: Path, job: dict, args: list[str], needle: str
) -> None:
    (tmp_path / "job.json").write_text(json.dumps(job))
    rc, events, _, junk = _cli(args, cwd=tmp_path)
    assert rc == 2, (rc, events)
    assert junk == [] and len(events) == 1 and events[0]["event"] == "error", (events, junk)
    assert needle in events[0]["error"], events[0]
    assert not (tmp_path / "o").exists()


def test_run_in_subprocess_returns_summary_and_raises_job_error(tmp_path: Path) -> None:
    events: list[dict] = []
    spec = JobSpec("selftest", {}, {"n_files": 2, "delay_s": 0}, str(tmp_path / "ok"))
    summary = run_in_subprocess(spec, on_event=events.append)
    assert summary["n_files"] == 2 and summary["pid"] != os.getpid(), summary
    assert events[-1]["event"] == "done", events[-1]

    bad = JobSpec("selftest", {}, {"n_files": 3, "delay_s": 0, "fail_at": 1}, str(tmp_path / "bad"))
    with pytest.raises(JobError) as info:
        run_in_subprocess(bad)
    err = info.value
    assert err.error_type == "RuntimeError" and "fail_at" in err.message, str(err)
    assert err.returncode == 1 and "Traceback" in err.stderr_tail, (err.returncode, err.stderr_tail)
    assert sorted(os.listdir(tmp_path)) == ["ok"], os.listdir(tmp_path)


@pytest.mark.skipif(os.name == "nt", reason="process groups are POSIX")
def test_cancel_kills_process_tree_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # delay_s is long enough that a poll() waiting for the next line would be caught below.
    spec = JobSpec("selftest", {}, {"n_files": 50, "delay_s": 1.0, "spawn_helper": True}, str(out))
    job = JobProcess.start(spec)
    pgid = job.pid
    helper_pid = None
    deadline = time.monotonic() + 20
    while helper_pid is None or job.last_progress["progress"] == 0:
        assert time.monotonic() < deadline, f"no progress within 20 s; stderr:\n{job.stderr_tail}"
        t0 = time.monotonic()
        events = job.poll()
        assert time.monotonic() - t0 < 0.5, f"poll() blocked for {time.monotonic() - t0:.2f} s"
        helper_pid = next((e["helper_pid"] for e in events if "helper_pid" in e), helper_pid)
        time.sleep(0.02)
    assert job.running and job.status == "running"
    assert job.work_dir.is_dir() and any(job.work_dir.iterdir()), "the job should have written files by now"

    t0 = time.monotonic()
    job.cancel(timeout=5)
    took = time.monotonic() - t0
    assert took < 5, f"cancel took {took:.1f} s"
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    with pytest.raises(ProcessLookupError):
        os.kill(helper_pid, 0)
    assert not out.exists() and not job.work_dir.exists(), os.listdir(tmp_path)
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)
    assert job.status == "cancelled" and not job.running, job.status
    with pytest.raises(JobCancelled):
        job.wait(timeout=1)


@pytest.mark.skipif(os.name == "nt", reason="signals are POSIX")
def test_job_killed_hard_is_reported_and_cleaned_up(tmp_path: Path) -> None:
    # SIGKILL gives the job no chance to clean up: the parent must delete the work folder.
    job = JobProcess.start(JobSpec("selftest", {}, {"n_files": 50, "delay_s": 0.1}, str(tmp_path / "out")))
    deadline = time.monotonic() + 20
    while not job.work_dir.exists() or not any(job.work_dir.iterdir()):
        assert time.monotonic() < deadline and job.running, job.stderr_tail
        time.sleep(0.02)
    os.kill(job.pid, signal.SIGKILL)
    with pytest.raises(JobError) as info:
        job.wait(timeout=10)
    assert "signal 9" in str(info.value), str(info.value)
    assert job.status == "failed", job.status
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)


def test_start_with_missing_interpreter_leaves_nothing(tmp_path: Path) -> None:
    spec = JobSpec("selftest", {}, {"n_files": 1}, str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError):
        JobProcess.start(spec, python=str(tmp_path / "no-such-python"))
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"views": [{"name": "X", "sid_mm": float("nan")}]}, "params.views[0].sid_mm (nan)"),
        ({"step_mm": float("inf")}, "params.step_mm (inf)"),
        ({"out": {"where": object()}}, "params.out.where (<object"),
    ],
)
def test_a_parameter_json_cannot_hold_is_named(params: dict, named: str) -> None:
    with pytest.raises(ValueError, match=r"must be JSON-serialisable") as info:
        JobSpec(pipeline="selftest", params=params, output_dir="out")
    assert named in str(info.value), str(info.value)
