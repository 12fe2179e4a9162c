"""One code path over any mesh: the smoke run on 8 fake CPU devices matches one device."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, xla_flags
from ml_collections import config_dict

from minigpt_jax import files, sharding
from minigpt_jax.errors import UsageError


def test_mesh_shape_fills_minus_one_and_checks_the_device_count():
    mesh = lambda d, f, t: config_dict.ConfigDict(dict(data=d, fsdp=f, tensor=t))  # noqa: E731
    assert sharding.mesh_shape(mesh(-1, 1, 1), 8) == (8, 1, 1)
    assert sharding.mesh_shape(mesh(2, -1, 2), 8) == (2, 2, 2)
    with pytest.raises(UsageError, match="needs 4 devices"):
        sharding.mesh_shape(mesh(2, 2, 1), 8)
    with pytest.raises(UsageError, match="at most one -1"):
        sharding.mesh_shape(mesh(-1, -1, 1), 8)


def _train(tmp, name, devices, mesh, data_dir, *extra):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "XLA_FLAGS": xla_flags(devices),
    }
    d, f, t = mesh
    args = [
        "train",
        f"--config={ROOT / 'configs/shakespeare_char.py'}:smoke",
        f"--workdir={tmp / name}",
        f"--config.data.dir={data_dir}",
        *(f"--config.mesh.{k}={v}" for k, v in (("data", d), ("fsdp", f), ("tensor", t))),
        "--config.train.max_iters=6",
        "--config.train.eval_interval=3",
        "--config.train.ckpt_interval=3",
        "--config.train.log_interval=1",
        "--config.sample.max_new_tokens=0",  # the samples' programs are not what differs
        *extra,
    ]
    out = subprocess.run(
        [sys.executable, "-m", "minigpt_jax.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    records = [json.loads(line) for line in (tmp / name / "metrics.jsonl").read_text().splitlines()]
    return [r.get("loss", r.get("val_loss_full")) for r in records]


def test_sharded_meshes_match_one_device(corpus, tmp_path):
    from minigpt_jax import data

    data.prepare(files.read_text(corpus), tmp_path / "data", block_size=32)
    one = _train(tmp_path, "one", 1, (1, 1, 1), tmp_path / "data")
    # Data, FSDP and tensor parallel at once, with evals and checkpoints in between.
    mixed = _train(tmp_path, "mixed", 8, (2, 2, 2), tmp_path / "data")
    assert len(one) == len(mixed) == 6 + 3
    assert mixed == pytest.approx(one, rel=2e-5)


def test_muon_on_a_sharded_mesh_matches_one_device(corpus, tmp_path):
    """Muon's momentum takes its param's sharding (FSDP and tensor split the kernels that
    Newton-Schulz multiplies whole); float32 iterations, so the sums' order is all that moves."""
    from minigpt_jax import data

    data.prepare(files.read_text(corpus), tmp_path / "data", block_size=32)
    muon = ("--config.opt.optimizer=muon", "--config.opt.muon_ns_dtype=float32")
    one = _train(tmp_path, "one", 1, (1, 1, 1), tmp_path / "data", *muon)
    mixed = _train(tmp_path, "mixed", 8, (2, 2, 2), tmp_path / "data", *muon)
    assert len(one) == len(mixed) == 6 + 3
    assert mixed == pytest.approx(one, rel=2e-5)


def test_every_mesh_computes_the_same_steps_and_data_parallel_equals_pmap():
    """Meshes 1x1x1, 8x1x1, 1x8x1 and 1x1x4 on 8 fake CPU devices (2x2x2: the test above), and
    a pmap + pmean step over the 8 devices, the reference the 8x1x1 mesh replaces."""
    meshes = ["[1,1,1]", "[8,1,1]", "[1,8,1]", "[1,1,4]", "pmap"]
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests/scripts/mesh_equivalence.py"), *meshes],
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "XLA_FLAGS": xla_flags(8),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    one = results["[1, 1, 1]"]
    for name, r in results.items():
        assert r["losses"] == pytest.approx(one["losses"], rel=1e-5), name
        assert r["wte_max_diff"] < 1e-5, name  # the same params after 5 updates
    # FSDP over 8 devices keeps ~1/8 of params + Adam moments per device (LayerNorms replicate).
    assert results["[1, 8, 1]"]["bytes"] < one["bytes"] / 8 * 1.1
    assert results["[8, 1, 1]"]["bytes"] == one["bytes"]  # data parallel replicates
    assert results["[1, 1, 4]"]["bytes"] < one["bytes"] / 2  # heads and MLP split 4 ways
    pmap, data_parallel = results["pmap"], results["[8, 1, 1]"]
    assert pmap["losses"] == pytest.approx(data_parallel["losses"], rel=1e-5)
    assert pmap["params_max_diff_vs_8x1x1"] < 1e-5
