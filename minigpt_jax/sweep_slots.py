"""How `minigpt sweep --parallel K` shares a host between K runs: disjoint sets of CPU cores, or
of GPUs when the host has them. One run per slot; a slot is handed to the next run when free."""

from __future__ import annotations

import dataclasses
import os
import pathlib

from minigpt_jax import startup
from minigpt_jax.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Slot:
    """A run's share: CPU cores to pin it to and GPUs to show it (None: the whole host)."""

    cores: list[int] | None = None
    gpus: list[str] | None = None

    def env(self) -> dict[str, str]:
        """The run's environment: its log written as it goes, its share, the sweep's pid."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env[startup.SWEEP_PARENT] = str(os.getpid())
        if self.cores is not None:
            env[startup.SWEEP_CORES] = ",".join(map(str, self.cores))
        if self.gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus)
        return env


def split(items: list, k: int) -> list[list]:
    """k contiguous, as-equal-as-possible parts of items (the first ones one longer)."""
    size, extra = divmod(len(items), k)
    parts, start = [], 0
    for i in range(k):
        end = start + size + (i < extra)
        parts.append(items[start:end])
        start = end
    return parts


def visible_gpus() -> list[str]:
    """The host's NVIDIA GPUs as CUDA_VISIBLE_DEVICES ids, without starting jax (which would
    claim their memory in the sweep's own process)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip()]
    return sorted(
        (p.name.removeprefix("nvidia") for p in pathlib.Path("/dev").glob("nvidia[0-9]*")), key=int
    )


def slots(k: int, cores: list[int] | None = None, gpus: list[str] | None = None) -> list[Slot]:
    """K slots over the host's GPUs if it has any, else over its CPU cores."""
    if k < 1:
        raise UsageError(f"--parallel {k}: give at least 1")
    if k == 1:
        return [Slot()]
    if any(pathlib.Path("/dev").glob("accel[0-9]*")):  # TPU chips: one run holds them all
        raise UsageError(f"--parallel {k}: a TPU host runs one run at a time; use --parallel 1")
    gpus = visible_gpus() if gpus is None else gpus
    if gpus:
        if k > len(gpus):
            raise UsageError(f"--parallel {k}: the host shows {len(gpus)} GPU(s); use at most that")
        return [Slot(gpus=part) for part in split(gpus, k)]
    cores = sorted(os.sched_getaffinity(0)) if cores is None else cores
    if k > len(cores):
        raise UsageError(f"--parallel {k}: this process may use {len(cores)} CPU core(s)")
    return [Slot(cores=part) for part in split(cores, k)]
