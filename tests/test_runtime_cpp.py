"""runtime_cpp: build with CMake (-Wall -Wextra -Werror), golden cases from PyTorch/onnxruntime under
ctest (final scores, per-step states, crafted files), two threads under TSan and everything under
ASan/UBSan, the ep_infer CLI and its limits, the aarch64 build under qemu-user, the Cortex-M firmware
under qemu-system-arm (also the 32-bit overflow check), and the libFuzzer targets under ASan/UBSan."""

import os
import re
import shutil
import statistics
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
    per_step = re.search(r"per-step golden: (\d+) layer states, max_abs_diff=(\S+)", out)
    assert per_step and int(per_step.group(1)) >= 40 and float(per_step.group(2)) <= 1e-5
    bad = dict(line.split() for line in (golden / "bad.txt").read_text().splitlines())
    for crafted in ("bad_meta_pool", "bad_meta_slope", "bad_meta_padding", "bad_meta_readout"):
        assert bad[f"{crafted}.onnx"] == "5"  # metadata edited, graph not: shape mismatch, checked by ctest
    assert bad["bad_meta_huge.onnx"] == bad["bad_default_T.onnx"] == bad["bad_duplicate.onnx"] == "3"
    int8 = [c for c in cases if c[0].endswith("_int8.onnx")]  # int8 files: ORT and C++ against PyTorch
    cifar = (ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz").exists()
    assert (
        len(int8) >= (8 if cifar else 6)
        and {c[1] for c in int8} >= {"digits.npy"}
        and all(float(c[5]) <= 1e-4 for c in int8)
    )
    evenodd = [c for c in cases if c[0].endswith("_evenodd.onnx")]  # the even/odd schedule, float32 and int8
    assert len(evenodd) >= 8 and any("_int8_" in c[0] for c in evenodd) and all(float(c[5]) <= 1e-4 for c in evenodd)
    assert bad["bad_evenodd_version1.onnx"] == "4" and bad["bad_evenodd_schedule_async.onnx"] == "6"
    assert bad["bad_evenodd_meta_sync.onnx"] == "5"  # an even/odd graph under sync metadata: the census differs
    graph = [c for c in cases if c[0].startswith("graph_")]  # graph nets: skips, strides, clamps, colours
    assert len(graph) >= 12 and any("_int8" in c[0] for c in graph) and all(float(c[5]) <= 1e-4 for c in graph)
    assert {c[0] for c in graph} >= {"graph_skips_relu6_asym_evenodd.onnx", "graph_stride_clip_mse_evenodd.onnx"}
    crafted = {k: v for k, v in bad.items() if k.startswith("bad_graph_")}  # edited v3 metadata or nodes
    assert len(crafted) >= 15 and set(crafted.values()) == {"3", "4", "5", "7"}, crafted
    crafted = {k: v for k, v in bad.items() if k.startswith("bad_int8_")}
    assert len(crafted) >= 16 and {"3", "4", "5", "6", "7"} <= set(crafted.values())
    assert all(crafted[f"bad_int8_scale_{k}.onnx"] == "3" for k in ("zero", "nan", "negative", "inf"))


@pytest.mark.slow
@pytest.mark.parametrize("sanitizer,args", [("thread", ["--threads"]), ("address,undefined", ["--golden"])])
def test_runtime_under_sanitizers(golden, tmp_path, sanitizer, args):
    """Two threads loading and running at once under TSan; every golden case, per-step state and
    crafted file under ASan + UBSan (the loader keeps no static state: it is reentrant)."""
    need("cmake", "clang++-14")
    b = tmp_path / "san"
    sh(["cmake", "-S", str(RT), "-B", str(b), "-DCMAKE_CXX_COMPILER=clang++-14", f"-DEP_SANITIZE={sanitizer}"])
    sh(["cmake", "--build", str(b), "--target", "test_runtime", "-j2"])
    p = sh([str(b / "test_runtime"), *args, str(golden)], env={**os.environ, "TSAN_OPTIONS": "halt_on_error=1"})
    assert "all checks passed" in p.stdout and "WARNING" not in p.stderr


def test_ep_infer_limits_nan_and_sizes(build, golden, tmp_path):
    """NaN input is reported as non-convergence (exit 1), a batch above --max-memory-mb is refused
    before anything is allocated, and --sizes prints the buffers an embedded caller needs."""
    exe, model = str(build / "ep_infer"), str(golden / "digits_sym_ce_trained.onnx")
    x = np.load(golden / "digits.npy")
    x[0, 0, 3, 3] = np.nan
    np.save(tmp_path / "nan.npy", x)
    p = subprocess.run([exe, model, str(tmp_path / "nan.npy"), "--max-steps", "50"], capture_output=True, text=True)
    assert p.returncode == 1 and "did not converge: non-finite input" in p.stderr, p.stderr
    import onnx
    from onnx import numpy_helper

    m = onnx.load(model)  # a NaN weight: the state becomes NaN, which is not convergence either
    w = next(t for t in m.graph.initializer if t.name == "layer1.weight")
    bad_w = numpy_helper.to_array(w).copy()
    bad_w.flat[0] = np.nan
    w.CopyFrom(numpy_helper.from_array(bad_w, "layer1.weight"))
    onnx.save(m, tmp_path / "nan_weight.onnx")
    p = subprocess.run(
        [exe, str(tmp_path / "nan_weight.onnx"), str(golden / "digits.npy"), "--tol", "1e-5"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 1 and "state became non-finite" in p.stderr and "at step 1" in p.stderr, p.stderr
    np.save(tmp_path / "big.npy", np.zeros((60000, 1, 8, 8), np.float32))  # 15 MB file, ~220 MB workspace
    p = subprocess.run([exe, model, str(tmp_path / "big.npy"), "--max-memory-mb", "64"], capture_output=True, text=True)
    assert p.returncode == 1 and "--max-memory-mb 64" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = subprocess.run([exe, model, str(tmp_path / "big.npy"), "--max-memory-mb", "0"], capture_output=True, text=True)
    assert p.returncode == 2 and "--max-memory-mb 0" in p.stderr
    sizes = sh([exe, "--sizes", model, "16"]).stdout
    got = dict(kv.split("=") for kv in sizes.split())
    assert got["n_classes"] == "10" and got["input"] == "1x8x8" and int(got["workspace_bytes"]) > 0


def dequantized_file(src: Path, dst: Path) -> Path:
    """The float32 file of an int8 one: each DequantizeLinear replaced by its float32 result (numpy),
    format version 1, so the runtime's float path runs the same weights."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(src))
    inits = {t.name: t for t in m.graph.initializer}
    for node in [n for n in m.graph.node if n.op_type == "DequantizeLinear"]:
        q, scale = (numpy_helper.to_array(inits.pop(name)) for name in node.input)
        w = q.astype(np.float32) * scale.reshape(-1, *([1] * (q.ndim - 1)))
        inits[node.output[0]] = numpy_helper.from_array(w.astype(np.float32), node.output[0])
        m.graph.node.remove(node)
    del m.graph.initializer[:]
    m.graph.initializer.extend(inits.values())
    for p in m.metadata_props:
        if p.key == "ep_compile.format_version":
            p.value = "1"
        if p.key == "ep_compile.architecture":
            p.value = p.value.replace('"weights": "int8"', '"weights": "float32"')
    onnx.save(m, str(dst))
    return dst


def test_int8_file_gives_the_bits_of_its_dequantized_float_file(build, golden, tmp_path):
    """ep_infer on an int8 file = ep_infer on the float32 file of its dequantized weights, bit for bit
    (the kernels dequantize as DequantizeLinear does and sum in the same order), for conv + max pool +
    backward weights + read-out and for avg pool + dense + no read-out."""
    for name, data in (
        ("digits_asym_ce_trained", "digits"),
        ("digits_sym_mse_avg_fc", "digits"),
        ("cifar_asym_ce", "cifar"),
    ):
        if not (golden / f"{data}.npy").exists():
            continue
        f32 = dequantized_file(golden / f"{name}_int8.onnx", tmp_path / f"{name}_deq.onnx")
        outs = []
        for model in (golden / f"{name}_int8.onnx", f32):
            out = tmp_path / f"{model.stem}.npy"
            sh(
                [
                    str(build / "ep_infer"),
                    str(model),
                    str(golden / f"{data}.npy"),
                    "--max-steps",
                    "40",
                    "--out",
                    str(out),
                ]
            )
            outs.append(np.load(out))
        assert outs[0].tobytes() == outs[1].tobytes(), name


def test_ep_infer_cli(build, golden, tmp_path):
    model, x = golden / "digits_sym_ce_trained.onnx", golden / "digits.npy"
    cases = (golden / "cases.txt").read_text().split("\n")
    case = next(line.split() for line in cases if line.startswith("digits_sym_ce_trained.onnx") and " 400 " in line)
    p = sh(
        [
            str(build / "ep_infer"),
            str(model),
            str(x),
            "--max-steps",
            "400",
            "--tol",
            case[4],  # the golden case's stop tolerance
            "--out",
            str(tmp_path / "s.npy"),
        ]
    )
    preds = [int(v) for v in re.findall(r"image \d+: class (\d+)", p.stdout)]
    want = np.load(golden / "digits_sym_ce_trained_400.expected.npy")
    assert preds == want.argmax(1).tolist()
    assert np.abs(np.load(tmp_path / "s.npy") - want).max() < 1e-4
    assert f"steps used: {case[5]} " in p.stdout
    bad = subprocess.run(
        [str(build / "ep_infer"), str(golden / "bad_version_4.onnx"), str(x)], capture_output=True, text=True
    )
    assert bad.returncode == 1 and "format version" in bad.stderr and "export/to_onnx.py" in bad.stderr
    # a graph net (format version 3: skips, per-state clamps, three colour classes) runs as well
    graph = sh(
        [str(build / "ep_infer"), str(golden / "graph_skips_relu6_asym_evenodd.onnx"), str(x), "--max-steps", "40",
         "--tol", "0", "--out", str(tmp_path / "g.npy")]
    )  # fmt: skip
    want = np.load(golden / "graph_skips_relu6_asym_evenodd_40.expected.npy")
    assert [int(v) for v in re.findall(r"image \d+: class (\d+)", graph.stdout)] == want.argmax(1).tolist()
    assert np.abs(np.load(tmp_path / "g.npy") - want).max() < 1e-4


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


@pytest.mark.slow
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
            *map(str, sorted((RT / "src").glob("*.cpp"))),
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


@pytest.mark.slow
def test_a_version_1_runtime_refuses_int8_files_with_the_reexport_hint(golden, tmp_path):
    """The runtime as it was before int8 (format version 1 only, from git history) refuses an int8
    file in one line with the re-export hint, and still reads today's float32 files."""
    need("g++", "git")
    old = "af93047"  # the last commit whose runtime read format version 1 only
    src = tmp_path / "v1"
    for path in ("src/ep_runtime.cpp", "include/ep_runtime.h", "tools/ep_infer.cpp", "tools/npy.h"):
        p = subprocess.run(["git", "show", f"{old}:runtime_cpp/{path}"], cwd=ROOT, capture_output=True)
        if p.returncode != 0:
            pytest.skip(f"git history without {old} (a shallow checkout): {p.stderr.decode()[:100]}")
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_bytes(p.stdout)
    exe = tmp_path / "ep_infer_v1"
    sh(
        [
            "g++",
            "-std=c++17",
            "-O1",
            "-I",
            str(src / "include"),
            "-I",
            str(src / "tools"),
            str(src / "tools/ep_infer.cpp"),
            str(src / "src/ep_runtime.cpp"),
            "-o",
            str(exe),
        ]
    )
    x = str(golden / "digits.npy")
    p = subprocess.run([str(exe), str(golden / "digits_sym_ce_trained_int8.onnx"), x], capture_output=True, text=True)
    assert p.returncode == 1 and "format version '2'" in p.stderr and "export/to_onnx.py" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    sh([str(exe), str(golden / "digits_sym_ce_trained.onnx"), x, "--max-steps", "5"])  # float32 files: version 1


@pytest.mark.slow
def test_cortex_m_firmware_under_qemu_matches_host(build, golden, tmp_path, capsys):
    need("arm-none-eabi-g++", "qemu-system-arm")
    imgs = tmp_path / "imgs.npy"
    np.save(imgs, np.load(golden / "digits.npy")[:8])
    model = golden / "digits_sym_ce_trained.onnx"
    p = sh(
        [
            sys.executable,
            str(RT / "firmware" / "build_firmware.py"),
            str(model),
            str(imgs),
            str(tmp_path / "fw"),
            "--ep-infer",
            str(build / "ep_infer"),
        ]
    )
    size = re.search(r"flash (\d+) B .* static RAM (\d+) B", p.stdout)
    assert size and int(size.group(1)) < 256 * 1024 and int(size.group(2)) < 64 * 1024
    run = qemu_m4(tmp_path / "fw" / "firmware.elf")
    assert run.returncode == 0, run.stdout + run.stderr
    fw = re.findall(r"image (\d+): class (\d+), steps (\d+)", run.stdout)
    host = sh([str(build / "ep_infer"), str(model), str(imgs), "--max-steps", "40"]).stdout
    assert [(i, c) for i, c, _ in fw] == re.findall(r"image (\d+): class (\d+)", host)
    assert len(fw) == 8 and all(s == "40" for _, _, s in fw)
    with capsys.disabled():
        print(f"\n  Cortex-M4 firmware: {p.stdout.strip()}")


CIFAR_INT8 = ROOT / "results" / "cifar10-cpu" / "int8" / "model_int8.onnx"  # the trained cifar10-cpu net, int8


@pytest.mark.slow
def test_cortex_m7_firmware_runs_the_trained_cifar10_net_in_int8(build, tmp_path, capsys):
    """The cifar10-cpu net (32-64-128-256, even/odd, T=20) with int8 weights linked into the flash of
    a 2 MB / 1 MB Cortex-M7 part (qemu's mps2-an500), 8 real CIFAR-10 test images: the predictions of
    the host build of the same file, and the flash, RAM and instructions per inference (-icount)."""
    need("arm-none-eabi-g++", "qemu-system-arm")
    archive = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
    if not archive.exists():
        pytest.skip(f"needs the CIFAR-10 archive {archive}")
    import json

    import onnx

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(RT / "tests"))
    from make_golden import cifar_raw

    from ep_compile.data import preprocess

    meta = {p.key: p.value for p in onnx.load(str(CIFAR_INT8)).metadata_props}
    x = preprocess(cifar_raw(archive, 8), json.loads(meta["ep_compile.preprocessing"])).numpy()
    imgs = tmp_path / "imgs.npy"
    np.save(imgs, x)
    T = meta["ep_compile.default_T"]
    fw = tmp_path / "fw"
    p = sh(
        [sys.executable, str(RT / "firmware" / "build_firmware.py"), str(CIFAR_INT8), str(imgs), str(fw)]
        + ["--cpu", "m7", "--max-steps", T, "--ep-infer", str(build / "ep_infer")]
    )
    size = re.search(r"flash (\d+) B .* static RAM (\d+) B", p.stdout)
    assert size and int(size.group(1)) < 2048 * 1024 and int(size.group(2)) < 1024 * 1024
    run = subprocess.run(
        ["qemu-system-arm", "-M", "mps2-an500", "-nographic", "-semihosting-config", "enable=on,target=native"]
        + ["-icount", "shift=0", "-kernel", str(fw / "firmware.elf")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    got = re.findall(r"image (\d+): class (\d+), steps (\d+), ticks (\d+)", run.stdout)
    host = sh([str(build / "ep_infer"), str(CIFAR_INT8), str(imgs), "--max-steps", T]).stdout
    assert [(i, c) for i, c, _, _ in got] == re.findall(r"image (\d+): class (\d+)", host) and len(got) == 8
    ticks = [int(t) for *_, t in got]  # 100 Hz of virtual time; shift=0: 1 instruction = 1 ns
    assert all(s == T for _, _, s, _ in got) and min(ticks) > 0
    with capsys.disabled():
        print(
            f"\n  Cortex-M7 firmware (cifar10-cpu, int8): {p.stdout.strip()}; "
            f"{statistics.median(ticks) * 1e7:.3g} instructions per inference of {T} steps (qemu -icount)"
        )


@pytest.mark.slow
def test_cortex_m7_firmware_runs_a_cifar100_graph_net_in_int8(build, tmp_path, capsys):
    """A CIFAR-100-shaped graph net (3x32x32 -> 16-32-64, a 4x4 max-pooled skip 1 -> 3, ReLU6, three
    colour classes, 100 classes, int8) in the flash of the Cortex-M7 part: the firmware's predictions
    over the 100 scores are the host build's (the same bits: one FMA order everywhere)."""
    need("arm-none-eabi-g++", "qemu-system-arm")
    sys.path.insert(0, str(ROOT))
    import onnx
    import torch

    from ep_compile.model import EPNet, ModelConfig
    from ep_compile.onnx_export import build_onnx

    torch.manual_seed(0)
    cfg = ModelConfig(in_shape=(3, 32, 32), channels=[16, 32, 64], paddings=[1, 1, 1], pools=["max"] * 3,
                      skips=["1:3:k1:max"], activation="relu6", n_classes=100, init_gain=0.5)  # fmt: skip
    net = EPNet(cfg)
    model = tmp_path / "cifar100_graph_int8.onnx"
    onnx.save(build_onnx(net, {"default_T": "8"}, "int8", "evenodd"), model)
    imgs = tmp_path / "imgs.npy"
    np.save(imgs, torch.randn(4, 3, 32, 32).numpy())
    fw = tmp_path / "fw"
    p = sh(
        [sys.executable, str(RT / "firmware" / "build_firmware.py"), str(model), str(imgs), str(fw)]
        + ["--cpu", "m7", "--max-steps", "8", "--ep-infer", str(build / "ep_infer")]
    )
    run = subprocess.run(
        ["qemu-system-arm", "-M", "mps2-an500", "-nographic", "-semihosting-config", "enable=on,target=native"]
        + ["-kernel", str(fw / "firmware.elf")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    got = re.findall(r"image (\d+): class (\d+), steps (\d+)", run.stdout)
    host = sh([str(build / "ep_infer"), str(model), str(imgs), "--max-steps", "8"]).stdout
    assert [(i, c) for i, c, _ in got] == re.findall(r"image (\d+): class (\d+)", host) and len(got) == 4
    assert max(int(c) for _, c, _ in got) < 100 and all(s == "8" for *_, s in got)
    with capsys.disabled():
        print(f"\n  Cortex-M7 firmware (CIFAR-100 graph net, int8): {p.stdout.strip()}")


def qemu_m4(elf):
    return subprocess.run(
        [
            "qemu-system-arm",
            "-M",
            "mps2-an386",
            "-nographic",
            "-semihosting-config",
            "enable=on,target=native",
            "-kernel",
            str(elf),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_32bit_workspace_overflow_fails_cleanly_on_cortex_m(build, tmp_path):
    """A small file whose batch of 400 images needs ~4.5 GB of workspace: on the 64-bit host the size
    is exact, on the 32-bit Cortex-M (size_t of 4 bytes) workspace_bytes says 0 and run() refuses with
    'too large for this platform' instead of accepting a wrapped size and writing past the buffer."""
    need("arm-none-eabi-g++", "qemu-system-arm")
    sys.path.insert(0, str(ROOT))
    import onnx

    from ep_compile.model import EPNet, ModelConfig
    from ep_compile.onnx_export import build_onnx

    net = EPNet(ModelConfig(in_shape=(1, 1024, 1024), channels=[2] * 7, paddings=[1] * 7, pools=["max"] * 7, loss="ce"))
    model = tmp_path / "huge_states.onnx"
    onnx.save(build_onnx(net, {"default_T": "5"}), model)
    assert model.stat().st_size < 32 * 1024  # measured 16.6 KB
    host = dict(kv.split("=") for kv in sh([str(build / "ep_infer"), "--sizes", str(model), "400"]).stdout.split())
    assert int(host["workspace_bytes"]) > 2**32  # what the batch really needs
    sh(
        [
            sys.executable,
            str(RT / "firmware" / "build_firmware.py"),
            str(model),
            "none",
            str(tmp_path / "fw"),
            "--ep-infer",
            str(build / "ep_infer"),
            "--check-batch",
            "400",
        ]
    )
    run = qemu_m4(tmp_path / "fw" / "firmware.elf")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "batch 400: workspace_bytes 0, run: too large for this platform" in run.stdout, run.stdout


@pytest.mark.slow
@pytest.mark.parametrize("target", ["fuzz_loader", "fuzz_run"])
def test_fuzz_under_asan_ubsan(golden, tmp_path, capsys, target):
    need("clang++-14")
    b = tmp_path / "fuzzbuild"
    sh(["cmake", "-S", str(RT), "-B", str(b), "-DEP_FUZZ=ON", "-DCMAKE_CXX_COMPILER=clang++-14"])
    sh(["cmake", "--build", str(b), "--target", target, "-j2"])
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for f in golden.glob("fuzz_seed_*.onnx"):  # a few KB each
        shutil.copy(f, corpus)
    seconds = os.environ.get("EP_FUZZ_SECONDS", "60")
    p = subprocess.run(
        [
            str(b / target),
            str(corpus),
            f"-max_total_time={seconds}",
            "-max_len=8192",
            "-rss_limit_mb=2048",
            "-print_final_stats=1",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr[-4000:]
    runs = int(re.search(r"stat::number_of_executed_units: (\d+)", p.stderr).group(1))
    rate = runs / float(seconds)
    cov = re.search(r"cov: (\d+) ft: (\d+)", p.stderr)
    assert runs > 100
    with capsys.disabled():
        print(
            f"\n  {target}: {runs} executions in {seconds} s ({rate:.0f}/s), "
            f"coverage {cov.group(1) if cov else '?'} edges, no finding"
        )


def _npy(header: str, data: bytes = b"") -> bytes:
    h = header.encode()
    h += b" " * ((64 - (10 + len(h) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(h).to_bytes(2, "little") + h + data


CRAFTED_NPY = {  # name -> bytes: each refused in one line, no undefined behaviour on the way
    "shape_overflow.npy": _npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1099511627776), }"),
    "shape_zero_batch.npy": _npy("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 1, 8, 8), }"),
    "shape_product_wraps.npy": _npy(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 16), }"
    ),
    "truncated_header.npy": b"\x93NUMPY\x01\x00\xff\x7f{'descr'",
    "v3_huge_header.npy": b"\x93NUMPY\x03\x00\xff\xff\xff\xff{",
    "no_shape.npy": _npy("{'descr': '<f4', 'fortran_order': False, }"),
}


def _crafted_npy(tmp_path):
    for name, data in CRAFTED_NPY.items():
        (tmp_path / name).write_bytes(data)
    return [tmp_path / n for n in CRAFTED_NPY]


PEAK = (  # a fresh interpreter runs the command: its RUSAGE_CHILDREN peak is that one child's
    "import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
    "sys.stderr.write(p.stderr); print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def _max_rss_mb_of(cmd) -> tuple[int, float, str]:
    """Exit code, peak resident memory (MB) and stderr of one child process."""
    p = subprocess.run([sys.executable, "-c", PEAK, *cmd], capture_output=True, text=True, timeout=120)
    rc, kb = p.stdout.split()
    return int(rc), int(kb) / 1024, p.stderr


def test_ep_infer_memory_cap_bounds_what_it_reads(build, golden, tmp_path):
    """--max-memory-mb bounds the bytes read from any file: /dev/zero as the model or as the input
    exits non-zero within the cap; crafted .npy headers are refused in one line."""
    exe, model = str(build / "ep_infer"), str(golden / "digits_sym_ce_trained.onnx")
    for cmd in (
        [exe, "/dev/zero", str(golden / "digits.npy"), "--max-memory-mb", "64"],
        [exe, model, "/dev/zero", "--max-memory-mb", "64"],
    ):
        rc, rss, err = _max_rss_mb_of(cmd)
        assert rc != 0 and rss < 64 + 16, (cmd, rc, rss, err)  # 16 MB: the process itself
        assert "larger than" in err and len(err.strip().splitlines()) == 1, err
    for path in _crafted_npy(tmp_path):
        p = subprocess.run([exe, model, str(path)], capture_output=True, text=True)
        assert p.returncode in (1, 2) and len(p.stderr.strip().splitlines()) == 1 and str(path) in p.stderr, (
            path,
            p.stderr,
        )


@pytest.mark.slow
def test_ep_infer_inputs_under_asan_ubsan(golden, tmp_path):
    """ep_infer's own inputs (crafted .npy files, /dev/zero under the cap, bad flags) under ASan + UBSan."""
    need("cmake", "clang++-14")
    b = tmp_path / "san"
    sh(["cmake", "-S", str(RT), "-B", str(b), "-DCMAKE_CXX_COMPILER=clang++-14", "-DEP_SANITIZE=address,undefined"])
    sh(["cmake", "--build", str(b), "--target", "ep_infer", "-j2"])
    exe, model = str(b / "ep_infer"), str(golden / "digits_sym_ce_trained.onnx")
    runs = [[exe, model, str(p)] for p in _crafted_npy(tmp_path)]
    runs += [
        [exe, model, "/dev/zero", "--max-memory-mb", "16"],
        [exe, "/dev/zero", str(golden / "digits.npy"), "--max-memory-mb", "16"],
    ]
    runs += [
        [exe, model, str(golden / "digits.npy"), "--max-steps", "-3"],
        [exe, model, str(golden / "digits.npy"), "--tol", "nan"],
    ]
    runs += [[exe, model, str(golden / "digits.npy"), "--max-steps", "20"]]
    for cmd in runs:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert "runtime error" not in p.stderr and "AddressSanitizer" not in p.stderr, (cmd, p.stderr[-2000:])
    assert p.returncode == 0  # the good input runs clean too


def _edit(src: Path, dst: Path, how) -> Path:
    """A golden model with one edit of its metadata or graph (the edits of an audit that loaded)."""
    import json as _json

    import onnx
    from onnx import helper

    m = onnx.load(src)
    body = next(a.g for n in m.graph.node if n.op_type == "Loop" for a in n.attribute if a.name == "body")
    if how == "relabel-no-weight-b":  # an asymmetric export whose metadata claims symmetric weights
        prop = next(p for p in m.metadata_props if p.key == "ep_compile.architecture")
        arch = _json.loads(prop.value)
        for d in arch["layers"]:
            d["has_weight_b"] = False
        prop.value = _json.dumps(arch)
    elif how == "hardsigmoid-beta":
        hs = next(n for n in body.node if n.op_type == "HardSigmoid")
        next(a for a in hs.attribute if a.name == "beta").f = 0.25
    elif how == "hardsigmoid-no-beta":  # ONNX's default beta is 0.5
        hs = next(n for n in body.node if n.op_type == "HardSigmoid")
        keep = [a for a in hs.attribute if a.name != "beta"]
        del hs.attribute[:]
        hs.attribute.extend(keep)
    elif how == "extra-mul":  # the first state's pre-activation doubled
        hs = next(n for n in body.node if n.op_type == "HardSigmoid")
        body.initializer.append(onnx.numpy_helper.from_array(np.array(2.0, np.float32), "two"))
        body.node.append(helper.make_node("Mul", [hs.input[0], "two"], ["doubled"], name="mul"))
        hs.input[0] = "doubled"
        nodes = list(body.node)  # topological order: the Mul before its consumer
        nodes.insert(nodes.index(hs), nodes.pop())
        del body.node[:]
        body.node.extend(nodes)
    elif how == "dead-maxpool":  # beside the real AveragePool, read by nothing
        ap = next(n for n in body.node if n.op_type == "AveragePool")
        body.node.append(
            helper.make_node("MaxPool", [ap.input[0]], ["dead"], kernel_shape=[2, 2], strides=[2, 2], name="dead")
        )
    elif how == "conv-group":  # an attribute no export writes
        conv = next(n for n in body.node if n.op_type == "Conv")
        conv.attribute.append(helper.make_attribute("dilations", [2, 2]))
    elif how == "rewired-feedback":  # the feedback of layer 2 reads layer 2's forward weights twice over
        ct = next(n for n in body.node if n.op_type == "ConvTranspose" and n.input[1].endswith(".weight"))
        ct.input[1] = (
            ct.input[1].replace("layer2", "layer3")
            if "layer2" in ct.input[1]
            else ct.input[1].replace(".weight", ".bias")
        )
    onnx.save(m, dst)
    return dst


GRAPH_EDITS = [  # (golden model, edit, what the error names)
    ("cifar_asym_ce.onnx", "relabel-no-weight-b", "has_weight_b"),
    ("digits_sym_ce_trained.onnx", "hardsigmoid-beta", "beta 0"),
    ("digits_sym_ce_trained.onnx", "hardsigmoid-no-beta", "beta 0"),
    ("digits_sym_ce_trained.onnx", "extra-mul", "Mul"),
    ("cifar_sym_mse_none_avg.onnx", "dead-maxpool", "pool max"),
    ("digits_sym_ce_trained.onnx", "conv-group", "attribute"),
    ("cifar_sym_ce.onnx", "rewired-feedback", "reads layer"),
]


@pytest.mark.parametrize("model,how,needle", GRAPH_EDITS, ids=[h for _, h, _ in GRAPH_EDITS])
def test_loader_refuses_every_graph_edit(build, golden, tmp_path, model, how, needle):
    """Each edit loads in onnxruntime (it is a valid model) but computes something other than the
    metadata says: the C++ loader refuses it with a named error."""
    import onnxruntime as ort

    if not (golden / model).exists():  # the cifar_* golden files come from ../shared/data
        pytest.skip(f"{model}: written only when the CIFAR-10 archive is present")
    path = _edit(golden / model, tmp_path / f"{how}.onnx", how)
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # still a valid ONNX model
    x = np.zeros((1, *np.load(golden / "digits.npy").shape[1:]), np.float32) if "digits" in model else None
    if x is None:
        import onnx

        dims = [d.dim_value for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim[1:]]
        x = np.zeros((1, *dims), np.float32)
    np.save(tmp_path / "x.npy", x)
    p = subprocess.run([str(build / "ep_infer"), str(path), str(tmp_path / "x.npy")], capture_output=True, text=True)
    assert p.returncode != 0 and needle in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_cifar100_through_training_onnx_and_cpp(build, tmp_path):
    """100 classes through every path: a run on a synthetic archive in CIFAR-100's own format, its
    metrics and checkpoint, the ONNX file's metadata and scores, and the C++ runtime's scores (1e-4)."""
    import json as _json

    import onnx
    import onnxruntime as ort
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "experiments"))
    sys.path.insert(0, str(ROOT / "export"))
    import cifar
    import to_onnx
    from test_data import write_cifar100

    archive, _ = write_cifar100(tmp_path)
    run = tmp_path / "run"
    tiny = "--channels 8 16 --kernels 3 3 --paddings 1 1 --pools max max --lrs 0.1 0.1 0.05 --T 4 --K 2"
    args = [
        "--preset",
        "cifar100-ce-symmetric",
        *tiny.split(),
        "--no-compile",
        "--cpu",
        "--epochs",
        "1",
        "--batch-size",
        "50",
    ]
    args += ["--val-size", "0", "--data-root", str(archive), "--cache-dir", str(tmp_path / "cache"), "--out", str(run)]
    assert cifar.main(args) == 0
    ck = torch.load(run / "last.pt", weights_only=True)
    assert ck["config"]["n_classes"] == 100 and len(ck["config"]["classes"]) == 100
    assert ck["model"]["readout.weight"].shape[0] == 100 and 0 <= ck["metrics"][-1]["test_error"] <= 1
    assert to_onnx.main([str(run), "--out", str(tmp_path / "m.onnx"), "--T", "10"]) == 0
    m = onnx.load(tmp_path / "m.onnx")
    meta = {p.key: p.value for p in m.metadata_props}
    assert len(_json.loads(meta["ep_compile.classes"])) == 100
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    want = sess.run(["scores"], {"x": x, "max_steps": np.array(10, np.int64), "tol": np.array(0.0, np.float32)})[0]
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "scores.npy"
    sh(
        [
            str(build / "ep_infer"),
            str(tmp_path / "m.onnx"),
            str(tmp_path / "x.npy"),
            "--max-steps",
            "10",
            "--tol",
            "0",
            "--out",
            str(out),
        ]
    )
    got = np.load(out)
    assert want.shape == got.shape == (3, 100) and np.abs(got - want).max() <= 1e-4, np.abs(got - want).max()
