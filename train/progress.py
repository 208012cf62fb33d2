"""Training progress on the driver: while Ray Train runs a job, one line per logged
step (step/total, loss, learning rate, tokens/s, ETA), read from the job's MLflow
run, which rank 0 writes to as it trains. Ray Train 2.x runs its callbacks in the
train controller actor, not in the process that called `fit()`; the run is what
the driver (a terminal, or a submitted job's log) and the workers both reach.

The ETA comes from the workers' own timestamps on the logged points (the pace
between the first step this driver saw and the latest), so a burst of points read
at once still gives the pace at which they were trained."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

Printer = Callable[[str], None]


@dataclass(frozen=True)
class StepPoint:
    """One logged step: its metrics and when rank 0 logged it (ms since the epoch)."""

    step: int
    timestamp_ms: int
    loss: float
    lr: float | None = None
    tokens_per_s: float | None = None


def format_duration(seconds: float) -> str:
    """H:MM:SS."""
    s = max(0, round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def progress_line(point: StepPoint, total: int, eta_s: float | None) -> str:
    """`step 20/100  loss 1.2345  lr 9.00e-04  tokens/s 1,234  ETA 0:01:05`."""
    parts = [f"step {point.step}/{total}", f"loss {point.loss:.4f}"]
    if point.lr is not None:
        parts.append(f"lr {point.lr:.2e}")
    if point.tokens_per_s is not None:
        parts.append(f"tokens/s {point.tokens_per_s:,.0f}")
    parts.append(f"ETA {format_duration(eta_s) if eta_s is not None else '?'}")
    return "  ".join(parts)


class Pace:
    """Seconds left, from the pace between the first point seen and the latest."""

    def __init__(self, total: int):
        self.total = total
        self.first: StepPoint | None = None

    def eta_s(self, point: StepPoint) -> float | None:
        if self.first is None:
            self.first = point
            return 0.0 if point.step >= self.total else None
        steps = point.step - self.first.step
        if steps <= 0:
            return None
        per_step_s = (point.timestamp_ms - self.first.timestamp_ms) / 1000 / steps
        return per_step_s * (self.total - point.step)


class ProgressWatch:
    """Prints each step rank 0 logs to `run_id` after the watch starts, in order,
    polling every `interval_s`; `stop()` prints what is left. Steps logged before
    the watch started (a resumed run) are not printed again."""

    def __init__(
        self, run_id: str, uri: str, total_steps: int, out: Printer = print, interval_s: float = 1.0
    ):
        from mlflow import MlflowClient

        self.run_id, self.out, self.interval_s = run_id, out, interval_s
        self.client = MlflowClient(tracking_uri=uri)
        self.pace = Pace(total_steps)
        self.total = total_steps
        self.printed = max((m.step for m in self._history("loss")), default=0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="sekisho-progress", daemon=True)

    def __enter__(self) -> ProgressWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop polling, then print the steps not yet printed (rank 0 has flushed them
        by the time `fit()` returns)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._print_new()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._print_new()

    def _print_new(self) -> None:
        try:
            points = self.new_points()
        except Exception as exc:  # noqa: BLE001 - progress is shown, never fails the job
            self.out(f"(progress: could not read run {self.run_id}: {exc})")
            return
        for point in points:
            self.out(progress_line(point, self.total, self.pace.eta_s(point)))
            self.printed = point.step

    def new_points(self) -> list[StepPoint]:
        """The steps logged since the last one printed, in step order."""
        loss = {m.step: m for m in self._history("loss") if m.step > self.printed}
        if not loss:
            return []
        others = {
            key: {m.step: m.value for m in self._history(key) if m.step > self.printed}
            for key in ("lr", "tokens_per_s")
        }
        return [
            StepPoint(
                step,
                loss[step].timestamp,
                loss[step].value,
                **{key: values.get(step) for key, values in others.items()},
            )
            for step in sorted(loss)
        ]

    def _history(self, key: str):
        # A step re-run after a restore is logged again; the latest point counts.
        return sorted(self.client.get_metric_history(self.run_id, key), key=lambda m: m.timestamp)


def finished_line(run_id: str, model_name: str, version: str, uri: str) -> str:
    """The line a job ends with: the registered version and where to see its run."""
    from mlflow import MlflowClient

    from experiments.tracking import run_page

    experiment_id = MlflowClient(tracking_uri=uri).get_run(run_id).info.experiment_id
    return f"registered {model_name} version {version}; MLflow run {run_id}: {run_page(run_id, experiment_id, uri)}"
