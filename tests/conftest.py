"""Shared fixtures: one thread (compiled CPU code collapses under two threads with other load),
float64 small nets for the theorem tests."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


def small_cfg(**kw):
    from ep_compile.model import ModelConfig

    d = dict(in_shape=(1, 8, 8), channels=[4, 6], paddings=[1, 0], pools=["max", "max"], n_classes=4, loss="ce")
    d.update(kw)
    return ModelConfig(**d)


@pytest.fixture
def f64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def train(out, *args) -> list[dict]:
    """Run experiments/cifar.py on the CPU, one thread, eager; return its metrics.jsonl rows."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    cmd = [sys.executable, str(root / "experiments" / "cifar.py"), "--no-compile", "--cpu", "--out", str(out), *args]
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
