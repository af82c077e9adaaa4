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
A step is the training run's schedule: synchronous, or even/odd (dynamics.step_evenodd: the colour
classes of the state graph in turn), over every interaction (_Step); graph nets (skips, strided
convs, clipped or per-state activations) add Clip, Mul, strided Conv / ConvTranspose and f x f pools.

Initializers: layer{n}.weight, layer{n}.bias (n = 1..L), layer{n}.weight_b (backward weights of an
asymmetric layer), skip{m}.weight[_b] (skip interactions, no bias), readout.weight, readout.bias ('ce'). With int8 weights (weights="int8", see
quantize.py) each weight W is instead the initializers W_int8 (int8, W's shape) and W_scale (float32,
one per output channel) and a DequantizeLinear node (axis 0) of the main graph whose output is named
W, so the step reads W exactly as before. Metadata (metadata_props):
  ep_compile.format_version  1, or 2 for int8 weights or the even/odd schedule, or 3 for graph nets
                             (the lowest version that describes the file: older readers read the rest)
  ep_compile.architecture    JSON: layers (kind, in/out/conv shapes, kernel, padding, pool, has
                             weight_b), activation slope, loss, n_classes, state shapes, weights
                             ("float32" or "int8"), schedule ("sync" or "evenodd": the training's);
                             version 3 adds skips, activations, colours (docs/onnx.md)
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

FORMAT_VERSION = 3  # the newest contract (2: int8 weights, even/odd; 3: graph nets); see format_version
HARD_SIGMOIDS = ("hard-sigmoid", "hard-sigmoid-1")  # the clamps to [0, 1] of versions 1-2 (HardSigmoid)
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


def _spec_info(sp, layer, graph: bool) -> dict:
    """What the C++ runtime and the ONNX builder need to know of one interaction (its LayerSpec); a
    graph net's entries (format version 3) also say which states it links, its stride and window."""
    d = {"in_shape": list(sp.in_shape), "out_shape": list(sp.out_shape), "has_weight_b": layer.weight_b is not None}
    if sp.kind == "conv":
        d.update(kind="conv", kernel=sp.kernel, padding=sp.padding, pool=sp.pool, conv_shape=list(sp.conv_shape))
        if graph:
            d.update(stride=sp.stride, factor=sp.factor)
    else:
        d.update(kind="dense")
    if graph:
        d.update(src=sp.src, dst=sp.dst, bias=sp.bias)
    return d


def is_graph_net(model: EPNet) -> bool:
    """Beyond the chain of one hard sigmoid (versions 1-2): skip interactions, strided convs, per-state
    or clipped activations."""
    return (
        bool(model.skips)
        or bool(model.cfg.activations)
        or model.cfg.activation not in HARD_SIGMOIDS
        or any(sp.stride > 1 for sp in model.specs)
    )


def layer_info(model: EPNet) -> list[dict]:
    """Per chain layer n = 1..L: its index and _spec_info."""
    graph = is_graph_net(model)
    return [
        {"index": n + 1, **_spec_info(sp, layer, graph)} for n, (sp, layer) in enumerate(zip(model.specs, model.layers))
    ]


def skip_info(model: EPNet) -> list[dict]:
    """Per skip interaction m = 1..: its index and _spec_info (initializers skip{m}.weight[_b])."""
    return [
        {"index": m + 1, **_spec_info(sp, sk, True)} for m, (sp, sk) in enumerate(zip(model.skip_specs, model.skips))
    ]


def format_version(weights: str, schedule: str, graph: bool = False) -> int:
    """The lowest format version that describes the file: 1 unless it needs what 2 added (int8
    weights, the even/odd schedule) or 3 (graph nets: skips, strides, per-state activations), so
    every older reader still reads the files it can run."""
    return 3 if graph else 2 if weights == "int8" or schedule != "sync" else 1


def architecture(model: EPNet, weights: str = "float32", schedule: str = "sync") -> dict:
    arch = {
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
    if is_graph_net(model):  # version 3: every state's clamp (null: unbounded) and the update classes
        arch["skips"] = skip_info(model)
        arch["activations"] = [[a, None if abs(lo) == float("inf") else lo, None if hi == float("inf") else hi]
                               for a, lo, hi in model.acts]  # fmt: skip
        arch["colours"] = [list(c) for c in model.colours] if schedule == "evenodd" else [list(range(len(model.acts)))]
    return arch


def _weight_names(model: EPNet) -> list[tuple[str, str]]:
    """(forward, feedback) initializer names of every interaction, in the order of model.all_specs."""
    names = [f"layer{n + 1}" for n in range(len(model.layers))] + [f"skip{m + 1}" for m in range(len(model.skips))]
    return [(f"{p}.weight", f"{p}.weight_b" if i.weight_b is not None else f"{p}.weight")
            for p, i in zip(names, model.interactions())]  # fmt: skip


class _Step:
    """The nodes of one step of the explicit dynamics over every interaction (inference: no nudge, no
    dropout), as dynamics.SCHEDULES: the colour classes in turn (one class of every state: the
    synchronous step). At the start of each class the forward term of every interaction whose source
    state changed is recomputed; the others, and their max-pool indices, are reused."""

    def __init__(self, g: _Graph, model: EPNet, x: str, states: list[str]):
        self.g, self.model, self.specs, self.names = g, model, model.all_specs, _weight_names(model)
        self.cur = [x] + list(states)  # state names, 0 = the input
        self.fwd = {}  # interaction -> (source name, P(w * s^src), max-pool indices, conv output)

    def forward(self, i: int):
        sp, (w, _) = self.specs[i], self.names[i]
        pre, g = self.cur[sp.src], self.g
        bias = [w.replace(".weight", ".bias")] if sp.bias else []
        if sp.kind == "dense":
            return g.op("Gemm", [g.op("Flatten", [pre], axis=1), w, *bias], "fc", transB=1), None, None
        k, p, f = sp.kernel, sp.padding, sp.factor
        ins = [pre, w, *bias]
        strided = {"strides": [sp.stride] * 2} if sp.stride > 1 else {}
        u = g.op("Conv", ins, "conv", kernel_shape=[k, k], pads=[p] * 4, **strided)
        if sp.pool == "max":
            y, idx = g.op("MaxPool", [u], "pool", n_out=2, kernel_shape=[f, f], strides=[f, f])
            return y, idx, u
        if sp.pool == "avg":
            return g.op("AveragePool", [u], "pool", kernel_shape=[f, f], strides=[f, f]), None, u
        return u, None, u

    def refresh(self):
        for i, sp in enumerate(self.specs):
            if i not in self.fwd or self.fwd[i][0] != self.cur[sp.src]:
                self.fwd[i] = (self.cur[sp.src], *self.forward(i))

    def feedback(self, i: int) -> str:
        """Adjoint of interaction i applied to its target state, into its source state's shape."""
        sp, (w, wb), g = self.specs[i], self.names[i], self.g
        post = self.cur[sp.dst]
        if sp.kind == "dense":
            back = g.op("MatMul", [post, wb])  # (N, in)
            if len(sp.in_shape) > 1:
                back = g.op("Reshape", [back, g.const([-1, *sp.in_shape], np.int64)])
            return back
        k, p, f = sp.kernel, sp.padding, sp.factor
        strided = {"strides": [sp.stride] * 2} if sp.stride > 1 else {}
        _, _, idx, conv_out = self.fwd[i]
        if sp.pool == "max":
            if wb != w:  # each weight unpools with the indices of its own convolution (Eq. 45-47)
                conv_out = g.op("Conv", [self.cur[sp.src], wb], "convb", kernel_shape=[k, k], pads=[p] * 4, **strided)
                idx = g.op("MaxPool", [conv_out], n_out=2, kernel_shape=[f, f], strides=[f, f])[1]
            post = g.op(
                "MaxUnpool", [post, idx, g.op("Shape", [conv_out])], "unpool", kernel_shape=[f, f], strides=[f, f]
            )
        elif sp.pool == "avg":
            c, hc, wc = sp.conv_shape
            spread = g.const(np.full((c, 1, f, f), 1.0 / (f * f)), hint="avg_adjoint")
            post = g.op("ConvTranspose", [post, spread], "unavg", kernel_shape=[f, f], strides=[f, f], group=c)
            h2, w2 = sp.out_shape[1] * f, sp.out_shape[2] * f
            if (hc, wc) != (h2, w2):  # odd conv output: the last rows / columns got no pooling window
                post = g.op("Pad", [post, g.const([0, 0, 0, 0, 0, 0, hc - h2, wc - w2], np.int64)])
        if sp.stride > 1:  # the rows / columns the strided conv dropped come back as output_padding
            strided["output_padding"] = list(sp.out_padding)
        return g.op("ConvTranspose", [post, wb], "convT", kernel_shape=[k, k], pads=[p] * 4, **strided)

    def sigma(self, u: str, n: int) -> str:
        """State n's (0-based) activation: HardSigmoid for the [0, 1] clamps, else Mul and Clip."""
        slope, lo, hi = self.model.acts[n]
        if (lo, hi) == (0.0, 1.0):
            return self.g.op("HardSigmoid", [u], f"s{n + 1}", alpha=slope, beta=0.0)
        if slope != 1.0:
            u = self.g.op("Mul", [u, self.g.const(slope)])
        if lo == -np.inf:
            return self.g.op("Identity", [u], f"s{n + 1}")
        return self.g.op("Clip", [u, self.g.const(lo), self.g.const(hi)], f"s{n + 1}")

    def update(self, states: list[int]) -> dict[int, str]:
        """New values of `states` (0-based; sharing no interaction) from the current ones: the
        forward term of every interaction into each, then the feedback of every one out of it, in
        dynamics.preactivations' order (the chain first, then the skips)."""
        self.refresh()
        new = {}
        for n in states:
            terms = []
            for i, sp in enumerate(self.specs):
                if sp.dst == n + 1:
                    terms.append(self.fwd[i][1])
                elif sp.src == n + 1:
                    terms.append(self.feedback(i))
            u = terms[0]
            for t in terms[1:]:
                u = self.g.op("Add", [u, t])
            new[n] = self.sigma(u, n)
        return new

    def run(self, schedule: str) -> list[str]:
        classes = [list(range(len(self.cur) - 1))] if schedule == "sync" else self.model.colours
        for c in classes:
            for n, v in self.update(list(c)).items():
                self.cur[n + 1] = v
        return self.cur[1:]


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
    if model.cfg.activation == "holo-sigmoid":
        raise ConfigError(
            "activation 'holo-sigmoid' (holomorphic EP's smooth sigmoid) has no ONNX / C++ runtime form; "
            "train with --activation hard-sigmoid, hard-sigmoid-1, relu6 or clipped-relu-C to export"
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
    new = _Step(body, model, "x", s_in).run(schedule)
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
        "ep_compile.format_version": str(format_version(weights, schedule, is_graph_net(model))),
        "ep_compile.architecture": json.dumps(architecture(model, weights, schedule)),
    }
    for k, v in (metadata or {}).items():
        meta[f"ep_compile.{k}"] = v if isinstance(v, str) else json.dumps(v)
    helper.set_model_props(m, meta)
    onnx.checker.check_model(m, full_check=True)
    return m


def _init_name(state_key: str) -> str:
    """state_dict key -> contract name: layers.0.conv.weight -> layer1.weight, layers.1.weight_b ->
    layer2.weight_b, skips.0.conv.weight -> skip1.weight, readout.weight stays."""
    if state_key.startswith("readout."):
        return state_key
    parts = state_key.split(".")
    n = int(parts[1]) + 1
    return f"{'skip' if parts[0] == 'skips' else 'layer'}{n}.{parts[-1]}"


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
