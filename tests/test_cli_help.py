"""`experiments/cifar.py --help` is answered before torch is imported, from cifar_help.txt, which
must equal what the parser itself formats (regenerate with `python experiments/cifar.py --write-help`)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import cifar  # noqa: E402


def test_help_file_is_the_parsers_own_text():
    assert cifar.HELP.read_text() == cifar.help_text(), "run: python experiments/cifar.py --write-help"
    text = cifar.HELP.read_text()
    assert "(default: 250)" in text and "kp-vf" in text and "holomorphic" in text  # defaults, estimators


def test_help_does_not_import_torch():
    script = str(ROOT / "experiments" / "cifar.py")
    probe = (
        "import runpy, sys; sys.argv = ['cifar.py', '--help']\n"
        f"try:\n    runpy.run_path({script!r}, run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout == cifar.HELP.read_text()
