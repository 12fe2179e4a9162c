"""`minigpt bench train`: the train step's trace and compile time, ms/iter, tokens/s, MFU and
XLA's scratch memory, beside the PyTorch reference's step when asked; and the table helpers
bench_sample.py shares.

Not a test: timings on a shared machine are noisy, so each cell is the median of repeats, the
methods take turns, and ratios are only taken within one run.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import sys
import time
from typing import Any, TextIO

import jax
import jax.numpy as jnp
import numpy as np

from minigpt_jax import data, files
from minigpt_jax import run as run_lib
from minigpt_jax.bench_noise import (
    UNRELIABLE,
    describe_conditions,
    load_average,
    rel_spread,
    unreliable,
)
from minigpt_jax.errors import require_torch
from minigpt_jax.model import count_params

VOCAB = 65  # Tiny Shakespeare's, when the config leaves vocab_size to the data


def timed(run, n: int) -> float:
    t0 = time.perf_counter()
    run(n)  # generate returns host arrays: the time includes the device work
    return time.perf_counter() - t0


def markdown(columns: tuple, rows: list[dict]) -> str:
    """A markdown table: columns are (header, 'l' or 'r' alignment, cell function of a row)."""
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |"]
    lines.append("|" + "|".join("---:" if a == "r" else "---" for _, a, _ in columns) + "|")
    lines += ["| " + " | ".join(cell(r) for _, _, cell in columns) + " |" for r in rows]
    return "\n".join(lines)


def spread(mid: float, lo: float, hi: float, fmt: str) -> str:
    return f"{mid:{fmt}} ({lo:{fmt}}-{hi:{fmt}})"


@functools.cache  # once per process: benches in a row (experiments/accelerator) share it
def cpu_gemm_peak(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the best of a few fp32 n x n matmuls: the CPU's attainable peak for MFU."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = min(timed(lambda _: matmul(a).block_until_ready(), 0) for _ in range(repeats))
    return 2 * n**3 / best


def _step_flops(compiled: Any, grad_accum: int) -> float | None:
    """The whole step's FLOPs: XLA costs the SPMD-partitioned program, one device's share, and
    counts a loop's body once: the scan over grad_accum micro-steps is scaled by hand (which
    counts the optimizer update grad_accum times too: a few FLOPs per param, against ~6 per
    param per token of each micro-step)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost  # older jax: one dict per program
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"]) * jax.device_count() * grad_accum


def run_train(
    config: Any, *, steps: int = 20, warmup: int = 3, vs_torch: bool = False,
    torch_threads: int = 0, out: TextIO | None = None, json_out: str | None = None,
) -> dict:  # fmt: skip
    """Compiles and times the config's train step (random tokens: speed does not depend on the
    data) the way `minigpt train` runs it: on the config's mesh, state donated, one host batch
    made per step. Each step is synced so its time is its own.

    vs_torch: the PyTorch reference (torch_train.Trainer, nanoGPT's loop, eager) trains the same
    model from the same weights on the same batches, its steps alternating with ours, so a
    burst of load hits both; 'speedup' is its median step time over ours."""
    out = out or sys.stdout  # looked up now: callers and tests swap sys.stdout
    json_path = files.out_path(json_out)  # checked before any work
    if vs_torch:
        require_torch()  # before compiling anything: the line that says how to get it
    run = run_lib.build(config, config.model.vocab_size or VOCAB)
    model_cfg, t, tokens_per_step = run.model_cfg, config.train, run.tokens_per_step
    tokens = np.random.default_rng(0).integers(0, model_cfg.vocab_size, 1 << 20, np.uint16)
    batches = data.Batches(tokens, batch_size=t.batch_size, block_size=model_cfg.block_size,
                           seed=0)  # fmt: skip
    state = run.init_state()
    torch_trainer = None
    if vs_torch:
        torch_trainer = _torch_trainer(run, state.params, torch_threads)
    rng = jax.random.key(t.seed)
    load_before = load_average()
    with run.activate():
        batch0 = run.host_batch(batches, 0)
        t0 = time.perf_counter()
        lowered = run.train_step.lower(state, batch0, rng)
        t1 = time.perf_counter()
        compiled = lowered.compile()  # from the persistent cache when it holds this program
        t2 = time.perf_counter()
        trace_s, compile_s = t1 - t0, t2 - t1
        times, torch_times = [], []
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            state, step_metrics = compiled(state, run.host_batch(batches, i), rng)
            jax.block_until_ready((state, step_metrics))
            times.append(time.perf_counter() - t0)
            if torch_trainer is not None:  # nanoGPT's loop makes its batch per step too
                t0 = time.perf_counter()
                micro = [batches.batch(i * t.grad_accum + m) for m in range(t.grad_accum)]
                torch_trainer.train_step(micro)
                torch_times.append(time.perf_counter() - t0)
    times, torch_times = times[warmup:], torch_times[warmup:]
    median = statistics.median(times)
    device = jax.devices()[0]
    flops = _step_flops(compiled, t.grad_accum)
    peak = table_peak_flops(device.device_kind)
    if peak is not None:
        peak_total, peak_source = peak * jax.device_count(), "spec sheet (bf16 dense)"
    else:  # one GEMM already uses every core, however many XLA devices split the host
        peak_total = cpu_gemm_peak()
        peak_source = "measured fp32 GEMM (2048^3, best of 5)"
    model_flops = nanogpt_flops_per_token(model_cfg, count_params(state.params)[0])
    model_flops = model_flops and model_flops * tokens_per_step
    levers = [model_cfg.dtype]  # the speed levers that differ from their defaults
    levers += [f"remat {model_cfg.remat}"] if model_cfg.remat != "none" else []
    levers += [f"linear_vjp {model_cfg.linear_vjp}"] if model_cfg.linear_vjp != "auto" else []
    row = {
        "config": f"{model_cfg.n_layer}/{model_cfg.n_head}/{model_cfg.n_embd} block "
        f"{model_cfg.block_size} batch {t.batch_size}x{t.grad_accum} ({', '.join(levers)})",
        "params": count_params(state.params)[1],
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "mesh": dict(run.mesh.shape),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "trace_s": trace_s,  # tracing and lowering to StableHLO: paid even on a cache hit
        "compile_s": compile_s,
        "compilation_cache": bool(jax.config.jax_compilation_cache_dir),
        "steps": steps,
        "ms_per_iter": {"median": 1e3 * median, "min": 1e3 * min(times), "max": 1e3 * max(times)},
        "tokens_per_s": tokens_per_step / median,
        "flops_per_step": flops,
        "peak_flops": peak_total,
        "peak_source": peak_source,
        "mfu": None if flops is None else flops / median / peak_total,
        # nanoGPT's estimate_mfu: comparable with its numbers, and blind to how XLA counts (a
        # cuDNN or Pallas kernel is a custom call whose FLOPs XLA's cost analysis leaves out).
        "model_flops_per_step": model_flops,
        "mfu_nanogpt": None if model_flops is None else model_flops / median / peak_total,
        "temp_bytes": _temp_bytes(compiled),
        "spread": rel_spread(times),
        "load_average": load_before,
    }
    if torch_times:
        torch = require_torch("torch_train").torch
        torch_median = statistics.median(torch_times)
        row["torch"] = {
            "ms_per_iter": {"median": 1e3 * torch_median, "min": 1e3 * min(torch_times),
                            "max": 1e3 * max(torch_times)},
            "tokens_per_s": tokens_per_step / torch_median,
            "threads": torch.get_num_threads(),
            "version": torch.__version__,
        }  # fmt: skip
        row["torch"]["spread"] = rel_spread(torch_times)
        row["speedup_vs_torch"] = torch_median / median
        row["speedup_reliable"] = not unreliable(times, torch_times)
    print(train_table([row]), file=out)
    if torch_times:
        tt = row["torch"]
        flag = "" if row["speedup_reliable"] else f" ({UNRELIABLE})"
        print(
            f"PyTorch eager ({tt['version']}, {tt['threads']} threads), same steps in turn: "
            f"{tt['ms_per_iter']['median']:.1f} ms/iter median ({tt['ms_per_iter']['min']:.1f}"
            f"-{tt['ms_per_iter']['max']:.1f}); ours is {row['speedup_vs_torch']:.2f}x its "
            f"speed{flag}",
            file=out,
        )
    spreads = {
        "ours": row["spread"],
        **({"PyTorch": row["torch"]["spread"]} if torch_times else {}),
    }
    print(describe_conditions(load_before, spreads, steps), file=out)
    if json_path:
        files.atomic_write_bytes(json_path, json.dumps(row, indent=2).encode())
    return row


def nanogpt_flops_per_token(cfg: Any, n_params: int) -> float | None:
    """nanoGPT's estimate_mfu: 6N + 12 L H Q T FLOPs per token for forward and backward (N its
    param count, Q the head dim, T the block: full, not causal, attention); None for a bigram."""
    if cfg.arch != "gpt":
        return None
    L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
    return 6 * n_params + 12 * L * H * Q * T


def _torch_trainer(run: run_lib.Run, params: Any, threads: int) -> Any:
    """torch_train.Trainer for the run's config, from our (host-copied) initial params."""
    from minigpt_jax import convert

    torch_train = require_torch("torch_train")
    if threads:
        torch_train.torch.set_num_threads(threads)
    state_dict = convert.to_state_dict(jax.device_get(params), run.model_cfg)
    return torch_train.Trainer(
        run.model_cfg, run.config.opt, tokens_per_step=run.tokens_per_step, state_dict=state_dict
    )


def _temp_bytes(compiled: Any) -> int | None:
    """XLA's scratch memory for one device's step: the activations the backward pass keeps."""
    try:
        return int(compiled.memory_analysis().temp_size_in_bytes)
    except (AttributeError, TypeError):  # a backend without memory analysis
        return None


def _or_dash(value: float | None, fmt: str, scale: float = 1.0, unit: str = "") -> str:
    return "-" if value is None else f"{value * scale:{fmt}}{unit}"


TRAIN_COLUMNS = (
    ("run", "l", lambda r: r.get("name", r["config"])),
    ("trace + compile s", "r", lambda r: f"{r['trace_s']:.2f} + {r['compile_s']:.2f}"),
    (
        "ms/iter median (min-max)",
        "l",
        lambda r: spread(*map(r["ms_per_iter"].get, ("median", "min", "max")), ".1f"),
    ),
    ("tokens/s", "r", lambda r: f"{r['tokens_per_s']:.0f}"),
    ("GFLOP/step", "r", lambda r: _or_dash(r["flops_per_step"], ".2f", 1e-9)),
    ("MFU", "r", lambda r: _or_dash(r["mfu"], ".1f", 100, "%")),
    ("MFU nanoGPT", "r", lambda r: _or_dash(r.get("mfu_nanogpt"), ".1f", 100, "%")),
    ("peak", "l", lambda r: f"{r['peak_flops'] / 1e9:.0f} GF/s {r['peak_source']}"),
    ("temp MiB", "r", lambda r: _or_dash(r.get("temp_bytes"), ".1f", 2**-20)),
)


def train_table(rows: list[dict]) -> str:
    return markdown(TRAIN_COLUMNS, rows)


# Dense bf16 peak FLOP/s per chip, from the vendors' spec sheets (no sparsity), by a substring
# of jax's device_kind; CPUs have no table entry: the benchmark measures their GEMM peak.
PEAK_FLOPS = {
    "A100": 312e12,
    "H100": 989e12,
    "H200": 989e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5p": 459e12,
    "TPU v5": 459e12,  # v5p reports "TPU v5"
    "TPU v6 lite": 918e12,  # v6e (Trillium)
}


def table_peak_flops(device_kind: str) -> float | None:
    """The spec-sheet peak of a device kind, or None (CPUs, unknown chips)."""
    for key, peak in PEAK_FLOPS.items():  # first match: 'TPU v5 lite' before 'TPU v5'
        if key in device_kind:
            return peak
    return None
