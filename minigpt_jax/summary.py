"""workdir/summary.json: a run at a glance (best and final losses, speed, the target race,
how it ended, the machine), derived from metrics.jsonl after each process's run."""

from __future__ import annotations

import json
import pathlib
import statistics
from typing import Any

from minigpt_jax.files import atomic_write_bytes
from minigpt_jax.metrics import read_metrics

SUMMARY_FILE = "summary.json"
TARGET_STOP = "target"  # stopped_by of a run that stopped at train.target_val_loss


def target_reached(record: dict[str, Any], target: float) -> bool:
    """Whether an eval record's full-val loss is at or below the target (0: no target)."""
    full = record.get("val_loss_full")
    return target > 0 and full is not None and full <= target


def race(records: list[dict], target: float, tokens_per_step: int) -> dict[str, Any]:
    """When an eval's full-val loss first reached `target`: step, tokens and seconds of the run
    (elapsed_s, summed over its resumes). All None while it has not (or there is no target)."""
    hit = next((r for r in records if r["kind"] == "eval" and target_reached(r, target)), None)
    return {
        "target_val_loss": target or None,
        "target_reached": hit is not None if target > 0 else None,
        "target_step": hit and hit["step"],
        "target_tokens": hit and hit["step"] * tokens_per_step,
        "target_s": hit and hit.get("elapsed_s"),
    }


def write_summary(
    workdir: str | pathlib.Path,
    *,
    params: dict,
    tokens_per_step: int,
    wall_s: float,
    stopped_by: str | None = None,
    target: float = 0.0,
    wall: dict[str, float] | None = None,
    step: int | None = None,
    checkpoint_step: int | None = None,
) -> dict:
    """Writes and returns workdir/summary.json. stopped_by: None (ran to max_iters), 'target',
    or the signal that stopped it; `finished` is true for the first two. wall: clock.py's
    breakdown of this process's time. step: where the run stopped (default: the last record's,
    which misses a stop between log lines); checkpoint_step: the newest saved step, the one a
    resume starts from."""
    import platform
    import subprocess

    import flax
    import jax

    records = read_metrics(workdir)
    evals = [r for r in records if r["kind"] == "eval"]
    trains = [r for r in records if r["kind"] == "train"]
    scored = [r for r in evals if "val_loss" in r]
    best = min(scored, key=lambda r: r["val_loss"]) if scored else {}
    last = evals[-1] if evals else {}
    if step is None:
        step = max((r["step"] for r in records), default=0)
    # The first logged interval includes compilation; the median leaves it out.
    ms = statistics.median(r["ms_per_iter"] for r in trains[1:]) if len(trains) > 1 else None
    try:  # the code's version, when it runs from a git checkout
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
            cwd=pathlib.Path(__file__).parent,
        ).stdout.strip() or None  # fmt: skip
    except OSError:
        commit = None
    summary = {
        "step": step,
        "tokens_seen": step * tokens_per_step,
        "tokens_per_step": tokens_per_step,
        "finished": stopped_by in (None, TARGET_STOP),
        "stopped_by": stopped_by,
        "checkpoint_step": checkpoint_step,
        "best_val_loss": best.get("val_loss"),
        "best_step": best.get("step"),
        "final_train_loss": last.get("train_loss"),
        "final_val_loss": last.get("val_loss"),
        "final_val_loss_full": last.get("val_loss_full"),
        "final_val_bpc": last.get("val_bpc"),
        **race(records, target, tokens_per_step),
        "median_ms_per_iter": ms,
        "tokens_per_s": tokens_per_step / ms * 1000 if ms else None,
        "wall_s": wall_s,  # this process from its data on (not summed over resumes)
        "wall": wall,  # this process's seconds per phase, from its start (clock.py)
        "elapsed_s": records[-1].get("elapsed_s") if records else None,  # over resumes
        "params": params,
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "host": platform.node(),
        "versions": {"jax": jax.__version__, "flax": flax.__version__},
        "git_commit": commit,
    }
    atomic_write_bytes(pathlib.Path(workdir) / SUMMARY_FILE, json.dumps(summary, indent=2).encode())
    return summary
