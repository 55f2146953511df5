"""Device profiles for the analytical latency model, and the schedule menus per device kind.

A profile holds the few datasheet numbers a roofline needs (peak FLOP/s, memory bandwidth,
compute units, cache) plus the costs no datasheet gives (kernel launch overhead, thread-pool
fork/join). The generic ``cpu`` profile can be replaced by one fitted to this machine
(``fusiongym profile --calibrate`` writes it with :func:`save_profile`); ``get_profile("cpu")``
then returns the fitted one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .store import atomic_output

# Schedule menus; the names are shared with the TVM backend, which implements them for real.
# CPU "default" is TVM's unscheduled llvm kernel: one thread, scalar code.
CPU_SCHEDULES = ("default", "parallel", "parallel_vectorize", "tiled_16", "tiled_32", "tiled_64")
# GPU "default" is dlight's default schedule (Matmul, GEMV, Reduction, GeneralReduction, Fallback).
GPU_SCHEDULES = ("default", "threads_64", "threads_128", "threads_512")

DEVICE_KINDS = ("cpu", "gpu")
# Op classes a profile may time apart under each schedule (``class_efficiency``; fitted only
# by ``profile --calibrate --op-classes``). Why: one schedule treats them differently. On the
# EPYC (README, "One efficiency per op class"), vectorizing the innermost output loop runs a
# matmul about 3x faster than the roofline's shared efficiency says and a convolution about
# 2x slower, and every element of a transcendental op is a libm call (exp, erf, tanh) that
# FLOP counting prices at one FLOP.
OP_CLASSES = ("other", "window", "matmul", "transcendental")
MATMUL_OPS = frozenset({"matmul", "dense", "linear", "batch_matmul", "einsum"})
TRANSCENDENTAL_OPS = frozenset({"softmax", "log_softmax", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh",
                                "exp", "log", "erf"})
PROFILE_FORMAT = "fusiongym.DeviceProfile/1"
CPU_PROFILE_ENV_VAR = "FUSIONGYM_CPU_PROFILE"
DEFAULT_CPU_PROFILE_PATH = Path("~/.cache/fusiongym/cpu_profile.json")


class ProfileError(ValueError):
    """A device profile is unknown, malformed or inconsistent; the message says which."""


@dataclass(frozen=True)
class DeviceProfile:
    """What the roofline needs to know about one device.

    ``fp32_flops_per_s`` is the full-device fp32 peak (all cores, SIMD/FMA included);
    ``half_flops_per_s`` the dense fp16/bf16 tensor-core peak, None where half precision has
    no faster path. ``vector_width`` is the number of fp32 SIMD lanes of a CPU core (scalar
    code reaches 1/vector_width of the peak); GPUs use 1, their schedules pick thread counts.
    ``schedule_efficiency`` scales the roofline time of a schedule (1.0 when absent): it is
    what a calibration fits beyond peak, bandwidth and overheads. ``class_efficiency`` holds
    (schedule, op class, factor) triples that further scale the ops of one class
    (``OP_CLASSES``, ``op_class``) under one schedule; 1.0 when absent, and always for "other".
    """

    name: str
    kind: str
    fp32_flops_per_s: float
    memory_bandwidth_bytes_per_s: float
    compute_units: int
    launch_overhead_us: float
    cache_bytes: int
    half_flops_per_s: float | None = None
    vector_width: int = 1
    parallel_launch_us: float = 0.0
    schedule_efficiency: tuple[tuple[str, float], ...] = ()
    class_efficiency: tuple[tuple[str, str, float], ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in DEVICE_KINDS:
            raise ProfileError(f"profile {self.name}: kind must be one of {DEVICE_KINDS}, not {self.kind!r}")
        positive = {"fp32_flops_per_s": self.fp32_flops_per_s,
                    "memory_bandwidth_bytes_per_s": self.memory_bandwidth_bytes_per_s,
                    "compute_units": self.compute_units, "cache_bytes": self.cache_bytes,
                    "vector_width": self.vector_width}
        for field_name, value in positive.items():
            if not value > 0:
                raise ProfileError(f"profile {self.name}: {field_name} must be > 0, got {value}")
        if self.half_flops_per_s is not None and not self.half_flops_per_s > 0:
            raise ProfileError(f"profile {self.name}: half_flops_per_s must be > 0 or None")
        if self.launch_overhead_us < 0 or self.parallel_launch_us < 0:
            raise ProfileError(f"profile {self.name}: overheads must be ≥ 0")
        object.__setattr__(self, "schedule_efficiency",
                           tuple(sorted((str(s), float(e)) for s, e in self.schedule_efficiency)))
        for schedule, efficiency in self.schedule_efficiency:
            if schedule not in self.schedules:
                raise ProfileError(f"profile {self.name}: schedule {schedule!r} is not on the "
                                   f"{self.kind} menu {self.schedules}")
            if not efficiency > 0:
                raise ProfileError(f"profile {self.name}: efficiency of {schedule!r} must be > 0")
        object.__setattr__(self, "class_efficiency",
                           tuple(sorted((str(s), str(c), float(e)) for s, c, e in self.class_efficiency)))
        for schedule, op_class_name, factor in self.class_efficiency:
            if schedule not in self.schedules or op_class_name not in OP_CLASSES[1:]:
                raise ProfileError(f"profile {self.name}: class efficiency ({schedule!r}, {op_class_name!r}) "
                                   f"needs a schedule of the {self.kind} menu {self.schedules} and a class of "
                                   f"{OP_CLASSES[1:]}")
            if not factor > 0:
                raise ProfileError(f"profile {self.name}: efficiency of {op_class_name!r} ops under "
                                   f"{schedule!r} must be > 0")

    @property
    def schedules(self) -> tuple[str, ...]:
        """The schedule menu of this device kind."""
        return CPU_SCHEDULES if self.kind == "cpu" else GPU_SCHEDULES

    def efficiency_of(self, schedule: str) -> float:
        """Fitted time scale of ``schedule`` (1.0 unless a calibration said otherwise)."""
        return dict(self.schedule_efficiency).get(schedule, 1.0)

    def class_factor(self, schedule: str, op_class_name: str) -> float:
        """Fitted time scale of ``op_class_name`` ops under ``schedule``, on top of ``efficiency_of``."""
        return next((factor for s, c, factor in self.class_efficiency if s == schedule and c == op_class_name), 1.0)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["schedule_efficiency"] = dict(self.schedule_efficiency)
        # {schedule: {class: factor}}; left out when empty, so a profile without class factors
        # keeps the dict, and the digest, it had before they existed
        data["class_efficiency"] = {schedule: {c: factor for s, c, factor in self.class_efficiency if s == schedule}
                                    for schedule in dict.fromkeys(s for s, _, _ in self.class_efficiency)}
        if not data["class_efficiency"]:
            del data["class_efficiency"]
        data["format"] = PROFILE_FORMAT
        return data

    @staticmethod
    def from_dict(data: dict) -> "DeviceProfile":
        if data.get("format") != PROFILE_FORMAT:
            raise ProfileError(f"not a fusiongym device profile (format={data.get('format')!r})")
        fields = {k: v for k, v in data.items() if k != "format"}
        fields["schedule_efficiency"] = tuple(dict(fields.get("schedule_efficiency", {})).items())
        try:
            fields["class_efficiency"] = tuple((schedule, op_class_name, factor) for schedule, factors
                                               in dict(fields.get("class_efficiency", {})).items()
                                               for op_class_name, factor in dict(factors).items())
        except (TypeError, ValueError) as error:
            raise ProfileError(f"malformed device profile: class_efficiency must map schedule -> "
                               f"{{class: factor}} ({error})") from None
        try:
            return DeviceProfile(**fields)
        except TypeError as error:
            raise ProfileError(f"malformed device profile: {error}") from None

    def digest(self) -> str:
        """Short content hash: cached estimates of two different profiles never mix."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:8]


# NVIDIA H100 Tensor Core GPU datasheet (H100 SXM5): FP32 67 TFLOPS, BF16/FP16 tensor core
# 1,979 TFLOPS with sparsity = 989.4 dense, HBM3 3.35 TB/s; "NVIDIA H100 Tensor Core GPU
# Architecture" whitepaper: 132 SMs (SXM5), 50 MB L2.
H100_SXM = DeviceProfile(
    name="h100_sxm", kind="gpu", fp32_flops_per_s=67e12, half_flops_per_s=989.4e12,
    memory_bandwidth_bytes_per_s=3.35e12, compute_units=132, cache_bytes=50 * 2**20,
    launch_overhead_us=2.5,
    source="NVIDIA H100 datasheet (SXM5) and H100 architecture whitepaper",
)

# NVIDIA A100 Tensor Core GPU datasheet (A100 80GB SXM): FP32 19.5 TFLOPS, BF16/FP16 tensor
# core 312 TFLOPS dense, HBM2e 2,039 GB/s; "NVIDIA A100 Tensor Core GPU Architecture"
# whitepaper: 108 SMs, 40 MB L2.
A100 = DeviceProfile(
    name="a100", kind="gpu", fp32_flops_per_s=19.5e12, half_flops_per_s=312e12,
    memory_bandwidth_bytes_per_s=2.039e12, compute_units=108, cache_bytes=40 * 2**20,
    launch_overhead_us=2.5,
    source="NVIDIA A100 datasheet (80GB SXM) and A100 architecture whitepaper",
)

# NVIDIA L4 Tensor Core GPU datasheet: FP32 30.3 TFLOPS, BF16/FP16 tensor core 242 TFLOPS
# with sparsity = 121 dense, GDDR6 300 GB/s; "NVIDIA Ada GPU Architecture" whitepaper
# (AD104 as configured for L4): 58 SMs, 48 MB L2.
L4 = DeviceProfile(
    name="l4", kind="gpu", fp32_flops_per_s=30.3e12, half_flops_per_s=121e12,
    memory_bandwidth_bytes_per_s=300e9, compute_units=58, cache_bytes=48 * 2**20,
    launch_overhead_us=2.5,
    source="NVIDIA L4 datasheet and Ada architecture whitepaper",
)

# A generic small x86 machine (2 cores, AVX2): 2 cores x 2.5 GHz x 32 fp32 FLOP/cycle
# (2 FMA units x 8 lanes x 2 FLOP per FMA) = 160 GFLOP/s; ~15 GB/s DRAM bandwidth as a
# 2-core cloud VM sees it; 1 MiB L2 per core. The launch overheads (TVM packed-function
# call, thread-pool fork/join) are typical orders of magnitude, not datasheet numbers:
# calibrate (``fusiongym profile --calibrate``) to replace all of these with fitted ones.
CPU = DeviceProfile(
    name="cpu", kind="cpu", fp32_flops_per_s=2 * 2.5e9 * 32, memory_bandwidth_bytes_per_s=15e9,
    compute_units=2, cache_bytes=2 * 2**20, vector_width=8, launch_overhead_us=1.0,
    parallel_launch_us=5.0,
    source="generic 2-core AVX2 x86 (2.5 GHz, 2 FMA units); uncalibrated",
)

PROFILES: dict[str, DeviceProfile] = {p.name: p for p in (H100_SXM, A100, L4, CPU)}


def op_class(op: str) -> str:
    """The class of ``OP_CLASSES`` an op (by its Relax name) belongs to: "window" for
    convolutions and pooling (a sliding window over the input), "matmul" for dense
    contractions, "transcendental" for ops that call a libm function per element."""
    if "conv" in op or "pool" in op:
        return "window"
    if op in MATMUL_OPS:
        return "matmul"
    if op in TRANSCENDENTAL_OPS:
        return "transcendental"
    return "other"


def profile_names() -> list[str]:
    return sorted(PROFILES)


def calibrated_profile_path() -> Path:
    """Where the fitted CPU profile lives: $FUSIONGYM_CPU_PROFILE, else ~/.cache/fusiongym/."""
    return Path(os.environ.get(CPU_PROFILE_ENV_VAR) or DEFAULT_CPU_PROFILE_PATH).expanduser()


def get_profile(name: str, use_calibrated: bool = True) -> DeviceProfile:
    """The profile called ``name``; for ``cpu`` the fitted one when it exists (unless told not)."""
    if name == "cpu" and use_calibrated:
        path = calibrated_profile_path()
        if path.exists():
            return load_profile(path)
    try:
        return PROFILES[name]
    except KeyError:
        raise ProfileError(f"unknown device profile {name!r}; known: {profile_names()}") from None


def save_profile(profile: DeviceProfile, path: str | Path | None = None) -> Path:
    """Write ``profile`` as JSON (default: the calibrated CPU profile path); returns the path."""
    target = Path(path).expanduser() if path is not None else calibrated_profile_path()
    with atomic_output(target) as temporary:
        temporary.write_text(json.dumps(profile.to_dict(), indent=2, sort_keys=True) + "\n")
    return target


def load_profile(path: str | Path) -> DeviceProfile:
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ProfileError(f"no device profile at {path}: `fusiongym profile --calibrate` writes one "
                           f"(to $FUSIONGYM_CPU_PROFILE when set)") from None
    except json.JSONDecodeError as error:
        raise ProfileError(f"{path} is not valid JSON: {error}") from None
    return DeviceProfile.from_dict(data)
