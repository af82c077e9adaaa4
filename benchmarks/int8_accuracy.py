"""int8 against float32 weights on a trained checkpoint: test accuracy in onnxruntime and in the C++
runtime on the whole test set, whether the quantized iteration still settles, and the per-layer
weight error. Prints a table and writes JSON (with the CPU model).

    python benchmarks/int8_accuracy.py runs/cifar10-cpu --out results/cifar10-cpu/int8
    python benchmarks/int8_accuracy.py RUN --out DIR --limit 1000 --T 40      # a quicker look

Both files are exported from the checkpoint into OUT (model_float32.onnx, model_int8.onnx; an
existing OUT is refused unless --overwrite). Both runtimes run the exported free phase (T steps from
s = 0 with the run's own schedule, synchronous or even/odd, as the export writes it: the
checkpoint's training T unless --T); the training run's own test accuracy is printed beside them from
its metrics.jsonl. The residual max_n |s_T - s_{T-1}| is measured per image in PyTorch with the same
schedule on the float32 and the dequantized (int8) network, for the first --residual-images images.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ep_compile.checkpoint import load_checkpoint  # noqa: E402
from ep_compile.config import RunConfig, model_from_config  # noqa: E402
from ep_compile.data import make_splits, preprocess, preprocessing_meta  # noqa: E402
from ep_compile.dynamics import SCHEDULES  # noqa: E402
from ep_compile.machine import describe  # noqa: E402
from ep_compile.model import ConfigError  # noqa: E402
from ep_compile.onnx_export import _init_name, export_checkpoint  # noqa: E402
from ep_compile.quantize import dequantized_model, weight_errors  # noqa: E402

CHUNK = 500  # images per onnxruntime / ep_infer call


def ort_scores(path: Path, x: np.ndarray, T: int) -> tuple[np.ndarray, float]:
    """Scores of the whole set and the largest residual of its chunks (one thread)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    out, res = [], 0.0
    for i in range(0, len(x), CHUNK):
        feed = {"x": x[i : i + CHUNK], "max_steps": np.array(T, np.int64), "tol": np.array(0.0, np.float32)}
        scores, _, r = sess.run(None, feed)
        out.append(scores)
        res = max(res, float(r))
    return np.concatenate(out), res


def cpp_scores(ep_infer: str, path: Path, x: np.ndarray, T: int) -> tuple[np.ndarray, float]:
    out, res = [], 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(0, len(x), CHUNK):
            np.save(f"{tmp}/x.npy", x[i : i + CHUNK])
            p = subprocess.run(
                [ep_infer, str(path), f"{tmp}/x.npy", "--max-steps", str(T), "--out", f"{tmp}/s.npy"],
                capture_output=True,
                text=True,
            )
            if p.returncode != 0:
                raise SystemExit(f"ep_infer failed: {p.stderr.strip()}")
            out.append(np.load(f"{tmp}/s.npy"))
            res = max(res, float(p.stdout.split("residual ")[1].split()[0]))
    return np.concatenate(out), res


def residuals(model, x: torch.Tensor, T: int, schedule: str) -> np.ndarray:
    """max |s_T - s_{T-1}| per image (steps of the run's schedule from 0, as the exported graph runs)."""
    step = SCHEDULES[schedule]
    with torch.no_grad():
        s = model.init_states(len(x), x)
        for _ in range(T - 1):
            s = step(model, x, s)
        new = step(model, x, s)
        per = torch.stack([(a - b).abs().flatten(1).max(1).values for a, b in zip(new, s)]).max(0).values
    return per.numpy()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="run folder (its last.pt) or a .pt checkpoint")
    p.add_argument("--out", required=True, help="folder for the two .onnx files and int8_accuracy.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--data-root", default=None, help="the data set's archive or folder (default: the run's)")
    p.add_argument("--T", type=int, default=None, help="free-phase steps (default: the run's training T)")
    p.add_argument("--limit", type=int, default=None, help="only the first N test images")
    p.add_argument("--residual-images", type=int, default=1000, help="images whose residual PyTorch measures")
    p.add_argument(
        "--ep-infer", default=str(ROOT / "build" / "runtime_cpp" / "ep_infer"), help="the C++ runtime's ep_infer"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    try:
        if args.T is not None and args.T < 1:
            raise ConfigError(f"--T {args.T}: expected an integer >= 1")
        if args.limit is not None and args.limit < 1:
            raise ConfigError(f"--limit {args.limit}: expected an integer >= 1")
        if not Path(args.ep_infer).exists():
            raise ConfigError(f"--ep-infer {args.ep_infer}: not found (cmake -S runtime_cpp -B build/runtime_cpp)")
        out = Path(args.out)
        if out.exists() and any(out.iterdir()) and not args.overwrite:
            raise ConfigError(f"--out {out}: exists and is not empty; pass --overwrite to replace it")
        ck = load_checkpoint(args.checkpoint)
    except ConfigError as e:
        print(f"int8_accuracy.py: error: {e}", file=sys.stderr)
        return 2
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cfg = RunConfig.from_dict(ck["config"])
    T = args.T or cfg.phases.T
    files = {w: out / f"model_{w}.onnx" for w in ("float32", "int8")}
    for w, f in files.items():
        export_checkpoint(ck, str(f), T, weights=w)
    model = model_from_config(cfg)
    model.load_state_dict(ck["model"])
    model.eval()
    test = make_splits(
        cfg.data.dataset, data_root=args.data_root or cfg.data.data_root, val_size=0, seed=cfg.run.seed
    ).test
    n = min(args.limit or len(test.y), len(test.y))
    x = preprocess(test.x[:n], preprocessing_meta(cfg.data, cfg.model.in_shape))
    y = test.y[:n].numpy()
    rows = {}
    for w, f in files.items():
        t0 = time.time()
        s_ort, r_ort = ort_scores(f, x.numpy(), T)
        t1 = time.time()
        s_cpp, r_cpp = cpp_scores(args.ep_infer, f, x.numpy(), T)
        t2 = time.time()
        net = model if w == "float32" else dequantized_model(model)
        res = residuals(net, x[: args.residual_images], T, cfg.phases.schedule)
        rows[w] = {
            "file_bytes": f.stat().st_size,
            "onnxruntime_accuracy": float((s_ort.argmax(1) == y).mean()),
            "cpp_accuracy": float((s_cpp.argmax(1) == y).mean()),
            "cpp_vs_onnxruntime_max_abs": float(np.abs(s_cpp - s_ort).max()),
            "onnxruntime_max_residual": r_ort,
            "cpp_max_residual": r_cpp,
            "residual_median": float(np.median(res)),
            "residual_p95": float(np.quantile(res, 0.95)),
            "images_settled_below_1e-3": float((res < 1e-3).mean()),
            "onnxruntime_s": t1 - t0,
            "cpp_s": t2 - t1,
            "predictions": s_cpp.argmax(1),
        }
    agree = float((rows["float32"].pop("predictions") == rows["int8"].pop("predictions")).mean())
    state = {_init_name(k): v.numpy() for k, v in ck["model"].items()}
    metrics = Path(args.checkpoint) / "metrics.jsonl" if Path(args.checkpoint).is_dir() else None
    trained = None
    if metrics is not None and metrics.exists():
        last = json.loads(metrics.read_text().splitlines()[-1])
        trained = {"epoch": last.get("epoch"), "test_accuracy": 1 - last["test_error"], "schedule": cfg.phases.schedule}
    report = {
        "checkpoint": str(args.checkpoint),
        "epoch": ck.get("epoch"),
        "T": T,
        "test_images": n,
        "residual_images": min(args.residual_images, n),
        "runs": rows,
        "int8_vs_float32_same_prediction": agree,
        "accuracy_drop_points": {
            k: 100 * (rows["float32"][k] - rows["int8"][k]) for k in ("onnxruntime_accuracy", "cpp_accuracy")
        },
        "training_run": trained,
        "weight_errors": weight_errors(state),
        "machine": describe(),
    }
    (out / "int8_accuracy.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"{n} test images, T={T} {cfg.phases.schedule} steps from 0, checkpoint epoch {ck.get('epoch')}")
    if trained:
        print(f"training run's own evaluation ({cfg.phases.schedule} steps): {100 * trained['test_accuracy']:.2f}%")
    print("| weights | file KB | onnxruntime acc. | C++ acc. | C++ vs ORT | max residual | median | p95 | settled |")
    print("|---|---|---|---|---|---|---|---|---|")
    for w, r in rows.items():
        print(
            f"| {w} | {r['file_bytes'] / 1024:.0f} | {100 * r['onnxruntime_accuracy']:.2f}% | "
            f"{100 * r['cpp_accuracy']:.2f}% | {r['cpp_vs_onnxruntime_max_abs']:.1e} | {r['cpp_max_residual']:.3g} | "
            f"{r['residual_median']:.2e} | {r['residual_p95']:.2e} | {100 * r['images_settled_below_1e-3']:.1f}% |"
        )
    print(f"int8 and float32 predict the same class for {100 * agree:.2f}% of the images")
    print("| weight | shape | max abs error | relative RMS error | largest step |")
    print("|---|---|---|---|---|")
    for e in report["weight_errors"]:
        print(
            f"| {e['tensor']} | {'x'.join(map(str, e['shape']))} | {e['max_abs']:.2e} | {e['rel_rms']:.2e} | "
            f"{e['step']:.2e} |"
        )
    print(f"wrote {out / 'int8_accuracy.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
