"""`minigpt sweep report ROOT`: per arm, statistics over seeds of each run's summary.json, each
arm against the baseline (Welch's t-test and a verdict), val curves with min-max bands over seeds,
and the finals per seed. Writes report.md, report.json, val_curves.png and finals.png."""

from __future__ import annotations

import json
import pathlib
from typing import Any

from minigpt_jax import metrics, stats, sweep
from minigpt_jax.errors import UsageError
from minigpt_jax.files import atomic_write_bytes, make_dir
from minigpt_jax.summary import SUMMARY_FILE

# summary.json key -> (column title, digits, lower is better)
METRICS = {
    "final_val_loss_full": ("final full val", 4, True),
    "best_val_loss": ("best val (estimate)", 4, True),
    "target_step": ("steps to target", 0, True),
    "target_tokens": ("tokens to target", 0, True),
    "target_s": ("seconds to target", 1, True),
    "tokens_per_s": ("tokens/s", 0, False),
}


def _summary(workdir: pathlib.Path) -> dict[str, Any]:
    try:
        return json.loads((workdir / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return {}


def collect(root: pathlib.Path) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """The manifest and, per arm, its runs: seed, state, message, summary, eval records."""
    manifest = sweep.read_manifest(root)
    if manifest is None:
        raise UsageError(f"{root} holds no {sweep.MANIFEST}: pass the --root of a `minigpt sweep`")
    arms: dict[str, list[dict[str, Any]]] = {a["name"]: [] for a in manifest["arms"]}
    for rid, record in manifest["runs"].items():
        workdir = root / rid
        done = sweep.finished(workdir) is not None
        evals = [r for r in metrics.read_metrics(workdir) if r["kind"] == "eval"]
        state = "done" if done else record["state"]
        arms[record["arm"]].append({
            "seed": record["seed"], "state": state, "message": record.get("message"),
            "summary": _summary(workdir) if done else {}, "evals": evals,
        })  # fmt: skip
    return manifest, arms


def _values(runs: list[dict[str, Any]], key: str) -> list[float]:
    return [r["summary"][key] for r in runs if r["summary"].get(key) is not None]


def analyse(manifest: dict, arms: dict, baseline: str, sort_by: str) -> list[dict[str, Any]]:
    """One row per arm: run states, stats.describe of each metric, and each metric's Welch
    test against the baseline arm; sorted by sort_by's mean (better first, unmeasured last)."""
    base_runs = arms[baseline]
    rows = []
    for name, runs in arms.items():
        states: dict[str, int] = {}
        for r in runs:
            states[r["state"]] = states.get(r["state"], 0) + 1
        row: dict[str, Any] = {"arm": name, "states": states, "metrics": {}, "vs_baseline": {}}
        row["overrides"] = next(a["overrides"] for a in manifest["arms"] if a["name"] == name)
        row["seeds"] = {r["seed"]: r["summary"].get(sort_by) for r in runs}
        for key, (_, _, lower) in METRICS.items():
            values = _values(runs, key)
            row["metrics"][key] = {**stats.describe(values), "values": values}
            if name != baseline:
                test = stats.welch(values, _values(base_runs, key))
                n = min(len(values), len(_values(base_runs, key)))
                row["vs_baseline"][key] = {**test, "verdict": stats.verdict(test, n, lower)}
        row["reached"] = sum(bool(r["summary"].get("target_reached")) for r in runs)
        rows.append(row)
    lower = METRICS[sort_by][2]

    def order(row: dict) -> tuple:
        mean = row["metrics"][sort_by]["mean"]
        return (mean is None, 0 if mean is None else (mean if lower else -mean))

    return sorted(rows, key=order)


def _num(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _p(p: float | None) -> str:
    return "-" if p is None else f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _cell(m: dict[str, Any], digits: int) -> str:
    if m["mean"] is None:
        return "-"
    if m["std"] is None:
        return _num(m["mean"], digits)
    return f"{_num(m['mean'], digits)} ± {_num(m['std'], digits)}"


def markdown(root: pathlib.Path, manifest: dict, rows: list[dict], sort_by: str) -> str:
    title, digits, lower = METRICS[sort_by]
    baseline = manifest["baseline"]
    src = manifest["source"]
    lines = [
        f"# Sweep {root}",
        "",
        f"Config `{src.get('config')}` with {' '.join(src.get('overrides', [])) or 'no overrides'};"
        f" seeds {manifest['seeds']}; baseline arm `{baseline}`. Sorted by {title} "
        f"({'lower' if lower else 'higher'} is better). Mean ± std over seeds, the 95% t-interval"
        f" of the mean, and Welch's t-test against the baseline (p < {stats.ALPHA} is called "
        "a difference).",
        "",
        f"| arm | runs | {title} | 95% CI | diff vs baseline | p | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        m = row["metrics"][sort_by]
        ci = (
            "-"
            if m["ci_low"] is None
            else f"[{_num(m['ci_low'], digits)}, {_num(m['ci_high'], digits)}]"
        )
        test = row["vs_baseline"].get(sort_by)
        diff = "(baseline)" if test is None else _num(test["diff"], digits)
        p = "" if test is None else _p(test["p"])
        verdict = "" if test is None else test["verdict"]
        cells = [row["arm"], _states(row), _cell(m, digits), ci, diff, p, verdict]
        lines.append("| " + " | ".join(cells) + " |")
    others = [k for k in METRICS if k != sort_by]
    lines += ["", "| arm | " + " | ".join(METRICS[k][0] for k in others) + " | target reached |"]
    lines.append("|---" * (len(others) + 2) + "|")
    for row in rows:
        cells = [_cell(row["metrics"][k], METRICS[k][1]) for k in others]
        n = sum(row["states"].values())
        reached = (
            f"{row['reached']}/{n}"
            if manifest["base_config"]["train"].get("target_val_loss")
            else "-"
        )
        lines.append(f"| {row['arm']} | " + " | ".join(cells) + f" | {reached} |")
    tested = [k for k in METRICS if k != "target_tokens"]  # tokens are steps times a constant
    lines += ["", f"Each metric against the baseline `{baseline}` (Welch's p in parentheses):", ""]
    lines += ["| arm | " + " | ".join(METRICS[k][0] for k in tested) + " |"]
    lines.append("|---" * (len(tested) + 1) + "|")
    for row in rows:
        if row["arm"] != baseline:
            cells = [_verdict(row["vs_baseline"][k]) for k in tested]
            lines.append(f"| {row['arm']} | " + " | ".join(cells) + " |")
    lines += ["", "![val curves](val_curves.png)", "", "![finals](finals.png)", ""]
    return "\n".join(lines)


def _verdict(test: dict[str, Any]) -> str:
    return test["verdict"] + (f" ({_p(test['p'])})" if test["p"] is not None else "")


def _states(row: dict) -> str:
    n = sum(row["states"].values())
    done = row["states"].get("done", 0)
    rest = [f"{k} {v}" for k, v in sorted(row["states"].items()) if k != "done"]
    return f"{done}/{n} done" + (f" ({', '.join(rest)})" if rest else "")


def _curve_key(arm_runs: list[dict]) -> str:
    for key in ("val_loss_full", "val_loss", "train_loss"):
        if any(key in e for r in arm_runs for e in r["evals"]):
            return key
    return "val_loss_full"


def plot_curves(arms: dict, out: pathlib.Path) -> pathlib.Path:
    """Per arm, the mean over seeds of its eval curve (full val) and the min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    key = _curve_key([r for runs in arms.values() for r in runs])
    later = []  # values past the first eval: the init's loss would flatten the rest
    for name, runs in arms.items():
        by_step: dict[int, list[float]] = {}
        for run in runs:
            for e in run["evals"]:
                if key in e:
                    by_step.setdefault(e["step"], []).append(e[key])
        if not by_step:
            continue
        steps = sorted(by_step)
        mean = [sum(by_step[s]) / len(by_step[s]) for s in steps]
        (line,) = ax.plot(steps, mean, marker="o", ms=2, lw=1, label=name)
        lo, hi = [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps]
        ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
        later += [v for s, lo_, hi_ in zip(steps, lo, hi) if s > steps[0] for v in (lo_, hi_)]
    if later:
        pad = 0.05 * (max(later) - min(later) or 1.0)
        ax.set_ylim(min(later) - pad, max(later) + pad)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{key} (nats): mean over seeds, min-max band")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return metrics.save_figure(fig, out)


def plot_finals(rows: list[dict], sort_by: str, out: pathlib.Path) -> pathlib.Path:
    """Each seed's value as a dot, each arm's mean with its 95% interval as a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.4 * len(rows)))
    for y, row in enumerate(rows):
        m = row["metrics"][sort_by]
        ax.plot(m["values"], [y] * len(m["values"]), "o", color="tab:blue", alpha=0.5, ms=4)
        if m["ci_low"] is not None:
            ax.errorbar(
                m["mean"], y, xerr=[[m["mean"] - m["ci_low"]], [m["ci_high"] - m["mean"]]],
                fmt="s", color="black", capsize=3, ms=4,
            )  # fmt: skip
    ax.set_yticks(range(len(rows)), [r["arm"] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"{METRICS[sort_by][0]}: seeds (dots), mean and 95% CI (bars)")
    ax.grid(alpha=0.3, axis="x")
    return metrics.save_figure(fig, out)


def report(
    root: str | pathlib.Path,
    out_dir: str | pathlib.Path | None = None,
    *,
    baseline: str | None = None,
    sort_by: str = "final_val_loss_full",
) -> str:
    """Writes report.md, report.json, val_curves.png and finals.png (in root unless out_dir)
    and returns the markdown."""
    root = pathlib.Path(root)
    if sort_by not in METRICS:
        raise UsageError(f"--metric {sort_by}: use one of {', '.join(METRICS)}")
    manifest, arms = collect(root)
    baseline = baseline or manifest["baseline"]
    if baseline not in arms:
        raise UsageError(f"--baseline {baseline}: no such arm; the arms are {', '.join(arms)}")
    manifest = {**manifest, "baseline": baseline}
    rows = analyse(manifest, arms, baseline, sort_by)
    out = pathlib.Path(out_dir) if out_dir else root
    make_dir(out, "--out")
    plot_curves(arms, out / "val_curves.png")
    plot_finals(rows, sort_by, out / "finals.png")
    text = markdown(root, manifest, rows, sort_by)
    failed = [(a, r) for a, runs in arms.items() for r in runs if r["state"] != "done"]
    if failed:
        text += "\nRuns not done:\n\n" + "".join(
            f"- {a}/seed_{r['seed']}: {r['state']}" + (f": {r['message']}" if r["message"] else "")
            + "\n" for a, r in failed
        )  # fmt: skip
    doc = {"root": str(root), "baseline": baseline, "sort_by": sort_by, "arms": rows}
    atomic_write_bytes(out / "report.json", json.dumps(doc, indent=2).encode())
    atomic_write_bytes(out / "report.md", text.encode())
    return text
