"""Collate what benchmarks/gpu.sh wrote into one gpu.json and print it as tables.

python benchmarks/gpu_report.py benchmarks/gpu_out
"""

import argparse
import json
import sys
from pathlib import Path


def read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_summary(folder: Path) -> dict | None:
    """The first epoch's row of a run folder: seconds, the first (compiling) iteration, accuracy."""
    try:
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    except (OSError, ValueError):
        return None
    full = [r for r in rows if not r.get("partial")]
    if not full:
        return None
    r = full[0]
    return {
        "epoch_seconds": r.get("epoch_seconds"),
        "first_step_seconds": r.get("first_step_seconds"),
        "test_accuracy": None if r.get("test_error") is None else 1 - r["test_error"],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", help="the folder gpu.sh wrote into")
    p.add_argument("--dry-run", default="0", help="1 when gpu.sh ran with --dry-run (figures are not GPU figures)")
    args = p.parse_args(argv)
    out = Path(args.out)
    steps = (
        [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
        if (out / "steps.jsonl").exists()
        else []
    )
    report = {
        "dry_run": args.dry_run == "1",
        "env": read(out / "gpu_env.json"),
        "steps": steps,
        "estimators": (read(out / "gpu_bench.json") or {}).get("estimators"),
        "memory": (read(out / "gpu_memory.json") or {}).get("memory"),
        "epoch_ce_symmetric": run_summary(out / "run-ce-symmetric"),
        "epoch_cifar10_cpu": run_summary(out / "run-cifar10-cpu"),
        "graphs": (read(out / "gpu_graphs.json") or {}).get("epoch"),
        "resnet13": run_summary(out / "run-resnet13"),
        "ddp": read(out / "gpu_ddp.json"),
    }
    (out / "gpu.json").write_text(json.dumps(report, indent=1))
    env = report["env"] or {}
    print(f"\n== gpu.sh report ({'DRY RUN on the CPU' if report['dry_run'] else env.get('gpu', 'no GPU')})")
    for s in steps:
        print(f"  step {s['step']:<8} rc={s['rc']:<4} {s['seconds']:>5} s")
    for r in report["estimators"] or []:
        print(
            f"  {r['estimator']:<14} {'compiled' if r['compiled'] else 'eager':<9} {r['precision']:<5} "
            f"{r['ms_per_step']:9.3f} ms/step {r['s_per_iteration']:9.3f} s/iteration"
        )
    for r in (report["memory"] or {}).get("rows", []):
        print(f"  T={r['T']:<4} EP {r['ep_symmetric_mb']:9.1f} MiB   BPTT {r['bptt_mb']:9.1f} MiB")
    for key in ("epoch_ce_symmetric", "epoch_cifar10_cpu", "resnet13"):
        print(f"  {key}: {report[key]}")
    for r in report["graphs"] or []:
        print(
            f"  projected ce-symmetric epoch, compile mode {r['compile_mode']:<15} {r['projected_epoch_s']:8.1f} s "
            f"({r['s_per_iteration_b128']:.3f} s/iteration)"
        )
    print(f"  ddp: {report['ddp']}")
    print(f"wrote {out / 'gpu.json'}")
    failed = [s["step"] for s in steps if s["rc"] != 0]
    if failed:
        print(f"gpu.sh: steps that failed or timed out: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
