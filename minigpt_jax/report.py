"""`minigpt report runs/a runs/b ...`: the runs' summaries side by side, and their val curves."""

from __future__ import annotations

import json
import pathlib
from typing import Any

from minigpt_jax import metrics
from minigpt_jax.errors import UsageError
from minigpt_jax.files import atomic_write_bytes, make_dir
from minigpt_jax.summary import SUMMARY_FILE

COLUMNS = (  # (header, summary key or a function of the run)
    ("run", lambda r: r["name"]),
    ("params", lambda r: _millions(r["summary"].get("params", {}).get("total"))),
    ("steps", lambda r: r["summary"].get("step")),
    ("tokens", lambda r: _millions(r["summary"].get("tokens_seen"))),
    ("best val", lambda r: _num(r["summary"].get("best_val_loss"))),
    ("final full val", lambda r: _num(r["summary"].get("final_val_loss_full"))),
    ("bits/char", lambda r: _num(r["summary"].get("final_val_bpc"))),
    ("final train", lambda r: _num(r["summary"].get("final_train_loss"))),
    ("ms/iter", lambda r: _num(r["summary"].get("median_ms_per_iter"), 1)),
    ("wall", lambda r: _minutes(r["summary"].get("wall_s"))),
    ("device", lambda r: r["summary"].get("device_kind")),
)


def _num(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _millions(x: int | None) -> str:
    if x is None:
        return "-"
    return f"{x:,}" if x < 100_000 else f"{x / 1e6:.2f}M"


def _minutes(s: float | None) -> str:
    return "-" if s is None else f"{s / 60:.1f} min"


def load_run(workdir: str | pathlib.Path) -> dict[str, Any]:
    """A run's name, summary (empty while it has none) and eval records."""
    path = pathlib.Path(workdir)
    records = metrics.read_metrics(path)
    if not records:
        raise UsageError(f"{workdir} has no {metrics.METRICS_FILE}: pass `minigpt train` workdirs")
    summary_path = path / SUMMARY_FILE
    try:
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    except (OSError, ValueError):
        raise UsageError(f"{summary_path} is unreadable; rerun or delete it") from None
    evals = [r for r in records if r["kind"] == "eval"]
    return {"name": str(workdir), "summary": summary, "evals": evals}


def table(runs: list[dict[str, Any]]) -> str:
    """A markdown table, one row per run."""
    lines = [
        "| " + " | ".join(h for h, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for run in runs:
        lines.append("| " + " | ".join(str(get(run)) for _, get in COLUMNS) + " |")
    return "\n".join(lines)


def plot_val(runs: list[dict[str, Any]], out: pathlib.Path) -> pathlib.Path:
    """Val loss (estimate) against step for each run; train loss, dashed, for runs with no val."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs:
        key = "val_loss" if any("val_loss" in r for r in run["evals"]) else "train_loss"
        points = [(r["step"], r[key]) for r in run["evals"] if key in r]
        style = "-" if key == "val_loss" else "--"
        label = run["name"] if key == "val_loss" else f"{run['name']} (train: no val split)"
        ax.plot(*zip(*points), style, marker="o", ms=3, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("val loss (nats)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return metrics.save_figure(fig, out)


def report(workdirs: list[str], out_dir: str | pathlib.Path) -> str:
    """Writes out_dir/report.md and out_dir/val_curves.png; returns the markdown."""
    if not workdirs:
        raise UsageError("name the runs to compare: minigpt report runs/a runs/b [--out DIR]")
    runs = [load_run(w) for w in workdirs]  # every run is checked before anything is written
    out = pathlib.Path(out_dir)
    make_dir(out, "--out")
    plot_val(runs, out / "val_curves.png")
    text = table(runs) + "\n\n![val curves](val_curves.png)\n"
    atomic_write_bytes(out / "report.md", text.encode())
    return text
