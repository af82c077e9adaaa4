"""Per-image latency of the C++ runtime vs onnxruntime (both single thread) on the same .onnx file:
float32 and int8 weights, batch 1 and 4, at the paper's CIFAR-10 net, the cifar10-cpu net (even/odd
steps), the same net with the skip interactions of the cifar10-cpu skip run (a graph net, format
version 3: three colour classes) and a small net. Prints a table with the ratios, writes JSON with
the CPU model.

Two C++ builds side by side, both -ffp-contract=off and bit for bit the same scores: the portable
default (the target's baseline ISA; on x86-64 its GEMM picks AVX-512 or AVX2 at run time) and
`-DEP_FAST=ON` (-O3 -march=native for every kernel). int8 files are timed against onnxruntime on the
same int8 file (DequantizeLinear once per run, then float convolutions) and against the float32 file.

    python benchmarks/runtime_latency.py                     # builds runtime_cpp in build/runtime_cpp
    python benchmarks/runtime_latency.py --repeats 5 --json benchmarks/runtime_latency.json
    python benchmarks/runtime_latency.py --nets cifar10-cpu,skip --json /tmp/graph.json   # some rows only
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ep_compile.machine import describe  # noqa: E402
from ep_compile.model import EPNet, model_config  # noqa: E402
from ep_compile.onnx_export import build_onnx  # noqa: E402

# the cifar10-cpu preset's net (ep_compile/presets.py): 32-64-128-256, slope-1 hard sigmoid
CIFAR10_CPU = dict(
    in_shape=(3, 32, 32), channels=[32, 64, 128, 256], paddings=[1, 1, 1, 0], activation="hard-sigmoid-1"
)
SKIPS = ["0:2:k3:max", "2:4:k1:max"]  # results/cifar10-cpu-skips: input -> state 2, state 2 -> state 4


def time_one(path: Path, xpath: Path, steps: int, builds: dict, repeats: int) -> dict:
    """ms per image of onnxruntime and each C++ build on one file and input. Rounds alternate the
    three, so a drift of the machine's speed hits all alike; each round takes the median of 3 runs,
    the row the median of the rounds."""
    x = np.load(xpath)
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {"x": x, "max_steps": np.array(steps, np.int64), "tol": np.array(0.0, np.float32)}
    sess.run(None, feed)
    times = {"onnxruntime": [], **{build: [] for build in builds}}
    for _ in range(repeats):
        ort_ms = []
        for _ in range(3):
            t = time.perf_counter()
            sess.run(None, feed)
            ort_ms.append(1e3 * (time.perf_counter() - t))
        times["onnxruntime"].append(statistics.median(ort_ms))
        for build, folder in builds.items():
            out = subprocess.run(
                [str(folder / "ep_bench"), str(path), str(xpath), str(steps), "3"],
                check=True,
                capture_output=True,
                text=True,
            )
            times[build].append(float(out.stdout.strip()))
    batch = len(x)
    row = {"onnxruntime_ms_per_image": statistics.median(times["onnxruntime"]) / batch}
    for build in builds:
        row[f"cpp_{build}_ms_per_image"] = statistics.median(times[build]) / batch
        row[f"cpp_{build}_over_ort"] = row[f"cpp_{build}_ms_per_image"] / row["onnxruntime_ms_per_image"]
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--build-dir", default=str(ROOT / "build" / "runtime_cpp"), help="CMake build folder")
    p.add_argument("--steps-cifar", type=int, default=30, help="free-phase steps timed at the paper's net")
    p.add_argument("--steps-small", type=int, default=250, help="free-phase steps timed at the small net")
    p.add_argument("--repeats", type=int, default=7, help="rounds per number (median)")
    p.add_argument("--nets", default="", help="comma-separated first words of the rows to time (default: all)")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "runtime_latency.json"), help="write results here")
    args = p.parse_args(argv)
    b = Path(args.build_dir)
    builds = {"portable": b, "native": b.with_name(b.name + "_native")}
    for build, folder in builds.items():
        flag = "ON" if build == "native" else "OFF"
        subprocess.run(
            [
                "cmake",
                "-S",
                str(ROOT / "runtime_cpp"),
                "-B",
                str(folder),
                "-DCMAKE_BUILD_TYPE=Release",
                f"-DEP_FAST={flag}",
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            ["cmake", "--build", str(folder), "--target", "ep_bench", "-j2"], check=True, capture_output=True
        )
    rows = []
    nets = (
        ("paper CIFAR-10 net", model_config("cifar10"), "sync", args.steps_cifar),
        ("cifar10-cpu net", model_config(CIFAR10_CPU), "evenodd", 20),
        ("skip cifar10-cpu net", model_config({**CIFAR10_CPU, "skips": SKIPS}), "evenodd", 20),
        ("small digits net", model_config("digits"), "sync", args.steps_small),
    )
    only = [w for w in args.nets.split(",") if w]
    for name, cfg, schedule, steps in nets:
        if only and name.split()[0] not in only:
            continue
        torch.manual_seed(0)
        model = EPNet(cfg)
        for weights in ("float32", "int8"):
            path = b / f"{name.split()[0]}_{weights}.onnx"
            path.write_bytes(build_onnx(model, weights=weights, schedule=schedule).SerializeToString())
            for batch in (1, 4):
                xpath = b / f"x_{name.split()[0]}_{batch}.npy"
                x = torch.randn(batch, *model.cfg.in_shape, generator=torch.Generator().manual_seed(batch)) * 0.3
                np.save(xpath, x.numpy().astype(np.float32))
                row = time_one(path, xpath, steps, builds, args.repeats)
                rows.append({"model": name, "weights": weights, "batch": batch, "steps": steps, **row})
    for r in rows:  # int8 against float32 of the same net, batch and build
        f32 = next(q for q in rows if (q["model"], q["batch"], q["weights"]) == (r["model"], r["batch"], "float32"))
        for k in ("onnxruntime", "cpp_portable", "cpp_native"):
            r[f"{k}_over_float32"] = r[f"{k}_ms_per_image"] / f32[f"{k}_ms_per_image"]
    print(
        "| net | weights | batch | steps | ORT ms/img | C++ ms/img | C++/ORT | native ms/img | native/ORT | C++ int8/f32 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['weights']} | {r['batch']} | {r['steps']} | {r['onnxruntime_ms_per_image']:.2f} | "
            f"{r['cpp_portable_ms_per_image']:.2f} | {r['cpp_portable_over_ort']:.2f} | "
            f"{r['cpp_native_ms_per_image']:.2f} | {r['cpp_native_over_ort']:.2f} | {r['cpp_portable_over_float32']:.2f} |"
        )
    cpu = describe()
    print(f"CPU: {cpu.get('cpu_model')} ({cpu.get('cpu_family_model')}), flags {cpu.get('cpu_flags')}")
    Path(args.json).write_text(json.dumps({"rows": rows, "threads": 1, "cpu": cpu}, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
