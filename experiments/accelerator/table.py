"""The README's results table, rendered from the step files check.py writes (one JSON per step):
one fixed row per step, so the README's empty rows and the filled ones line up."""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Callable

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def _bench(r: dict) -> str:
    ms = r["ms_per_iter"]
    mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    nano = "-" if r.get("mfu_nanogpt") is None else f"{100 * r['mfu_nanogpt']:.1f}%"
    return (
        f"{ms['median']:.1f} ms/iter ({ms['min']:.1f}-{ms['max']:.1f}), "
        f"{r['tokens_per_s']:,.0f} tokens/s, MFU {mfu} (XLA's FLOPs) / {nano} (nanoGPT's "
        f"formula) of {r['peak_flops'] / 1e9:,.0f} GFLOP/s ({r['peak_source']}); compile "
        f"{r['compile_s']:.1f} s; {r['config']} on {r['device_count']} x {r['device_kind']}"
    )


def _diffs(d: dict) -> str:
    return ", ".join(f"{k} {v:.2g}" for k, v in d.items())


def _attention(r: dict) -> str:
    parts = [
        f"{name} {'x'.join(map(str, s['BxTxHxD']))}: cuDNN vs XLA {_diffs(s['cudnn_vs_xla_bf16'])}"
        f" (XLA bf16 vs fp32: {_diffs(s['xla_bf16_vs_fp32'])})"
        for name, s in r["shapes"].items()
    ]
    m = r["model"]
    parts.append(
        f"model {m['config']}: logits {m['logits_max_abs_diff']:.2g} (largest |logit| "
        f"{m['logits_max_abs']:.2g})"
    )
    return "; ".join(parts)


def _sample(r: dict) -> str:
    by_length: dict[int, list[str]] = {}
    for row in r["rows"]:
        method = row["method"].split(" (")[0]
        by_length.setdefault(row["new_tokens"], []).append(f"{method} {row['tok_s']:,.0f}")
    return "; ".join(f"{n} tokens: {', '.join(m)} tokens/s" for n, m in by_length.items())


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else f"{value:{fmt}}"


def _recipe(r: dict) -> str:
    s = r["summary"]
    return (
        f"val {_num(s['final_val_loss'], '.4f')} at step {s['step']} (best "
        f"{_num(s['best_val_loss'], '.4f')} at {s['best_step']}; full val "
        f"{_num(s['final_val_loss_full'], '.4f')}), {_num(s['median_ms_per_iter'], '.1f')} "
        f"ms/iter, {_num(s['tokens_per_s'], ',.0f')} tokens/s, {s['wall_s']:.0f} s in all"
    )


def _env(r: dict) -> str:
    v = r["versions"]
    extra = ", ".join(f"{k} {v[k]}" for k in sorted(v) if k.startswith(("jax-", "libtpu")))
    return (
        f"{r['device_count']} x {r['device_kind']} ({r['backend']}), {r['process_count']} "
        f"process(es); jax {v.get('jax')}, jaxlib {v.get('jaxlib')}"
        + (f", {extra}" if extra else "")
        + f", flax {v.get('flax')}, Python {r['python']}"
    )


# step file -> (what the row measures, how its result reads)
ROWS: dict[str, tuple[str, Callable[[dict], str]]] = {
    "env": ("devices, versions", _env),
    "bench_char": ("`bench train` `:char` (6/6/384, block 256, batch 64, bf16)", _bench),
    "bench_gpt2": (
        "`bench train` `:gpt2_124m` (12/12/768, block 1024, bf16), XLA attention",
        _bench,
    ),  # fmt: skip
    "bench_gpt2_cudnn": ("the same with `--config.model.attention=cudnn`", _bench),
    "attention": ("cuDNN vs XLA attention, same bf16 inputs: max abs diff", _attention),
    "sample": ("sampler tokens/s (`bench sample` `:char`, one row)", _sample),
    "recipe": ("nanoGPT shakespeare_char recipe, first `--recipe_iters` of 5000 steps", _recipe),
}


def cell(record: dict | None, describe: Callable[[dict], str]) -> str:
    if record is None:
        text = "not run"
    elif record["status"] == "ok":
        text = describe(record["result"])
        for why in record.get("fallbacks", []):  # the kernel the config asked for did not run
            text += f"; {why}"
    elif record["status"] == "cannot run here":
        text = f"cannot run here: {record['reason']}"
    else:
        text = f"FAILED: {record['error']}"
    if record is not None and record.get("dry"):
        text = f"(dry, toy size) {text}"
    return re.sub(r"\s+", " ", text).replace("|", "\\|")


def render(out: pathlib.Path | None) -> str:
    """The table; out=None gives the empty rows the README carries before a run."""
    lines = ["| step | measures | result | s |", "|---|---|---|---:|"]
    for name, (what, describe) in ROWS.items():
        path = out / f"{name}.json" if out is not None else None
        record = json.loads(path.read_text()) if path is not None and path.is_file() else None
        result = cell(record, describe) if out is not None else ""
        seconds = f"{record['seconds']:.0f}" if record else ""
        lines.append(f"| {name} | {what} | {result} | {seconds} |")
    return "\n".join(lines)


def fill(readme: str, rendered: str) -> str:
    """The README with its table between the markers replaced by `rendered`."""
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    return f"{readme[:start]}\n{rendered}\n{readme[end:]}"
