"""Process set-up before jax starts: the CPU split and the compilation cache."""

import os
import subprocess
import sys

import jax
import pytest
from conftest import ROOT

from minigpt_jax import startup
from minigpt_jax.errors import UsageError


def test_split_cpu_sets_xla_flags_in_a_process_without_jax():
    code = (
        "import os, sys; from minigpt_jax import startup; startup.split_cpu(3); "
        "print(os.environ['XLA_FLAGS']); import jax; print(jax.device_count())"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={**env, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["--xla_force_host_platform_device_count=3", "3"]


def test_split_cpu_refuses_once_jax_runs_with_another_count(monkeypatch):
    before = os.environ.get("XLA_FLAGS")
    startup.split_cpu(jax.device_count())  # what jax already has: nothing to do
    with pytest.raises(UsageError, match="fresh `minigpt` process"):
        startup.split_cpu(jax.device_count() + 1)
    assert os.environ.get("XLA_FLAGS") == before  # later subprocesses inherit nothing


def test_compilation_cache_keeps_a_directory_already_set():
    cache = jax.config.jax_compilation_cache_dir
    assert cache  # conftest set MINIGPT_CACHE's directory
    startup.compilation_cache()
    assert jax.config.jax_compilation_cache_dir == cache
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0


def test_a_run_of_a_sweep_takes_its_cores_and_a_stop_when_the_sweep_dies():
    """join_sweep: the cores the sweep gave it, and SIGTERM when its parent (the sweep) is gone
    (here the parent pid it was given is not its parent: the sweep died before it asked)."""
    core = sorted(os.sched_getaffinity(0))[-1]
    code = (
        "import os; from minigpt_jax import startup; startup.join_sweep(); "
        "print(sorted(os.sched_getaffinity(0)), startup.SWEEP_CORES in os.environ)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), startup.SWEEP_CORES: str(core)}
    run = lambda env: subprocess.run(  # noqa: E731
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    out = run({**env, startup.SWEEP_PARENT: str(os.getpid())})  # its parent: this process
    assert out.returncode == 0 and out.stdout.split() == [f"[{core}]", "False"], out.stderr
    gone = run({**env, startup.SWEEP_PARENT: "1"})  # pid 1 is not its parent
    assert gone.returncode == -15 and gone.stdout == ""
