"""Fault injection, for the tests that prove a kill at any instant loses only the work since the
last checkpoint. Off unless asked for: EP_KILL_AT=name:n in the environment (kill_point), or
cifar.py's --simulate-crash-at-step N (crash_after). Production code calls these at the named points
and nothing else here runs; one module holds every hook so that they are easy to find and audit.

Points: checkpoint-written, checkpoint-synced, checkpoint-replaced (inside training.atomic_save),
metrics-row-written (trainer.Trainer.save, after the checkpoint and its rows are on disk).
"""

from __future__ import annotations

import os
import signal

_reached: dict[str, int] = {}


def kill_point(name: str) -> None:
    """SIGKILL this process the n-th time it reaches `name`, when EP_KILL_AT=name:n."""
    spec = os.environ.get("EP_KILL_AT", "")
    if spec.partition(":")[0] == name:
        _reached[name] = _reached.get(name, 0) + 1
        if str(_reached[name]) == spec.partition(":")[2]:
            os.kill(os.getpid(), signal.SIGKILL)


def crash_after(done: int, at: int) -> None:
    """SIGKILL this process after its `at`-th optimizer step (at=0: never): a real kill, mid-epoch."""
    if at and done == at:
        os.kill(os.getpid(), signal.SIGKILL)
