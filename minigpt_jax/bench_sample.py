"""`minigpt bench sample`: the KV-cache sampler (both windows) against nanoGPT-style recompute
and PyTorch's generate, on the same random weights and keys, at each length.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import flax.linen as nn
import jax
import numpy as np

from minigpt_jax import bench_noise, decode, files, sample
from minigpt_jax.bench import VOCAB, markdown, spread, timed
from minigpt_jax.config import model_config
from minigpt_jax.errors import UsageError, require_torch
from minigpt_jax.model import ModelConfig, init_params

METHODS = ("cached chunked", "cached exact", "recompute (nanoGPT-style)")
TORCH_METHOD = "PyTorch nanoGPT generate"


def run_sample(
    config: Any | None,
    *,
    lengths: Sequence[int | str] = (500, 2000),
    repeats: int = 3,
    num_samples: int = 1,
    vs_torch: bool = False,
    torch_threads: int = 0,
    out: TextIO | None = None,
    table_out: str | None = None,
) -> list[dict]:
    """Times each method at each length (random init, a one-token prompt) and prints a table.
    The model is the config's (vocab 65 unless it says), or nanoGPT's 6/6/384 without one.
    PyTorch's generate only with vs_torch: loading torch and its first call cost a minute."""
    out = out or sys.stdout  # looked up now: callers and tests swap sys.stdout
    table_path = files.out_path(table_out)  # checked before any work
    if vs_torch and num_samples > 1:
        raise UsageError("--vs torch times nanoGPT's generate, one row: drop --num_samples")
    if vs_torch:
        require_torch()  # before compiling anything: the line that says how to get it
    try:
        lengths = [int(n) for n in lengths]
    except ValueError:
        lengths = []
    if not lengths or min(lengths) < 1:
        raise UsageError("--lengths takes positive integers, e.g. 500,2000")
    cfg = (
        ModelConfig() if config is None else model_config(config, config.model.vocab_size or VOCAB)
    )
    params = nn.unbox(init_params(cfg, jax.random.key(0)))
    prompt, rng = np.zeros(1, np.int32), jax.random.key(0)
    kw = dict(temperature=1.0, top_k=None, num_samples=num_samples)
    runs = {
        METHODS[0]: lambda n: sample.generate(params, cfg, prompt, rng, max_new_tokens=n,
                                              window="chunked", **kw),
        METHODS[1]: lambda n: sample.generate(params, cfg, prompt, rng, max_new_tokens=n,
                                              window="exact", **kw),
        METHODS[2]: lambda n: decode.recompute_generate(params, cfg, prompt, rng,
                                                        max_new_tokens=n, **kw),
    }  # fmt: skip
    if vs_torch:
        runs[TORCH_METHOD] = _torch_generate(params, cfg, torch_threads)
    print(_machine(cfg, num_samples), file=out, flush=True)
    load_before = bench_noise.load_average()
    rows = []
    for n in lengths:
        compile_s = {m: timed(run, n) for m, run in runs.items()}
        times = {m: [] for m in runs}
        for r in range(repeats):  # methods take turns, so a burst of load hits them all
            for m, run in runs.items():
                times[m].append(timed(run, n))
            print(f"  {n} new tokens: repeat {r + 1}/{repeats} done", file=out, flush=True)
        ref = statistics.median(times[METHODS[2]])
        torch_ref = statistics.median(times[TORCH_METHOD]) if TORCH_METHOD in times else None
        torch_times = times.get(TORCH_METHOD, [])
        for m in runs:
            med = statistics.median(times[m])
            rows.append(
                dict(new_tokens=n, method=m, tok_s=num_samples * n / med, seconds=med,
                     spread=(min(times[m]), max(times[m])),
                     rel_spread=bench_noise.rel_spread(times[m]),
                     first_call_s=compile_s[m], speedup=ref / med,
                     speedup_torch=torch_ref and torch_ref / med,
                     unreliable=bench_noise.unreliable(times[m], times[METHODS[2]]),
                     unreliable_torch=bench_noise.unreliable(times[m], torch_times))
            )  # fmt: skip
    print(table(rows), file=out)
    worst = max(rows, key=lambda r: r["rel_spread"])  # each row's own is in the table
    spreads = {f"widest ({worst['method']}, {worst['new_tokens']})": worst["rel_spread"]}
    print(bench_noise.describe_conditions(load_before, spreads, repeats), file=out)
    if not vs_torch:
        print("PyTorch not timed: add --vs torch (loading torch takes a while).", file=out)
    if table_path:
        files.atomic_write_bytes(table_path, (table(rows) + "\n").encode())
    return rows


def _torch_generate(params: Any, cfg: ModelConfig, threads: int):
    """nanoGPT's generate (torch_ref: eager, no cache) on the same weights, one row."""
    from minigpt_jax import convert

    torch_ref = require_torch()
    torch = torch_ref.torch
    if threads:
        torch.set_num_threads(threads)
    model = torch_ref.make_model(cfg)
    model.load_state_dict(torch_ref.tensors(convert.to_state_dict(jax.device_get(params), cfg)))
    idx = torch.zeros((1, 1), dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    return lambda n: torch_ref.generate(model, idx, n, generator=gen)


SAMPLE_COLUMNS = (
    ("new tokens", "r", lambda r: str(r["new_tokens"])),
    ("method", "l", lambda r: r["method"]),
    ("tokens/s (median)", "r", lambda r: f"{r['tok_s']:.1f}"),
    ("seconds: median (min-max)", "l", lambda r: spread(r["seconds"], *r["spread"], ".2f")),
    ("first call s", "r", lambda r: f"{r['first_call_s']:.1f}"),
    ("spread", "r", lambda r: f"{100 * r['rel_spread']:.0f}%"),
    ("x recompute", "r", lambda r: _ratio(r["speedup"], r["unreliable"])),
    ("x PyTorch", "r", lambda r: _ratio(r.get("speedup_torch"), r.get("unreliable_torch"))),
)


def _ratio(value: float | None, flagged: bool | None) -> str:
    """A ratio cell: '-' when not measured, marked when its samples spread too far."""
    if not value:
        return "-"
    return f"{value:.1f}x" + (f" ({bench_noise.UNRELIABLE})" if flagged else "")


def table(rows: list[dict]) -> str:
    return markdown(SAMPLE_COLUMNS, rows)


def _machine(cfg: ModelConfig, num_samples: int) -> str:
    return (
        f"bench sample: {cfg.n_layer}/{cfg.n_head}/{cfg.n_embd} block {cfg.block_size} "
        f"vocab {cfg.vocab_size} ({cfg.dtype}), {num_samples} row(s), random init; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}"
    )
