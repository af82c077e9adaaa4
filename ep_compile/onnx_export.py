"""Export a settled EP network to ONNX: the free phase as an ONNX Loop over one step of the dynamics.

The graph is written node by node with onnx.helper from the model's layers (standard ops, opset 17):
Conv, MaxPool (with indices), MaxUnpool, AveragePool, ConvTranspose, Gemm, MatMul, HardSigmoid.
That sidesteps the exporters' traps (the TorchScript exporter has no max_unpool2d; the dynamo
exporter unrolls the 250-step loop) and keeps every initializer named as in the contract below.

Graph inputs:  x (float32, N x C x H x W, N dynamic), max_steps (int64 scalar), tol (float32 scalar)
Graph outputs: scores (N x n_classes: read-out logits for 'ce', the output layer for 'mse'),
               steps (int64 scalar: steps run), residual (float32 scalar: max |s_t - s_{t-1}| of the
               last step; +inf if no step ran)
The loop stops after the first step whose largest state change is below tol (tol = 0: max_steps).
A step is the training run's schedule: synchronous, or even/odd (dynamics.step_evenodd).

Initializers: layer{n}.weight, layer{n}.bias (n = 1..L), layer{n}.weight_b (backward weights of an
asymmetric layer), readout.weight, readout.bias ('ce'). With int8 weights (weights="int8", see
quantize.py) each weight W is instead the initializers W_int8 (int8, W's shape) and W_scale (float32,
one per output channel) and a DequantizeLinear node (axis 0) of the main graph whose output is named
W, so the step reads W exactly as before. Metadata (metadata_props):
  ep_compile.format_version  1, or 2 for int8 weights or the even/odd schedule (the lowest version
                             that describes the file: every reader of version 1 still reads the rest)
  ep_compile.architecture    JSON: layers (kind, in/out/conv shapes, kernel, padding, pool, has
                             weight_b), activation slope, loss, n_classes, state shapes, weights
                             ("float32" or "int8"), schedule ("sync" or "evenodd": the training's)
  ep_compile.preprocessing   JSON: mean, std, std_scale, input_shape: x = (img/255 - mean) / (std_scale*std)
  ep_compile.classes         JSON list of class names
  ep_compile.training_config JSON of the run's config
  ep_compile.default_T       free-phase steps used in training
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .dynamics import SCHEDULES
from .model import ConfigError, EPNet
from .quantize import is_quantized_weight, quantize_int8

FORMAT_VERSION = 2  # the newest contract (2: int8 weights, the even/odd schedule); see format_version
WEIGHT_FORMATS = ("float32", "int8")
OPSET = 17


class _Graph:
    """A tiny node builder: unique names, constants as initializers."""

    def __init__(self, prefix: str):
        self.nodes, self.inits, self.prefix, self.n = [], [], prefix, 0

    def name(self, hint: str) -> str:
        self.n += 1
        return f"{self.prefix}{hint}_{self.n}"

    def op(self, op_type: str, inputs, hint: str = "", n_out: int = 1, **attrs):
        outs = [self.name(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.name("n"), **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value, dtype=np.float32, hint="c") -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name


def layer_info(model: EPNet) -> list[dict]:
    """Per layer: what the C++ runtime and the ONNX builder need to know (the model's LayerSpecs)."""
    info = []
    for n, (sp, layer) in enumerate(zip(model.specs, model.layers)):
        d = {"index": n + 1, "in_shape": list(sp.in_shape), "out_shape": list(sp.out_shape)}
        d["has_weight_b"] = layer.weight_b is not None
        if sp.kind == "conv":
            d.update(kind="conv", kernel=sp.kernel, padding=sp.padding, pool=sp.pool, conv_shape=list(sp.conv_shape))
        else:
            d.update(kind="dense")
        info.append(d)
    return info


def format_version(weights: str, schedule: str) -> int:
    """The lowest format version that describes the file: 1 unless it needs what 2 added (int8
    weights, the even/odd schedule), so every version-1 reader still reads plain float32 files."""
    return 2 if weights == "int8" or schedule != "sync" else 1


def architecture(model: EPNet, weights: str = "float32", schedule: str = "sync") -> dict:
    return {
        "layers": layer_info(model),
        "slope": model.slope,
        "activation": model.cfg.activation,
        "loss": model.cfg.loss,
        "n_classes": model.cfg.n_classes,
        "in_shape": list(model.cfg.in_shape),
        "state_shapes": [list(s) for s in model.state_shapes],
        "asymmetric": model.cfg.asymmetric,
        "readout": model.readout is not None,
        "weights": weights,
        "schedule": schedule,
    }


def _forward_nodes(g: _Graph, model: EPNet, pre: list[str], only=None, reuse=None):
    """Per layer n, P(w_n * pre[n]): its value, its max-pool indices (None without) and its conv
    output; layers outside `only` take their entry of `reuse` (their input did not change)."""
    fwd, ctx, conv_out = [], [], []
    for n, d in enumerate(layer_info(model)):
        if only is not None and n not in only:
            for out, old in zip((fwd, ctx, conv_out), reuse):
                out.append(old[n])
            continue
        w, b = f"layer{n + 1}.weight", f"layer{n + 1}.bias"
        if d["kind"] == "conv":
            k, p = d["kernel"], d["padding"]
            u = g.op("Conv", [pre[n], w, b], f"conv{n + 1}", kernel_shape=[k, k], pads=[p] * 4)
            conv_out.append(u)
            if d["pool"] == "max":
                y, idx = g.op("MaxPool", [u], f"pool{n + 1}", n_out=2, kernel_shape=[2, 2], strides=[2, 2])
                fwd.append(y)
                ctx.append(idx)
            elif d["pool"] == "avg":
                fwd.append(g.op("AveragePool", [u], f"pool{n + 1}", kernel_shape=[2, 2], strides=[2, 2]))
                ctx.append(None)
            else:
                fwd.append(u)
                ctx.append(None)
        else:
            flat = g.op("Flatten", [pre[n]], axis=1)
            fwd.append(g.op("Gemm", [flat, w, b], f"fc{n + 1}", transB=1))
            ctx.append(None)
            conv_out.append(None)
    return fwd, ctx, conv_out


def _update_nodes(g: _Graph, model: EPNet, pre: list[str], states: list[str], forward, layers) -> list[str]:
    """New states of `layers` (the others unchanged): sigma(drive + feedback of the layer above)."""
    info, (fwd, ctx, conv_out) = layer_info(model), forward
    new = list(states)
    for n in layers:
        u = fwd[n]
        if n + 1 < len(states):
            fb = _feedback(g, model, info[n + 1], n + 1, pre[n + 1], states[n + 1], ctx[n + 1], conv_out[n + 1])
            u = g.op("Add", [u, fb])
        new[n] = g.op("HardSigmoid", [u], f"s{n + 1}", alpha=model.slope, beta=0.0)
    return new


def _step_nodes(g: _Graph, model: EPNet, x: str, states: list[str], schedule: str = "sync") -> list[str]:
    """Nodes of one step of the explicit dynamics (inference: no nudge, no dropout), as
    dynamics.SCHEDULES[schedule]; returns the names of the new states. 'evenodd' updates the layers
    of even index from s_t, then the odd ones from the fresh even layers; the second half recomputes
    only the forward terms of the layers whose input changed (the odd ones), the max-pool indices of
    the others are those of the first half."""
    L = len(states)
    pre = [x] + states
    forward = _forward_nodes(g, model, pre)
    if schedule == "sync":
        return _update_nodes(g, model, pre, states, forward, range(L))
    half = _update_nodes(g, model, pre, states, forward, range(0, L, 2))
    pre = [x] + half
    odd = set(range(1, L, 2))
    return _update_nodes(g, model, pre, half, _forward_nodes(g, model, pre, odd, forward), sorted(odd))


def _feedback(g: _Graph, model, d: dict, n: int, pre: str, post: str, fwd_idx, fwd_conv) -> str:
    """Adjoint of layer n (0-based) applied to its post-synaptic state, into its pre-synaptic shape."""
    w = f"layer{n + 1}.weight_b" if d["has_weight_b"] else f"layer{n + 1}.weight"
    if d["kind"] == "dense":
        back = g.op("MatMul", [post, w])  # (N, in)
        if len(d["in_shape"]) > 1:
            back = g.op("Reshape", [back, g.const([-1, *d["in_shape"]], np.int64)])
        return back
    k, p = d["kernel"], d["padding"]
    if d["pool"] == "max":
        idx, conv_shape = fwd_idx, fwd_conv
        if d["has_weight_b"]:  # each weight unpools with the indices of its own convolution (Eq. 45-47)
            conv_shape = g.op("Conv", [pre, w], f"convb{n + 1}", kernel_shape=[k, k], pads=[p] * 4)
            idx = g.op("MaxPool", [conv_shape], n_out=2, kernel_shape=[2, 2], strides=[2, 2])[1]
        post = g.op(
            "MaxUnpool", [post, idx, g.op("Shape", [conv_shape])], f"unpool{n + 1}", kernel_shape=[2, 2], strides=[2, 2]
        )
    elif d["pool"] == "avg":
        c, hc, wc = d["conv_shape"]
        spread = g.const(np.full((c, 1, 2, 2), 0.25), hint="avg_adjoint")
        post = g.op("ConvTranspose", [post, spread], f"unavg{n + 1}", kernel_shape=[2, 2], strides=[2, 2], group=c)
        h2, w2 = d["out_shape"][1] * 2, d["out_shape"][2] * 2
        if (hc, wc) != (h2, w2):  # odd conv output: the last row / column got no pooling window
            post = g.op("Pad", [post, g.const([0, 0, 0, 0, 0, 0, hc - h2, wc - w2], np.int64)])
    return g.op("ConvTranspose", [post, w], f"convT{n + 1}", kernel_shape=[k, k], pads=[p] * 4)


def build_onnx(
    model: EPNet, metadata: dict | None = None, weights: str = "float32", schedule: str = "sync"
) -> onnx.ModelProto:
    """The ONNX model of the free phase of `model`: weights as float32 initializers, or with
    weights="int8" as int8 initializers with per-output-channel scales (quantize.py); steps of the
    training schedule ('sync' or 'evenodd', dynamics.SCHEDULES)."""
    if weights not in WEIGHT_FORMATS:
        raise ConfigError(f"--weights {weights!r}: expected one of {', '.join(WEIGHT_FORMATS)}")
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")
    if model.cfg.activation not in ("hard-sigmoid", "hard-sigmoid-1"):
        raise ConfigError(
            f"activation {model.cfg.activation!r} has no ONNX / C++ runtime form (HardSigmoid only); "
            "train with --activation hard-sigmoid or hard-sigmoid-1 to export"
        )
    if model.skips or model.cfg.activations or any(sp.stride > 1 for sp in model.specs):
        raise ConfigError(
            "skip interactions, strided convs and per-state activations have no ONNX / C++ runtime form yet; "
            "export a chain net (conv + pool, dense) with one hard sigmoid"
        )
    model = copy.deepcopy(model).float().eval()  # the caller's model keeps its dtype and mode
    L = len(model.state_shapes)
    inits, dequantize = [], []
    for k, v in model.state_dict().items():
        name, value = _init_name(k), v.detach().cpu().contiguous().numpy().astype(np.float32)
        if weights == "int8" and is_quantized_weight(name):
            q, scale = quantize_int8(value)
            inits += [numpy_helper.from_array(q, f"{name}_int8"), numpy_helper.from_array(scale, f"{name}_scale")]
            dequantize.append(
                helper.make_node(
                    "DequantizeLinear", [f"{name}_int8", f"{name}_scale"], [name], name=f"dq_{name}", axis=0
                )
            )
        else:
            inits.append(numpy_helper.from_array(value, name))

    # --- the loop body: (iter, cond, s_1..s_L, residual, count) -> (cond, s'_1..s'_L, residual', count')
    body = _Graph("body/")
    s_in = [f"s{n + 1}_in" for n in range(L)]
    new = _step_nodes(body, model, "x", s_in, schedule)
    changes = [body.op("ReduceMax", [body.op("Abs", [body.op("Sub", [a, b])])], keepdims=0) for a, b in zip(new, s_in)]
    res = body.op("Max", changes, "residual") if len(changes) > 1 else changes[0]
    cond = body.op("Not", [body.op("Less", [res, "tol"])], "cond")
    count = body.op("Add", ["count_in", body.const(1, np.int64, "one")], "count")
    outs = [body.op("Identity", [v], f"s{n + 1}_out") for n, v in enumerate(new)]
    f32 = TensorProto.FLOAT
    body_graph = helper.make_graph(
        body.nodes,
        "ep_step",
        [
            helper.make_tensor_value_info("iter", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
        ]
        + [helper.make_tensor_value_info(s, f32, None) for s in s_in]
        + [
            helper.make_tensor_value_info("res_in", f32, []),
            helper.make_tensor_value_info("count_in", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info(cond, TensorProto.BOOL, [])]
        + [helper.make_tensor_value_info(o, f32, None) for o in outs]
        + [helper.make_tensor_value_info(res, f32, []), helper.make_tensor_value_info(count, TensorProto.INT64, [])],
        initializer=body.inits,
    )

    # --- the main graph: zero states, the Loop, the read-out
    g = _Graph("")
    g.nodes += dequantize  # int8: the float weights the step reads, computed once per run
    batch = g.op("Shape", ["x"], "batch", start=0, end=1)  # (1,) int64
    zeros = [
        g.op(
            "ConstantOfShape",
            [g.op("Concat", [batch, g.const(list(shape), np.int64)], axis=0)],
            f"s{n + 1}_0",
            value=numpy_helper.from_array(np.zeros(1, np.float32)),
        )
        for n, shape in enumerate(model.state_shapes)
    ]
    loop_out = [f"s{n + 1}_final" for n in range(L)] + ["residual", "steps"]
    g.nodes.append(
        helper.make_node(
            "Loop",
            ["max_steps", g.const(True, np.bool_, "true")]
            + zeros
            + [g.const(np.inf, np.float32, "inf"), g.const(0, np.int64, "zero")],
            loop_out,
            name="free_phase",
            body=body_graph,
        )
    )
    last = loop_out[L - 1]
    if model.readout is not None:
        scores = g.op("Gemm", [g.op("Flatten", [last], axis=1), "readout.weight", "readout.bias"], transB=1)
    else:
        scores = last
    g.nodes.append(helper.make_node("Identity", [scores], ["scores"], name="scores_out"))
    graph = helper.make_graph(
        g.nodes,
        "ep_compile_free_phase",
        [
            helper.make_tensor_value_info("x", f32, ["N", *model.cfg.in_shape]),
            helper.make_tensor_value_info("max_steps", TensorProto.INT64, []),
            helper.make_tensor_value_info("tol", f32, []),
        ],
        [
            helper.make_tensor_value_info("scores", f32, ["N", model.cfg.n_classes]),
            helper.make_tensor_value_info("steps", TensorProto.INT64, []),
            helper.make_tensor_value_info("residual", f32, []),
        ],
        initializer=inits + g.inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ep_compile")
    m.ir_version = 8
    meta = {
        "ep_compile.format_version": str(format_version(weights, schedule)),
        "ep_compile.architecture": json.dumps(architecture(model, weights, schedule)),
    }
    for k, v in (metadata or {}).items():
        meta[f"ep_compile.{k}"] = v if isinstance(v, str) else json.dumps(v)
    helper.set_model_props(m, meta)
    onnx.checker.check_model(m, full_check=True)
    return m


def _init_name(state_key: str) -> str:
    """state_dict key -> contract name: layers.0.conv.weight -> layer1.weight, layers.1.weight_b ->
    layer2.weight_b, readout.weight stays."""
    if state_key.startswith("readout."):
        return state_key
    parts = state_key.split(".")
    n = int(parts[1]) + 1
    return f"layer{n}.{parts[-1]}"


def export_checkpoint(
    ck: dict, path: str, T: int | None = None, rate: bool = False, weights: str = "float32"
) -> onnx.ModelProto:
    """Build and save the ONNX file of a training checkpoint (see checkpoint.load_checkpoint), with
    float32 or int8 weights. A spiking network has no spiking ONNX form: with rate=True its weights
    export as the rate network (whose fixed point its decoded states approach), otherwise it is refused."""
    from .checkpoint import check_contents
    from .config import RunConfig
    from .data import preprocessing_meta

    if weights not in WEIGHT_FORMATS:
        raise ConfigError(f"--weights {weights!r}: expected one of {', '.join(WEIGHT_FORMATS)}")
    if T is not None and (not isinstance(T, int) or isinstance(T, bool) or T < 1):
        raise ConfigError(f"--T {T}: expected an integer >= 1 (or leave it out: the training T)")
    target = Path(path)
    if target.is_dir() or str(path).endswith(os.sep):
        raise ConfigError(f"--out {path}: is a folder; give the path of the .onnx file to write")
    if not target.parent.is_dir():
        raise ConfigError(f"--out {path}: the folder {target.parent} does not exist")
    if "config" not in ck or not isinstance(ck["config"], dict):
        raise ConfigError("the checkpoint holds no run config: it was not written by a training run")
    config = RunConfig.from_dict(ck["config"])  # the stored run, with RunConfig's one default for anything absent
    if config.neuron == "spiking" and not rate:
        raise ConfigError(
            "a spiking checkpoint has no spiking ONNX form; pass --rate to export its rate (non-spiking) "
            "network, whose fixed point the decoded spiking states approach (docs/onnx.md)"
        )
    model = EPNet(config.model)
    check_contents(ck, model)
    model.load_state_dict(ck["model"])
    meta = {
        "preprocessing": preprocessing_meta(config.data, model.cfg.in_shape),
        "classes": config.data.classes or [str(i) for i in range(model.cfg.n_classes)],
        "training_config": config.to_dict(),
        "default_T": str(T or config.phases.T),
    }
    m = build_onnx(model, meta, weights, config.phases.schedule)
    tmp = f"{path}.tmp{os.getpid()}"  # atomic: a failed write never replaces a good file
    try:
        onnx.save(m, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return m
