"""`minigpt compare`: our JAX model and the PyTorch reference trained side by side.

Both start from the same weights (the torch model is loaded from our initial params through
convert.to_state_dict) and see the same batch stream (data.Batches of the config seed), and the
steps alternate, JAX then torch, so a burst of load from elsewhere hits both. Each step is timed
on its own, the JAX one up to the loss on the host (so its device work is inside the timing).
At the end both are evaluated on the same val batches and on the whole val split, and sample the
same number of tokens. The report goes to out_dir: report.md, report.json and loss.png.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from minigpt_jax import convert, data, files, sample, sharding
from minigpt_jax import run as run_lib
from minigpt_jax.errors import require_torch
from minigpt_jax.evaluate import EVAL_VAL_STREAM, estimate_batches, full_val
from minigpt_jax.files import atomic_write_bytes
from minigpt_jax.metrics import save_figure


class JaxTrainer:
    """The run's train and eval steps on one device, fed micro-batches as the torch Trainer is."""

    def __init__(self, run: run_lib.Run):
        self.run = run
        self.state = run.init_state()
        self.rng = run.dropout_rng

    @property
    def params(self) -> Any:
        return self.state.params

    def train_step(self, micro_batches: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
        """One update; returns its loss (a host float: the step has finished)."""
        batch = self.run.put(tuple(np.stack(a) for a in zip(*micro_batches)))
        with self.run.activate():
            self.state, metrics = self.run.train_step(self.state, batch, self.rng)
        return float(metrics["loss"])

    def loss_sums(self, x_NxBxT, y_NxBxT, w_NxBxT) -> tuple[float, float]:
        batch = self.run.put((x_NxBxT, y_NxBxT, w_NxBxT))
        with self.run.activate():
            loss_sum, weight = jax.device_get(self.run.eval_step(self.params, *batch))
        return float(loss_sum), float(weight)


def _stats(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _time(fn: Callable[[], Any], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def run(cfg: Any, out_dir: str | pathlib.Path, *, steps: int, sample_tokens: int = 500,
        repeats: int = 3, torch_threads: int = 0,
        log: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """Trains both for `steps` steps on cfg (an experiment config), writes the report.

    torch_threads > 0 calls torch.set_num_threads: on a loaded machine torch's OpenMP threads
    can wait on each other for seconds per step. 0 keeps torch's default. Either is recorded.
    """
    ref = require_torch()
    torch = ref.torch
    if torch_threads:
        torch.set_num_threads(torch_threads)
    meta, splits = data.load_prepared(cfg.data.dir, block_size=cfg.model.block_size,
                                      input_path=cfg.data.input,
                                      val_fraction=cfg.data.val_fraction)  # fmt: skip
    run = run_lib.build(cfg, meta["vocab_size"], mesh=sharding.one_device_mesh())
    model_cfg, t, A, tokens_per_step = (
        run.model_cfg,
        cfg.train,
        cfg.train.grad_accum,
        run.tokens_per_step,
    )
    out = pathlib.Path(out_dir)
    files.make_dir(out, "--out_dir")  # only once the config and data are known to be good
    batches = run.train_batches(splits["train"])
    ours = JaxTrainer(run)
    state_dict = convert.to_state_dict(jax.device_get(ours.params), model_cfg)
    theirs = require_torch("torch_train").Trainer(
        model_cfg, cfg.opt, tokens_per_step=tokens_per_step, state_dict=state_dict
    )
    load_at_start = os.getloadavg()
    losses = {"jax": [], "torch": []}
    seconds = {"jax": [], "torch": []}
    log(f"compare: {steps} steps of {tokens_per_step} tokens, alternating jax / torch")
    for step in range(steps):
        micro = [batches.batch(step * A + m) for m in range(A)]
        for name, side in (("jax", ours), ("torch", theirs)):
            start = time.perf_counter()
            losses[name].append(side.train_step(micro))
            seconds[name].append(time.perf_counter() - start)
        if (step + 1) % max(1, t.log_interval) == 0 or step + 1 == steps:
            log(
                f"step {step + 1}: loss jax {losses['jax'][-1]:.4f} torch {losses['torch'][-1]:.4f}"
            )
    est = estimate_batches(splits["val"], EVAL_VAL_STREAM, seed=t.seed, step=steps,
                           batch_size=t.batch_size, block_size=model_cfg.block_size,
                           eval_iters=t.eval_iters)  # fmt: skip
    full = full_val(splits["val"], t.batch_size, model_cfg.block_size)
    evals = {}
    for name, side in (("jax", ours), ("torch", theirs)):
        evals[name] = {
            "val_loss": (lambda s: s[0] / s[1])(side.loss_sums(*est)),
            "val_loss_full": (lambda s: s[0] / s[1])(side.loss_sums(*full)),
        }
    # Sampling: ours is generate() with its default chunked window; torch is nanoGPT's loop.
    prompt = np.zeros((1,), np.int32)
    gen = lambda: sample.generate(ours.params, model_cfg, prompt, jax.random.key(0),  # noqa: E731
                                  max_new_tokens=sample_tokens)  # fmt: skip
    gen()  # compiles
    torch_model = theirs.model
    idx = torch.zeros((1, 1), dtype=torch.long)
    sample_s = {
        "jax": _time(gen, repeats),
        "torch": _time(lambda: ref.generate(torch_model, idx, sample_tokens), repeats),
    }
    # Step 0 of each side holds one-time costs (JAX compiles): timings start at step 1.
    timed = {k: v[1:] or v for k, v in seconds.items()}
    report = {
        "config": {"model": cfg.model.to_dict() | {"vocab_size": model_cfg.vocab_size},
                   "opt": cfg.opt.to_dict(), "train": cfg.train.to_dict()},
        "steps": steps, "tokens_per_step": tokens_per_step, "losses": losses,
        "first_step_s": {k: v[0] for k, v in seconds.items()},
        "ms_per_iter": {k: _stats([1000 * s for s in v]) for k, v in timed.items()},
        "tokens_per_s": {k: _stats([tokens_per_step / s for s in v]) for k, v in timed.items()},
        "eval": evals, "sample_tokens": sample_tokens,
        "sample_tokens_per_s": {k: _stats([sample_tokens / s for s in v])
                                for k, v in sample_s.items()},
        "max_abs_loss_diff_first_20": max(
            abs(a - b) for a, b in zip(losses["jax"][:20], losses["torch"][:20])
        ),
        "machine": {**_machine(torch), "loadavg_at_start": load_at_start},
    }  # fmt: skip
    report["ms_per_iter_ratio_jax_over_torch"] = (
        report["ms_per_iter"]["jax"]["median"] / report["ms_per_iter"]["torch"]["median"]
    )
    atomic_write_bytes(out / "report.json", json.dumps(report, indent=1).encode())
    _plot(losses, out / "loss.png")
    atomic_write_bytes(out / "report.md", _markdown(report).encode())
    log(f"wrote {out / 'report.md'}")
    return report


def _machine(torch: Any) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "jax": jax.__version__, "backend": jax.default_backend(),
        "python": platform.python_version(),
        "loadavg_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }  # fmt: skip


def _plot(losses: dict[str, list[float]], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})  # fmt: skip
    steps = np.arange(1, len(losses["jax"]) + 1)
    for name, style in (("jax", "-"), ("torch", "--")):
        top.plot(steps, losses[name], style, lw=0.8, label=f"{name} (batch loss)")
    top.set_ylabel("train loss (nats)")
    top.legend()
    top.grid(alpha=0.3)
    bottom.plot(steps, np.array(losses["jax"]) - np.array(losses["torch"]), lw=0.8)
    bottom.set_ylabel("jax - torch")
    bottom.set_xlabel("step")
    bottom.grid(alpha=0.3)
    save_figure(fig, path)


def _markdown(r: dict[str, Any]) -> str:
    def cell(s: dict[str, float], fmt: str) -> str:
        return f"{s['median']:{fmt}} ({s['min']:{fmt}} - {s['max']:{fmt}})"

    m = r["machine"]
    sides = ("jax", "torch")
    rows = [
        ("final train loss (batch)", *(f"{r['losses'][k][-1]:.4f}" for k in sides)),
        ("val loss (eval_iters batches)", *(f"{r['eval'][k]['val_loss']:.4f}" for k in sides)),
        ("val loss (whole split)", *(f"{r['eval'][k]['val_loss_full']:.4f}" for k in sides)),
        ("ms/iter: median (min - max)", *(cell(r["ms_per_iter"][k], ".1f") for k in sides)),
        ("tokens/s: median (min - max)", *(cell(r["tokens_per_s"][k], ",.0f") for k in sides)),
        ("first step, s (compile)", *(f"{r['first_step_s'][k]:.2f}" for k in sides)),
        (f"sampling tokens/s ({r['sample_tokens']} new)",
         *(cell(r["sample_tokens_per_s"][k], ",.0f") for k in sides)),
    ]  # fmt: skip
    lines = [
        f"# JAX vs PyTorch: {r['steps']} steps, {r['tokens_per_step']} tokens/step", "",
        "| | JAX (ours) | PyTorch reference |", "|---|---:|---:|",
        *(f"| {a} | {b} | {c} |" for a, b, c in rows), "",
        f"ms/iter ratio JAX / PyTorch (medians): {r['ms_per_iter_ratio_jax_over_torch']:.2f}",
        f"max |loss difference| over the first 20 steps: {r['max_abs_loss_diff_first_20']:.2e}",
        "", "![losses](loss.png)", "",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, torch threads {m['torch_threads']}; "
        f"torch {m['torch']}, jax {m['jax']} ({m['backend']}), Python {m['python']}; "
        f"load average (1, 5, 15 min) at the start {_load(m['loadavg_at_start'])}, at the end "
        f"{_load(m['loadavg_at_end'])}.",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def _load(avg: Sequence[float] | None) -> str:
    return "n/a" if avg is None else " / ".join(f"{a:.2f}" for a in avg)
