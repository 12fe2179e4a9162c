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

from minigpt_jax.errors import UsageError

# When the process began, near enough: the CLI imports this module before any heavy one, and
# a run's wall breakdown (clock.py) counts its start-up from here.
STARTED = time.perf_counter()


# Set by `minigpt sweep` for each run it starts (sweep_slots.Slot.env).
SWEEP_PARENT = "MINIGPT_SWEEP_PARENT"  # the sweep's pid
SWEEP_CORES = "MINIGPT_SWEEP_CORES"  # the cores this run may use, e.g. "0,1"
PR_SET_PDEATHSIG = 1  # linux/prctl.h: the signal a process gets when its parent dies


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


def compilation_cache() -> None:
    # A second process then compiles the train step in ~0.1 s instead of seconds.
    import jax

    if not jax.config.jax_compilation_cache_dir:
        default = pathlib.Path.home() / ".cache" / "minigpt_jax" / "xla"
        jax.config.update(
            "jax_compilation_cache_dir", os.environ.get("MINIGPT_CACHE", str(default))
        )
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
