"""`minigpt bench sample | train`: what the tables report, the CPU split, the flags."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, one_line_error, xla_flags

from minigpt_jax import bench, bench_noise, cli


@pytest.mark.parametrize(
    "args, message",
    [
        (["bench"], "sample"),
        (["bench", "fly"], "sample, train"),
        (["bench", "train"], "--config is required"),
        (["bench", "train", "--config", "nope.py"], "No such file"),
        (["bench", "train", "--cpu_devices", "0"], "cpu_devices"),
        (["bench", "train", "--cpu_devices", "3"], "fresh `minigpt` process"),
    ],
)
def test_bad_bench_flags_give_one_line_and_exit_2(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert message in one_line_error(args, capsys)


def test_peak_table_matches_device_kinds_most_specific_first():
    assert bench.table_peak_flops("TPU v5 lite") == 197e12  # v5e, not v5p's 'TPU v5'
    assert bench.table_peak_flops("TPU v5") == 459e12
    assert bench.table_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert bench.table_peak_flops("cpu") is None


def test_bench_train_reports_xla_flops_and_mfu(tmp_path, capsys):
    """The step's FLOPs come from XLA's cost analysis of the compiled step: forward and backward
    are about 6 x params x tokens (plus attention), so reading the forward alone would fail, and
    so would counting the scanned micro-steps once (XLA's count of a loop)."""
    out = tmp_path / "train.json"
    smoke = str(ROOT / "configs/shakespeare_char.py:smoke")
    args = ["minigpt", "bench", "train", "--config", smoke, "--steps", "2", "--out", str(out)]
    args += ["--vs", "torch", "--torch_threads", "1", "--config.train.grad_accum=2"]
    assert cli.main(args) == 0, capsys.readouterr().err
    row = json.loads(out.read_text())
    tokens = 16 * 32 * 2
    assert 1.0 < row["flops_per_step"] / (6 * row["params"] * tokens) < 1.6
    assert 0 < row["mfu"] <= 1.0 and row["peak_source"].startswith("measured")
    # nanoGPT's estimate_mfu counts the matmuls alone; XLA adds the elementwise work and Adam.
    assert 0.6 < row["model_flops_per_step"] / row["flops_per_step"] < 1.0
    assert row["mfu_nanogpt"] / row["mfu"] == pytest.approx(
        row["model_flops_per_step"] / row["flops_per_step"]
    )  # the same step time and peak under both counts
    assert row["temp_bytes"] > 0  # XLA's scratch memory: what remat trades for compute
    ms = row["ms_per_iter"]
    assert ms["min"] <= ms["median"] <= ms["max"] and row["compile_s"] > 0
    assert row["config"] == "2/2/32 block 32 batch 16x2 (float32)"  # the smoke model ran
    # The PyTorch reference took its turns: a ratio of two measured medians.
    torch_ms = row["torch"]["ms_per_iter"]["median"]
    assert row["speedup_vs_torch"] == pytest.approx(torch_ms / ms["median"])
    # The spread of each side's samples says whether the ratio can be trusted.
    assert row["spread"] == pytest.approx((ms["max"] - ms["min"]) / ms["median"])
    spreads = (row["spread"], row["torch"]["spread"])
    assert row["speedup_reliable"] == (max(spreads) <= bench_noise.SPREAD_LIMIT)
    printed = capsys.readouterr().out
    assert "ours is" in printed and "load average (1 min): " in printed
    assert f"ours {100 * row['spread']:.0f}%, PyTorch" in printed


def test_conditions_say_the_load_the_spreads_and_what_is_unreliable():
    steady, noisy = [1.0, 1.1, 1.0], [1.0, 2.0, 1.0]
    assert bench_noise.rel_spread(noisy) == 1.0 and not bench_noise.unreliable(steady, steady)
    assert bench_noise.unreliable(steady, noisy)
    calm = bench_noise.describe_conditions(0.5, {"ours": bench_noise.rel_spread(steady)}, 3)
    assert "0.50 before" in calm and "ours 10%" in calm and "unreliable" not in calm
    loud = bench_noise.describe_conditions(None, {"ours": 0.1, "PyTorch": 1.0}, 3)
    assert "load average (1 min): unknown" in loud and "are marked unreliable; rerun" in loud
    assert "no spread" in bench_noise.describe_conditions(0.5, {"ours": 0.0}, 1)


def test_cpu_devices_splits_the_cpu_for_a_data_parallel_step(tmp_path):
    """--cpu_devices 2 in a fresh process: two XLA CPU devices, and mesh.data=-1 takes both."""
    out = tmp_path / "train.json"
    smoke = str(ROOT / "configs/shakespeare_char.py:smoke")
    args = ["bench", "train", "--config", smoke, "--steps", "1", "--cpu_devices", "2"]
    env = {**os.environ, "XLA_FLAGS": xla_flags()}  # --cpu_devices sets the count
    proc = subprocess.run(
        [sys.executable, "-m", "minigpt_jax.cli", *args, "--out", str(out)],
        capture_output=True, text=True, timeout=300, env={**env, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    row = json.loads(out.read_text())
    assert row["device_count"] == 2 and row["mesh"] == {"data": 2, "fsdp": 1, "tensor": 1}
    # The step's FLOPs are the whole step's, not one device's half of it.
    assert 1.0 < row["flops_per_step"] / (6 * row["params"] * 16 * 32) < 1.6
