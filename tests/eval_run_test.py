"""`minigpt eval`: a run's checkpoint named by --step, on the run's data or another dir."""

import json
import shutil

import pytest

from minigpt_jax import data, eval_run, metrics
from minigpt_jax.errors import UsageError


def test_eval_repeats_the_runs_own_numbers_for_each_step(tiny_run):
    run_dir = tiny_run[0]
    evals = {r["step"]: r for r in metrics.read_metrics(run_dir) if r["kind"] == "eval"}
    best = min((evals[s]["val_loss"], s) for s in (4, 8))[1]
    for spec, step in (("latest", 8), ("4", 4), ("best", best)):
        got_step, results = eval_run.evaluate_checkpoint(run_dir, spec)
        assert got_step == step
        for key in ("train_loss", "val_loss", "val_loss_full", "val_bpc"):
            assert results[key] == pytest.approx(evals[step][key], rel=1e-5), (spec, key)


def test_a_bad_step_is_refused_before_the_data_is_read(tiny_run, tmp_path):
    run_dir = tiny_run[0]
    with pytest.raises(UsageError, match="--step must be best, latest or one of the saved"):
        eval_run.evaluate_checkpoint(run_dir, "5", data_dir=str(tmp_path / "nowhere"))


def test_other_data_must_share_the_runs_vocabulary(tiny_run, tmp_path):
    run_dir = tiny_run[0]
    data.prepare("abcabcabc" * 20, tmp_path / "abc", block_size=8)
    with pytest.raises(UsageError, match="other data than the run's vocabulary"):
        eval_run.evaluate_checkpoint(run_dir, data_dir=str(tmp_path / "abc"))
    same = tmp_path / "same"
    shutil.copytree(json.loads((run_dir / "config.json").read_text())["data"]["dir"], same)
    assert eval_run.evaluate_checkpoint(run_dir, data_dir=str(same))[0] == 8
