"""One writer per run folder: two runs (or two resumes) started into one folder at once leave one run
in it, the other refused in one line (exit 2); a killed run leaves no lock that blocks the next."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "experiments" / "cifar.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
SMALL = ["--no-compile", "--cpu", "--T", "10", "--K", "4", "--train-subset", "640"]


def start(*args):
    return subprocess.Popen(
        [sys.executable, SCRIPT, *SMALL, *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def both(a, b):
    out = []
    for p in (a, b):
        stdout, stderr = p.communicate(timeout=600)
        out.append((p.returncode, stderr))
    return out


def epochs(folder: Path) -> list:
    return [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


def refused_once(results):
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    stderr = next(e for rc, e in results if rc == 2)
    err = [line for line in stderr.splitlines() if line.startswith("cifar.py: error")]
    assert len(err) == 1 and "Traceback" not in stderr, stderr
    assert "already holds a run" in err[0] or (
        "is in use by another run (PID " in err[0] and "unknown" not in err[0]
    ), err


def test_two_starts_and_two_resumes_into_one_folder(tmp_path):
    out = tmp_path / "run"
    refused_once(both(start("--epochs", "3", "--out", str(out)), start("--epochs", "3", "--out", str(out))))
    assert epochs(out) == [1, 2, 3]  # one run's history, not two interleaved
    refused_once(both(start("--resume", str(out), "--epochs", "5"), start("--resume", str(out), "--epochs", "5")))
    assert epochs(out) == [1, 2, 3, 4, 5]


def test_a_killed_run_leaves_no_blocking_lock(tmp_path):
    out = tmp_path / "run"
    p = subprocess.run(
        [
            sys.executable,
            SCRIPT,
            *SMALL,
            "--epochs",
            "2",
            "--checkpoint-every",
            "3",
            "--simulate-crash-at-step",
            "4",
            "--out",
            str(out),
        ],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert p.returncode == -9 and (out / ".lock").exists()  # SIGKILL with the lock held
    p = subprocess.run([sys.executable, SCRIPT, *SMALL, "--resume", str(out)], env=ENV, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert epochs(out) == [1, 2]
