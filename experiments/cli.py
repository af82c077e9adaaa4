"""Command-line pieces shared by the CIFAR-10 study scripts (reproduce, ablation, paper_recipe),
without importing torch."""

from pathlib import Path

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def add_cifar_root_arg(parser) -> None:
    """--data-root, the shared CIFAR-10 JPEG archive next to this repository by default."""
    parser.add_argument(
        "--data-root",
        default=str(SHARED_CIFAR),
        help="CIFAR-10 (torchvision folder, ImageFolder tree or .tar.gz of one)",
    )
