"""What machine a run or a benchmark ran on: CPU model, the vector and matrix extensions that decide
its speed (AVX2, AVX-512, AVX512_BF16, AMX), cores, and the accelerator if there is one. Runs and
benchmarks record it, because the machines of one project differ between sessions and their figures
compare only through a calibration run on the same kind."""

from __future__ import annotations

import os
import platform

import torch

FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "sve", "asimd")


def _cpuinfo() -> dict[str, str]:
    """/proc/cpuinfo as key -> the first value of that key ({} where it cannot be read): the first
    processor's fields, and those some Arm kernels print once after the last processor ('Model')."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model(info: dict | None = None) -> str:
    info = _cpuinfo() if info is None else info
    return info.get("model name") or info.get("Model") or platform.processor() or platform.machine()


def cpu_family_model(info: dict | None = None) -> str:
    """'family/model' of an x86 CPU ('6/207'): the model name of a virtual machine may hide it."""
    info = _cpuinfo() if info is None else info
    return f"{info.get('cpu family', '?')}/{info.get('model', '?')}"


def cpu_flags(info: dict | None = None) -> list[str]:
    """The FLAGS this CPU has (from /proc/cpuinfo; [] where it cannot be read)."""
    info = _cpuinfo() if info is None else info
    have = set((info.get("flags") or info.get("Features") or "").split())
    return [f for f in FLAGS if f in have]


def describe() -> dict:
    """One dict for config files and benchmark JSON."""
    info = _cpuinfo()
    out = {
        "cpu_model": cpu_model(info),
        "cpu_family_model": cpu_family_model(info),
        "cpu_flags": cpu_flags(info),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
        out["gpus"] = torch.cuda.device_count()
        out["cuda"] = torch.version.cuda
    return out


def idle_cores(sample_seconds: float = 0.25) -> float | None:
    """Cores left idle by all other work right now: the idle share of /proc/stat's CPU time over
    `sample_seconds`, times the cores (None where /proc/stat cannot be read). Unlike the load
    average, which trails by a minute (a run that just ended still counts), this is the present."""
    import time

    def sample():
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
        return v[3] + v[4], sum(v[:8])  # idle + iowait, total (user .. steal)

    try:
        idle0, total0 = sample()
        time.sleep(sample_seconds)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    n = os.cpu_count() or 1
    return n * (idle1 - idle0) / max(1, total1 - total0)


def native_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512_BF16 or AMX), where 16-bit convolutions pay."""
    return any(f in cpu_flags() for f in ("avx512_bf16", "amx_bf16"))
