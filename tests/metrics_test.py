"""minigpt_jax.metrics: metrics.jsonl, TensorBoard events, the summary and the loss plot."""

import json
import math
import pathlib
import struct
import time

import pytest
from tensorboardX.proto import event_pb2
from tensorboardX.proto.event_pb2 import SessionLog

from minigpt_jax import metrics
from minigpt_jax.errors import UsageError


def _train(loss=2.5, ms=10.0, lr=1e-3):
    return {"loss": loss, "ms_per_iter": ms, "tokens_per_s": 1000.0, "lr": lr, "grad_norm": 0.5}


def _eval(train_loss=2.4, val_loss=None):
    r = {"train_loss": train_loss}
    if val_loss is not None:
        r |= {"val_loss": val_loss, "val_loss_full": val_loss + 0.01, "val_bpc": val_loss / 0.69}
    return r


def _lines(workdir, clock: bool = False) -> list[dict]:
    """The records; without their clock fields (time, elapsed_s) unless clock, checked there."""
    text = (pathlib.Path(workdir) / metrics.METRICS_FILE).read_text()
    assert text.endswith("\n")
    records = [json.loads(line) for line in text.splitlines()]
    for r in records if not clock else ():
        assert r.pop("time") > 1.7e9 and r.pop("elapsed_s") >= 0
    return records


def _events(workdir) -> list:
    """Every Event in the TFRecord files under workdir/tb."""
    events = []
    for path in sorted((pathlib.Path(workdir) / "tb").glob("events.out.tfevents*")):
        data, i = path.read_bytes(), 0
        while i < len(data):  # record: u64 length, u32 crc, payload, u32 crc
            (n,) = struct.unpack("<Q", data[i : i + 8])
            events.append(event_pb2.Event.FromString(data[i + 12 : i + 12 + n]))
            i += 12 + n + 4
    return events


def _scalars(workdir) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of the scalars under workdir/tb."""
    out: dict[str, list[tuple[int, float]]] = {}
    for event in _events(workdir):
        for v in event.summary.value:
            if v.HasField("simple_value"):
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def _write_run(workdir, steps, *, resume_step=None):
    w = metrics.MetricsWriter(workdir, total=10, resume_step=resume_step)
    for s in steps:
        w.write("train", s, _train(loss=3.0 - s / 10))
    w.close()


def test_writer_appends_one_json_line_per_record(tmp_path, capsys):
    w = metrics.MetricsWriter(tmp_path, total=10)
    w.write("train", 1, _train(loss=2.5))
    w.write("eval", 2, _eval(2.4, 2.6))
    w.close()
    assert _lines(tmp_path) == [
        {"kind": "train", "step": 1, **_train(loss=2.5)},
        {"kind": "eval", "step": 2, **_eval(2.4, 2.6)},
    ]


def test_elapsed_seconds_run_on_across_a_resume(tmp_path):
    """elapsed_s counts from the writer's `started` and goes on from the last kept record."""
    w = metrics.MetricsWriter(tmp_path, total=10, started=time.perf_counter() - 100)
    for s in range(4):
        w.write("train", s, _train())
    w.close()
    first = [r["elapsed_s"] for r in _lines(tmp_path, clock=True)]
    assert 100 <= first[0] <= first[-1] < 160
    w = metrics.MetricsWriter(tmp_path, total=10, resume_step=1, started=time.perf_counter() - 5)
    w.write("train", 2, _train())
    w.close()
    again = [r["elapsed_s"] for r in _lines(tmp_path, clock=True)]
    assert again[:2] == first[:2] and first[1] + 5 <= again[2] < first[1] + 60


def test_writer_mirrors_finite_scalars_to_tensorboard(tmp_path):
    w = metrics.MetricsWriter(tmp_path, total=10)
    w.write("train", 1, _train(loss=2.5))
    w.write("train", 2, _train(loss=2.25))
    w.write("eval", 2, {**_eval(2.4, 2.6), "val_loss_full": math.nan})
    w.close()
    tb = _scalars(tmp_path)
    assert tb["train/loss"] == [(1, 2.5), (2, 2.25)]
    assert tb["eval/val_loss"] == [(2, pytest.approx(2.6))]
    assert "eval/val_loss_full" not in tb  # NaN goes to the JSON line only
    assert math.isnan(_lines(tmp_path)[-1]["val_loss_full"])


def test_writer_off_a_terminal_prints_a_plain_line_per_record(tmp_path, capsys):
    """Where the run is (step/max, elapsed, ETA at the interval's pace) and lr in full."""
    w = metrics.MetricsWriter(tmp_path, total=1000, started=time.perf_counter() - 75)
    w.write("train", 3, _train(loss=2.5, ms=125.0, lr=6.12344e-4))
    w.write("eval", 4, _eval(2.4, 2.6))
    w.close()
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "step 3/1000: loss 2.5000, lr 6.1234e-04, 125.0 ms/step, 1000 tok/s, grad norm 0.500, "
        "elapsed 1:15, ETA 2:05",  # 997 steps at 125 ms
        "step 4: " + metrics.describe_eval(_eval(2.4, 2.6)),
    ]


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (59.6, "1:00"), (3723, "1:02:03")])
def test_durations_read_as_clock_time(seconds, text):
    assert metrics.duration(seconds) == text


def test_resumed_writer_keeps_records_up_to_the_resume_step_and_drops_later(tmp_path):
    """The interrupted run logged steps 0-4; resuming from 2 redoes 3 and 4."""
    _write_run(tmp_path, range(5))
    w = metrics.MetricsWriter(tmp_path, total=10, resume_step=2)
    assert [r["step"] for r in _lines(tmp_path)] == [0, 1, 2]  # dropped at once, not at close
    w.write("train", 3, _train(loss=9.0))
    w.close()
    records = _lines(tmp_path)
    assert [r["step"] for r in records] == [0, 1, 2, 3] and records[-1]["loss"] == 9.0
    assert records[:3] == [{"kind": "train", "step": s, **_train(3.0 - s / 10)} for s in range(3)]


def test_resumed_writer_hides_tensorboard_events_past_the_resume_step(tmp_path):
    """purge_step: TensorBoard shows the redone step 3, not the interrupted run's."""
    _write_run(tmp_path, range(5))
    w = metrics.MetricsWriter(tmp_path, total=10, resume_step=2)
    w.write("train", 3, _train(loss=9.0))
    w.close()
    starts = [e.step for e in _events(tmp_path) if e.session_log.status == SessionLog.START]
    assert 3 in starts  # SessionLog.START at resume_step + 1: TensorBoard drops steps >= 3
    assert (3, 9.0) in _scalars(tmp_path)["train/loss"]


def test_fresh_writer_starts_empty_even_over_an_old_run(tmp_path):
    _write_run(tmp_path, range(3))
    w = metrics.MetricsWriter(tmp_path, total=10)
    w.close()
    assert (tmp_path / metrics.METRICS_FILE).read_text() == ""


def test_disabled_writer_writes_nothing(tmp_path, capsys):
    w = metrics.MetricsWriter(tmp_path, total=10, enabled=False)
    w.write("train", 1, _train())
    w.write("eval", 1, _eval(2.4, 2.6))
    w.write_samples(1, "text")
    w.log("hello")
    w.advance()
    w.close()
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr().out == ""


def test_disabled_writer_leaves_an_existing_run_alone(tmp_path):
    """Processes other than 0 of a resumed run must not truncate process 0's file."""
    _write_run(tmp_path, range(5))
    before = (tmp_path / metrics.METRICS_FILE).read_bytes()
    metrics.MetricsWriter(tmp_path, total=10, resume_step=2, enabled=False).close()
    assert (tmp_path / metrics.METRICS_FILE).read_bytes() == before


def test_write_samples_saves_the_text_per_step(tmp_path):
    w = metrics.MetricsWriter(tmp_path, total=10)
    w.write_samples(7, "ROMEO:\nhello")
    w.close()
    assert (tmp_path / "samples" / "step_000007.txt").read_text() == "ROMEO:\nhello"


def test_read_metrics_of_a_dir_without_metrics_is_empty(tmp_path):
    assert metrics.read_metrics(tmp_path) == []


def test_read_metrics_skips_a_line_cut_short(tmp_path):
    _write_run(tmp_path, range(3))
    with open(tmp_path / metrics.METRICS_FILE, "a") as f:
        f.write('{"kind": "train", "step": 3, "lo')  # the process died mid-line
    assert [r["step"] for r in metrics.read_metrics(tmp_path)] == [0, 1, 2]


@pytest.mark.parametrize(
    "line, message",
    [
        (b'{"kind": "eval", "caf\xe9": 1}', r"metrics.jsonl line 3 is not UTF-8 \(byte 21\)"),
        (b"[1, 2]", "metrics.jsonl line 3 is not a record"),
        (b'{"kind": "eval"}', "metrics.jsonl line 3 is not a record"),
    ],
)
def test_a_damaged_line_is_one_line_for_report_and_resume(tmp_path, line, message):
    """Not a cut line a kill leaves (those are skipped): report and a resume say which line."""
    _write_run(tmp_path, range(2))
    with open(tmp_path / metrics.METRICS_FILE, "ab") as f:
        f.write(line + b"\n" + b'{"kind": "train", "step": 5}\n')
    before = (tmp_path / metrics.METRICS_FILE).read_bytes()
    with pytest.raises(UsageError, match=message):
        metrics.read_metrics(tmp_path)
    with pytest.raises(UsageError, match=message):
        metrics.MetricsWriter(tmp_path, total=9, resume_step=1)
    assert (tmp_path / metrics.METRICS_FILE).read_bytes() == before  # nothing dropped


def test_a_last_line_cut_inside_a_character_is_skipped(tmp_path):
    _write_run(tmp_path, range(2))
    with open(tmp_path / metrics.METRICS_FILE, "ab") as f:
        f.write('{"kind": "eval", "step": 2, "note": "é'.encode()[:-1])
    assert [r["step"] for r in metrics.read_metrics(tmp_path)] == [0, 1]


def test_resuming_after_a_line_cut_short_drops_it(tmp_path):
    """Else the next record would be appended to the broken line and lost too."""
    _write_run(tmp_path, range(3))
    with open(tmp_path / metrics.METRICS_FILE, "a") as f:
        f.write('{"kind": "train", "step": 3, "lo')
    _write_run(tmp_path, [3], resume_step=2)
    assert [r["step"] for r in _lines(tmp_path)] == [0, 1, 2, 3]


def _records_by_hand(workdir, records):
    text = "".join(json.dumps(r) + "\n" for r in records)
    (pathlib.Path(workdir) / metrics.METRICS_FILE).write_text(text)


def test_describe_eval_with_a_val_split():
    line = metrics.describe_eval(
        {"train_loss": 1.23456, "val_loss": 1.5, "val_loss_full": 1.49, "val_bpc": 2.15}
    )
    assert line == "train loss 1.2346, val loss 1.5000, full val 1.4900 (2.1500 bits/char)"


def test_describe_eval_without_a_val_split_has_the_train_estimate_only():
    assert metrics.describe_eval({"train_loss": 2.0}) == "train loss 2.0000"


def test_plot_losses_writes_loss_png(tmp_path):
    _records_by_hand(
        tmp_path,
        [{"kind": "train", "step": s, **_train(loss=3 - s / 100)} for s in range(0, 50, 10)]
        + [{"kind": "eval", "step": 40, **_eval(2.7, 2.8)}],
    )
    out = metrics.plot_losses(tmp_path, tokens_per_step=256)
    assert out == tmp_path / "loss.png"
    assert out.read_bytes().startswith(b"\x89PNG") and out.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.png", "metrics.jsonl"]


def test_plot_losses_without_records_writes_nothing(tmp_path):
    assert metrics.plot_losses(tmp_path) is None
    assert list(tmp_path.iterdir()) == []
