"""What this CPU can do for INT8: the instruction sets that decide whether INT8 beats FP32."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def usable_cores() -> int:
    """CPU cores this process may use (the affinity mask where the OS has one, else os.cpu_count())."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]

    @property
    def vnni(self) -> bool:
        return bool(self.flags & {"avx512_vnni", "avx_vnni", "amx_int8"})

    @property
    def isa(self) -> str:
        order = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"]
        return ", ".join(f for f in order if f in self.flags) or "no AVX2"

    def int8_expectation(self) -> str:
        if self.vnni:
            return "VNNI present: INT8 convolutions run several times faster than FP32"
        if "avx2" in self.flags:
            return ("no VNNI (AVX2 only): INT8 kernels are roughly as fast as FP32 here; "
                    "FastDeploy's published 2-4x speedups need a CPU with AVX512-VNNI or AVX-VNNI")
        return "no AVX2: INT8 kernels may be slower than FP32"

    def __str__(self) -> str:
        return f"{self.model} ({self.isa})"


def cpu_info() -> CpuInfo:
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model == "unknown CPU":
                model = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return CpuInfo(model, frozenset(flags))
