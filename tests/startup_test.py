"""Process set-up before jax starts: the CPU split and the compilation cache."""

import json
import os
import pathlib
import subprocess
import sys
import tempfile

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


def test_auto_cpu_devices_gives_a_device_per_core_when_the_batch_splits():
    """--cpu_devices auto (train's default), decided before jax starts, from the cores this
    process may use (a sweep's share, a taskset) and the config."""
    code = """
import json, os, sys
from minigpt_jax import config, startup
c = config.sibling("configs/x.py", "shakespeare_char.py", "cpu")  # batch 12
cores = sorted(os.sched_getaffinity(0))
got = {"all": startup.auto_cpu_devices(c, None)}
c.train.batch_size = 13
got["odd_batch"] = startup.auto_cpu_devices(c, None)
c.train.batch_size = 12
c.mesh.fsdp = 2
got["fixed_mesh"] = startup.auto_cpu_devices(c, None)
c.mesh.fsdp = 1
c.dist.num_processes = 2
got["multi_process"] = startup.auto_cpu_devices(c, None)
c.dist.num_processes = 1
os.sched_setaffinity(0, cores[:1])
got["one_core"] = startup.auto_cpu_devices(c, None)
os.sched_setaffinity(0, cores)
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=3"
got["flag_set"] = startup.auto_cpu_devices(c, None)
del os.environ["XLA_FLAGS"]
got["saved"] = startup.auto_cpu_devices(None, sys.argv[1])
got["started_on"] = startup.auto_cpu_devices(c, sys.argv[2])  # a resume keeps its count
got["no_config"] = startup.auto_cpu_devices(None, "/nonexistent")
got["jax_started"] = "jax" in sys.modules
print(json.dumps(got))
"""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as d, tempfile.TemporaryDirectory() as resumed:
        saved = {"train": {"batch_size": 2 * cores}, "model": {}}  # a run's config.json
        pathlib.Path(d, "config.json").write_text(json.dumps(saved))
        saved["source"] = {"cpu_devices": 3}
        pathlib.Path(resumed, "config.json").write_text(json.dumps(saved))
        out = subprocess.run(
            [sys.executable, "-c", code, d, resumed], capture_output=True, text=True, timeout=120,
            env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
        )  # fmt: skip
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got == {
        "all": cores if 12 % cores == 0 else 1, "odd_batch": cores if 13 % cores == 0 else 1,
        "fixed_mesh": 1, "multi_process": None, "one_core": 1, "flag_set": None,
        "saved": cores, "started_on": 3, "no_config": None, "jax_started": False,
    }  # fmt: skip
