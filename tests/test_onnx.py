"""ONNX export: onnxruntime runs the free phase as PyTorch does, for every model kind."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import digits_predictions, small_cfg

from ep_compile.dynamics import SCHEDULES, relax_until
from ep_compile.model import EPNet
from ep_compile.onnx_export import build_onnx

ROOT = Path(__file__).resolve().parents[1]
KINDS = {
    "sym-ce-max": dict(),
    "sym-mse-max-fc": dict(loss="mse", fc=[5]),
    "sym-ce-avg-odd": dict(pools=["avg", "max"], in_shape=(1, 9, 9)),
    "sym-ce-none-avg-fc": dict(pools=["none", "avg"], fc=[7]),
    "asym-ce-max-fc": dict(asymmetric=True, fc=[5]),
    "asym-mse-avg": dict(asymmetric=True, loss="mse", pools=["max", "avg"]),
}


def session(model, schedule="sync"):
    m = build_onnx(model, schedule=schedule)
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


def run_ort(sess, x, steps, tol):
    return sess.run(None, {"x": x.numpy(), "max_steps": np.array(steps, np.int64), "tol": np.array(tol, np.float32)})


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("kind", list(KINDS))
def test_onnxruntime_equals_pytorch(kind, schedule):
    torch.manual_seed(0)
    cfg = KINDS[kind]
    if schedule == "evenodd":  # three state layers: the even/odd halves differ from a synchronous step
        cfg = {**cfg, "channels": [4, 6, 6], "paddings": [1, 1, 1], "pools": [*cfg.get("pools", ["max"] * 2), "none"]}
    model = EPNet(small_cfg(**cfg))
    assert_runs_as_pytorch(model, session(model, schedule), schedule, (1, 7), ((40, 0.0), (300, 1e-4)))


def assert_runs_as_pytorch(model, sess, schedule, batches, runs):
    """onnxruntime's scores, steps and residual equal PyTorch's free phase, per batch size and
    (max_steps, tol): 1e-5, the same stopping step."""
    for B in batches:
        x = torch.rand(B, *model.cfg.in_shape, generator=torch.Generator().manual_seed(B))
        for steps, tol in runs:
            with torch.no_grad():
                s, n, res = relax_until(model, x, model.init_states(B, x), steps, tol, 1, step_fn=SCHEDULES[schedule])
                ref = model.logits(s).numpy()
            scores, n_ort, res_ort = run_ort(sess, x, steps, tol)
            assert scores.shape == (B, model.cfg.n_classes)
            assert np.abs(scores - ref).max() < 1e-5, np.abs(scores - ref).max()
            assert int(n_ort) == n  # the same stopping step
            if tol > 0:
                assert n < steps and res_ort < tol
            assert abs(float(res_ort) - res) < 1e-5


# graph nets (format version 3): states 1 (4,8,8) 2 (6,4,4) 3 (5,4,4) 4 (7,); skips 0->2 (stride),
# 1->3 (3x3 conv, max pooling), 1->4 and 2->4 (dense)
GRAPH = dict(in_shape=(2, 8, 8), channels=[4, 6, 5], paddings=[1, 1, 1], pools=["none", "stride", "none"], fc=[7])
GRAPH_KINDS = {
    "skips-ce": dict(GRAPH, skips=["0:2", "1:3:k3:max", "1:4", "2:4"]),
    "skips-asym-relu6": dict(GRAPH, skips=["0:2", "1:3:k3:max", "2:4"], asymmetric=True, activation="relu6"),
    "skips-mse-per-state": dict(
        GRAPH,
        skips=["0:2:k3:avg", "1:3:k1:max", "2:4"],
        loss="mse",
        n_classes=3,
        activations=["hard-sigmoid", "relu6", "clipped-relu-2", "hard-sigmoid-1", "identity"],
    ),
    "resnet-like-odd": dict(  # 10x10 input: strided convs drop a row (output_padding), avg pooling an edge
        in_shape=(1, 10, 10),
        channels=[3, 4, 4],
        paddings=[1, 1, 1],
        pools=["none", "stride", "avg"],
        skips=["0:2:k3:stride", "1:3:k1:avg", "1:4"],
        fc=[6],
        activation="relu6",
    ),  # fmt: skip
}


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("kind", list(GRAPH_KINDS))
def test_onnxruntime_equals_pytorch_on_graph_nets(kind, schedule):
    """Skip interactions (pooled, strided, dense), strided chain convs, clipped and per-state
    activations: onnxruntime runs the same iteration as PyTorch, the colour classes for even/odd."""
    torch.manual_seed(0)
    model = EPNet(small_cfg(**GRAPH_KINDS[kind]))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)  # states away from the clamps' flat parts
    m = build_onnx(model, schedule=schedule)
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["ep_compile.format_version"] == "3"
    arch = json.loads(meta["ep_compile.architecture"])
    assert len(arch["skips"]) == len(model.skips) and len(arch["activations"]) == len(model.state_shapes)
    assert arch["colours"] == ([list(range(len(model.state_shapes)))] if schedule == "sync" else model.colours)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    assert_runs_as_pytorch(model, sess, schedule, (1, 5), ((30, 0.0), (300, 1e-4)))


def test_int8_graph_net_runs_its_dequantized_network_in_onnxruntime():
    """int8 export quantizes the skips' forward and backward weights like every other weight."""
    from ep_compile.dynamics import relax
    from ep_compile.quantize import dequantized_model

    torch.manual_seed(0)
    model = EPNet(small_cfg(**GRAPH_KINDS["skips-asym-relu6"]))
    m = build_onnx(model, weights="int8", schedule="evenodd")
    names = {i.name for i in m.graph.initializer}
    assert {"skip2.weight_int8", "skip2.weight_scale", "skip2.weight_b_int8", "skip2.weight_b_scale"} <= names
    assert not any(n.startswith("skip") and n.endswith(("weight", "weight_b")) for n in names)
    x = torch.rand(3, *model.cfg.in_shape, generator=torch.Generator().manual_seed(0))
    scores = run_ort(ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]), x, 30, 0.0)[0]
    deq = dequantized_model(model)
    with torch.no_grad():
        ref = deq.logits(relax(deq, x, deq.init_states(3, x), 30, step_fn=SCHEDULES["evenodd"])).numpy()
    assert np.abs(scores - ref).max() < 1e-5


def test_contract_names_and_metadata(tmp_path):
    torch.manual_seed(0)
    m = build_onnx(EPNet(small_cfg(asymmetric=True, fc=[5])), {"classes": ["a", "b", "c", "d"], "default_T": "30"})
    onnx.checker.check_model(m, full_check=True)
    assert m.opset_import[0].version >= 17
    names = {t.name for t in m.graph.initializer}
    assert {"layer1.weight", "layer1.bias", "layer2.weight_b", "layer3.weight_b", "readout.weight"} <= names
    assert "layer1.weight_b" not in names
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["ep_compile.format_version"] == "1"  # float32, synchronous: every reader reads it
    arch = json.loads(meta["ep_compile.architecture"])
    assert [layer["kind"] for layer in arch["layers"]] == ["conv", "conv", "dense"] and arch["slope"] == 0.5
    assert json.loads(meta["ep_compile.classes"]) == ["a", "b", "c", "d"]
    loop = next(n for n in m.graph.node if n.op_type == "Loop")
    body_ops = {n.op_type for n in loop.attribute[0].g.node}
    assert {"Conv", "MaxPool", "MaxUnpool", "ConvTranspose", "HardSigmoid"} <= body_ops


@pytest.mark.slow
def test_trained_digits_model_same_accuracy_in_onnxruntime(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = tmp_path / "run"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "experiments/cifar.py"),
            "--epochs",
            "4",
            "--no-compile",
            "--cpu",
            "--out",
            str(run),
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    onx = tmp_path / "digits.onnx"
    p = subprocess.run(
        [sys.executable, str(ROOT / "export/to_onnx.py"), str(run), "--out", str(onx)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    y, pred_torch, scores, steps, cfg = digits_predictions(run, onx)
    acc_torch = (pred_torch == y).mean()
    acc_ort = (scores.argmax(1) == y).mean()
    assert acc_ort == acc_torch and acc_torch > 0.8 and steps == cfg["T"]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert abs((1 - metrics[-1]["test_error"]) - acc_torch) < 1e-6  # the script's own test accuracy
    meta = {p.key: p.value for p in onnx.load(str(onx)).metadata_props}
    pre = json.loads(meta["ep_compile.preprocessing"])
    assert pre["mean"] == cfg["mean"] and pre["std_scale"] == 3.0 and meta["ep_compile.default_T"] == "30"
    assert pre["raw"] == {"dtype": "uint8", "range": [0, 255], "layout": "N x C x H x W"} and "transform" in pre
    # the README's inference snippet, as written, on the real digits test set, next to digits.onnx
    readme = (ROOT / "README.md").read_text()
    snippet = readme.split("<!-- inference-snippet -->\n```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "snippet.py").write_text(snippet)
    p = subprocess.run(
        [sys.executable, "snippet.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr
    words = p.stdout.split()
    assert float(words[words.index("accuracy") + 1]) == pytest.approx(acc_torch, abs=1e-4), p.stdout


def test_export_bad_checkpoint(tmp_path):
    script = str(ROOT / "export/to_onnx.py")
    p = subprocess.run(
        [sys.executable, script, str(tmp_path / "nothing"), "--out", str(tmp_path / "m.onnx")],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and "no checkpoint at" in p.stderr and "Traceback" not in p.stderr
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    p = subprocess.run(
        [sys.executable, script, str(tmp_path / "bad.pt"), "--out", str(tmp_path / "m.onnx")],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and "is corrupt or not a checkpoint" in p.stderr


def test_build_onnx_leaves_the_callers_model_alone():
    model = EPNet(small_cfg()).double().train()
    build_onnx(model)
    assert next(model.parameters()).dtype == torch.float64 and model.training


def test_export_is_atomic(tmp_path, monkeypatch):
    """A write that fails half-way leaves the existing file as it was, and no temp file behind."""
    from ep_compile import onnx_export

    target = tmp_path / "m.onnx"
    target.write_bytes(b"a good model")

    def broken_save(m, path):
        with open(path, "wb") as f:
            f.write(b"trunc")
        raise OSError("disk full")

    monkeypatch.setattr(onnx_export.onnx, "save", broken_save)
    ck = {
        "config": {
            "in_shape": [1, 8, 8],
            "channels": [4, 6],
            "paddings": [1, 0],
            "pools": ["max"] * 2,
            "n_classes": 4,
            "kernels": 3,
            "fc": [],
            "loss": "ce",
            "mean": [0.3],
            "std": [0.3],
        },
        "model": EPNet(small_cfg()).state_dict(),
    }
    with pytest.raises(OSError, match="disk full"):
        onnx_export.export_checkpoint(ck, str(target))
    assert target.read_bytes() == b"a good model" and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
