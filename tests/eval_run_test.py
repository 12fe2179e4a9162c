"""`minigpt eval`: a run's checkpoint named by --step, on the run's data or another dir."""

import json
import shutil

import pytest
from conftest import tiny_config

from minigpt_jax import data, eval_run, files, metrics, train
from minigpt_jax.errors import UsageError


@pytest.fixture(scope="module")
def run_dir(corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval_run")
    data.prepare(files.read_text(corpus)[:20_000], tmp / "data", block_size=8)
    c = tiny_config(max_iters=8, eval_interval=4, ckpt_interval=4, eval_iters=2)
    c.data.dir = str(tmp / "data")
    c.sample.max_new_tokens = 0
    train.train_and_evaluate(c, tmp / "run")
    return tmp / "run"


def test_eval_repeats_the_runs_own_numbers_for_each_step(run_dir):
    evals = {r["step"]: r for r in metrics.read_metrics(run_dir) if r["kind"] == "eval"}
    best = min((evals[s]["val_loss"], s) for s in (4, 8))[1]
    for spec, step in (("latest", 8), ("4", 4), ("best", best)):
        got_step, results = eval_run.evaluate_checkpoint(run_dir, spec)
        assert got_step == step
        for key in ("train_loss", "val_loss", "val_loss_full", "val_bpc"):
            assert results[key] == pytest.approx(evals[step][key], rel=1e-5), (spec, key)


def test_a_bad_step_is_refused_before_the_data_is_read(run_dir, tmp_path):
    with pytest.raises(UsageError, match="--step must be best, latest or one of the saved"):
        eval_run.evaluate_checkpoint(run_dir, "5", data_dir=str(tmp_path / "nowhere"))


def test_other_data_must_share_the_runs_vocabulary(run_dir, tmp_path):
    data.prepare("abcabcabc" * 20, tmp_path / "abc", block_size=8)
    with pytest.raises(UsageError, match="other data than the run's vocabulary"):
        eval_run.evaluate_checkpoint(run_dir, data_dir=str(tmp_path / "abc"))
    same = tmp_path / "same"
    shutil.copytree(json.loads((run_dir / "config.json").read_text())["data"]["dir"], same)
    assert eval_run.evaluate_checkpoint(run_dir, data_dir=str(same))[0] == 8
