"""Multi-host sweeps: two `minigpt sweep` processes on 127.0.0.1 as two hosts, each run one job
over both; and a multi-host run whose processes name different runs stops in one line."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, free_port, write_tiny_config, xla_flags

from minigpt_jax import cli, config, sweep, sweep_hosts
from minigpt_jax.errors import UsageError

SWEEP = """
def get_sweep():
    return [{"name": "relu", "model.activation": "relu"}, {"name": "broken", "opt.lr": 1e30}]
"""


@pytest.fixture(scope="module")
def files(tiny_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("hosts_files")
    write_tiny_config(d / "tiny.py", tiny_data, max_iters=12, eval_interval=6, ckpt_interval=6,
                      log_interval=3)  # fmt: skip
    (d / "sweep.py").write_text(SWEEP)
    return d


def _cluster_env(port: int, rank: int) -> dict[str, str]:
    """Open MPI's variables for rank `rank` of 2, as mpirun sets them on each host: jax's
    cluster detection (dist.auto) reads them, as it reads Cloud TPU's metadata on a pod."""
    return {
        **os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": xla_flags(1),
        "OMPI_MCA_orte_hnp_uri": "4096.0;tcp://127.0.0.1:1", "JAX_COORDINATOR_PORT": str(port),
        "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": str(rank),
        "OMPI_COMM_WORLD_LOCAL_RANK": str(rank),
    }  # fmt: skip


def test_a_sweep_on_two_hosts_runs_each_run_as_one_job_over_both(files, tmp_path):
    root = tmp_path / "root"
    argv = [sys.executable, "-m", "minigpt_jax.cli", "sweep", "--config", str(files / "tiny.py"),
            "--config.dist.auto=true", "--root", str(root), "--sweep", str(files / "sweep.py"),
            "--seeds", "1"]  # fmt: skip
    port = free_port()
    procs = [
        subprocess.Popen(
            argv,
            env=_cluster_env(port, rank),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    (out0, err0), (out1, err1) = (p.communicate(timeout=400) for p in procs)
    # A failed run is recorded and both hosts go on; each exits 1 at the end because of it.
    assert [p.returncode for p in procs] == [1, 1], err0[-2000:] + err1[-2000:]
    runs = json.loads((root / sweep.MANIFEST).read_text())["runs"]
    assert {rid: r["state"] for rid, r in runs.items()} == {
        "relu/seed_0": "done", "broken/seed_0": "failed"
    }  # fmt: skip
    assert "non-finite" in runs["broken/seed_0"]["message"]
    assert "process 1 of 2: 1 exit 1, 1 ran; process 0 reports" in err1
    run = root / "relu/seed_0"
    # One job over both hosts: process 0's output names two processes, process 1 has its own.
    assert "(2 processes)" in (run / "train.log").read_text()
    assert (run / "train.p1.log").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["step"] == 12
    # The manifest and the run's config name no host: each host's own flags set those.
    base = json.loads((root / sweep.MANIFEST).read_text())["base_config"]
    assert base["dist"]["auto"] is False
    assert "| relu | 1/1 done |" in (root / "report.md").read_text()


def test_processes_of_one_run_on_different_workdirs_stop_in_one_line(files, tmp_path):
    port = free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "minigpt_jax.cli",
                "train",
                "--config",
                str(files / "tiny.py"),
                "--workdir",
                str(tmp_path / f"run_{i}"),
                f"--config.dist.coordinator=127.0.0.1:{port}",
                "--config.dist.num_processes=2",
                f"--config.dist.process_id={i}",
            ],
            env={**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": xla_flags(1)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in (0, 1)
    ]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [3, 3], errs
    for i, err in enumerate(errs):
        assert f"processes of this run name different workdirs (this is process {i}" in err
        assert "every host must run the same command" in err
    assert not any((tmp_path / f"run_{i}").exists() for i in (0, 1))  # nothing written


def test_hosts_named_by_hand_pass_their_flags_to_each_run():
    c = config.base_config()
    assert sweep_hosts.of(c, parallel=2) is None  # one host
    c.dist.update(coordinator="10.0.0.1:1234", num_processes=4, process_id=2)
    hosts = sweep_hosts.of(c, parallel=1)
    assert (hosts.index, hosts.count, hosts.log_name) == (2, 4, "train.p2.log")
    assert hosts.flags == (
        "--config.dist.coordinator=10.0.0.1:1234",
        "--config.dist.num_processes=4",
        "--config.dist.process_id=2",
    )
    stripped = sweep_hosts.without_dist(c)
    assert stripped.dist.to_dict() == config.base_config().dist.to_dict()
    assert c.dist.process_id == 2  # the caller's config is left alone
    with pytest.raises(UsageError, match="one run at a time over every host's devices"):
        sweep_hosts.of(c, parallel=2)
    c.dist.process_id = 4
    with pytest.raises(UsageError, match=r"dist.process_id=4 must be in \[0, dist.num_processes"):
        sweep_hosts.of(c, parallel=1)


def test_dist_auto_without_a_cluster_is_one_line(files, tmp_path, capsys):
    env = {k: os.environ.pop(k) for k in list(os.environ) if k in sweep_hosts.startup.CLUSTER_ENV}
    try:
        code = cli.main(["minigpt", "sweep", "--config", str(files / "tiny.py"),
                         "--config.dist.auto=true", "--root", str(tmp_path / "r"),
                         "--grid", "opt.lr=0.01"])  # fmt: skip
    finally:
        os.environ.update(env)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "dist.auto: finding this host's place failed: dist.auto is on but JAX found no" in err
    assert not (tmp_path / "r").exists()


def test_train_overrides_without_config_change_the_workdirs_own_config(tiny_run, tmp_path, capsys):
    workdir, _ = tiny_run
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_bytes((workdir / "config.json").read_bytes())
    code = cli.main(["minigpt", "train", "--workdir", str(run), "--config.data.dir=/nowhere"])
    assert code == 2 and "/nowhere/meta.json not found" in capsys.readouterr().err
    code = cli.main(["minigpt", "train", "--workdir", str(tmp_path / "new"), "--config.data.dir=x"])
    err = capsys.readouterr().err
    assert code == 2 and "overrides need a --config, or a --workdir whose config.json" in err


def test_a_run_whose_hosts_fell_out_of_step_is_stopped_not_failed(tmp_path):
    manifest = {"arms": [{"name": "a", "overrides": {}}], "runs": {
        "a/seed_0": {"arm": "a", "seed": 0, "state": "running"},
        "a/seed_1": {"arm": "a", "seed": 1, "state": "pending"}}}  # fmt: skip
    (tmp_path / "a/seed_0").mkdir(parents=True)
    (tmp_path / "a/seed_0/train.log").write_text("minigpt train: error: ... name different ...\n")
    launcher = sweep.Launcher(tmp_path, manifest, log=lambda line: None)
    launcher._finish("a/seed_0", 3)
    record = json.loads((tmp_path / sweep.MANIFEST).read_text())["runs"]["a/seed_0"]
    assert record["state"] == "stopped" and "name different" in record["message"]
    assert launcher.out_of_step  # no further run is started: run() stops launching
    assert launcher.run([], None, retry_failed=False) == {"stopped": 1, "pending": 1}
