"""minigpt_jax.summary: summary.json from metrics.jsonl, how the run ended, the target race."""

import json
import pathlib

import pytest

from minigpt_jax import metrics, summary


def _train(ms=10.0):
    return {"loss": 2.5, "ms_per_iter": ms, "tokens_per_s": 1000.0, "lr": 1e-3, "grad_norm": 0.5}


def _eval(train_loss=2.4, val_loss=None, elapsed_s=None):
    r = {"train_loss": train_loss}
    if val_loss is not None:
        r |= {"val_loss": val_loss, "val_loss_full": val_loss + 0.01, "val_bpc": val_loss / 0.69}
    if elapsed_s is not None:
        r["elapsed_s"] = elapsed_s
    return r


def _records_by_hand(workdir, records):
    text = "".join(json.dumps(r) + "\n" for r in records)
    (pathlib.Path(workdir) / metrics.METRICS_FILE).write_text(text)


RUN = [
    {"kind": "eval", "step": 0, **_eval(4.0, 4.1, elapsed_s=2.0)},
    {"kind": "train", "step": 10, **_train(ms=1000.0)},  # includes compilation
    {"kind": "train", "step": 20, **_train(ms=10.0)},
    {"kind": "eval", "step": 20, **_eval(3.0, 2.9, elapsed_s=14.0)},
    {"kind": "train", "step": 30, **_train(ms=14.0)},
    {"kind": "train", "step": 40, **_train(ms=12.0)},
    {"kind": "eval", "step": 40, **_eval(2.8, 3.2, elapsed_s=20.5)},  # overfit: worse than 20
]


def test_write_summary_finds_the_best_and_final_values(tmp_path):
    _records_by_hand(tmp_path, RUN)
    params = {"total": 1234}
    s = summary.write_summary(tmp_path, params=params, tokens_per_step=64, wall_s=5.5)
    assert s["step"] == 40 and s["tokens_seen"] == 40 * 64 and s["tokens_per_step"] == 64
    assert (s["best_val_loss"], s["best_step"]) == (2.9, 20)
    assert s["final_train_loss"] == 2.8 and s["final_val_loss"] == 3.2
    assert s["final_val_loss_full"] == pytest.approx(3.21)
    assert s["final_val_bpc"] == pytest.approx(3.2 / 0.69)
    assert s["median_ms_per_iter"] == 12.0  # of 10, 14, 12: the first record left out
    assert s["tokens_per_s"] == pytest.approx(64 / 0.012)
    assert s["wall_s"] == 5.5 and s["params"] == params and s["device_count"] >= 1
    assert s["elapsed_s"] == 20.5  # the last record's, summed over resumes by the writer
    assert s["finished"] is True and s["stopped_by"] is None
    assert s["target_val_loss"] is None and s["target_reached"] is None
    assert json.loads((tmp_path / summary.SUMMARY_FILE).read_text()) == s


def test_write_summary_without_a_val_split_or_a_second_train_record(tmp_path):
    _records_by_hand(
        tmp_path,
        [
            {"kind": "train", "step": 5, **_train(ms=1000.0)},
            {"kind": "eval", "step": 5, **_eval(3.5)},
        ],
    )
    s = summary.write_summary(tmp_path, params={}, tokens_per_step=8, wall_s=1.0)
    assert s["best_val_loss"] is None and s["best_step"] is None
    assert s["final_train_loss"] == 3.5 and s["final_val_loss"] is None
    assert s["median_ms_per_iter"] is None and s["tokens_per_s"] is None
    assert s["step"] == 5 and s["tokens_seen"] == 40


@pytest.mark.parametrize(
    "stopped_by, finished", [(None, True), ("target", True), ("SIGTERM", False)]
)
def test_a_run_is_finished_at_max_iters_or_its_target_not_when_stopped(
    tmp_path, stopped_by, finished
):
    _records_by_hand(tmp_path, RUN)
    s = summary.write_summary(
        tmp_path, params={}, tokens_per_step=8, wall_s=1.0, stopped_by=stopped_by
    )
    assert (s["finished"], s["stopped_by"]) == (finished, stopped_by)


def test_a_stop_between_log_lines_is_the_step_and_checkpoint_the_caller_names(tmp_path):
    """The records end at step 40; a Ctrl-C at 43 saved step 43, and a resume starts there."""
    _records_by_hand(tmp_path, RUN)
    s = summary.write_summary(
        tmp_path, params={}, tokens_per_step=8, wall_s=1.0, stopped_by="SIGINT", step=43,
        checkpoint_step=43,
    )  # fmt: skip
    assert (s["step"], s["tokens_seen"], s["checkpoint_step"]) == (43, 43 * 8, 43)
    assert (s["finished"], s["stopped_by"]) == (False, "SIGINT")


def test_race_records_the_first_eval_at_or_below_the_target():
    # Full val losses: 4.11 at step 0, 2.91 at 20, 3.21 at 40.
    hit = summary.race(RUN, target=3.21, tokens_per_step=64)
    assert hit == {
        "target_val_loss": 3.21, "target_reached": True, "target_step": 20,
        "target_tokens": 20 * 64, "target_s": 14.0,
    }  # fmt: skip
    assert summary.race(RUN, target=2.91, tokens_per_step=64)["target_step"] == 20  # at, too
    missed = summary.race(RUN, target=2.0, tokens_per_step=64)
    assert missed["target_reached"] is False and missed["target_step"] is None
    assert summary.race(RUN, target=0.0, tokens_per_step=64)["target_reached"] is None
