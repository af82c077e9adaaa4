"""int8 weights for deployment: symmetric, one scale per output channel.

This is the weight format of CMSIS-NN and TensorFlow Lite Micro: w[c, ...] ~ q[c, ...] * scale[c] with
q in [-127, 127] and scale[c] = max |w[c, ...]| / 127, so the largest weight of each output channel is
exact and no channel shares the range of another. States, biases and accumulation stay float32: the
fixed-point iteration is unchanged, only the weights it reads are rounded. The exported file holds q
and scale and dequantizes them with standard ONNX operators (onnx_export.build_onnx), so onnxruntime
and the C++ runtime run the same file and compute with the same dequantized weights.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

QMAX = 127  # symmetric: -128 is never used, so q and -q are both representable


def quantize_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """q (int8, w's shape) and scale (float32, (w.shape[0],)) with w ~ q * scale[c] along axis 0.

    An all-zero channel gets scale 1 (its q are 0): no scale is 0, which a reader refuses."""
    w = np.asarray(w, np.float32)
    peak = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)  # (C,)
    scale = np.where(peak > 0, peak / QMAX, 1.0).astype(np.float32)  # (C,)
    per = scale.reshape(-1, *([1] * (w.ndim - 1)))  # (C, 1, ...)
    q = np.clip(np.rint(w / per), -QMAX, QMAX).astype(np.int8)
    return q, scale


def dequantize(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """float32 weights as ONNX DequantizeLinear computes them: float(q) * scale[c], one rounding."""
    per = np.asarray(scale, np.float32).reshape(-1, *([1] * (q.ndim - 1)))
    return q.astype(np.float32) * per


def is_quantized_weight(name: str) -> bool:
    """What int8 export quantizes: every weight matrix, not the biases (contract names and state_dict
    keys alike: layer1.weight, layers.0.conv.weight, layers.1.weight_b, readout.weight)."""
    return name.endswith((".weight", ".weight_b"))


def dequantized_model(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` whose weights are their int8 round trip: the network an int8 export computes
    (PyTorch's reference for onnxruntime and the C++ runtime on the int8 file)."""
    out = copy.deepcopy(model)
    state = out.state_dict()
    for key, v in state.items():
        if is_quantized_weight(key):
            q, scale = quantize_int8(v.detach().cpu().float().numpy())
            state[key] = torch.from_numpy(dequantize(q, scale)).to(v.dtype)
    out.load_state_dict(state)
    return out


def weight_errors(state: dict) -> list[dict]:
    """Per quantized tensor of a {contract name: float array} dict: the rounding error of int8.

    max_abs: largest |w - dq(w)|; rel_rms: ||w - dq(w)|| / ||w||; step: the largest scale (the
    quantization step of the coarsest channel)."""
    rows = []
    for name, w in state.items():
        if not is_quantized_weight(name):
            continue
        w = np.asarray(w, np.float32)
        q, scale = quantize_int8(w)
        err = w - dequantize(q, scale)
        norm = float(np.linalg.norm(w))
        rows.append(
            {
                "tensor": name,
                "shape": list(w.shape),
                "max_abs": float(np.abs(err).max()),
                "rel_rms": float(np.linalg.norm(err) / norm) if norm > 0 else 0.0,
                "step": float(scale.max()),
            }
        )
    return rows
