"""benchmarks/gpu.sh, the prepared GPU check, runs end to end on the CPU with tiny sizes (--dry-run):
every step exits 0 and gpu.json holds each of its sections, so the script is ready when a GPU is."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_script_dry_run(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run"], env=env, capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["dry_run"] is True
    steps = ["env", "bench", "memory", "epoch", "recipe", "graphs", "resnet13", "ddp"]
    assert [s["step"] for s in report["steps"]] == steps
    assert all(s["rc"] == 0 for s in report["steps"]), report["steps"]
    precisions = {(r["estimator"], r["precision"]) for r in report["estimators"]}
    assert {("symmetric", "fp32"), ("symmetric", "bf16"), ("bptt", "fp32")} <= precisions
    assert [r["T"] for r in report["memory"]["rows"]] == [5, 10]
    assert [r["compile_mode"] for r in report["graphs"]] == ["default", "reduce-overhead"]
    for key in ("epoch_ce_symmetric", "epoch_cifar10_cpu", "resnet13"):
        assert report[key]["epoch_seconds"] > 0 and report[key]["first_step_seconds"] > 0
    assert report["ddp"] == {"processes": 2, "max_abs_weight_diff": 0.0}
    assert "cpu_model" in report["env"]


def test_gpu_script_refuses_a_bad_argument():
    p = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--fast"], capture_output=True, text=True)
    assert p.returncode == 2 and "unknown argument --fast" in p.stderr
