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


def digits_predictions(checkpoint, onnx_file):
    """A trained digits checkpoint (a run folder or .pt) and its exported file, on the digits test set
    with the training's T steps of its schedule from s = 0: (labels, PyTorch's predictions,
    onnxruntime's scores, onnxruntime's steps, the run's config)."""
    import numpy as np
    import onnxruntime as ort

    from ep_compile.checkpoint import load_checkpoint
    from ep_compile.config import model_from_config
    from ep_compile.data import make_splits, preprocess
    from ep_compile.dynamics import SCHEDULES, relax

    ck = load_checkpoint(checkpoint)
    cfg = ck["config"]
    model = model_from_config(cfg)
    model.load_state_dict(ck["model"])
    test = make_splits("digits", val_size=cfg["val_size"], seed=cfg["seed"]).test
    x = preprocess(test.x, cfg)
    with torch.no_grad():
        s = relax(model, x, model.init_states(len(x), x), cfg["T"], step_fn=SCHEDULES[cfg["schedule"]])
        pred = model.logits(s).argmax(1).numpy()
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    feeds = {"x": x.numpy(), "max_steps": np.array(cfg["T"], np.int64), "tol": np.array(0.0, np.float32)}
    scores, steps, _ = sess.run(None, feeds)
    return test.y.numpy(), pred, scores, int(steps), cfg
