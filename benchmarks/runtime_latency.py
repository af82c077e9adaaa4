"""Per-image latency of the C++ runtime vs onnxruntime (both single thread) on the same .onnx file,
at the paper's CIFAR-10 net and at a small net. Prints a table with the ratio, writes JSON.

Two C++ builds side by side, both -ffp-contract=off and bit for bit the same scores: the portable
default (the target's baseline ISA; on x86-64 its GEMM picks AVX-512 or AVX2 at run time) and
`-DEP_FAST=ON` (-O3 -march=native for every kernel).

    python benchmarks/runtime_latency.py                     # builds runtime_cpp in build/runtime_cpp
    python benchmarks/runtime_latency.py --steps-cifar 30 --repeats 3 --json benchmarks/runtime_latency.json
"""

import argparse
import json
import platform
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
from ep_compile.model import EPNet, model_config  # noqa: E402
from ep_compile.onnx_export import build_onnx  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--build-dir", default=str(ROOT / "build" / "runtime_cpp"), help="CMake build folder")
    p.add_argument("--steps-cifar", type=int, default=30, help="free-phase steps timed at the paper's net")
    p.add_argument("--steps-small", type=int, default=250, help="free-phase steps timed at the small net")
    p.add_argument("--repeats", type=int, default=7, help="rounds per number (median)")
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
    for name, arch, steps in (
        ("paper CIFAR-10 net", "cifar10", args.steps_cifar),
        ("small digits net", "digits", args.steps_small),
    ):
        torch.manual_seed(0)
        model = EPNet(model_config(arch))
        path, xpath = b / f"{arch}.onnx", b / f"{arch}_x.npy"
        m = build_onnx(model)
        path.write_bytes(m.SerializeToString())
        x = (torch.randn(1, *model.cfg.in_shape) * 0.3).numpy().astype(np.float32)
        np.save(xpath, x)
        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feed = {"x": x, "max_steps": np.array(steps, np.int64), "tol": np.array(0.0, np.float32)}
        sess.run(None, feed)
        # Rounds alternate onnxruntime and both C++ builds, so a drift of the machine's speed hits all
        # three alike; each round takes the median of 3 runs, the table the median of the rounds.
        times = {"onnxruntime": [], **{build: [] for build in builds}}
        for _ in range(args.repeats):
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
        ort_ms = statistics.median(times["onnxruntime"])
        row = {"model": name, "steps": steps, "onnxruntime_ms_per_image": ort_ms}
        for build in builds:
            row[f"cpp_{build}_ms_per_image"] = cpp_ms = statistics.median(times[build])
            row[f"cpp_{build}_over_ort"] = cpp_ms / ort_ms
        rows.append(row)
    print(f"{'model':<20} {'steps':>5} {'ORT ms':>9} {'C++ ms':>9} {'C++/ORT':>8} {'native ms':>10} {'native/ORT':>10}")
    for r in rows:
        print(
            f"{r['model']:<20} {r['steps']:>5} {r['onnxruntime_ms_per_image']:>9.2f} "
            f"{r['cpp_portable_ms_per_image']:>9.2f} {r['cpp_portable_over_ort']:>8.2f} "
            f"{r['cpp_native_ms_per_image']:>10.2f} {r['cpp_native_over_ort']:>10.2f}"
        )
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    cpu = {"machine": platform.machine(), "avx2": "avx2" in flags, "avx512f": "avx512f" in flags}
    print(f"CPU: {cpu}")
    Path(args.json).write_text(json.dumps({"rows": rows, "threads": 1, "cpu": cpu}, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
