"""minigpt_jax.sweep and `minigpt sweep`: the manifest, growth rules, slots, and sweeps run end
to end (a failed arm, a SIGKILLed sweep started again)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, one_line_error, write_tiny_config

from minigpt_jax import cli, config, config_file, metrics, sweep, sweep_slots, sweep_spec
from minigpt_jax.errors import UsageError

SMOKE = str(ROOT / "configs/shakespeare_char.py:smoke")


def _base():
    c = config.base_config()
    config.smoke(c)
    return c


def _arms(*grid):
    return sweep_spec.grid_arms(_base(), list(grid))


def _plan(root, arms, seeds, base=None):
    return sweep.plan(root, base or _base(), arms, seeds, {"config": "x"}, None)


def test_a_new_manifest_lists_every_run_seed_major(tmp_path):
    m = _plan(tmp_path, _arms("model.activation=gelu,relu"), [0, 1])
    assert list(m["runs"]) == [
        "activation=gelu/seed_0", "activation=relu/seed_0",
        "activation=gelu/seed_1", "activation=relu/seed_1",
    ]  # fmt: skip
    assert all(r["state"] == "pending" for r in m["runs"].values())
    assert m["baseline"] == "activation=gelu" and m["seeds"] == [0, 1]
    assert m["base_config"] == _base().to_dict()


def test_a_sweep_may_grow_by_arms_and_seeds_keeping_its_runs(tmp_path):
    m = _plan(tmp_path, _arms("model.activation=gelu,relu"), [0])
    m["runs"]["activation=gelu/seed_0"]["state"] = "done"
    sweep.write_manifest(tmp_path, m)
    grown = _plan(tmp_path, _arms("model.activation=gelu,relu,gelu_tanh"), [0, 1])
    assert grown["runs"]["activation=gelu/seed_0"]["state"] == "done"
    assert len(grown["runs"]) == 6 and grown["seeds"] == [0, 1]
    assert [a["name"] for a in grown["arms"]][-1] == "activation=gelu_tanh"


@pytest.mark.parametrize(
    "arms, seeds, changed, message",
    [
        (["model.activation=gelu"], [0], False, "leaves out"),  # an arm dropped
        (["model.activation=gelu,relu"], [1], False, r"seeds \[0\]"),  # a seed dropped
        (["model.activation=gelu,relu"], [0], True, "another base config"),
    ],
)
def test_a_sweep_that_would_change_is_refused(tmp_path, arms, seeds, changed, message):
    sweep.write_manifest(tmp_path, _plan(tmp_path, _arms("model.activation=gelu,relu"), [0]))
    base = _base()
    if changed:
        base.opt.lr = 0.5
    with pytest.raises(UsageError, match=message):
        _plan(tmp_path, _arms(*arms), seeds, base)


def test_an_arm_whose_overrides_changed_is_refused(tmp_path):
    arms = [{"name": "a", "overrides": {"opt.lr": 0.1}}]
    sweep.write_manifest(tmp_path, _plan(tmp_path, arms, [0]))
    with pytest.raises(UsageError, match="arm a had other overrides"):
        _plan(tmp_path, [{"name": "a", "overrides": {"opt.lr": 0.2}}], [0])


def test_slots_split_cores_or_gpus_between_runs():
    assert sweep_slots.split([0, 1, 2, 3, 4], 2) == [[0, 1, 2], [3, 4]]
    assert sweep_slots.slots(1) == [sweep_slots.Slot()]
    cpu = sweep_slots.slots(2, cores=[0, 1, 2, 3], gpus=[])
    assert [s.cores for s in cpu] == [[0, 1], [2, 3]] and cpu[0].gpus is None
    gpu = sweep_slots.slots(2, cores=[0, 1], gpus=["0", "1", "2", "3"])
    assert [s.env()["CUDA_VISIBLE_DEVICES"] for s in gpu] == ["0,1", "2,3"]
    with pytest.raises(UsageError, match="may use 2 CPU core"):
        sweep_slots.slots(3, cores=[0, 1], gpus=[])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--grid", "model.nope=1,2"], "no such config field 'model.nope'"),
        (["--grid", "model.n_layer=two"], "'two' is not of the field's type, int"),
        (["--grid", "model.n_layer="], "write field=value1,value2"),
        ([], "name the arms"),
        (["--grid", "model.activation=swish"], "sweep arm activation=swish: bad model config"),
        (["--grid", "opt.lr=1", "--seeds", "x"], "--seeds 'x'"),
        (["--grid", "opt.lr=1", "--parallel", "64"], "--parallel 64"),
        (["--grid", "opt.lr=1", "--sweep", "f.py"], "not both"),
    ],
)
def test_bad_sweeps_are_one_line_and_exit_2(tmp_path, capsys, args, message):
    root = tmp_path / "root"
    err = one_line_error(["sweep", "--config", SMOKE, "--root", str(root), *args], capsys)
    assert message in err
    assert not root.exists()  # nothing is written before every arm checks out


def test_a_sweep_report_of_a_folder_without_a_manifest_is_one_line(tmp_path, capsys):
    assert "holds no sweep.json" in one_line_error(["sweep", "report", str(tmp_path)], capsys)
    assert "minigpt sweep report ROOT" in one_line_error(["sweep", "report"], capsys)


def test_a_changed_grid_on_an_existing_root_is_one_line(tmp_path, capsys):
    root = tmp_path / "root"
    root.mkdir()
    base = config_file.load_config_file(SMOKE)
    sweep.write_manifest(root, _plan(root, _arms("model.activation=gelu,relu"), [0, 1, 2], base))
    before = (root / sweep.MANIFEST).read_bytes()
    err = one_line_error(
        ["sweep", "--config", SMOKE, "--root", str(root), "--grid", "opt.lr=0.1,0.2"], capsys
    )
    assert "a sweep may only grow" in err and "minigpt sweep --root" in err
    assert (root / sweep.MANIFEST).read_bytes() == before


# --- sweeps run end to end: tiny runs (2/2/16, block 8) in child processes ---

SWEEP = """
def get_sweep():
    return [{"name": "gelu"}, {"name": "relu", "model.activation": "relu"},
            {"name": "broken", "opt.lr": 1e30}]
"""


@pytest.fixture(scope="module")
def files(tiny_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep_files")
    write_tiny_config(d / "tiny.py", tiny_data, max_iters=300, eval_interval=150,
                      ckpt_interval=50, log_interval=10)  # fmt: skip
    (d / "sweep.py").write_text(SWEEP)
    return d


@pytest.fixture(scope="module")
def finished(files, tmp_path_factory):
    """A 3-arm x 2-seed sweep, 2 runs at once; the 'broken' arm's runs fail."""
    root = tmp_path_factory.mktemp("sweep") / "root"
    parallel = str(min(2, len(os.sched_getaffinity(0))))
    argv = ["minigpt", "sweep", "--config", str(files / "tiny.py"), "--root", str(root),
            "--sweep", str(files / "sweep.py"), "--seeds", "2", "--parallel", parallel,
            "--cpu_devices", "1"]  # fmt: skip
    return root, cli.main(argv)


def _runs(root):
    return json.loads((root / sweep.MANIFEST).read_text())["runs"]


def test_a_sweep_runs_every_arm_and_seed_and_reports_a_failed_arm(finished, capsys):
    root, code = finished
    assert code == 1  # some runs failed: the sweep went on, and says so at the end
    states = {rid: r["state"] for rid, r in _runs(root).items()}
    assert states == {f"{a}/seed_{s}": "failed" if a == "broken" else "done"
                      for s in (0, 1) for a in ("gelu", "relu", "broken")}  # fmt: skip
    failed = _runs(root)["broken/seed_0"]
    assert failed["returncode"] == 1 and "non-finite" in failed["message"]
    cfg = json.loads((root / "relu/seed_1/config.json").read_text())
    assert (cfg["model"]["activation"], cfg["train"]["seed"]) == ("relu", 1)
    report = json.loads((root / "report.json").read_text())
    rows = {row["arm"]: row for row in report["arms"]}
    finals = [
        json.loads((root / f"relu/seed_{s}/summary.json").read_text())["final_val_loss_full"]
        for s in (0, 1)
    ]
    assert rows["relu"]["metrics"]["final_val_loss_full"]["values"] == finals
    assert rows["broken"]["states"] == {"failed": 2}
    md = (root / "report.md").read_text()
    assert "| broken | 0/2 done (failed 2) |" in md and "non-finite" in md
    for png in ("val_curves.png", "finals.png"):
        assert (root / png).read_bytes().startswith(b"\x89PNG")
    # Each run is an ordinary workdir: `minigpt report` reads it, and the root as a sweep.
    assert cli.main(["minigpt", "report", str(root / "gelu/seed_0"), "--out",
                     str(root / "one")]) == 0  # fmt: skip
    assert cli.main(["minigpt", "report", str(root)]) == 0
    assert "| arm | runs | final full val |" in capsys.readouterr().out


def test_the_same_command_again_runs_nothing_finished_or_failed(finished, files, capsys):
    root, _ = finished
    before = _runs(root)
    code = cli.main(["minigpt", "sweep", "--root", str(root)])
    out = capsys.readouterr().out
    assert code == 1 and "started" not in out
    assert _runs(root) == before


def _evals(workdir):
    keep = ("step", "train_loss", "val_loss", "val_loss_full")
    return [{k: r[k] for k in keep} for r in metrics.read_metrics(workdir) if r["kind"] == "eval"]


def _start_and_signal(command, victim, after_step, signum):
    """Starts the sweep, and sends signum once victim logs a train step past after_step."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(
        r["kind"] == "train" and r["step"] > after_step for r in metrics.read_metrics(victim)
    ):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(signum)
    return proc.wait()


def test_a_stopped_then_sigkilled_sweep_started_again_ends_as_one_uninterrupted(
    finished, files, tmp_path
):
    """SIGTERM the sweep while its second run trains: the run saves and the manifest says
    stopped. Start it again and kill -9 it in the same run: the orphaned run saves and stops.
    The same command then resumes it; every run's evals equal those of the finished sweep."""
    root = tmp_path / "root"
    command = [sys.executable, "-m", "minigpt_jax.cli", "sweep", "--config",
               str(files / "tiny.py"), "--root", str(root), "--grid",
               "model.activation=gelu,relu", "--seeds", "1",
               "--cpu_devices", "1"]  # as the finished sweep: the same sums  # fmt: skip
    victim = root / "activation=relu/seed_0"
    assert _start_and_signal(command, victim, 0, signal.SIGTERM) == 0
    record = _runs(root)["activation=relu/seed_0"]
    stopped_at = json.loads((victim / "summary.json").read_text())["checkpoint_step"]
    assert (
        record["state"] == "stopped"
        and stopped_at
        and (victim / f"checkpoints/{stopped_at}").is_dir()
    )
    assert f"stopped by SIGTERM at step {stopped_at} with a checkpoint" in record["message"]
    assert _runs(root)["activation=gelu/seed_0"]["state"] == "done"
    _start_and_signal(command, victim, stopped_at, signal.SIGKILL)
    assert _runs(root)["activation=relu/seed_0"]["state"] == "running"  # as the kill left it
    assert not sweep.finished(victim)
    assert cli.main(["minigpt", "sweep", "--root", str(root)]) == 0
    assert "resuming from" in (victim / sweep.LOG_FILE).read_text()
    for arm in ("gelu", "relu"):
        done, ref = root / f"activation={arm}/seed_0", finished[0] / f"{arm}/seed_0"
        assert _evals(done) == _evals(ref)
        assert json.loads((done / "summary.json").read_text())["finished"]


def test_the_committed_sweep_report_is_what_its_run_files_give(tmp_path):
    """experiments/sweep_basics: the numbers of its README come from the run files beside it."""
    from minigpt_jax import sweep_report

    folder = ROOT / "experiments/sweep_basics"
    sweep_report.report(folder, tmp_path)
    fresh = json.loads((tmp_path / "report.json").read_text())["arms"]
    kept = json.loads((folder / "report.json").read_text())["arms"]
    assert [r["metrics"] for r in fresh] == [r["metrics"] for r in kept]
    rows = {r["arm"]: r for r in fresh}
    assert round(rows["nanogpt"]["metrics"]["final_val_loss_full"]["mean"], 4) == 1.8990
    assert rows["relu"]["vs_baseline"]["final_val_loss_full"]["verdict"] == "better"
