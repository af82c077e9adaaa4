"""int8 weights: the quantizer's rule, and onnxruntime on the int8 file computing what PyTorch computes
with the dequantized weights, for every model kind; the file's contract (version 2, names, sizes)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import small_cfg
from test_onnx import KINDS, run_ort

from ep_compile.dynamics import relax_until
from ep_compile.model import ConfigError, EPNet
from ep_compile.onnx_export import build_onnx, export_checkpoint
from ep_compile.quantize import dequantize, dequantized_model, quantize_int8, weight_errors

ROOT = Path(__file__).resolve().parents[1]


def test_symmetric_per_channel_rule():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 3, 3, 3)).astype(np.float32) * np.arange(1, 7, dtype=np.float32)[:, None, None, None]
    w[4] = 0.0  # an all-zero channel
    q, scale = quantize_int8(w)
    assert q.dtype == np.int8 and scale.dtype == np.float32 and scale.shape == (6,)
    assert q.min() >= -127 and q.max() <= 127
    for c in (0, 1, 2, 3, 5):  # scale from the channel's own peak; the peak itself is +-127
        peak = np.abs(w[c]).max()
        assert scale[c] == np.float32(peak / 127) and np.abs(q[c]).max() == 127
    assert scale[4] == 1.0 and not q[4].any()
    err = np.abs(w - dequantize(q, scale))  # round to nearest: at most half a step, per channel
    assert (err <= scale[:, None, None, None] / 2 * (1 + 1e-6) + 1e-12).all()
    rows = weight_errors({"layer1.weight": w, "layer1.bias": np.ones(6, np.float32)})
    assert [r["tensor"] for r in rows] == ["layer1.weight"] and 0 < rows[0]["rel_rms"] < 0.01
    assert rows[0]["max_abs"] == pytest.approx(float(err.max())) and rows[0]["step"] == float(scale.max())


@pytest.mark.parametrize("kind", list(KINDS))
def test_onnxruntime_on_int8_equals_dequantized_pytorch(kind):
    torch.manual_seed(0)
    model = EPNet(small_cfg(**KINDS[kind]))
    ref_model = dequantized_model(model)
    m = build_onnx(model, weights="int8")
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    x = torch.rand(5, *model.cfg.in_shape, generator=torch.Generator().manual_seed(1))
    for steps, tol in ((40, 0.0), (300, 1e-4)):
        with torch.no_grad():
            s, n, _ = relax_until(ref_model, x, ref_model.init_states(5, x), steps, tol, 1)
            ref = ref_model.logits(s).numpy()
        scores, n_ort, _ = run_ort(sess, x, steps, tol)
        assert np.abs(scores - ref).max() < 1e-5 and int(n_ort) == n
    changed = [
        k for k, v in model.state_dict().items() if not torch.equal(v, ref_model.state_dict()[k])
    ]  # every weight matrix was rounded, no bias
    assert changed and all(k.endswith((".weight", ".weight_b")) for k in changed)


def test_int8_contract_names_version_and_size():
    torch.manual_seed(0)
    model = EPNet(small_cfg(asymmetric=True, fc=[5], channels=[16, 32]))
    f32, i8 = build_onnx(model), build_onnx(model, weights="int8")
    types = {t.name: t.data_type for t in i8.graph.initializer}
    for w in (
        "layer1.weight",
        "layer2.weight",
        "layer2.weight_b",
        "layer3.weight",
        "layer3.weight_b",
        "readout.weight",
    ):
        assert types[f"{w}_int8"] == onnx.TensorProto.INT8 and types[f"{w}_scale"] == onnx.TensorProto.FLOAT
        assert w not in types  # written by its DequantizeLinear node, not stored
    assert types["layer1.bias"] == onnx.TensorProto.FLOAT
    dq = [n for n in i8.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 6 and all(n.attribute[0].name == "axis" and n.attribute[0].i == 0 for n in dq)
    meta = {p.key: p.value for p in i8.metadata_props}
    assert meta["ep_compile.format_version"] == "2" and json.loads(meta["ep_compile.architecture"])["weights"] == "int8"
    meta32 = {p.key: p.value for p in f32.metadata_props}
    assert meta32["ep_compile.format_version"] == "1"
    assert json.loads(meta32["ep_compile.architecture"])["weights"] == "float32"

    def weight_bytes(m):
        return sum(len(t.raw_data) for t in m.graph.initializer if t.name.startswith(("layer", "readout")))

    n_w = sum(v.numel() for k, v in model.state_dict().items() if k.endswith((".weight", ".weight_b")))
    n_scales = sum(v.shape[0] for k, v in model.state_dict().items() if k.endswith((".weight", ".weight_b")))
    n_b = sum(v.numel() for k, v in model.state_dict().items() if k.endswith(".bias"))
    assert weight_bytes(f32) == 4 * (n_w + n_b) and weight_bytes(i8) == n_w + 4 * (n_scales + n_b)


def test_export_weights_flag(tmp_path):
    torch.manual_seed(0)
    cfg = small_cfg()
    ck = {
        "config": {
            "in_shape": [1, 8, 8],
            "channels": cfg.channels,
            "paddings": cfg.paddings,
            "pools": cfg.pools,
            "n_classes": 4,
            "kernels": 3,
            "fc": [],
            "loss": "ce",
            "mean": [0.3],
            "std": [0.3],
        },
        "model": EPNet(cfg).state_dict(),
    }
    with pytest.raises(ConfigError, match="--weights 'int4'"):
        export_checkpoint(ck, str(tmp_path / "m.onnx"), weights="int4")
    assert not (tmp_path / "m.onnx").exists()
    from ep_compile.checkpoint import CHECKPOINT_VERSION

    torch.save({**ck, "format": "ep_compile-checkpoint", "version": CHECKPOINT_VERSION}, tmp_path / "ck.pt")
    script = str(ROOT / "export" / "to_onnx.py")
    p = subprocess.run(
        [sys.executable, script, str(tmp_path / "ck.pt"), "--out", str(tmp_path / "m.onnx"), "--weights", "int8"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0 and "int8 weights" in p.stdout, p.stderr
    assert {x.key: x.value for x in onnx.load(str(tmp_path / "m.onnx")).metadata_props}[
        "ep_compile.format_version"
    ] == "2"
    p = subprocess.run(
        [sys.executable, script, str(tmp_path / "ck.pt"), "--out", str(tmp_path / "n.onnx"), "--weights", "int4"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and "int4" in p.stderr and "Traceback" not in p.stderr
