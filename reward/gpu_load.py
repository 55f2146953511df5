"""Real co-running load on a CUDA GPU: a side stream keeps a share of the SMs busy.

Why: on a shared GPU a fused kernel competes with other work for streaming
multiprocessors; a plan that wins on an idle device (one huge kernel filling every SM)
can lose when a third of the SMs are taken. ``GpuLoad(share)`` creates that situation
for real while the torch backend measures on the default stream.

How: a background thread launches, on its own CUDA stream and back to back, a Triton
kernel whose grid has ``round(share x SM count)`` programs of 1,024 threads each spinning
on register arithmetic for about a millisecond; the thread waits for each launch before
the next, so the queue never grows. An SM holds at most two such programs, so the share
is approximate: the load takes between ``share/2`` and ``share`` of the SMs' thread slots.
Memory-bandwidth load is not generated. CUDA only; without a GPU a non-zero share raises.
"""

from __future__ import annotations

import threading

import torch

from fusiongym.graphs.workloads import LoadShare

_SPIN_ITERATIONS = 20_000   # about 1 ms per launch on an H100


def _spin_kernel():
    """The Triton busy kernel, compiled on first use (Triton is imported only on a GPU)."""
    import triton
    import triton.language as tl

    @triton.jit
    def spin(out_ptr, iterations: tl.constexpr):
        value = tl.program_id(0).to(tl.float32) + tl.arange(0, 1024).to(tl.float32)
        for _ in range(iterations):
            value = value * 0.999999 + 0.5
        tl.store(out_ptr + tl.program_id(0) * 1024 + tl.arange(0, 1024), value)

    return spin


class GpuLoad:
    """Context manager keeping about ``share`` of the GPU's SMs busy while its block runs.

    ``share`` is a float or a ``LoadShare`` (its compute share is used). A zero share starts
    nothing; entering returns once the first load kernel has run.
    """

    def __init__(self, share: "float | LoadShare", device: int = 0) -> None:
        self.share = LoadShare.parse(share).compute
        self.device = device
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def programs(self) -> int:
        """Programs per launch: the chosen share of the device's SMs."""
        sms = torch.cuda.get_device_properties(self.device).multi_processor_count
        return max(1, round(self.share * sms))

    def start(self) -> "GpuLoad":
        if self.share <= 0 or self._thread is not None:
            return self
        if not torch.cuda.is_available():
            raise RuntimeError(f"GpuLoad({self.share}) needs a CUDA GPU; torch {torch.__version__} sees none. "
                               f"Fix: measure on a GPU machine, or with device_load 0.")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="fusiongym-gpu-load", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self.stop()
            raise RuntimeError(f"GPU load kernel failed to start: {self._error}") from self._error
        return self

    def _run(self) -> None:
        try:
            spin, programs = _spin_kernel(), self.programs
            stream = torch.cuda.Stream(self.device)
            out = torch.empty(programs * 1024, device=f"cuda:{self.device}")
            with torch.cuda.stream(stream):
                while not self._stop.is_set():
                    spin[(programs,)](out, _SPIN_ITERATIONS, num_warps=32)
                    stream.synchronize()
                    self._started.set()
        except BaseException as error:  # reported by start(), never swallowed
            self._error = error
        finally:
            self._started.set()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def __enter__(self) -> "GpuLoad":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
