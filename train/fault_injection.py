"""Test-only hooks inside the training loop, off unless `SEKISHO_TRAIN_TEST_DIR`
names a folder (the e2e tests set it in the driver; build_trainer forwards it to the
Ray Train workers, also on a cluster that was started before).

In that folder, per job name:
    trace-<name>-rank<r>.jsonl   one line per step: attempt, step, example ids, time
    pause-<name>                 holds a step N: rank 0 writes pid-<name> after step N
                                 and waits there to be killed (the file is removed
                                 first, so the restarted worker does not pause again)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

ENV = "SEKISHO_TRAIN_TEST_DIR"  # forwarded to Ray Train workers by build_trainer


class StepHook:
    """Called after every step by the Ray Train loop; does nothing outside tests."""

    def __init__(self, job_name: str, rank: int):
        folder = os.environ.get(ENV)
        self.dir = Path(folder) if folder else None
        self.name, self.rank = job_name, rank

    @property
    def active(self) -> bool:
        return self.dir is not None

    def __call__(self, recipe) -> None:
        if self.dir is None:
            return
        with open(self.dir / f"trace-{self.name}-rank{self.rank}.jsonl", "a") as f:
            f.write(
                json.dumps(
                    {
                        "attempt": recipe.attempt,
                        "step": recipe.step,
                        "ids": recipe.batch_ids,
                        "time": time.time(),
                    }
                )
                + "\n"
            )
        pause = self.dir / f"pause-{self.name}"
        if self.rank == 0 and pause.is_file() and int(pause.read_text()) == recipe.step:
            pause.unlink()
            (self.dir / f"pid-{self.name}").write_text(str(os.getpid()))
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # the test SIGKILLs this process
                time.sleep(0.1)
