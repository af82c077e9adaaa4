"""runtime_cpp: build with CMake (-Wall -Wextra -Werror), golden cases from PyTorch/onnxruntime under
ctest, the ep_infer CLI, the aarch64 build under qemu-user, the Cortex-M firmware under
qemu-system-arm, and the libFuzzer target under ASan/UBSan."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
RT = ROOT / "runtime_cpp"
IN_CI = os.environ.get("CI") == "true"


def need(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        if IN_CI:
            pytest.fail(f"CI installs {missing} (.ci/run); they are missing")
        pytest.skip(f"needs {missing}")


def sh(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise AssertionError(f"{cmd} exited {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return p


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    out = tmp_path_factory.mktemp("golden")
    sh([sys.executable, str(RT / "tests" / "make_golden.py"), str(out)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    return out


@pytest.fixture(scope="module")
def build(tmp_path_factory, golden):
    need("cmake", "g++")
    b = tmp_path_factory.mktemp("build")
    sh(["cmake", "-S", str(RT), "-B", str(b), f"-DEP_GOLDEN_DIR={golden}"])
    sh(["cmake", "--build", str(b), "-j2"])
    return b


def test_ctest_kernels_errors_and_golden_cases(build, golden):
    p = sh(["ctest", "--output-on-failure"], cwd=build)
    assert "100% tests passed" in p.stdout
    out = sh([str(build / "test_runtime"), "--golden", str(golden)]).stdout
    cases = re.findall(r"golden (\S+)\s+(\S+)\s+max_steps=(\d+)\s+tol=(\S+)\s+steps=(\d+)\s+max_abs_diff=(\S+)", out)
    assert len(cases) >= 8 and {c[1] for c in cases} >= {"digits.npy"}
    if (ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz").exists():
        assert "cifar.npy" in {c[1] for c in cases}  # real CIFAR-10 JPEGs
    assert all(float(c[5]) <= 1e-4 for c in cases)
    assert any(float(c[3]) > 0 and int(c[4]) < int(c[2]) for c in cases)  # tolerance stops matched
    assert re.search(r"golden: \d+ cases, (\d+) corrupted files", out).group(1) != "0"


def test_ep_infer_cli(build, golden, tmp_path):
    model, x = golden / "digits_sym_ce_trained.onnx", golden / "digits.npy"
    p = sh(
        [
            str(build / "ep_infer"),
            str(model),
            str(x),
            "--max-steps",
            "400",
            "--tol",
            "1e-5",
            "--out",
            str(tmp_path / "s.npy"),
        ]
    )
    preds = [int(v) for v in re.findall(r"image \d+: class (\d+)", p.stdout)]
    want = np.load(golden / "digits_sym_ce_trained_400.expected.npy")
    assert preds == want.argmax(1).tolist()
    assert np.abs(np.load(tmp_path / "s.npy") - want).max() < 1e-4
    cases = (golden / "cases.txt").read_text().split("\n")
    steps = next(line.split()[5] for line in cases if line.startswith("digits_sym_ce_trained.onnx") and " 400 " in line)
    assert f"steps used: {steps} " in p.stdout
    bad = subprocess.run(
        [str(build / "ep_infer"), str(golden / "bad_version.onnx"), str(x)], capture_output=True, text=True
    )
    assert bad.returncode == 1 and "format version" in bad.stderr and "export/to_onnx.py" in bad.stderr


def test_ep_infer_raw_images_and_bad_arguments(build, golden, tmp_path):
    """--raw: uint8 0..255 images preprocessed by the model's metadata give the scores of the
    Python-preprocessed float input; bad numbers and a dtype that does not match --raw exit 2."""
    exe, model = str(build / "ep_infer"), str(golden / "digits_sym_ce_trained.onnx")
    common = ["--max-steps", "40", "--tol", "0", "--out"]
    sh([exe, model, str(golden / "digits.npy"), *common, str(tmp_path / "f.npy")])
    sh([exe, model, str(golden / "digits_raw.npy"), "--raw", *common, str(tmp_path / "r.npy")])
    assert np.abs(np.load(tmp_path / "f.npy") - np.load(tmp_path / "r.npy")).max() < 1e-5
    for args, says in [
        ([str(golden / "digits_raw.npy")], "pass --raw"),
        ([str(golden / "digits.npy"), "--raw"], "--raw expects uint8"),
        ([str(golden / "digits.npy"), "--max-steps", "-5"], "--max-steps -5"),
        ([str(golden / "digits.npy"), "--max-steps", "99999999999"], "--max-steps 99999999999"),
        ([str(golden / "digits.npy"), "--tol", "abc"], "--tol abc"),
        ([str(golden / "digits.npy"), "--tol", "nan"], "--tol nan"),
    ]:
        p = subprocess.run([exe, model, *args], capture_output=True, text=True)
        assert p.returncode == 2 and says in p.stderr and len(p.stderr.strip().splitlines()) == 1, (args, p.stderr)
    no_meta = str(golden / "cifar_sym_ce.onnx")
    if Path(no_meta).exists():  # a model without preprocessing metadata refuses --raw
        x = tmp_path / "c.npy"
        np.save(x, np.zeros((1, 3, 32, 32), np.uint8))
        p = subprocess.run([exe, no_meta, str(x), "--raw"], capture_output=True, text=True)
        assert p.returncode == 2 and "preprocessing" in p.stderr


def test_aarch64_build_under_qemu_matches_host(build, golden, tmp_path):
    need("aarch64-linux-gnu-g++", "qemu-aarch64")
    exe = tmp_path / "ep_infer_a64"
    sh(
        [
            "aarch64-linux-gnu-g++",
            "-std=c++17",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-ffp-contract=off",
            "-static",
            "-I",
            str(RT / "include"),
            "-I",
            str(RT / "tools"),
            str(RT / "tools" / "ep_infer.cpp"),
            str(RT / "src" / "ep_runtime.cpp"),
            "-o",
            str(exe),
        ]
    )
    for model, data in (("digits_asym_ce_trained", "digits"), ("cifar_sym_ce", "cifar")):
        if not (golden / f"{data}.npy").exists():
            continue
        args = [str(golden / f"{model}.onnx"), str(golden / f"{data}.npy"), "--max-steps", "40"]
        host = sh([str(build / "ep_infer"), *args, "--out", str(tmp_path / "host.npy")])
        arm = sh(["qemu-aarch64", str(exe), *args, "--out", str(tmp_path / "arm.npy")])
        assert arm.stdout == host.stdout
        assert np.array_equal(np.load(tmp_path / "arm.npy"), np.load(tmp_path / "host.npy"))  # bitwise


def test_cortex_m_firmware_under_qemu_matches_host(build, golden, tmp_path, capsys):
    need("arm-none-eabi-g++", "qemu-system-arm")
    imgs = tmp_path / "imgs.npy"
    np.save(imgs, np.load(golden / "digits.npy")[:8])
    model = golden / "digits_sym_ce_trained.onnx"
    p = sh([sys.executable, str(RT / "firmware" / "build_firmware.py"), str(model), str(imgs), str(tmp_path / "fw")])
    size = re.search(r"flash (\d+) B .* static RAM (\d+) B", p.stdout)
    assert size and int(size.group(1)) < 256 * 1024 and int(size.group(2)) < 64 * 1024
    run = subprocess.run(
        [
            "qemu-system-arm",
            "-M",
            "mps2-an386",
            "-nographic",
            "-semihosting-config",
            "enable=on,target=native",
            "-kernel",
            str(tmp_path / "fw" / "firmware.elf"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    fw = re.findall(r"image (\d+): class (\d+), steps (\d+)", run.stdout)
    host = sh([str(build / "ep_infer"), str(model), str(imgs), "--max-steps", "40"]).stdout
    assert [(i, c) for i, c, _ in fw] == re.findall(r"image (\d+): class (\d+)", host)
    assert len(fw) == 8 and all(s == "40" for _, _, s in fw)
    with capsys.disabled():
        print(f"\n  Cortex-M4 firmware: {p.stdout.strip()}")


def test_fuzz_loader_under_asan_ubsan(build, golden, tmp_path, capsys):
    need("clang++-14")
    b = tmp_path / "fuzzbuild"
    sh(["cmake", "-S", str(RT), "-B", str(b), "-DEP_FUZZ=ON", "-DCMAKE_CXX_COMPILER=clang++-14"])
    sh(["cmake", "--build", str(b), "--target", "fuzz_loader", "-j2"])
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for f in golden.glob("*.onnx"):
        if not f.name.startswith("bad_"):
            shutil.copy(f, corpus)
    seconds = os.environ.get("EP_FUZZ_SECONDS", "60")
    p = subprocess.run(
        [
            str(b / "fuzz_loader"),
            str(corpus),
            f"-max_total_time={seconds}",
            "-rss_limit_mb=2048",
            "-print_final_stats=1",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr[-4000:]
    runs = int(re.search(r"stat::number_of_executed_units: (\d+)", p.stderr).group(1))
    assert runs > 100
    with capsys.disabled():
        print(f"\n  fuzz_loader: {runs} executions in {seconds} s, no finding")
