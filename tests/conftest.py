"""Test-session defaults: caches inside the repo, a fresh measurement store per session,
the uncalibrated CPU profile."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import pytest

from fusiongym.reward.timing import AVAILABLE_CORES

REPO = Path(__file__).resolve().parents[1]

# Zoo templates are cached between test runs (keyed by code and library versions), never in
# the user's ~/.cache; each session measures into its own store.
os.environ.setdefault("FUSIONGYM_CACHE", str(REPO / ".pytest_cache" / "fusiongym"))
# The analytical CPU model is the datasheet profile in tests, whether or not this machine
# has been calibrated (`fusiongym profile --calibrate` writes ~/.cache/fusiongym/cpu_profile.json).
os.environ["FUSIONGYM_CPU_PROFILE"] = str(REPO / ".pytest_cache" / "no-calibrated-cpu-profile.json")


@pytest.fixture(scope="session", autouse=True)
def _session_store(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["FUSIONGYM_STORE"] = str(tmp_path_factory.mktemp("store") / "measurements.db")
    os.environ.setdefault("WANDB_MODE", "offline")
    # SB3's learn() without a custom logger makes an empty SB3-<time> folder in the system temp
    # folder on every call; the tests that train so make theirs in pytest's own.
    os.environ["SB3_LOGDIR"] = str(tmp_path_factory.mktemp("sb3"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``gpu`` is skipped, saying so, where torch sees no CUDA GPU (as in CI)."""
    if item.get_closest_marker("gpu"):
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU; none is visible to torch")


@contextmanager
def _busy_loops_on_every_core() -> Iterator[None]:
    """Three busy Python loops per available core, as another tenant's work would hold them."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3 * AVAILABLE_CORES)]
    try:
        time.sleep(0.3)   # until each loop runs
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


@pytest.fixture
def busy_loops() -> Callable[[], ContextManager[None]]:
    """``with busy_loops(): ...`` runs the block while busy loops hold every core."""
    return _busy_loops_on_every_core
