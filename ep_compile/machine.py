"""What machine a run or a benchmark ran on: CPU model, the vector and matrix extensions that decide
its speed (AVX2, AVX-512, AVX512_BF16, AMX), cores, and the accelerator if there is one. Runs and
benchmarks record it, because the machines of one project differ between sessions and their figures
compare only through a calibration run on the same kind."""

from __future__ import annotations

import os
import platform

import torch

FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "sve", "asimd")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_family_model() -> str:
    """'family/model' of an x86 CPU ('6/207'): the model name of a virtual machine may hide it."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("cpu family", "model") and key.strip() not in fields:
                    fields[key.strip()] = value.strip()
                if not line.strip():
                    break
    except OSError:
        pass
    return f"{fields.get('cpu family', '?')}/{fields.get('model', '?')}"


def cpu_flags() -> list[str]:
    """The FLAGS this CPU has (from /proc/cpuinfo; [] where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    return [f for f in FLAGS if f in have]
    except OSError:
        pass
    return []


def describe() -> dict:
    """One dict for config files and benchmark JSON."""
    out = {
        "cpu_model": cpu_model(),
        "cpu_family_model": cpu_family_model(),
        "cpu_flags": cpu_flags(),
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
