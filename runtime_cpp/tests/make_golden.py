"""Write the golden cases for runtime_cpp's ctest: exported models of every kind, real images (digits,
CIFAR-10 JPEGs when the shared archive is there), the scores and step counts PyTorch computes (checked
against onnxruntime here), and corrupted files with the status the loader must return.

    python runtime_cpp/tests/make_golden.py OUT_DIR [--cifar ../shared/data/cifar10-jpeg.tar.gz]

OUT_DIR/cases.txt: model input expected max_steps tol expected_steps atol   (one case per line; *_int8.onnx:
                   the same net with int8 weights, expected from PyTorch on its dequantized weights)
OUT_DIR/steps.txt: model input step layer expected atol   (the state of one layer after `step` steps
                   of dynamics.step from s = 0, for ep::step())
OUT_DIR/bad.txt:   file expected_status
"""

import argparse
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from ep_compile.config import DataConfig  # noqa: E402
from ep_compile.data import load_digits_set, normalize, preprocessing_meta  # noqa: E402
from ep_compile.dynamics import SCHEDULES, relax_until  # noqa: E402
from ep_compile.estimators import Phases, get_estimator, set_grads  # noqa: E402
from ep_compile.model import EPNet, ModelConfig  # noqa: E402
from ep_compile.onnx_export import build_onnx  # noqa: E402
from ep_compile.quantize import dequantized_model  # noqa: E402

ATOL = 1e-4  # scores: C++ sums in another order than oneDNN / MLAS
STEP_ATOL = 1e-5  # states in [0, 1] after a few steps: rounding of one conv sum, a little amplified
STEPS = (1, 2, 3, 10)  # per-step golden states
EVENODD_MODELS = (
    "digits_sym_mse_avg_fc",
    "digits_asym_ce_trained_int8",
    "cifar_sym_ce",
    "cifar_asym_ce_int8",
    "graph_skips_relu6_asym",
    "graph_skips_relu6_asym_int8",
    "graph_stride_clip_mse",
)
# graph nets (format version 3), on the digits: skips pooled 4 x 4 (max, avg) and strided, a dense
# skip, strided chain convs (output_padding), per-state ReLU6 / clipped ReLU / identity, three colours
GRAPH_A = dict(
    in_shape=(1, 8, 8),
    channels=[8, 8, 16],
    paddings=[1, 1, 1],
    pools=["max", "max", "max"],
    skips=["1:3:k1:max", "0:2:k3:avg"],
    activation="relu6",
    asymmetric=True,
)
GRAPH_B = dict(
    in_shape=(1, 8, 8),
    channels=[8, 8, 16],
    paddings=[1, 1, 1],
    pools=["none", "max", "stride"],
    fc=[20],
    skips=["1:3:k3:stride", "2:4"],
    activations=["clipped-relu-2", "hard-sigmoid", "relu6", "hard-sigmoid-1", "identity"],
    loss="mse",
)
INT8_MODELS = (
    "graph_skips_relu6_asym",
    "digits_sym_ce_trained",
    "digits_asym_ce_trained",
    "digits_sym_mse_avg_fc",
    "cifar_sym_ce",
    "cifar_asym_ce",
)


def stop_tolerance(model, x, schedule, near=1e-4) -> float:
    """A stop tolerance near `near` (within a decade) that lies halfway (in log scale) between the
    residuals of two consecutive steps, at the pair that falls by the largest ratio there: runtimes
    whose residuals differ by rounding then stop at the same step (a trained net settles slowly, and
    the first pair below `near` may differ by less than the rounding of another CPU's kernels)."""
    with torch.no_grad():
        s, res = model.init_states(len(x), x), []
        for _ in range(400):
            new = SCHEDULES[schedule](model, x, s)
            res.append(max(float((a - b).abs().max()) for a, b in zip(new, s)))
            s = new
    pairs = [(p / r, p, r) for p, r in zip(res, res[1:]) if near / 10 <= r <= near * 10 and 0 < r < p]
    if not pairs:
        return near
    _, p, r = max(pairs)
    return float(np.sqrt(r * p))


def kind(name: str) -> tuple[str, str]:
    """A golden model's name -> (its name without _evenodd, its schedule)."""
    return (name[: -len("_evenodd")], "evenodd") if name.endswith("_evenodd") else (name, "sync")


def digits_images(n=16):
    train, test = load_digits_set()
    x = normalize(test.x[:n], [0.3], [0.37], 3.0)
    return x, test.y[:n], train


def cifar_raw(path, n=8) -> torch.Tensor:
    """The first n test JPEGs of the shared archive as uint8 (n, 3, 32, 32)."""
    from PIL import Image

    imgs = []
    with tarfile.open(path, "r:gz") as tar:
        for m in tar:
            if m.isfile() and "/test/" in f"/{m.name}" and m.name.lower().endswith(".jpg"):
                imgs.append(np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")))
                if len(imgs) == n:
                    break
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()


def cifar_images(path, n=8):
    """The first n test JPEGs of the shared archive, normalised as the CIFAR presets do."""
    return normalize(cifar_raw(path, n), [0.4914, 0.4822, 0.4465], [0.247, 0.243, 0.261], 3.0)


def trained_digits_model(train, asymmetric=False, iters=150, cfg=None):
    """Symmetric EP / KP-VF on real digits with the digits preset's recipe: a model whose fixed
    points are those of a trained network, not of random weights (cfg: another net than the 8-16 chain)."""
    from ep_compile.config import OptimConfig
    from ep_compile.optim import make_optimizer

    torch.manual_seed(0)
    cfg = cfg or ModelConfig(
        in_shape=(1, 8, 8), channels=[8, 16], paddings=[1, 1], pools=["max", "max"], asymmetric=asymmetric
    )
    asymmetric = cfg.asymmetric
    model = EPNet(cfg)
    lrs = [0.2] + [0.1] * (len(cfg.layer_specs()) - 1) + [0.05]  # the 8-16 chain: 0.2, 0.1, 0.05
    opt = make_optimizer(model, OptimConfig(lrs=lrs, momentum=0.9, weight_decay=3e-4))
    est = get_estimator("kp-vf" if asymmetric else "symmetric")
    x_all = normalize(train.x, [0.3], [0.37], 3.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(iters):
        idx = torch.randint(0, len(train.y), (64,), generator=gen)
        set_grads(model, est(model, x_all[idx], train.y[idx], Phases(T=30, K=10, beta=0.5)).grads)
        opt.step()
    return model


def expected(model, x, steps, tol, schedule="sync"):
    with torch.no_grad():
        s, n, _ = relax_until(model, x, model.init_states(len(x), x), steps, tol, 1, step_fn=SCHEDULES[schedule])
        return model.logits(s).numpy().astype(np.float32), n


def int8_crafted(out: Path, put):
    """Crafted int8 files (from the trained asymmetric digits net: conv, max pool, backward weights,
    read-out): bad scales, counts, types, versions and dequantization nodes."""
    from onnx import numpy_helper

    good = (out / "digits_asym_ce_trained_int8.onnx").read_bytes()

    def edit(fname, how, status):
        m = onnx.load_from_string(good)
        how(m)
        put(fname, m.SerializeToString(), status)

    def init(m, name):
        return next(t for t in m.graph.initializer if t.name == name)

    def set_scale(name, i, v):
        def how(m):
            t = init(m, name)
            a = numpy_helper.to_array(t).copy()
            a[i] = v
            t.CopyFrom(numpy_helper.from_array(a, name))

        return how

    def meta(key, value):
        def how(m):
            for p in m.metadata_props:
                if p.key == key:
                    p.value = value(p.value)

        return how

    def arch(change):
        def value(v):
            a = json.loads(v)
            change(a)
            return json.dumps(a)

        return meta("ep_compile.architecture", value)

    def dq_node(m, weight):
        return next(n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == weight)

    def set_axis(m):
        dq_node(m, "layer2.weight").attribute[0].i = 1

    def drop_axis(m):
        del dq_node(m, "layer2.weight").attribute[:]

    def swap_scales(m):  # layer2.weight dequantized with layer2.weight_b's scales
        dq_node(m, "layer2.weight").input[1] = "layer2.weight_b_scale"

    def short_scales(m):
        t = init(m, "layer1.weight_scale")
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t)[:-1].copy(), "layer1.weight_scale"))

    def float_q(m):  # the int8 data stored as float32
        t = init(m, "layer1.weight_int8")
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), "layer1.weight_int8"))

    def extra_float(m):  # a float32 layer1.weight beside its int8 form
        m.graph.initializer.append(numpy_helper.from_array(np.zeros((8, 1, 3, 3), np.float32), "layer1.weight"))

    def drop_scale(m):
        m.graph.initializer.remove(init(m, "readout.weight_scale"))

    def second_reader(m):  # the read-out reads the int8 data of layer 1's weight beside its DequantizeLinear
        dq_node(m, "readout.weight").input[0] = "layer1.weight_int8"

    edit("bad_int8_scale_zero.onnx", set_scale("layer1.weight_scale", 2, 0.0), "parse error")
    edit("bad_int8_scale_nan.onnx", set_scale("layer2.weight_b_scale", 0, np.nan), "parse error")
    edit("bad_int8_scale_negative.onnx", set_scale("readout.weight_scale", 1, -0.01), "parse error")
    edit("bad_int8_scale_inf.onnx", set_scale("layer2.weight_scale", 3, np.inf), "parse error")
    edit("bad_int8_scale_count.onnx", short_scales, "shape mismatch")
    edit("bad_int8_float_data.onnx", float_q, "unsupported")
    edit("bad_int8_and_float.onnx", extra_float, "shape mismatch")
    edit("bad_int8_missing_scale.onnx", drop_scale, "missing entry")
    edit("bad_int8_axis.onnx", set_axis, "shape mismatch")
    edit("bad_int8_no_axis.onnx", drop_axis, "shape mismatch")
    edit("bad_int8_swapped_scales.onnx", swap_scales, "shape mismatch")
    edit("bad_int8_second_reader.onnx", second_reader, "shape mismatch")
    edit("bad_int8_version1.onnx", meta("ep_compile.format_version", lambda v: "1"), "format version mismatch")
    edit("bad_int8_version4.onnx", meta("ep_compile.format_version", lambda v: "4"), "format version mismatch")
    edit("bad_int8_weights_int4.onnx", arch(lambda a: a.update(weights="int4")), "unsupported")
    edit("bad_int8_meta_float.onnx", arch(lambda a: a.update(weights="float32")), "shape mismatch")
    good = (out / "digits_sym_mse_avg_fc_evenodd.onnx").read_bytes()  # the even/odd schedule (3 layers)
    edit("bad_evenodd_version1.onnx", meta("ep_compile.format_version", lambda v: "1"), "format version mismatch")
    edit("bad_evenodd_schedule_async.onnx", arch(lambda a: a.update(schedule="async")), "unsupported")
    edit("bad_evenodd_meta_sync.onnx", arch(lambda a: a.update(schedule="sync")), "shape mismatch")


def graph_crafted(out: Path, put):
    """Crafted graph nets (format version 3): metadata of skips, strides, activations and colours
    edited without the graph, graph nodes edited without the metadata, missing or extra weights."""
    from onnx import numpy_helper

    def edit(source, fname, how, status):
        m = onnx.load(out / source)
        how(m)
        put(fname, m.SerializeToString(), status)

    def arch(change):
        def how(m):
            for p in m.metadata_props:
                if p.key == "ep_compile.architecture":
                    a = json.loads(p.value)
                    change(a)
                    p.value = json.dumps(a)

        return how

    def version(v):
        def how(m):
            for p in m.metadata_props:
                if p.key == "ep_compile.format_version":
                    p.value = v

        return how

    def drop_init(name):
        def how(m):
            m.graph.initializer.remove(next(t for t in m.graph.initializer if t.name == name))

        return how

    def body(m):
        return next(a.g for n in m.graph.node if n.op_type == "Loop" for a in n.attribute if a.name == "body")

    def out_padding(m):  # the strided chain conv's transpose loses its output_padding
        for n in body(m).node:
            if n.op_type == "ConvTranspose" and n.input[1] == "layer3.weight":
                for a in n.attribute:
                    if a.name == "output_padding":
                        del a.ints[:]
                        a.ints.extend([0, 0])

    def clip_max(m):  # state 1's clip(u, 0, 2) becomes clip(u, 0, 3) in the graph only
        g = body(m)
        clip = next(n for n in g.node if n.op_type == "Clip" and n.output[0].startswith("body/s1_"))
        t = next(t for t in g.initializer if t.name == clip.input[2])
        t.CopyFrom(numpy_helper.from_array(np.array(3.0, np.float32), t.name))

    a, b = "graph_skips_relu6_asym.onnx", "graph_stride_clip_mse.onnx"
    edit(a, "bad_graph_skip_src.onnx", arch(lambda d: d["skips"][0].update(src=2)), "shape mismatch")
    edit(a, "bad_graph_skip_factor.onnx", arch(lambda d: d["skips"][0].update(factor=2)), "shape mismatch")
    edit(a, "bad_graph_skip_pool.onnx", arch(lambda d: d["skips"][0].update(pool="avg")), "shape mismatch")
    edit(a, "bad_graph_skip_bias.onnx", arch(lambda d: d["skips"][1].update(bias=True)), "missing entry")
    edit(a, "bad_graph_skip_no_wb.onnx", arch(lambda d: d["skips"][0].update(has_weight_b=False)), "shape mismatch")
    edit(a, "bad_graph_skip_dropped.onnx", arch(lambda d: d["skips"].pop()), "shape mismatch")
    edit(a, "bad_graph_skip_weight.onnx", drop_init("skip1.weight"), "missing entry")
    edit(a, "bad_graph_version2.onnx", version("2"), "format version mismatch")
    edit(a.replace(".onnx", "_evenodd.onnx"), "bad_graph_colours_shared.onnx", arch(lambda d: d.update(colours=[[0, 1], [2]])),
         "shape mismatch")  # fmt: skip
    edit(a, "bad_graph_colours_missing.onnx", arch(lambda d: d.update(colours=[[0, 1]])), "parse error")
    edit(a, "bad_graph_act_relu6.onnx", arch(lambda d: d["activations"][1].__setitem__(2, 1.0)), "shape mismatch")
    edit(b, "bad_graph_skip_stride.onnx", arch(lambda d: d["skips"][0].update(stride=2)), "shape mismatch")
    edit(b, "bad_graph_out_padding.onnx", out_padding, "shape mismatch")
    edit(b, "bad_graph_clip_const.onnx", clip_max, "shape mismatch")
    edit(b, "bad_graph_act_ceiling.onnx", arch(lambda d: d["activations"][0].__setitem__(2, 3.0)), "shape mismatch")
    edit(b, "bad_graph_act_identity.onnx", arch(lambda d: d["activations"].__setitem__(4, [1.0, 0.0, 1.0])),
         "shape mismatch")  # fmt: skip
    edit(b, "bad_graph_act_half_open.onnx", arch(lambda d: d["activations"].__setitem__(0, [1.0, None, 2.0])),
         "parse error")  # fmt: skip
    edit(b, "bad_graph_dense_skip.onnx", arch(lambda d: d["skips"][1].update(dst=5)), "shape mismatch")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", help="folder to write the golden cases into")
    p.add_argument(
        "--cifar", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"), help="CIFAR-10 JPEG archive"
    )
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    xd, yd, train = digits_images()
    inputs = {"digits": xd}
    if Path(args.cifar).exists():
        inputs["cifar"] = cifar_images(args.cifar)
    torch.manual_seed(1)
    small = dict(in_shape=(1, 8, 8), channels=[8, 16], paddings=[1, 1])
    cifar = dict(in_shape=(3, 32, 32), channels=[16, 32, 32], paddings=[1, 1, 0], pools=["max"] * 3)
    models = {
        "digits_sym_ce_trained": ("digits", trained_digits_model(train)),
        "digits_asym_ce_trained": ("digits", trained_digits_model(train, asymmetric=True)),
        "digits_sym_mse_avg_fc": ("digits", EPNet(ModelConfig(**small, pools=["avg", "max"], fc=[20], loss="mse"))),
        "digits_asym_mse": ("digits", EPNet(ModelConfig(**small, pools=["max", "max"], loss="mse", asymmetric=True))),
        "graph_skips_relu6_asym": ("digits", trained_digits_model(train, cfg=ModelConfig(**GRAPH_A), iters=60)),
        "graph_stride_clip_mse": ("digits", EPNet(ModelConfig(**GRAPH_B))),
        "cifar_sym_ce": ("cifar", EPNet(ModelConfig(**cifar))),
        "cifar_asym_ce": ("cifar", EPNet(ModelConfig(**cifar, asymmetric=True))),
        "cifar_sym_mse_none_avg": (
            "cifar",
            EPNet(
                ModelConfig(**{**cifar, "pools": ["none", "max", "avg"], "paddings": [0, 1, 1]}, loss="mse", fc=[24])
            ),
        ),
    }
    for name in INT8_MODELS:  # int8 weights: the reference is PyTorch on the dequantized weights
        data, model = models[name]
        models[f"{name}_int8"] = (data, dequantized_model(model))
    for name in EVENODD_MODELS:  # the even/odd schedule: the reference is dynamics.step_evenodd
        models[f"{name}_evenodd"] = models[name]
    lines = []
    for name, (data, model) in models.items():
        if data not in inputs:
            continue
        x = inputs[data]
        meta = {"default_T": "40"}
        if data == "digits":  # the preprocessing contract, for ep_infer --raw
            meta["preprocessing"] = preprocessing_meta(DataConfig(mean=[0.3], std=[0.37]), (1, 8, 8))
        base, schedule = kind(name)
        int8 = base.endswith("_int8")
        source = models[base[: -len("_int8")]][1] if int8 else model  # int8: export the float weights
        m = build_onnx(source, meta, "int8" if int8 else "float32", schedule)
        if name.endswith("_trained"):
            acc = (expected(model, x, 40, 0.0)[0].argmax(1) == yd.numpy()).mean()
            print(f"{name}: accuracy {acc:.2f} on the {len(yd)} golden digits")
        onnx.save(m, out / f"{name}.onnx")
        np.save(out / f"{data}.npy", x.numpy().astype(np.float32))
        if data == "digits":
            np.save(out / "digits_raw.npy", load_digits_set()[1].x[: len(x)].numpy())  # uint8 0..255
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        for steps, tol in ((40, 0.0), (400, stop_tolerance(model, x, schedule))):
            want, n = expected(model, x, steps, tol, schedule)
            sc, n_ort, _ = sess.run(
                None, {"x": x.numpy(), "max_steps": np.array(steps, np.int64), "tol": np.array(tol, np.float32)}
            )
            assert np.abs(sc - want).max() < 1e-5 and int(n_ort) == n, (name, np.abs(sc - want).max(), n_ort, n)
            exp = f"{name}_{steps}.expected.npy"
            np.save(out / exp, want)
            lines.append(f"{name}.onnx {data}.npy {exp} {steps} {tol:g} {n} {ATOL:g}")
    (out / "cases.txt").write_text("\n".join(lines) + "\n")

    # per-step states: dynamics.step from s = 0, every layer, for ep::step(). The digits nets only: in
    # the random-init CIFAR nets some 2x2 pool windows hold values equal to within rounding (saturated
    # regions), where the C++ and oneDNN summation orders pick different winners for a few steps
    # (measured: up to 5e-4 on a few elements at steps 2-10, the same fixed point after 40 steps)
    step_lines = []
    for name in (
        "digits_sym_ce_trained",
        "digits_asym_ce_trained",
        "digits_asym_mse",
        "digits_sym_mse_avg_fc",
        "digits_asym_ce_trained_int8",
        "digits_sym_mse_avg_fc_int8",
        "digits_sym_mse_avg_fc_evenodd",
        "digits_asym_ce_trained_int8_evenodd",
        "graph_skips_relu6_asym",
        "graph_skips_relu6_asym_evenodd",
        "graph_skips_relu6_asym_int8_evenodd",
        "graph_stride_clip_mse",
        "graph_stride_clip_mse_evenodd",
    ):
        data, model = models[name]
        if data not in inputs:
            continue
        x = inputs[data]
        with torch.no_grad():
            s = model.init_states(len(x), x)
            for t in range(1, max(STEPS) + 1):
                s = SCHEDULES[kind(name)[1]](model, x, s)
                if t in STEPS:
                    for n, sn in enumerate(s):
                        fname = f"{name}_step{t}_s{n + 1}.npy"
                        np.save(out / fname, sn.numpy().astype(np.float32))
                        step_lines.append(f"{name}.onnx {data}.npy {t} {n} {fname} {STEP_ATOL:g}")
    (out / "steps.txt").write_text("\n".join(step_lines) + "\n")

    # corrupted files: each must give an error code, never a crash
    good = (out / "digits_sym_ce_trained.onnx").read_bytes()
    bad = []

    codes = {
        "any": -1,
        "bad argument": 1,
        "parse error": 3,
        "format version mismatch": 4,
        "shape mismatch": 5,
        "missing entry": 7,
        "too large for this platform": 8,
        "unsupported": 6,
    }

    def put(fname, data, status):
        (out / fname).write_bytes(data)
        bad.append(f"{fname} {codes[status]}")

    put("bad_empty.onnx", b"", "bad argument")
    for frac in (0.1, 0.5, 0.9, 0.999):
        put(f"bad_truncated_{int(frac * 1000)}.onnx", good[: int(len(good) * frac)], "parse error")
    for version in ("0", "4"):  # this runtime reads 1 (float32), 2 (int8, even/odd) and 3 (graph nets)
        m = onnx.load_from_string(good)
        for prop in m.metadata_props:
            if prop.key == "ep_compile.format_version":
                prop.value = version
        put(f"bad_version_{version}.onnx", m.SerializeToString(), "format version mismatch")
    m = onnx.load_from_string(good)
    w = next(t for t in m.graph.initializer if t.name == "layer2.weight")
    w.dims[0] = 1 << 40
    put("bad_huge_dim.onnx", m.SerializeToString(), "parse error")
    m = onnx.load_from_string(good)
    w = next(t for t in m.graph.initializer if t.name == "layer2.weight")
    w.dims[1] = 9  # a wrong but small shape, with matching data: the shape check must catch it
    w.raw_data = np.zeros(int(np.prod(w.dims)), np.float32).tobytes()
    put("bad_shape.onnx", m.SerializeToString(), "shape mismatch")
    m = onnx.load_from_string(good)
    m.graph.initializer.remove(next(t for t in m.graph.initializer if t.name == "readout.bias"))
    put("bad_missing.onnx", m.SerializeToString(), "missing entry")

    # edited metadata whose graph was not edited: the loader checks the architecture against the nodes
    def edit_arch(fname, change, status="shape mismatch"):
        m = onnx.load_from_string(good)
        for prop in m.metadata_props:
            if prop.key == "ep_compile.architecture":
                arch = json.loads(prop.value)
                change(arch)
                prop.value = json.dumps(arch)
        put(fname, m.SerializeToString(), status)

    edit_arch("bad_meta_pool.onnx", lambda a: a["layers"][1].update(pool="avg"))
    edit_arch("bad_meta_slope.onnx", lambda a: a.update(slope=1.0))
    edit_arch("bad_meta_padding.onnx", lambda a: a["layers"][0].update(padding=2, out_shape=[8, 5, 5]))
    edit_arch("bad_meta_readout.onnx", lambda a: a.update(readout=False))
    # huge metadata (a 200,000-element list): refused in linear time
    edit_arch("bad_meta_huge.onnx", lambda a: a.update(in_shape=[1] * 200000), "parse error")
    m = onnx.load_from_string(good)  # a huge default step count: refused, not a hang
    for prop in m.metadata_props:
        if prop.key == "ep_compile.default_T":
            prop.value = "99999999999"
    put("bad_default_T.onnx", m.SerializeToString(), "parse error")
    m = onnx.load_from_string(good)  # the same initializer twice
    m.graph.initializer.append(onnx.TensorProto.FromString(m.graph.initializer[0].SerializeToString()))
    put("bad_duplicate.onnx", m.SerializeToString(), "parse error")
    int8_crafted(out, put)
    graph_crafted(out, put)
    rng = np.random.default_rng(0)
    for i in range(40):  # bit flips anywhere: any status, but the loader must return
        flipped = bytearray(good)
        pos = int(rng.integers(len(flipped)))
        flipped[pos] ^= 1 << int(rng.integers(8))
        put(f"bad_flip_{i}.onnx", bytes(flipped), "any")
    (out / "bad.txt").write_text("\n".join(bad) + "\n")

    # small seeds for the fuzz targets (a few KB each: many executions per second)
    torch.manual_seed(2)
    tiny = dict(in_shape=(1, 4, 4), channels=[2, 2], paddings=[1, 1])
    seeds = {
        "fuzz_seed_ce_max_avg": EPNet(ModelConfig(**tiny, pools=["max", "avg"])),
        "fuzz_seed_mse_asym_fc": EPNet(
            ModelConfig(**tiny, pools=["none", "max"], fc=[10], loss="mse", asymmetric=True)
        ),
    }
    seeds["fuzz_seed_graph"] = EPNet(
        ModelConfig(**{**tiny, "channels": [2, 2, 2], "paddings": [1, 1, 1]}, pools=["max", "none", "stride"],
                    skips=["1:3:k3:stride", "0:2:k1:max"], activations=["relu6", "hard-sigmoid", "hard-sigmoid-1", "identity"], loss="mse")
    )  # fmt: skip
    for name, model in seeds.items():
        onnx.save(build_onnx(model, {"default_T": "5"}, schedule="evenodd" if "graph" in name else "sync"),
                  out / f"{name}.onnx")  # fmt: skip
    onnx.save(build_onnx(seeds["fuzz_seed_mse_asym_fc"], {"default_T": "5"}, "int8"), out / "fuzz_seed_int8.onnx")
    print(f"wrote {len(lines)} golden cases and {len(bad)} corrupted files to {out}")


if __name__ == "__main__":
    main()
