"""Per-image latency of the C++ runtime vs onnxruntime (both single thread) on the same .onnx file,
at the paper's CIFAR-10 net and at a small net. Prints a table with the ratio, writes JSON.

    python benchmarks/runtime_latency.py                     # builds runtime_cpp in build/runtime_cpp
    python benchmarks/runtime_latency.py --steps-cifar 30 --repeats 3 --json benchmarks/runtime_latency.json
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
from ep_compile.model import EPNet, model_config  # noqa: E402
from ep_compile.onnx_export import build_onnx  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--build-dir", default=str(ROOT / "build" / "runtime_cpp"), help="CMake build folder")
    p.add_argument("--steps-cifar", type=int, default=30, help="free-phase steps timed at the paper's net")
    p.add_argument("--steps-small", type=int, default=250, help="free-phase steps timed at the small net")
    p.add_argument("--repeats", type=int, default=5, help="runs per number (median)")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "runtime_latency.json"), help="write results here")
    args = p.parse_args(argv)
    b = Path(args.build_dir)
    subprocess.run(
        ["cmake", "-S", str(ROOT / "runtime_cpp"), "-B", str(b), "-DCMAKE_BUILD_TYPE=Release"],
        check=True,
        capture_output=True,
    )
    subprocess.run(["cmake", "--build", str(b), "--target", "ep_bench", "-j2"], check=True, capture_output=True)
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
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            sess.run(None, feed)
            times.append(1e3 * (time.perf_counter() - t))
        ort_ms = statistics.median(times)
        out = subprocess.run(
            [str(b / "ep_bench"), str(path), str(xpath), str(steps), str(args.repeats)],
            check=True,
            capture_output=True,
            text=True,
        )
        cpp_ms = float(out.stdout.strip())
        rows.append(
            {
                "model": name,
                "steps": steps,
                "cpp_ms_per_image": cpp_ms,
                "onnxruntime_ms_per_image": ort_ms,
                "cpp_over_ort": cpp_ms / ort_ms,
                "cpp_ms_per_step": cpp_ms / steps,
            }
        )
    print(f"{'model':<20} {'steps':>5} {'C++ ms':>10} {'ORT ms':>10} {'C++/ORT':>8} {'C++ ms/step':>12}")
    for r in rows:
        print(
            f"{r['model']:<20} {r['steps']:>5} {r['cpp_ms_per_image']:>10.2f} {r['onnxruntime_ms_per_image']:>10.2f} "
            f"{r['cpp_over_ort']:>8.2f} {r['cpp_ms_per_step']:>12.3f}"
        )
    Path(args.json).write_text(json.dumps({"rows": rows, "threads": 1}, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
