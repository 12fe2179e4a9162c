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


CONFIG_FILE = "config.json"  # workdir.CONFIG_FILE, not imported: workdir.py starts jax
X_AXES = {  # --x_axis: its label, and the x of a record given the run's tokens per step
    "steps": ("step", lambda r, tokens: r["step"]),
    "tokens": ("tokens", lambda r, tokens: r["step"] * tokens),
    "time": ("wall time of the run's processes (s)", lambda r, tokens: r.get("elapsed_s")),
}
NOT_COMPARED = ("source",)  # config.json's command line: it differs whenever the workdirs do


def load_run(workdir: str | pathlib.Path) -> dict[str, Any]:
    """A run's name, summary (empty while it has none), config (empty for runs that predate
    config.json) and its train and eval records."""
    path = pathlib.Path(workdir)
    if not path.is_dir():
        what = "is a file, not a run folder" if path.exists() else "does not exist"
        raise UsageError(f"{workdir} {what}; pass the --workdir of `minigpt train` runs")
    records = metrics.read_metrics(path)
    if not records:
        raise UsageError(f"{workdir} has no {metrics.METRICS_FILE}: pass `minigpt train` workdirs")
    summary, config = (_json(path / name) for name in (SUMMARY_FILE, CONFIG_FILE))
    return {
        "name": str(workdir), "summary": summary, "config": config,
        "evals": [r for r in records if r["kind"] == "eval"],
        "trains": [r for r in records if r["kind"] == "train"],
    }  # fmt: skip


def _json(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        raise UsageError(f"{path} is unreadable; rerun or delete it") from None


def table(runs: list[dict[str, Any]]) -> str:
    """A markdown table, one row per run."""
    lines = [
        "| " + " | ".join(h for h, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for run in runs:
        lines.append("| " + " | ".join(str(get(run)) for _, get in COLUMNS) + " |")
    return "\n".join(lines)


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_diff(runs: list[dict[str, Any]]) -> str:
    """A markdown table of the config fields whose values are not the same in every run (a
    field a run's config lacks counts as '-'); '' when they agree or there is one run."""
    flat = [_flat({k: v for k, v in r["config"].items() if k not in NOT_COMPARED}) for r in runs]
    keys = sorted({k for f in flat for k in f})
    differ = [k for k in keys if len({json.dumps(f.get(k, "-")) for f in flat}) > 1]
    if len(runs) < 2 or not differ:
        return ""
    lines = ["| run | " + " | ".join(differ) + " |", "|" + "---|" * (len(differ) + 1)]
    for run, f in zip(runs, flat):
        lines.append(f"| {run['name']} | " + " | ".join(str(f.get(k, "-")) for k in differ) + " |")
    return "\n".join(lines)


def tokens_per_step(run: dict[str, Any]) -> int | None:
    """From summary.json, else from the config (a run still going has no summary yet)."""
    if run["summary"].get("tokens_per_step"):
        return run["summary"]["tokens_per_step"]
    c = run["config"]
    try:
        return c["train"]["batch_size"] * c["train"]["grad_accum"] * c["model"]["block_size"]
    except (KeyError, TypeError):
        return None


def _points(run: dict, records: list[dict], key: str, x_axis: str) -> list[tuple]:
    """(x, y) of the records that hold key; a UsageError when the run cannot give that x."""
    tokens = tokens_per_step(run)
    if x_axis == "tokens" and tokens is None:
        raise UsageError(f"{run['name']} has no summary.json or config.json to count tokens by")
    xs = [(X_AXES[x_axis][1](r, tokens), r[key]) for r in records if key in r]
    if any(x is None for x, _ in xs):
        raise UsageError(
            f"{run['name']}'s {metrics.METRICS_FILE} predates elapsed_s; use --x_axis steps"
        )
    return xs


def plot_val(runs: list[dict[str, Any]], out: pathlib.Path, x_axis: str = "steps") -> pathlib.Path:
    """Val loss (estimate) against x_axis for each run; train loss, dashed, for runs with no
    val."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs:
        key = "val_loss" if any("val_loss" in r for r in run["evals"]) else "train_loss"
        points = _points(run, run["evals"], key, x_axis)
        style = "-" if key == "val_loss" else "--"
        label = run["name"] if key == "val_loss" else f"{run['name']} (train: no val split)"
        ax.plot(*zip(*points), style, marker="o", ms=3, label=label)
    ax.set_xlabel(X_AXES[x_axis][0])
    ax.set_ylabel("val loss (nats)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return metrics.save_figure(fig, out)


def plot_train(runs: list[dict], out: pathlib.Path, x_axis: str = "steps") -> pathlib.Path:
    """Each run's logged train loss (the mean over its log interval) against x_axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs:
        points = _points(run, run["trains"], "loss", x_axis)
        if points:
            ax.plot(*zip(*points), lw=1, label=run["name"])
    ax.set_xlabel(X_AXES[x_axis][0])
    ax.set_ylabel("train loss (nats)")
    ax.grid(alpha=0.3)
    if ax.get_lines():  # runs with evals only (hand-made, or imported) draw nothing here
        ax.legend(fontsize=8)
    return metrics.save_figure(fig, out)


def report(workdirs: list[str], out_dir: str | pathlib.Path | None, x_axis: str = "steps") -> str:
    """Writes out_dir/report.md, val_curves.png and train_curves.png; returns the markdown."""
    if not workdirs:
        raise UsageError("name the runs to compare: minigpt report runs/a runs/b --out DIR")
    if x_axis not in X_AXES:
        raise UsageError(f"--x_axis {x_axis}: pass one of {', '.join(X_AXES)}")
    runs = [load_run(w) for w in workdirs]  # every run is checked before anything is written
    if out_dir is None:
        raise UsageError("--out is required: the folder for report.md and the curves")
    out = pathlib.Path(out_dir)
    make_dir(out, "--out")
    plot_val(runs, out / "val_curves.png", x_axis)
    plot_train(runs, out / "train_curves.png", x_axis)
    diff = config_diff(runs)
    text = table(runs) + "\n\n"
    if diff:
        text += f"Config fields that differ:\n\n{diff}\n\n"
    text += "![val curves](val_curves.png)\n![train curves](train_curves.png)\n"
    atomic_write_bytes(out / "report.md", text.encode())
    return text
