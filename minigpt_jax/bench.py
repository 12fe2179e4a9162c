"""`minigpt bench sample | train`: the sampler against nanoGPT-style recompute, and the train
step's compile time, ms/iter, tokens/s and MFU.

Not a test: timings on a shared machine are noisy, so each cell is the median of repeats, the
methods take turns within each repeat, and ratios are only taken within one run.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from minigpt_jax import data, decode, sample
from minigpt_jax import run as run_lib
from minigpt_jax.config import model_config
from minigpt_jax.errors import UsageError, require_torch
from minigpt_jax.model import ModelConfig, count_params, init_params

VOCAB = 65  # Tiny Shakespeare's, when the config leaves vocab_size to the data
METHODS = ("cached chunked", "cached exact", "recompute (nanoGPT-style)")
TORCH_METHOD = "PyTorch nanoGPT generate"


def _timed(run, n: int) -> float:
    t0 = time.perf_counter()
    run(n)  # generate returns host arrays: the time includes the device work
    return time.perf_counter() - t0


def run_sample(
    config: Any | None,
    *,
    lengths: Sequence[int | str] = (500, 2000),
    repeats: int = 3,
    num_samples: int = 1,
    torch_threads: int = 0,
    out: TextIO | None = None,
) -> list[dict]:
    """Times each method at each length (random init, a one-token prompt) and prints a table.
    The model is the config's (vocab 65 unless it says), or nanoGPT's 6/6/384 without one."""
    out = out or sys.stdout  # looked up now: callers and tests swap sys.stdout
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
    if importlib.util.find_spec("torch") is not None and num_samples == 1:
        runs[TORCH_METHOD] = _torch_generate(params, cfg, torch_threads)
    print(_machine(cfg, num_samples), file=out, flush=True)
    rows = []
    for n in lengths:
        compile_s = {m: _timed(run, n) for m, run in runs.items()}
        times = {m: [] for m in runs}
        for r in range(repeats):  # methods take turns, so a burst of load hits them all
            for m, run in runs.items():
                times[m].append(_timed(run, n))
            print(f"  {n} new tokens: repeat {r + 1}/{repeats} done", file=out, flush=True)
        ref = statistics.median(times[METHODS[2]])
        torch_ref = statistics.median(times[TORCH_METHOD]) if TORCH_METHOD in times else None
        for m in runs:
            med = statistics.median(times[m])
            rows.append(
                dict(new_tokens=n, method=m, tok_s=num_samples * n / med, seconds=med,
                     spread=(min(times[m]), max(times[m])), first_call_s=compile_s[m],
                     speedup=ref / med, speedup_torch=torch_ref and torch_ref / med)
            )  # fmt: skip
    print(table(rows), file=out)
    if TORCH_METHOD not in runs:
        why = (
            "num_samples > 1"
            if num_samples > 1
            else "torch is not installed (pip install -e '.[torch]')"
        )
        print(f"PyTorch comparison skipped: {why}.", file=out)
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


def table(rows: list[dict]) -> str:
    lines = [
        "| new tokens | method | tokens/s (median) | seconds: median (min-max) | first call s "
        "| x recompute | x PyTorch |",
        "|---:|---|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lo, hi = r["spread"]
        vs_torch = f"{r['speedup_torch']:.1f}x" if r.get("speedup_torch") else "-"
        lines.append(
            f"| {r['new_tokens']} | {r['method']} | {r['tok_s']:.1f} | "
            f"{r['seconds']:.2f} ({lo:.2f}-{hi:.2f}) | {r['first_call_s']:.1f} | "
            f"{r['speedup']:.1f}x | {vs_torch} |"
        )
    return "\n".join(lines)


def _machine(cfg: ModelConfig, num_samples: int) -> str:
    return (
        f"bench sample: {cfg.n_layer}/{cfg.n_head}/{cfg.n_embd} block {cfg.block_size} "
        f"vocab {cfg.vocab_size} ({cfg.dtype}), {num_samples} row(s), random init; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}"
    )


def cpu_gemm_peak(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the best of a few fp32 n x n matmuls: the CPU's attainable peak for MFU."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = min(_timed(lambda _: matmul(a).block_until_ready(), 0) for _ in range(repeats))
    return 2 * n**3 / best


def _step_flops(compiled: Any) -> float | None:
    """The whole step's FLOPs: XLA costs the SPMD-partitioned program, one device's share."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost  # older jax: one dict per program
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"]) * jax.device_count()


def run_train(
    config: Any, *, steps: int = 20, warmup: int = 3, vs_torch: bool = False,
    torch_threads: int = 0, out: TextIO | None = None,
) -> dict:  # fmt: skip
    """Compiles and times the config's train step (random tokens: speed does not depend on the
    data) the way `minigpt train` runs it: on the config's mesh, state donated, one host batch
    made per step. Each step is synced so its time is its own.

    vs_torch: the PyTorch reference (torch_ref.Trainer, nanoGPT's loop, eager) trains the same
    model from the same weights on the same batches, its steps alternating with ours, so a
    burst of load hits both; 'speedup' is its median step time over ours."""
    out = out or sys.stdout  # looked up now: callers and tests swap sys.stdout
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
    flops = _step_flops(compiled)
    peak = table_peak_flops(device.device_kind)
    if peak is not None:
        peak_total, peak_source = peak * jax.device_count(), "spec sheet (bf16 dense)"
    else:  # one GEMM already uses every core, however many XLA devices split the host
        peak_total = cpu_gemm_peak()
        peak_source = "measured fp32 GEMM (2048^3, best of 5)"
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
        "temp_bytes": _temp_bytes(compiled),
    }
    if torch_times:
        import torch

        torch_median = statistics.median(torch_times)
        row["torch"] = {
            "ms_per_iter": {"median": 1e3 * torch_median, "min": 1e3 * min(torch_times),
                            "max": 1e3 * max(torch_times)},
            "tokens_per_s": tokens_per_step / torch_median,
            "threads": torch.get_num_threads(),
            "version": torch.__version__,
        }  # fmt: skip
        row["speedup_vs_torch"] = torch_median / median
    print(train_table([row]), file=out)
    if torch_times:
        tt = row["torch"]
        print(
            f"PyTorch eager ({tt['version']}, {tt['threads']} threads), same steps in turn: "
            f"{tt['ms_per_iter']['median']:.1f} ms/iter median ({tt['ms_per_iter']['min']:.1f}"
            f"-{tt['ms_per_iter']['max']:.1f}); ours is {row['speedup_vs_torch']:.2f}x its speed",
            file=out,
        )
    return row


def _torch_trainer(run: run_lib.Run, params: Any, threads: int) -> Any:
    """torch_ref.Trainer for the run's config, starting from our (host-copied) initial params."""
    from minigpt_jax import convert

    torch_ref = require_torch()
    if threads:
        torch_ref.torch.set_num_threads(threads)
    state_dict = convert.to_state_dict(jax.device_get(params), run.model_cfg)
    return torch_ref.Trainer(
        run.model_cfg, run.config.opt, tokens_per_step=run.tokens_per_step, state_dict=state_dict
    )


def _temp_bytes(compiled: Any) -> int | None:
    """XLA's scratch memory for one device's step: the activations the backward pass keeps."""
    try:
        return int(compiled.memory_analysis().temp_size_in_bytes)
    except (AttributeError, TypeError):  # a backend without memory analysis
        return None


def train_table(rows: list[dict]) -> str:
    lines = [
        "| run | trace + compile s | ms/iter median (min-max) | tokens/s | GFLOP/step | MFU "
        "| peak | temp MiB |",
        "|---|---:|---|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        ms = r["ms_per_iter"]
        gflop = "-" if r["flops_per_step"] is None else f"{r['flops_per_step'] / 1e9:.2f}"
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        temp = "-" if r.get("temp_bytes") is None else f"{r['temp_bytes'] / 2**20:.1f}"
        lines.append(
            f"| {r.get('name', r['config'])} | {r['trace_s']:.2f} + {r['compile_s']:.2f} "
            f"| {ms['median']:.1f} "
            f"({ms['min']:.1f}-{ms['max']:.1f}) | {r['tokens_per_s']:.0f} | {gflop} | {mfu} "
            f"| {r['peak_flops'] / 1e9:.0f} GF/s {r['peak_source']} | {temp} |"
        )
    return "\n".join(lines)


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
