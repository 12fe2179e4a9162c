"""The training loop over a Run: evals, checkpoints, records, and a stop that saves."""

import json
import signal

import pytest
from conftest import tiny_config

from minigpt_jax import checkpoint, data, files, metrics, train
from minigpt_jax.errors import UsageError


@pytest.fixture(scope="module")
def data_dir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("train_data")
    data.prepare(files.read_text(corpus)[:20_000], out, block_size=8)
    return out


def _config(data_dir, **fields):
    fields = dict(max_iters=20, eval_interval=10, ckpt_interval=10, eval_iters=2) | fields
    c = tiny_config(**fields)
    c.data.dir = str(data_dir)
    c.sample.max_new_tokens = 0
    return c


def test_trains_evaluates_and_checkpoints_on_schedule(data_dir, tmp_path):
    results = train.train_and_evaluate(_config(data_dir), tmp_path / "run")
    assert results["step"] == 20 and results["stopped_by"] is None
    assert results["val_loss"] < results["val_loss_full"] + 1.0  # both evaluated
    records = metrics.read_metrics(tmp_path / "run")
    assert [r["step"] for r in records if r["kind"] == "eval"] == [0, 10, 20]
    assert results["val_loss_full"] == records[-1]["val_loss_full"]
    assert checkpoint.Checkpointer(tmp_path / "run").steps() == [10, 20]
    saved = json.loads((tmp_path / "run/config.json").read_text())
    assert saved["model"]["vocab_size"] == 65 and saved["train"]["max_iters"] == 20
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["step"] == 20 and summary["tokens_seen"] == 20 * 4 * 8


def test_a_stop_request_saves_a_checkpoint_and_says_by_what(data_dir, tmp_path, monkeypatch):
    def stop_at_7(self, step):
        if step == 7:
            self.signum = signal.SIGTERM
        return self.signum is not None

    monkeypatch.setattr(train.StopRequest, "should_stop", stop_at_7)
    results = train.train_and_evaluate(_config(data_dir), tmp_path / "run")
    assert results["step"] == 7 and results["stopped_by"] == "SIGTERM"
    assert checkpoint.Checkpointer(tmp_path / "run").steps() == [7]


def test_refuses_a_bad_config_before_touching_the_workdir(data_dir, tmp_path):
    with pytest.raises(UsageError, match="train.eval_iters"):
        train.train_and_evaluate(_config(data_dir, eval_iters=0), tmp_path / "run")
    assert not (tmp_path / "run").exists()
