"""The CPU CIFAR-10 recipe's pieces: its preset runs, the learning-rate schedule with warm-up,
AdamW, the init gain, test evaluations inside an epoch and the time-to-accuracy summary."""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import small_cfg, train

from ep_compile.model import ConfigError, EPNet
from ep_compile.training import lr_at, make_optimizer

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def test_lr_schedule_warmup_then_cosine():
    assert lr_at(0, 1.0, 0.0, 10, warmup_epochs=1) == pytest.approx(0.1)
    assert lr_at(0.5, 1.0, 0.0, 10, warmup_epochs=1) == pytest.approx(0.55)
    assert lr_at(1.0, 1.0, 0.0, 10, warmup_epochs=1) == pytest.approx((1 + math.cos(math.pi / 10)) / 2)
    assert lr_at(5, 1.0, 0.0, 10) == pytest.approx(0.5)
    assert lr_at(20, 1.0, 1e-3, 10) == pytest.approx(1e-3)


def test_adam_optimizer_and_bad_name():
    torch.manual_seed(0)
    m = EPNet(small_cfg())
    opt = make_optimizer(m, {"lrs": [1e-3] * 3, "momentum": 0.9, "weight_decay": 0.0, "optimizer": "adam"})
    assert isinstance(opt, torch.optim.AdamW) and [g["lr"] for g in opt.param_groups] == [1e-3] * 3
    with pytest.raises(ConfigError, match="unknown optimizer 'lbfgs'"):
        make_optimizer(m, {"lrs": [1e-3] * 3, "momentum": 0.9, "weight_decay": 0.0, "optimizer": "lbfgs"})


def test_init_gain_scales_every_synapse_weight():
    torch.manual_seed(0)
    a = EPNet(small_cfg(asymmetric=True))
    torch.manual_seed(0)
    b = EPNet(small_cfg(asymmetric=True, init_gain=2.5))
    for la, lb in zip(a.layers, b.layers):
        torch.testing.assert_close(lb.weight_f, 2.5 * la.weight_f)
        if la.weight_b is not None:
            torch.testing.assert_close(lb.weight_b, 2.5 * la.weight_b)
    with pytest.raises(ConfigError, match="init_gain"):
        small_cfg(init_gain=-1.0)


def test_eval_every_rows_and_time_to_accuracy(tmp_path):
    rows = train(
        tmp_path / "r",
        "--epochs",
        "2",
        "--eval-every",
        "0.5",
        "--optimizer",
        "adam",
        "--lrs",
        "1e-3",
        "1e-3",
        "5e-4",
        "--lr-per-step",
        "--warmup-epochs",
        "0.2",
    )
    assert [r["epoch"] for r in rows] == pytest.approx([0.5, 1, 1.5, 2], abs=0.01)
    assert [bool(r.get("partial")) for r in rows] == [True, False, True, False]
    walls = [r["wall_seconds"] for r in rows]
    assert walls == sorted(walls) and walls[0] > 0
    reached = json.loads((tmp_path / "r" / "time_to_accuracy.json").read_text())
    assert set(reached) == {"50%", "60%", "65%", "70%"}
    first60 = next(r["wall_seconds"] for r in rows if 1 - r["test_error"] >= 0.6)
    assert reached["60%"] == first60


@pytest.mark.skipif(not CIFAR.exists(), reason="no ../shared/data/cifar10-jpeg.tar.gz")
def test_cifar10_cpu_preset_runs_two_iterations(tmp_path):
    rows = train(
        tmp_path / "c",
        "--preset",
        "cifar10-cpu",
        "--data-root",
        str(CIFAR),
        "--train-subset",
        "128",
        "--test-subset",
        "100",
        "--epochs",
        "1",
    )
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert cfg["channels"] == [32, 64, 128, 256] and cfg["schedule"] == "evenodd" and cfg["optimizer"] == "adam"
    assert cfg["batch_size"] == 64 and cfg["val_size"] == 0  # 128 images: two iterations
    assert [r["epoch"] for r in rows] == [1] and "wall_seconds" in rows[0]
    assert all(0 <= r["test_error"] <= 1 for r in rows)
