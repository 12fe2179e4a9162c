"""What a `minigpt` process sets up before jax starts: the CPU split into XLA devices and the
persistent compilation cache. Nothing here imports jax at module level: XLA reads its flags
when its backend starts, so they must be set before.
"""

from __future__ import annotations

import os
import pathlib
import signal
import sys
import time
from typing import Any

from minigpt_jax.errors import UsageError

# When the process began, near enough: the CLI imports this module before any heavy one, and
# a run's wall breakdown (clock.py) counts its start-up from here.
STARTED = time.perf_counter()


# Set by `minigpt sweep` for each run it starts (sweep_slots.Slot.env).
SWEEP_PARENT = "MINIGPT_SWEEP_PARENT"  # the sweep's pid
SWEEP_CORES = "MINIGPT_SWEEP_CORES"  # the cores this run may use, e.g. "0,1"
PR_SET_PDEATHSIG = 1  # linux/prctl.h: the signal a process gets when its parent dies

# Environment variables that mean "this process is one of a cluster" (Cloud TPU, SLURM, MPI, or
# a coordinator given by hand); jax.distributed.initialize() then finds its peers by itself.
CLUSTER_ENV = (
    "JAX_COORDINATOR_ADDRESS",
    "TPU_WORKER_HOSTNAMES",
    "MEGASCALE_COORDINATOR_ADDRESS",
    "SLURM_JOB_ID",
    "OMPI_COMM_WORLD_SIZE",
)


def in_cluster() -> bool:
    return any(name in os.environ for name in CLUSTER_ENV)


def join_sweep() -> None:
    """A run started by `minigpt sweep` takes its share of the cores, and asks the kernel for a
    SIGTERM when the sweep dies (SIGKILL included), so it saves and stops instead of training on
    unwatched. Done here, in the run, rather than between fork and exec in the sweep."""
    cores = os.environ.pop(SWEEP_CORES, "")
    if cores:
        os.sched_setaffinity(0, [int(c) for c in cores.split(",")])
    parent = os.environ.pop(SWEEP_PARENT, "")
    if parent and sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != int(parent):  # the sweep died before the request was in place
            os.kill(os.getpid(), signal.SIGTERM)


def split_cpu(n: int) -> None:
    """--cpu_devices: XLA reads its flags when the backend starts, so this must come first."""
    if "jax" in sys.modules:  # a caller already has jax (an in-process call): too late to split
        import jax

        if jax.default_backend() == "cpu" and jax.device_count() != n:
            raise UsageError(
                f"--cpu_devices {n}: jax already started with {jax.device_count()} CPU "
                "device(s) in this process; pass the flag to a fresh `minigpt` process"
            )
        return
    # Only a process about to start jax changes its XLA_FLAGS (they outlive this call).
    flag = f"--xla_force_host_platform_device_count={n}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()


def auto_cpu_devices(config: Any, workdir: str | None) -> int | None:
    """--cpu_devices auto for train's config (--config, or the config.json of a --workdir resumed
    alone): a run resumes on the device count it started with (config.json's source records it:
    another count changes the floats' sums, and a long run drifts from them); a new one takes
    one XLA device per core this process may use (a sweep's share, or a taskset's) when the
    batch splits evenly over them and the mesh is data-parallel over all devices, else 1.
    None leaves jax's count alone: a multi-process run, XLA_FLAGS that already set the count,
    a jax already started, or no config to read (train then says why)."""
    if "jax" in sys.modules or "xla_force_host_platform_device_count" in os.environ.get(
        "XLA_FLAGS", ""
    ):
        return None
    saved = _saved_config(pathlib.Path(workdir) / "config.json") if workdir else None
    config = saved[0] if config is None and saved is not None else config
    if getattr(config, "train", None) is None:
        return None
    if config.dist.num_processes > 1 or config.dist.auto:
        return None
    started_on = (saved[1].get("source") or {}).get("cpu_devices") if saved else None
    if isinstance(started_on, int) and started_on >= 1:
        return started_on
    mesh = dict(config.mesh)
    if mesh.get("data") != -1 or any(v != 1 for k, v in mesh.items() if k != "data"):
        return 1
    cores = len(os.sched_getaffinity(0))
    return cores if config.train.batch_size % cores == 0 else 1


def _saved_config(path: pathlib.Path) -> tuple[Any, dict] | None:
    """(config, raw JSON) of a run's config.json, read without starting jax."""
    import json

    from minigpt_jax import config as config_lib

    try:  # not workdir.read_config: that module starts jax
        raw = json.loads(path.read_text("utf-8"))
        return config_lib.from_saved(raw), raw
    except Exception:  # missing or damaged: train reports it in its own words
        return None


def compilation_cache() -> None:
    # A second process then compiles the train step in ~0.1 s instead of seconds.
    import jax

    if not jax.config.jax_compilation_cache_dir:
        default = pathlib.Path.home() / ".cache" / "minigpt_jax" / "xla"
        jax.config.update(
            "jax_compilation_cache_dir", os.environ.get("MINIGPT_CACHE", str(default))
        )
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
