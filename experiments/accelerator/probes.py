"""The accelerator check's in-process measurements: the environment, cuDNN attention against XLA
attention on the same inputs, and the sampler's tokens/s. check.py runs them; each returns the
JSON-ready dict of one step, or raises CannotRun naming why it cannot run on this machine.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import platform
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from minigpt_jax import bench_sample, layers
from minigpt_jax import config as config_lib
from minigpt_jax.model import init_params, make_model

PACKAGES = (
    "jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda12-pjrt", "jax-cuda13-plugin",
    "jax-cuda13-pjrt", "libtpu", "flax", "optax", "orbax-checkpoint", "numpy", "torch",
)  # fmt: skip


class CannotRun(Exception):
    """This machine cannot run the step (no GPU for cuDNN, ...): reported by name, not passed."""


class FallbackLog(logging.Handler):
    """Collects the 'falls back to xla' warnings layers.flash_attention logs when traced."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "falls back to xla" in message:
            self.messages.append(message)


def environment() -> dict:
    """Devices, backend and versions; jax's own environment report (nvidia-smi included)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    devices = jax.devices()
    return {
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "devices": [f"{d.id}: {d.device_kind} ({d.platform})" for d in devices],
        "python": platform.python_version(),
        "versions": versions,
        "jax_environment": jax.print_environment_info(return_string=True),
    }


def _qkv(shape: tuple[int, ...], seed: int) -> tuple[jax.Array, ...]:
    keys = jax.random.split(jax.random.key(seed), 4)  # q, k, v and the output's cotangent
    return tuple(jax.random.normal(k, shape, jnp.float32) for k in keys)


def _xla(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    T = q.shape[1]
    mask_1xTxT = jnp.tril(jnp.ones((T, T), bool))[None]
    return layers.xla_attention(q, k, v, mask_1xTxT, lambda a: a, q.dtype)


def _cudnn(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    y = layers.flash_attention("cudnn", q, k, v, False, q.dtype)  # the model's own call
    if y is None:  # the kernel declined, and logged why (FallbackLog has it)
        raise CannotRun("layers.flash_attention('cudnn') returned None")
    return y


def _out_and_grads(f, q, k, v, dy) -> tuple[jax.Array, ...]:
    y, vjp = jax.vjp(f, q, k, v)
    return (y, *vjp(dy.astype(y.dtype)))


def _max_diffs(a: tuple, b: tuple) -> dict[str, float]:
    names = ("out", "dq", "dk", "dv")
    return {
        n: float(jnp.max(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32))))
        for n, x, y in zip(names, a, b, strict=True)
    }


def attention(shapes: dict[str, tuple[int, int, int, int]], model_cfg: Any) -> dict:
    """cuDNN flash attention against the XLA kernel on the same bf16 inputs (B, T, H, D), the
    output and the three input gradients; XLA in bf16 against XLA in fp32 beside it, the scale
    of bf16 rounding alone. Then the whole model's logits, attention=cudnn against xla."""
    fallbacks = FallbackLog()
    logging.getLogger().addHandler(fallbacks)
    try:
        result: dict[str, Any] = {"backend": jax.default_backend(), "shapes": {}}
        for name, shape in shapes.items():
            q, k, v, dy = _qkv(shape, seed=0)
            ref = _out_and_grads(jax.jit(_xla), q, k, v, dy)  # fp32
            q, k, v = (a.astype(jnp.bfloat16) for a in (q, k, v))
            xla = _out_and_grads(jax.jit(_xla), q, k, v, dy)
            row = {"BxTxHxD": list(shape), "xla_bf16_vs_fp32": _max_diffs(xla, ref)}
            try:
                cudnn = _out_and_grads(jax.jit(_cudnn), q, k, v, dy)
            except CannotRun as e:  # the logged line names the kernel and the reason
                raise CannotRun("; ".join(fallbacks.messages) or str(e)) from None
            row["cudnn_vs_xla_bf16"] = _max_diffs(cudnn, xla)
            row["cudnn_vs_fp32"] = _max_diffs(cudnn, ref)
            result["shapes"][name] = row
        result["model"] = _model_logits(model_cfg, fallbacks)
        return result
    finally:
        logging.getLogger().removeHandler(fallbacks)


def _model_logits(c: Any, fallbacks: FallbackLog) -> dict:
    """One model, one set of params, attention=cudnn and =xla: the logits' max abs difference."""
    c.model.dropout = 0.0  # attention dropout would send cudnn to the XLA path
    cfg = config_lib.model_config(c, c.model.vocab_size or bench_sample.VOCAB)
    params = nn.unbox(init_params(cfg, jax.random.key(0)))
    idx = jax.random.randint(jax.random.key(1), (4, cfg.block_size), 0, cfg.vocab_size)
    logits = {}
    for kind in ("xla", "cudnn"):
        before = len(fallbacks.messages)
        model = make_model(dataclasses.replace(cfg, attention=kind))
        logits[kind] = jax.jit(model.apply)({"params": params}, idx)
        if len(fallbacks.messages) > before:  # the model ran XLA attention: no comparison
            raise CannotRun(f"the model's attention=cudnn: {fallbacks.messages[-1]}")
    diff = jnp.max(jnp.abs(logits["cudnn"] - logits["xla"]))
    return {
        "config": f"{cfg.n_layer}/{cfg.n_head}/{cfg.n_embd} block {cfg.block_size} {cfg.dtype}",
        "logits_max_abs_diff": float(diff),
        "logits_max_abs": float(jnp.max(jnp.abs(logits["xla"]))),
    }


def sampler(c: Any, lengths: list[int], repeats: int) -> dict:
    """`minigpt bench sample --config ...` without PyTorch's eager generate (minutes on a CPU)."""
    rows = bench_sample.run_sample(c, lengths=lengths, repeats=repeats, vs_torch=False)
    keep = ("new_tokens", "method", "tok_s", "seconds", "spread", "first_call_s", "speedup")
    return {"rows": [{k: r[k] for k in keep} for r in rows], "repeats": repeats}
