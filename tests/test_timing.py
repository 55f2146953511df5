"""The timing protocol (TVM and Python callables) and the real device load."""

from __future__ import annotations

import multiprocessing
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest

from fusiongym.graphs.workloads import LoadShare
from fusiongym.reward.device_load import DeviceLoad, last_level_cache_bytes
from fusiongym.reward.timing import (Timing, TimingProtocol, _best_attempt, coefficient_of_variation,
                                     measure)


@pytest.fixture(scope="module")
def tvm_matmul():
    """A 128^3 matmul built for llvm, with its arguments (a few hundred microseconds)."""
    tvm = pytest.importorskip("tvm")
    from tvm import te

    a = te.placeholder((128, 128), name="A")
    b = te.placeholder((128, 128), name="B")
    k = te.reduce_axis((0, 128), name="k")
    c = te.compute((128, 128), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    func = te.create_prim_func([a, b, c])
    executable = tvm.compile(func, target=tvm.target.Target({"kind": "llvm", "num-cores": 2}))
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(rng.random((128, 128), dtype="float32")) for _ in range(3)]
    return executable, args


def test_coefficient_of_variation():
    assert coefficient_of_variation([2.0, 2.0, 2.0]) == 0.0
    assert coefficient_of_variation([1.0]) == 0.0
    assert coefficient_of_variation([1.0, 3.0]) == pytest.approx(statistics.stdev([1.0, 3.0]) / 2.0)


def test_protocol_rejects_too_few_repeats():
    with pytest.raises(ValueError, match="at least 5"):
        TimingProtocol(repeats=3)
    with pytest.raises(ValueError, match="num_threads"):
        TimingProtocol(num_threads=0)


def test_measure_a_tvm_function(tvm_matmul):
    executable, args = tvm_matmul
    timing = measure(executable, args, TimingProtocol(min_repeat_ms=2))
    assert isinstance(timing, Timing)
    assert timing.repeats >= 5 and len(timing.samples_us) == timing.repeats
    assert min(timing.samples_us) <= timing.median_us <= max(timing.samples_us)
    assert timing.spread == pytest.approx(coefficient_of_variation(timing.samples_us))
    assert timing.number * timing.median_us >= 0.5 * 2000, "each repeat lasts about min_repeat_ms"


def test_measure_pins_tvm_threads_and_restores_them(tvm_matmul):
    import tvm

    executable, args = tvm_matmul
    before = tvm.runtime.num_threads()
    timing = measure(executable, args, TimingProtocol(min_repeat_ms=1, num_threads=1))
    assert timing.num_threads == 1
    assert tvm.runtime.num_threads() == before


EXIT_AFTER_A_PARALLEL_KERNEL = """
import sys
import numpy as np
import fusiongym.reward.timing  # noqa: F401  (sets the TVM pool's size and spin count)
import tvm
from tvm import te
from tvm.s_tir.schedule import Schedule

a = te.placeholder((1 << 16,), name="A")
schedule = Schedule(te.create_prim_func([a, te.compute(a.shape, lambda i: a[i] * 2.0, name="B")]))
schedule.parallel(schedule.get_loops(schedule.get_sblock("B"))[0])
kernel = tvm.compile(schedule.mod, target="llvm")
args = [tvm.runtime.tensor(np.ones(1 << 16, "float32")), tvm.runtime.tensor(np.zeros(1 << 16, "float32"))]
kernel(*args)
print("built", flush=True)
sys.stdin.readline()
kernel(*args)
print("ran", args[1].numpy()[0], flush=True)
"""


def test_a_process_that_ran_a_parallel_kernel_exits_on_a_busy_host(busy_loops):
    """Its exit joins TVM's pool worker, which spins before it sleeps: with TVM's default spin
    count, the script above, beside busy loops on every core, had not exited after 300 s."""
    script = subprocess.Popen([sys.executable, "-c", EXIT_AFTER_A_PARALLEL_KERNEL], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert script.stdout.readline() == "built\n"
        with busy_loops():
            script.stdin.write("go\n")
            script.stdin.flush()
            assert script.stdout.readline() == "ran 2.0\n"
            script.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the script still runs 60 s after its last line: TVM's pool worker spins on "
                    f"(TVM_THREAD_POOL_SPIN_COUNT={os.environ.get('TVM_THREAD_POOL_SPIN_COUNT')})")
    finally:
        script.kill()
        script.wait()
    assert script.returncode == 0


def test_high_spread_is_remeasured(tvm_matmul):
    executable, args = tvm_matmul
    timing = measure(executable, args, TimingProtocol(min_repeat_ms=1, max_spread=1e-9, max_remeasure=2))
    assert timing.remeasured == 2


def test_the_steadiest_attempt_is_kept():
    attempts = iter([[1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 2.1, 2.0, 2.1, 2.0], [1.0, 1.5, 2.0, 2.5, 3.0]])
    timing = _best_attempt(lambda: next(attempts), TimingProtocol(max_spread=1e-9, max_remeasure=2),
                           number=1, threads=None)
    assert timing.samples_us == (2.0, 2.1, 2.0, 2.1, 2.0) and timing.remeasured == 2
    assert timing.median_us == 2.0


def test_measure_a_python_callable():
    data = np.random.default_rng(0).random(100_000)
    timing = measure(np.sort, [data], TimingProtocol(min_repeat_ms=2))
    assert timing.repeats == 5 and timing.median_us > 0 and timing.number >= 1


def test_measure_rejects_what_it_cannot_time():
    with pytest.raises(TypeError, match="cannot time"):
        measure(42, [])


def test_load_shares_parse():
    assert LoadShare.parse(0.5) == LoadShare(0.5, 0.5)
    assert LoadShare.parse({"bandwidth": 0.8}) == LoadShare(0.0, 0.8)
    with pytest.raises(ValueError):
        LoadShare.parse({"memory": 0.5})
    with pytest.raises(ValueError):
        LoadShare(compute=1.5)


def test_zero_load_starts_nothing():
    with DeviceLoad(0.0) as load:
        assert not load.running and load.pids == []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _runnable_seconds(pid: int) -> float:
    """Time a process has been running or waiting for a core, from /proc/PID/schedstat (ns).

    Counting the run-queue wait makes the share the worker *asks* for visible on a busy
    host too: its duty cycle runs on the wall clock, so a core taken by another job turns
    busy time into waiting time, not into sleep.
    """
    with open(f"/proc/{pid}/schedstat") as schedstat:
        on_cpu_ns, waiting_ns, _timeslices = schedstat.read().split()
    return (int(on_cpu_ns) + int(waiting_ns)) / 1e9


def _stolen_seconds() -> float:
    """CPU time the hypervisor has taken from this VM, all CPUs together (/proc/stat "steal").

    Under paravirtual steal accounting a task whose virtual CPU is taken away counts that time
    as neither running nor waiting, so a runnable share falls by what was stolen meanwhile.
    """
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


def _resident_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/schedstat"),
                    reason="checks worker processes through /proc/PID/schedstat, which this kernel lacks")
def test_bandwidth_load_is_real_and_leaves_no_process_behind():
    """The worker asks for its share of the time and streams buffers larger than the cache.

    Checked on the worker itself (run-queue time, resident memory) rather than by the
    slowdown of a copy in this process: one core cannot saturate DRAM on every machine
    (CI's cannot). Nor by its CPU time: CI's busy host gave the worker 38 % of the wall
    clock while it asked for 80 %. On a quiet host a worker asking for 30 % is runnable
    40 % of the time and fails; on a busy one, waits after each sleep add to any share,
    so there the check only shows that the worker asks for at least its share. What the
    hypervisor stole meanwhile is added back, as it may have been the worker's (a fresh
    clone here, 2026-11-24: runnable 57 % of the time, passing when run alone).
    """
    with DeviceLoad({"bandwidth": 0.8}, workers=1) as load:
        pids = load.pids
        runnable_start, stolen_start, wall_start = _runnable_seconds(pids[0]), _stolen_seconds(), time.monotonic()
        time.sleep(1.0)
        wall_s = time.monotonic() - wall_start
        runnable_share = (_runnable_seconds(pids[0]) - runnable_start) / wall_s
        stolen_share = (_stolen_seconds() - stolen_start) / wall_s
        resident = _resident_bytes(pids[0])
        assert all(_alive(pid) for pid in pids)
    assert 0.6 <= runnable_share + stolen_share and runnable_share <= 1.02, (
        f"worker runnable {runnable_share:.0%} of the time, {stolen_share:.0%} stolen by the hypervisor, share 80%")
    assert load.buffer_bytes >= 2 * last_level_cache_bytes()
    assert resident >= 1.5 * load.buffer_bytes, f"{resident} bytes resident, buffers of {load.buffer_bytes}"
    assert not any(_alive(pid) for pid in pids)
    assert not multiprocessing.active_children()


def test_workers_stop_when_the_block_raises():
    with pytest.raises(RuntimeError, match="inside"):
        with DeviceLoad({"compute": 0.3}, workers=1) as load:
            pids = load.pids
            raise RuntimeError("inside the load")
    assert not any(_alive(pid) for pid in pids)
    assert not load.running
