"""minigpt_jax.report: runs' summaries side by side and their val curves, from hand-made runs.

tests/cli_test.py runs `minigpt report` on a trained run (twice) and on a run with no val split;
here the runs are written by hand so that every column's number and format is known.
"""

import json
import pathlib

import pytest

from minigpt_jax import metrics, report
from minigpt_jax.errors import UsageError
from minigpt_jax.summary import SUMMARY_FILE


def _run(root: pathlib.Path, name: str, evals: list[dict], summary: dict | None) -> pathlib.Path:
    """A workdir with metrics.jsonl (a train record, then `evals`) and maybe summary.json."""
    path = root / name
    path.mkdir()
    records = [{"kind": "train", "step": 1, "loss": 4.0, "lr": 1e-3}]
    records += [{"kind": "eval", **r} for r in evals]
    (path / metrics.METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    if summary is not None:
        (path / SUMMARY_FILE).write_text(json.dumps(summary))
    return path


SMALL = {
    "params": {"total": 27_840},
    "step": 150,
    "tokens_seen": 76_800,
    "best_val_loss": 2.51234,
    "final_val_loss_full": 2.6,
    "final_val_bpc": 3.75,
    "final_train_loss": 2.4,
    "median_ms_per_iter": 12.34,
    "wall_s": 90.0,
    "device_kind": "cpu",
}
BIG = {
    "params": {"total": 10_745_088},
    "step": 5000,
    "tokens_seen": 81_920_000,
    "best_val_loss": 1.4699,
    "final_val_loss_full": 1.4812,
    "final_val_bpc": 2.1369,
    "final_train_loss": 1.0987,
    "median_ms_per_iter": 101.06,
    "wall_s": 600.0,
    "device_kind": "NVIDIA H100 80GB HBM3",
}


@pytest.fixture
def two_runs(tmp_path):
    small = _run(
        tmp_path, "small", [{"step": 0, "train_loss": 4.2, "val_loss": 4.3}], summary=SMALL
    )
    evals = [{"step": s, "train_loss": 3 - s / 5000, "val_loss": 3.1 - s / 5000} for s in (0, 5000)]
    big = _run(tmp_path, "big", evals, summary=BIG)
    return small, big


def _rows(markdown: str) -> list[list[str]]:
    """The table's cells, header and separator lines left out."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ")][1:]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def test_report_has_one_row_per_run_with_its_summary_numbers(two_runs, tmp_path):
    small, big = two_runs
    text = report.report([str(small), str(big)], tmp_path / "out")
    header = text.splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")] == [h for h, _ in report.COLUMNS]
    assert _rows(text) == [
        [str(small), "27,840", "150", "76,800", "2.5123", "2.6000", "3.7500", "2.4000", "12.3",
         "1.5 min", "cpu"],
        [str(big), "10.75M", "5000", "81.92M", "1.4699", "1.4812", "2.1369", "1.0987", "101.1",
         "10.0 min", "NVIDIA H100 80GB HBM3"],
    ]  # fmt: skip


def test_report_writes_report_md_and_val_curves_png(two_runs, tmp_path):
    out = tmp_path / "a" / "b"  # missing folders are made
    text = report.report([str(p) for p in two_runs], out)
    assert (out / "report.md").read_text() == text
    assert text.endswith("\n\n![val curves](val_curves.png)\n![train curves](train_curves.png)\n")
    for name in ("val_curves.png", "train_curves.png"):
        png = (out / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 1000
    assert sorted(p.name for p in out.iterdir()) == [
        "report.md", "train_curves.png", "val_curves.png"
    ]  # fmt: skip


def test_report_keeps_the_order_and_repeats_of_the_runs_given(two_runs, tmp_path):
    small, big = two_runs
    text = report.report([str(big), str(small), str(big)], tmp_path / "out")
    assert [row[0] for row in _rows(text)] == [str(big), str(small), str(big)]


def test_val_curves_draw_each_runs_val_loss_and_a_no_val_run_dashed(
    two_runs, tmp_path, monkeypatch
):
    small, big = two_runs
    noval = _run(tmp_path, "noval", [{"step": s, "train_loss": 3.0 - s} for s in (0, 1)], None)
    figures = []
    save = metrics.save_figure
    monkeypatch.setattr(
        metrics, "save_figure", lambda fig, out: figures.append(fig) or save(fig, out)
    )
    report.report([str(small), str(big), str(noval)], tmp_path / "out")
    fig = figures[0]  # then the train curves
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert list(lines) == [str(small), str(big), f"{noval} (train: no val split)"]
    assert list(lines[str(big)].get_ydata()) == [3.1, 2.1]  # val_loss, not train_loss
    assert list(lines[str(big)].get_xdata()) == [0, 5000]
    assert list(lines[f"{noval} (train: no val split)"].get_ydata()) == [3.0, 2.0]
    assert lines[str(big)].get_linestyle() == "-"
    assert lines[f"{noval} (train: no val split)"].get_linestyle() == "--"


def test_a_run_still_going_without_a_summary_gets_a_row_of_dashes(tmp_path):
    running = _run(tmp_path, "running", [{"step": 0, "train_loss": 4.2, "val_loss": 4.3}], None)
    (row,) = _rows(report.report([str(running)], tmp_path / "out"))
    assert row[0] == str(running)
    assert row[1] == row[3] == "-"  # params, tokens
    assert row[4:10] == ["-"] * 6  # best val ... wall


def test_a_dir_without_metrics_is_a_usage_error_and_nothing_is_written(two_runs, tmp_path):
    small, _ = two_runs
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match=f"{empty} has no metrics.jsonl"):
        report.report([str(small), str(empty)], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # every run is checked before any output


def test_an_unreadable_summary_is_a_usage_error_naming_it(two_runs, tmp_path):
    small, big = two_runs
    (big / SUMMARY_FILE).write_text('{"step": 50')  # cut short
    with pytest.raises(UsageError, match=r"summary\.json is unreadable; rerun or delete it") as e:
        report.report([str(small), str(big)], tmp_path / "out")
    assert str(big / SUMMARY_FILE) in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_a_missing_run_is_named_and_out_is_required_before_anything_is_written(two_runs, tmp_path):
    small, big = two_runs
    with pytest.raises(UsageError, match=f"^{tmp_path}/gone does not exist; pass the --workdir"):
        report.report([str(small), str(tmp_path / "gone")], tmp_path / "out")
    with pytest.raises(UsageError, match="is a file, not a run folder"):
        report.report([str(small), str(small / metrics.METRICS_FILE)], tmp_path / "out")
    with pytest.raises(UsageError, match="--out is required"):  # not a report/ in the cwd
        report.report([str(small), str(big)], None)
    assert not (tmp_path / "out").exists()


def _config(**sections):
    """A config.json's dict: a few fields of the schema, each section updated by sections."""
    c = {"model": {"n_layer": 2, "block_size": 32}, "opt": {"lr": 1e-3},
         "train": {"batch_size": 16, "grad_accum": 1, "seed": 0}}  # fmt: skip
    for name, fields in sections.items():
        c[name] = {**c.get(name, {}), **fields}
    return c


def test_report_lists_the_config_fields_in_which_the_runs_differ(two_runs, tmp_path):
    small, big = two_runs
    big_config = _config(model={"n_layer": 6}, opt={"lr": 6e-4, "muon": True})
    for run, config in ((small, _config()), (big, big_config)):
        config["source"] = {"command": f"minigpt train --workdir {run.name}"}
        (run / "config.json").write_text(json.dumps(config))
    text = report.report([str(small), str(big)], tmp_path / "out")
    assert "Config fields that differ:\n\n| run | model.n_layer | opt.lr | opt.muon |\n" in text
    diff = text.split("Config fields that differ:")[1]
    assert _rows(diff) == [[str(small), "2", "0.001", "-"], [str(big), "6", "0.0006", "True"]]
    assert "source" not in text and "seed" not in text  # the command line; the same seed
    (big / "config.json").write_text(json.dumps(_config()))
    assert "differ" not in report.report([str(small), str(big)], tmp_path / "out")


def test_curves_take_steps_tokens_or_wall_time_on_the_x_axis(tmp_path, monkeypatch):
    evals = [{"step": s, "val_loss": 3.0 - s / 100, "elapsed_s": 1.5 * s} for s in (0, 10)]
    done = _run(tmp_path, "done", evals, summary={"tokens_per_step": 100})
    going = _run(tmp_path, "going", evals, summary=None)  # no summary yet: its config counts
    (going / "config.json").write_text(json.dumps(_config()))  # 16 x 32 x 1 tokens a step
    trains = [{"kind": "train", "step": s, "loss": 4.0 - s / 10, "elapsed_s": 2.0 * s}
              for s in (5, 10)]  # fmt: skip
    for run in (done, going):
        with open(run / metrics.METRICS_FILE, "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in trains))
    figures = []
    save = metrics.save_figure
    monkeypatch.setattr(
        metrics, "save_figure", lambda fig, out: figures.append(fig) or save(fig, out)
    )

    def curves(x_axis):
        figures.clear()
        report.report([str(done), str(going)], tmp_path / "out", x_axis)
        val, train = ([list(line.get_xdata()) for line in fig.axes[0].get_lines()]
                      for fig in figures)  # fmt: skip
        assert [fig.axes[0].get_ylabel() for fig in figures] == [
            "val loss (nats)", "train loss (nats)"
        ]  # fmt: skip
        return val, train, figures[0].axes[0].get_xlabel()

    assert curves("steps") == ([[0, 10]] * 2, [[1, 5, 10]] * 2, "step")
    assert curves("tokens") == (
        [[0, 1000], [0, 5120]], [[100, 500, 1000], [512, 2560, 5120]], "tokens"
    )  # fmt: skip
    with pytest.raises(UsageError, match="done's metrics.jsonl predates elapsed_s"):
        curves("time")  # the first train record, written by hand above, has no elapsed_s
    lines = (done / metrics.METRICS_FILE).read_text().splitlines()
    (done / metrics.METRICS_FILE).write_text("\n".join(lines[1:]) + "\n")
    (going / metrics.METRICS_FILE).write_text("\n".join(lines[1:]) + "\n")
    val, train, label = curves("time")
    assert val == [[0, 15.0]] * 2 and train == [[10.0, 20.0]] * 2 and label.startswith("wall")
