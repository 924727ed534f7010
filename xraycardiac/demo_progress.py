"""Progress of ``xraycardiac demo``: numbered sections, stages, an overall ETA and a heartbeat.

``DemoProgress`` turns the demo's sections and the job events inside them into progress events
(``section``, ``step`` k of ``steps`` N, ``stage``, overall ``progress`` and ``eta_s``), repeating the
current stage every ``HEARTBEAT_S`` seconds while a long call runs; ``print_progress`` prints them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["HEARTBEAT_S", "DemoProgress", "format_duration", "print_progress"]

HEARTBEAT_S = 5.0  # a progress event at least this often while a section runs


def format_duration(seconds: float | None) -> str:
    """``75.2`` -> ``"1:15"`` (minutes:seconds); None -> ``"?"``."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    return f"{s // 60}:{s % 60:02d}"


class DemoProgress:
    """Names every step of the demo: section k of N, the stage within it, overall fraction and ETA.

    Events sent to ``sink``: ``{"event": "progress", "section": title, "step": k, "steps": N,
    "stage": str, "progress": overall fraction 0..1 (never decreasing), "section_progress": 0..1,
    "eta_s": remaining seconds (None while unknown), "elapsed_s": float, "heartbeat": bool}``, and
    job ``log`` events unchanged. The overall fraction weights each section by its expected seconds
    (``SECTIONS``); the ETA extrapolates from the time spent so far. While a section runs, a daemon
    thread repeats the current stage (``heartbeat`` True) when nothing was sent for ``heartbeat_s``.

    Args:
        sections: (title, expected seconds) per section, in run order.
        sink: receives each event.
        heartbeat_s: longest silence, seconds.
        clock: monotonic clock, seconds.
    """

    def __init__(
        self,
        sections: Sequence[tuple[str, float]],
        sink: Callable[[dict[str, Any]], None],
        heartbeat_s: float = HEARTBEAT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._titles = [t for t, _ in sections]
        self._weights = [max(float(w), 1e-3) for _, w in sections]
        self._sink, self._heartbeat_s, self._clock = sink, heartbeat_s, clock
        self._lock = threading.RLock()
        self._start = self._last_sent = clock()
        self._k, self._fraction, self._stage, self._overall = 0, 0.0, "", 0.0
        self.seconds: dict[str, float] = {}  # wall seconds per finished section title
        # CPU seconds of this process (all threads) per section: unlike wall time, not inflated by
        # other programs competing for the cores.
        self.cpu_seconds: dict[str, float] = {}

    @contextmanager
    def section(self, title: str) -> Iterator[None]:
        """Run one section: number it, time it, and keep a heartbeat going while it runs."""
        with self._lock:
            self._k = self._titles.index(title) + 1
            self._fraction = 0.0
        t0, cpu0 = self._clock(), time.process_time()
        self.stage("starting", 0.0)
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(stop,), daemon=True)
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()
            self.seconds[title] = self._clock() - t0
            self.cpu_seconds[title] = time.process_time() - cpu0
        self.stage(f"done in {self.seconds[title]:.1f} s", 1.0)

    def stage(self, stage: str, fraction: float | None = None) -> None:
        """Report the current stage of the running section and, optionally, its fraction done (0..1)."""
        with self._lock:
            if fraction is not None:
                self._fraction = min(1.0, max(self._fraction, float(fraction)))
            self._stage = stage
            self._send(heartbeat=False)

    def job_events(self, what: str, start: float = 0.0, end: float = 1.0) -> Callable[[dict[str, Any]], None]:
        """An ``on_event`` sink for a job: its stages become ``what: stage``, its 0..1 maps to start..end."""

        def on_event(event: dict[str, Any]) -> None:
            if event.get("event") == "progress":
                self.stage(f"{what}: {event['stage']}", start + (end - start) * float(event["progress"]))
            elif event.get("event") == "log":
                self._sink(event)

        return on_event

    def _send(self, heartbeat: bool) -> None:
        k = self._k
        done = sum(self._weights[: k - 1]) + self._weights[k - 1] * self._fraction
        self._overall = max(self._overall, done / sum(self._weights))
        now = self._clock()
        elapsed = now - self._start
        eta = elapsed * (1 - self._overall) / self._overall if self._overall > 0.01 else None
        self._last_sent = now
        self._sink(
            {
                "event": "progress", "section": self._titles[k - 1], "step": k, "steps": len(self._titles),
                "stage": self._stage, "progress": round(self._overall, 4),
                "section_progress": round(self._fraction, 4),
                "eta_s": None if eta is None else round(eta, 1), "elapsed_s": round(elapsed, 1),
                "heartbeat": heartbeat,
            }
        )  # fmt: skip

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(min(0.5, self._heartbeat_s / 4)):
            with self._lock:
                if self._clock() - self._last_sent >= self._heartbeat_s:
                    self._send(heartbeat=True)


def print_progress(event: dict) -> None:
    """Print a demo event as ``[k/N section] stage | overall % | eta m:ss``, job log lines as they are, and
    the final ``timings`` event as a table (wall and CPU seconds per section)."""
    if event.get("event") == "log":
        print(f"    {event.get('message', '')}", flush=True)
        return
    if event.get("event") == "timings":
        print("time per section (wall s / CPU s):", flush=True)
        for t in [*event["sections"], {"section": "total", **event["total"]}]:
            print(f"  {t['section']:<58} {t['wall_s']:7.1f} {t['cpu_s']:7.1f}", flush=True)
        return
    if event.get("event") != "progress":
        return
    key = (event["step"], event["stage"])
    last = getattr(print_progress, "_last", (None, 0.0))
    now = time.monotonic()
    # Jobs send a progress event per ray chunk: print a stage once, then at most every 3 s.
    if key == last[0] and now - last[1] < 3.0 and not event.get("heartbeat"):
        return
    print_progress._last = (key, now)  # type: ignore[attr-defined]
    still = f" (still working, {event['elapsed_s']:.0f} s elapsed)" if event.get("heartbeat") else ""
    print(f"[{event['step']}/{event['steps']} {event['section']}] {event['stage']}{still} | "
          f"{100 * event['progress']:3.0f}% | eta {format_duration(event['eta_s'])}", flush=True)  # fmt: skip
