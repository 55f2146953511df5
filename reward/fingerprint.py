"""Device fingerprints: which hardware a latency was measured on.

A measurement is only reusable on the same kind of device, so every key in the
MeasurementStore starts with a fingerprint. It must be stable across processes and
reboots (no hostnames, no clocks, no load) yet change when the hardware that codegen
and timing depend on changes (CPU model, core count, vector ISA; GPU model, SM count).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

_CPUINFO = Path("/proc/cpuinfo")
_CPU0_CACHES = Path("/sys/devices/system/cpu/cpu0/cache")

# ISA extensions that change the code TVM/Inductor generate (x86 and Arm names as
# spelled in /proc/cpuinfo). Other flags (e.g. security mitigations) are left out so
# that a microcode or kernel update does not invalidate every stored measurement.
CODEGEN_FLAGS = frozenset({
    "sse4_2", "avx", "avx2", "fma", "f16c",
    "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512vnni",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
    "neon", "asimd", "asimddp", "asimdhp", "sve", "sve2", "i8mm", "bf16",
})

# Distribution names under which TVM is published (pip wheel first, source builds second).
_TVM_DISTRIBUTIONS = ("apache-tvm", "tvm")


def _cpuinfo_fields() -> dict[str, str]:
    """First value of each field in /proc/cpuinfo (empty where the file does not exist)."""
    try:
        text = _CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields.setdefault(name.strip().lower(), value.strip())
    return fields


def _cpu_model(fields: dict[str, str]) -> str:
    """Human-readable CPU model: /proc/cpuinfo first, then what `platform` knows."""
    for name in ("model name", "hardware", "cpu model", "processor"):
        value = fields.get(name, "")
        if value and not value.isdigit():  # on x86 "processor" is just an index
            return re.sub(r"\s+", " ", value).replace(":", " ").strip()
    return platform.processor() or platform.machine() or "unknown-cpu"


def _isa_flags(fields: dict[str, str]) -> list[str]:
    """Sorted codegen-relevant ISA flags ("flags" on x86, "features" on Arm)."""
    flags = set(fields.get("flags", "").split()) | set(fields.get("features", "").split())
    return sorted(flags & CODEGEN_FLAGS)


def _logical_cores() -> int:
    """Logical cores of the machine (not the affinity mask, which varies per launch)."""
    return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def cpu_fingerprint() -> str:
    """Stable short id of this CPU, e.g. ``cpu:AMD EPYC:2c:isa-1a2b3c4d``.

    The ISA part hashes the architecture with the codegen-relevant flags, so two
    machines with the same marketing name but different vector units never share
    measurements. Cached: the hardware does not change while a process runs.
    """
    fields = _cpuinfo_fields()
    isa = " ".join([platform.machine(), *_isa_flags(fields)])
    isa_hash = hashlib.sha256(isa.encode()).hexdigest()[:8]
    return f"cpu:{_cpu_model(fields)}:{_logical_cores()}c:isa-{isa_hash}"


def cuda_fingerprint(index: int = 0) -> str:
    """Stable short id of CUDA device `index`, e.g. ``cuda:NVIDIA H100 80GB HBM3:sm90:132sm``.

    torch is imported here, not at module import, so CPU-only users never pay for it.
    """
    try:
        import torch
    except ImportError as exc:
        raise RuntimeError(
            "cuda_fingerprint needs torch with CUDA support: install a CUDA build of "
            "torch (https://pytorch.org/get-started/locally/) or use device='cpu'"
        ) from exc
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"no CUDA device is visible to torch {torch.__version__} (built for CUDA "
            f"{torch.version.cuda}): check `nvidia-smi` and CUDA_VISIBLE_DEVICES, install "
            "a CUDA build of torch, or use device='cpu'"
        )
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        raise RuntimeError(f"CUDA device index {index} out of range: torch sees {count} device(s)")
    props = torch.cuda.get_device_properties(index)
    return f"cuda:{props.name}:sm{props.major}{props.minor}:{props.multi_processor_count}sm"


def device_fingerprint(device: str) -> str:
    """Fingerprint of a device named like torch does: "cpu", "cuda" or "cuda:N"."""
    kind, _, index = device.partition(":")
    if kind == "cpu" and not index:
        return cpu_fingerprint()
    if kind == "cuda" and (not index or index.isdigit()):
        return cuda_fingerprint(int(index or 0))
    raise ValueError(f"unknown device {device!r}: expected 'cpu', 'cuda' or 'cuda:N'")


def _cpu_generation(fields: dict[str, str]) -> str | None:
    """x86 family / model / stepping, e.g. "family 25 model 17 stepping 1": a VM's model name
    can be as vague as "AMD EPYC", while these numbers name the core generation."""
    numbers = [fields.get(name) for name in ("cpu family", "model", "stepping")]
    if not all(numbers):
        return None
    return "family {} model {} stepping {}".format(*numbers)


def _cpu_caches() -> dict[str, str]:
    """Cache sizes of core 0 by level and kind, e.g. {"L1d": "48K", "L2": "1280K", "L3": "49152K"}
    (empty where sysfs does not list them): two CPUs of one name and ISA can differ here."""
    kinds = {"Data": "d", "Instruction": "i", "Unified": ""}
    caches = {}
    for index in sorted(_CPU0_CACHES.glob("index*")):
        try:
            level, kind, size = ((index / name).read_text().strip() for name in ("level", "type", "size"))
        except OSError:
            continue
        caches[f"L{level}{kinds.get(kind, kind)}"] = size
    return caches


def _memory_gib() -> float | None:
    """Physical memory in GiB, where the OS reports it."""
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (AttributeError, ValueError, OSError):
        return None


def _distribution_version(*names: str) -> str | None:
    """Installed version of the first distribution found, read from metadata (no import)."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _tvm_version() -> str | None:
    """TVM version without importing tvm (which costs ~3.5 s and ~400 MB)."""
    tvm = sys.modules.get("tvm")
    version = getattr(tvm, "__version__", None)
    return version if isinstance(version, str) else _distribution_version(*_TVM_DISTRIBUTIONS)


def describe_machine() -> dict[str, Any]:
    """Hostname-free description of this machine, recorded with every result.

    JSON-serializable, so it can go straight into `Measurement.meta` or a results file. The
    generation and cache sizes are described, not fingerprinted: they tell apart two CPUs
    that share a name and ISA (and so their stored measurements) when a result is read.
    """
    fields = _cpuinfo_fields()
    return {
        "cpu_fingerprint": cpu_fingerprint(),
        "cpu_model": _cpu_model(fields),
        "cpu_generation": _cpu_generation(fields),
        "cpu_caches": _cpu_caches(),
        "cpu_cores": _logical_cores(),
        "arch": platform.machine(),
        "isa_flags": _isa_flags(fields),
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": _distribution_version("torch"),
        "tvm": _tvm_version(),
        "fusiongym": _distribution_version("fusiongym"),
    }
