"""Export a trained checkpoint to ONNX: the free phase as an ONNX Loop over one step.

    python export/to_onnx.py runs/digits-ce-symmetric --out model.onnx     # the folder's best.pt
    python export/to_onnx.py runs/ce-symmetric/last.pt --out cifar.onnx --T 250
    python export/to_onnx.py runs/cifar10-cpu --out cifar_int8.onnx --weights int8

A run folder exports its best.pt (the checkpoint chosen on the validation set; last.pt when there is
no best.pt); a .pt file exports itself.

The file's contract (inputs, outputs, initializer names, metadata) is in docs/onnx.md; the C++
runtime in runtime_cpp/ reads the same file.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ep_compile.checkpoint import load_checkpoint  # noqa: E402
from ep_compile.model import ConfigError  # noqa: E402
from ep_compile.onnx_export import export_checkpoint  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Export an ep_compile checkpoint to ONNX.")
    p.add_argument("checkpoint", help="run folder (its best.pt, else last.pt) or a .pt checkpoint file")
    p.add_argument("--out", required=True, help="path of the .onnx file to write")
    p.add_argument(
        "--T", type=int, default=None, help="default free-phase steps stored in the metadata (default: training T)"
    )
    p.add_argument(
        "--weights",
        choices=["float32", "int8"],
        default="float32",
        help="int8: symmetric per-output-channel int8 weights (about 4x smaller; docs/onnx.md)",
    )
    p.add_argument("--rate", action="store_true", help="spiking checkpoints: export the rate (non-spiking) network")
    args = p.parse_args(argv)
    try:
        path = Path(args.checkpoint)
        if path.is_dir():
            path = path / "best.pt" if (path / "best.pt").exists() else path / "last.pt"
            print(f"exporting {path}")
        ck = load_checkpoint(path)
        m = export_checkpoint(ck, args.out, args.T, rate=args.rate, weights=args.weights)
    except ConfigError as e:
        print(f"to_onnx.py: error: {e}", file=sys.stderr)
        return 2
    n = sum(int(__import__("numpy").prod(t.dims)) for t in m.graph.initializer if not t.name.endswith("_scale"))
    print(
        f"wrote {args.out}: opset {m.opset_import[0].version}, {n} {args.weights} weights, inputs x/max_steps/tol, "
        "outputs scores/steps/residual"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
