"""A job in a child ``python -m xraycardiac.jobs`` process that a GUI timer polls and can cancel.

``JobProcess`` never blocks the caller except in ``wait()``/``cancel()``: stdout (JSON lines, one
event each) and stderr are read by daemon threads, and ``poll()`` returns the events gathered so
far. The child runs in its own process group (POSIX session / Windows process group) so that
``cancel()`` can end the whole process tree; the work folder is deleted so nothing partial remains.

Temporary folders: each job gets a private ``xraycardiac-job-XXXX`` folder in the temp folder
(its ``job.json`` and ``owner.json``: the pid, process start time and host of the process that
started it). ``run_in_subprocess`` turns SIGTERM and SIGHUP into ``JobTerminated`` while it waits,
so the child's process tree is ended and the folders are deleted before the signal ends the caller
(Ctrl-C does the same through ``KeyboardInterrupt``). A SIGKILL cannot be caught: the next
``JobProcess.start`` deletes the folders whose owner process is gone (``sweep_stale_job_dirs``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import xraycardiac
from xraycardiac.jobs.runner import (
    JobCancelled,
    JobError,
    JobTerminated,
    check_output_dir,
    new_work_dir,
    no_space_error,
)
from xraycardiac.jobs.spec import JobSpec

_STDERR_LINES = 200  # stderr lines kept for error display
_EXIT_GRACE_S = 2.0  # seconds a cancelled child gets between SIGTERM and SIGKILL
_PRIVATE_PREFIX = "xraycardiac-job-"  # private folders in the temp folder
_OWNER_NAME = "owner.json"  # who made a private folder: {"pid", "start_time", "host"}
_UNOWNED_GRACE_S = 3600.0  # a private folder without owner.json is stale after this (older versions)

_LIVE: weakref.WeakSet[JobProcess] = weakref.WeakSet()


class JobProcess:
    """A job running in a child ``python -m xraycardiac.jobs`` process.

    Create with ``JobProcess.start(spec)``. ``poll()``, ``running``, ``status`` and ``returncode``
    return at once (safe from a GUI timer); ``wait()`` blocks; ``cancel()`` blocks for at most
    ``timeout`` seconds plus a moment. Jobs still running when the interpreter exits are cancelled.
    """

    def __init__(self, proc: subprocess.Popen, spec: JobSpec, work_dir: Path, private_dir: Path) -> None:
        """Internal; use ``JobProcess.start``."""
        self.spec = spec
        self.work_dir = work_dir
        self._proc = proc
        self._private_dir = private_dir
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self._unpolled: list[dict[str, Any]] = []
        self._stderr: deque[str] = deque(maxlen=_STDERR_LINES)
        self._done: dict[str, Any] | None = None
        self._error: dict[str, Any] | None = None
        self._last_progress: dict[str, Any] | None = None
        self._cancelled = False
        self._finished = False
        self._exit_seen: float | None = None
        self._lock = threading.RLock()
        self._readers = [
            threading.Thread(target=self._read_stdout, name=f"job-{proc.pid}-stdout", daemon=True),
            threading.Thread(target=self._read_stderr, name=f"job-{proc.pid}-stderr", daemon=True),
        ]
        for t in self._readers:
            t.start()
        _LIVE.add(self)

    @classmethod
    def start(
        cls, spec: JobSpec, python: str | None = None, env: dict[str, str | None] | None = None
    ) -> JobProcess:
        """Check the spec, then launch the job in a child process and return at once.

        Args:
            spec: the job; relative paths are taken relative to the current directory.
            python: interpreter to run (PythonSlicer inside Slicer); default ``sys.executable``.
            env: variables set (str) or removed (None) on top of ``os.environ`` for the child.

        Raises:
            FileNotFoundError: an input is missing. FileExistsError: output_dir is not empty and
            ``params.overwrite`` is not true. OSError: the interpreter could not be started.
        """
        spec = spec.resolved()
        spec.check_inputs()
        out = Path(spec.output_dir)
        check_output_dir(out, bool(spec.params.get("overwrite", False)))
        with contextlib.suppress(OSError):
            sweep_stale_job_dirs()
        private = Path(tempfile.mkdtemp(prefix=_PRIVATE_PREFIX))
        work: Path | None = None
        proc: subprocess.Popen | None = None
        try:
            (private / _OWNER_NAME).write_text(json.dumps(_owner_record()), encoding="utf-8")
            job_json = spec.to_json(private / "job.json")
            work = new_work_dir(out)
            cmd = [python or sys.executable, "-m", "xraycardiac.jobs", spec.pipeline, str(job_json)]
            cmd += ["--work-dir", str(work)]
            if os.name == "nt":
                group: dict[str, Any] = {
                    "creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
                }
            else:
                group = {"start_new_session": True}
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=private,
                env=_child_env(env),
                **group,
            )
            return cls(proc, spec, work, private)
        except BaseException as exc:
            if proc is not None:  # e.g. a signal between Popen and here
                with contextlib.suppress(OSError):
                    proc.kill()
                proc.wait()
            shutil.rmtree(private, ignore_errors=True)
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
            named = no_space_error(exc, private.parent)  # writing job.json: the temp folder is full
            if named is not None:
                raise named from exc
            raise

    # ------------------------------------------------------------------ non-blocking queries

    @property
    def pid(self) -> int:
        """Child process id; on POSIX also its process group id."""
        return self._proc.pid

    @property
    def output_dir(self) -> Path:
        return Path(self.spec.output_dir)

    @property
    def returncode(self) -> int | None:
        """Exit status, or None while the process runs."""
        return self._proc.poll()

    @property
    def running(self) -> bool:
        """True until the process has exited and its output has been read."""
        with self._lock:
            self._update()
            return not self._finished

    @property
    def status(self) -> str:
        """``"running"``, ``"done"``, ``"failed"`` or ``"cancelled"``."""
        with self._lock:
            self._update()
            if not self._finished:
                return "running"
            if self._done is not None and self._proc.returncode == 0:
                return "done"  # also when cancel() came after the outputs were in place
            return "cancelled" if self._cancelled else "failed"

    @property
    def last_progress(self) -> dict[str, Any] | None:
        """The most recent progress event (stage, progress, eta_s), or None."""
        with self._lock:
            self._update()
            return self._last_progress

    @property
    def summary(self) -> dict | None:
        """The pipeline's summary once the job is done, else None."""
        with self._lock:
            return self._done.get("summary") if self._done is not None and self.status == "done" else None

    @property
    def stderr_tail(self) -> str:
        """The last ~200 lines the child wrote to stderr."""
        return "\n".join(list(self._stderr))

    @property
    def error(self) -> JobError | None:
        """Why the job failed or was cancelled, once it has ended that way; else None."""
        status = self.status
        if status == "cancelled":
            return JobCancelled(
                f"job {self.spec.pipeline!r} was cancelled",
                returncode=self._proc.returncode,
                stderr_tail=self.stderr_tail,
            )
        if status != "failed":
            return None
        if self._error is not None:
            message, error_type = str(self._error.get("error", "")), self._error.get("type")
        else:
            rc = self._proc.returncode
            how = f"was killed by signal {-rc}" if rc is not None and rc < 0 else f"exited with code {rc}"
            message, error_type = (
                f"job process for pipeline {self.spec.pipeline!r} {how} without reporting an error",
                None,
            )
        return JobError(
            message, error_type=error_type, returncode=self._proc.returncode, stderr_tail=self.stderr_tail
        )

    def poll(self, timeout: float = 0.0) -> list[dict[str, Any]]:
        """Events received since the last call, oldest first.

        Args:
            timeout: seconds to wait for a first event when none is pending (0: never wait).
        """
        with self._lock:
            if timeout > 0 and not self._unpolled and self._queue.empty() and not self._finished:
                with contextlib.suppress(queue.Empty):
                    self._record(self._queue.get(timeout=timeout))
            self._update()
            events, self._unpolled = self._unpolled, []
            return events

    # ---------------------------------------------------------------------------- blocking

    def wait(self, timeout: float | None = None) -> dict:
        """Block until the job ends and return its summary.

        Raises:
            TimeoutError: still running after ``timeout`` seconds (it keeps running).
            JobCancelled: the job was cancelled.
            JobError: the job failed; carries the child's message and stderr tail.
        """
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"job {self.spec.pipeline!r} still running after {timeout} s") from None
        with self._lock:
            self._finish(join_timeout=_EXIT_GRACE_S)
            error = self.error
            if error is not None:
                raise error
            assert self._done is not None
            return self._done["summary"]

    def cancel(self, timeout: float = 5.0) -> None:
        """Stop the job and its whole process tree, and delete its work folder.

        Sends SIGTERM to the process group (the job cleans up and exits), then SIGKILL after
        ``timeout`` seconds; on Windows ``taskkill /T /F``. Does nothing if the job has ended.
        """
        with self._lock:
            self._update()
            if self._finished:
                return
            if self._proc.poll() is None:
                self._cancelled = True
                if os.name == "nt":
                    subprocess.run(
                        ["taskkill", "/T", "/F", "/PID", str(self.pid)],
                        capture_output=True, check=False, creationflags=subprocess.CREATE_NO_WINDOW,
                    )  # fmt: skip
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self._proc.wait(timeout)
                else:
                    self._signal_group(signal.SIGTERM)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self._proc.wait(timeout)
            self._finish(join_timeout=_EXIT_GRACE_S)

    def __enter__(self) -> JobProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cancel()

    # ---------------------------------------------------------------------------- internals

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def _read_stdout(self) -> None:
        assert self._proc.stdout is not None
        for raw in self._proc.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if line:
                self._queue.put(parse_event_line(line))

    def _read_stderr(self) -> None:
        assert self._proc.stderr is not None
        for raw in self._proc.stderr:
            self._stderr.append(raw.decode("utf-8", "replace").rstrip("\r\n"))

    def _record(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "progress":
            self._last_progress = event
        elif kind == "done":
            self._done = event
        elif kind == "error":
            self._error = event
        self._unpolled.append(event)

    def _drain(self) -> None:
        while True:
            try:
                self._record(self._queue.get_nowait())
            except queue.Empty:
                return

    def _update(self) -> None:
        """Collect queued events; finish up once the process has exited and its pipes are read."""
        self._drain()
        if self._finished or self._proc.poll() is None:
            return
        if self._exit_seen is None:
            self._exit_seen = time.monotonic()
        readers_done = not any(t.is_alive() for t in self._readers)
        # A leftover grandchild can hold the pipes open; do not wait for it forever.
        if readers_done or time.monotonic() - self._exit_seen > _EXIT_GRACE_S:
            self._finish(join_timeout=0.0)

    def _finish(self, join_timeout: float) -> None:
        """After the child has exited: end stray group members, read the pipes dry, delete temp folders."""
        if self._finished:
            return
        if self._proc.poll() is None:  # taskkill failed, or SIGTERM was not enough
            self._proc.kill()
        if os.name != "nt":
            self._signal_group(signal.SIGKILL)
            self._proc.wait()
            deadline = time.monotonic() + join_timeout
            while time.monotonic() < deadline:  # until the kernel has removed the whole group
                try:
                    os.killpg(self.pid, 0)
                except (ProcessLookupError, PermissionError):
                    break
                time.sleep(0.01)
        else:
            self._proc.wait()
        for t in self._readers:
            t.join(join_timeout)
        self._drain()
        if not any(t.is_alive() for t in self._readers):
            for pipe in (self._proc.stdout, self._proc.stderr):
                if pipe is not None:
                    pipe.close()
        shutil.rmtree(self.work_dir, ignore_errors=True)  # gone already unless the job crashed or was killed
        shutil.rmtree(self._private_dir, ignore_errors=True)
        self._finished = True
        _LIVE.discard(self)


def parse_event_line(line: str) -> dict[str, Any]:
    """One stdout line of a job process -> event dict; anything that is not an event becomes a log event."""
    try:
        obj = json.loads(line)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        if isinstance(obj.get("event"), str):
            return obj
        if "progress" in obj:
            return {"event": "progress", **obj}
    return {"event": "log", "level": "info", "message": line, "source": "stdout"}


def _child_env(extra: dict[str, str | None] | None) -> dict[str, str]:
    """``os.environ`` + ``extra``, with unbuffered UTF-8 output and this ``xraycardiac`` importable."""
    env = dict(os.environ)
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    # Inside Slicer the library may be importable only through a sys.path entry added at run
    # time; pass that folder on. A site-packages folder is not passed: it would leak this
    # interpreter's packages into a different one.
    root = Path(xraycardiac.__file__).resolve().parent.parent
    if root.name not in ("site-packages", "dist-packages"):
        parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if str(root) not in parts:
            env["PYTHONPATH"] = os.pathsep.join([str(root), *parts])
    return env


def run_in_subprocess(
    spec: JobSpec,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    python: str | None = None,
    env: dict[str, str | None] | None = None,
    timeout: float | None = None,
) -> dict:
    """Run a job in a child process, block until it ends, and return its summary.

    Args:
        spec: the job.
        on_event: called in this thread with each event as it arrives.
        python: interpreter for the child; default ``sys.executable``.
        env: extra environment for the child (see ``JobProcess.start``).
        timeout: seconds after which the job is cancelled and TimeoutError raised; None: no limit.

    Raises:
        JobError: the job failed (message and stderr tail of the child). TimeoutError: see above.
    """
    with _signals_stop_the_job():
        job = JobProcess.start(spec, python=python, env=env)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                for event in job.poll(timeout=0.1):
                    if on_event is not None:
                        on_event(event)
                if not job.running:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(
                        f"job {spec.pipeline!r} did not finish within {timeout} s; it was cancelled"
                    )
            for event in job.poll():
                if on_event is not None:
                    on_event(event)
            return job.wait()
        except BaseException:
            job.cancel()
            raise


@contextlib.contextmanager
def _signals_stop_the_job() -> Iterator[None]:
    """While a blocking run waits on its child: SIGTERM and SIGHUP raise ``JobTerminated`` (signum set).

    The caller's clean-up then cancels the job (its process tree ends, its folders are deleted)
    before the exception leaves; ``xraycardiac.cli.main`` ends the process by the same signal. Only
    in the main thread on POSIX, and only for signals at their default action: a signal the host
    application ignores (``nohup``) or handles itself is left alone. A second signal during the
    clean-up is ignored (SIGKILL still works). The previous handlers are restored on the way out.
    """
    if os.name == "nt" or threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if not fired:
            fired.append(signum)
            raise JobTerminated(f"stopped by {signal.Signals(signum).name}; the job was cancelled", signum)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _process_start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot: /proc/<pid>/stat field 22); None when it is
    gone or a zombie, or off Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # from field 3 (state) on; the name may hold spaces
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _owner_record() -> dict[str, Any]:
    """This process, as written to a private folder's owner.json."""
    return {"pid": os.getpid(), "start_time": _process_start_time(os.getpid()), "host": socket.gethostname()}


def _owner_alive(owner: Any) -> bool:
    """Whether the process an owner.json names still runs (the same process: pid and start time)."""
    if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int) or owner["pid"] <= 0:
        return False
    if owner.get("host") != socket.gethostname():
        return True  # a temp folder shared with another machine: cannot tell
    pid, start = owner["pid"], owner.get("start_time")
    if start is not None and Path("/proc/self/stat").exists():
        return _process_start_time(pid) == start  # a new process with a reused pid does not count
    if os.name == "nt":
        return True  # no cheap, safe check (os.kill(pid, 0) would end the process)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_job_dirs(temp_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Delete the private job folders of processes that died without cleaning up (e.g. SIGKILL).

    Looks at this user's ``xraycardiac-job-*`` folders in ``temp_dir``: one whose ``owner.json`` names
    a process that is gone is deleted; so is one without ``owner.json`` (made by an older version)
    that is over an hour old. ``JobProcess.start`` calls it.

    Args:
        temp_dir: the folder to sweep; default ``tempfile.gettempdir()`` (``TMPDIR``).

    Returns:
        The folders deleted.
    """
    root = Path(temp_dir) if temp_dir is not None else Path(tempfile.gettempdir())
    removed = []
    for folder in root.glob(_PRIVATE_PREFIX + "*"):
        try:
            info = folder.lstat()
            if not folder.is_dir() or folder.is_symlink():
                continue
            if hasattr(os, "getuid") and info.st_uid != os.getuid():
                continue
            try:
                owner = json.loads((folder / _OWNER_NAME).read_text(encoding="utf-8"))
            except FileNotFoundError:
                if time.time() - info.st_mtime < _UNOWNED_GRACE_S:
                    continue  # being made right now, or an older version's job still running
                owner = None
            if owner is not None and _owner_alive(owner):
                continue
        except (OSError, ValueError):
            continue  # unreadable or half-written owner.json: leave it
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


@atexit.register
def _cancel_live_jobs() -> None:
    """Do not leave job processes running (and writing) after the interpreter that started them exits."""
    for job in list(_LIVE):
        with contextlib.suppress(Exception):
            job.cancel(timeout=2.0)
