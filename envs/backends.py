"""Latency backends by name and device word, or rebuilt from an ``env.state["backend"]`` entry.

``get_backend(name, **options)`` hands its options to each backend's constructor, and the
constructors disagree on what a device is: a profile name for ``analytical``, a TVM target
for ``tvm``, a torch device for ``torch``. ``make_backend`` takes one device word for all
of them (what ``gym.make(..., backend=name, device=...)`` passes); ``recorded_backend``
rebuilds the backend a saved state describes (same profile, target, threads), so that a
result is re-measured on what measured it.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from fusiongym.reward import LatencyBackend, get_backend

# The device word of the env -> the TVM target that runs on it.
TVM_TARGETS = {"cpu": "llvm", "cuda": "cuda"}


def make_backend(name: str, device: str = "cpu", **options: Any) -> LatencyBackend:
    """Backend ``name`` on ``device``: a device profile (``cpu``, ``h100_sxm``, ...) for
    ``analytical``, ``cpu`` or ``cuda`` for ``tvm`` and ``torch``; ``options`` go to its constructor."""
    return get_backend(name, **_device_options(name, device), **options)


def _device_options(name: str, device: str) -> dict[str, Any]:
    """The constructor argument that puts backend ``name`` on ``device``."""
    if name != "tvm":
        return {"device": device}   # analytical: a profile name; torch, learned: cpu/cuda
    if device not in TVM_TARGETS:
        raise ValueError(f"backend 'tvm' runs on device 'cpu' (target llvm) or 'cuda', not {device!r}: pass "
                         f"device='cpu' or device='cuda' (device profiles such as 'h100_sxm' are for "
                         f"backend='analytical')")
    return {"target": TVM_TARGETS[device]}


def recorded_backend(description: Mapping[str, Any]) -> LatencyBackend:
    """The backend ``description`` (a ``backend.describe()``, as ``env.state`` keeps it) names,
    on the same device, profile and threads.

    Raises when this machine is not that device (no GPU, another CPU): a timing taken here
    could not confirm or refute the recorded one.
    """
    name = description.get("backend")
    rebuild = _REBUILDERS.get(name)
    backend = rebuild(description) if rebuild else make_backend(name, description.get("device", "cpu"))
    _require_same_device(description, backend)
    return backend


def _analytical(description: Mapping[str, Any]) -> LatencyBackend:
    """The recorded profile itself: a calibrated one re-prices identically on any machine."""
    from fusiongym.reward.devices import DeviceProfile

    return get_backend("analytical", device=DeviceProfile.from_dict(description["profile"]),
                       load=description.get("load"), max_group_size=description["max_group_size"],
                       unfusable_kinds=tuple(description.get("unfusable_kinds", ())))


def _tvm(description: Mapping[str, Any]) -> LatencyBackend:
    import tvm

    target = tvm.target.Target(description["target"])
    kind = target.kind.name
    threads = {"num_cores": description["num_cores"]} if kind == "llvm" else {"cuda_arch": str(target.attrs["arch"])}
    return get_backend("tvm", target=kind, measure_load=description["measure_load"], **threads)


def _torch(description: Mapping[str, Any]) -> LatencyBackend:
    return get_backend("torch", device=description["device_kind"], num_threads=description["num_threads"],
                       measure_load=description["measure_load"])


_REBUILDERS: dict[str, Callable[[Mapping[str, Any]], LatencyBackend]] = {
    "analytical": _analytical, "tvm": _tvm, "torch": _torch,
}


def _require_same_device(description: Mapping[str, Any], backend: LatencyBackend) -> None:
    require_device = getattr(backend, "require_device", None)   # measuring backends: names a missing GPU
    if require_device is not None:
        require_device()
    recorded = description.get("device")
    if backend.platform_dependent and recorded != backend.device:
        raise ValueError(f"backend {backend.name} measured on {recorded}, and this machine is {backend.device}")
