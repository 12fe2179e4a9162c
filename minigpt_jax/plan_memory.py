"""Per-device memory of a run's train step, two ways: estimated from the program's shapes
(shardings and the residuals autodiff keeps for the backward pass; any size, no compile) and
measured by compiling the step on the host's fake-device CPU mesh (compiled.memory_analysis()).
plan.py turns these into the plan; tests compare the two.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# The residual list autodiff keeps (jax.ad_checkpoint.print_saved_residuals prints the same
# list); private in jax 0.10, which constraints.txt pins.
from jax._src.ad_checkpoint import saved_residuals

from minigpt_jax import layers, lowering
from minigpt_jax import run as run_lib
from minigpt_jax.evaluate import token_losses
from minigpt_jax.model import make_model


def _bytes(shape: tuple, dtype: Any) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def sharded_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs carrying NamedShardings."""
    return sum(_bytes(a.sharding.shard_shape(a.shape), a.dtype) for a in jax.tree.leaves(tree))


def local_batch(run: run_lib.Run) -> int:
    """Sequences per device per micro-step: the batch splits over data x fsdp."""
    return run.config.train.batch_size // (run.mesh.shape["data"] * run.mesh.shape["fsdp"])


@dataclasses.dataclass(frozen=True)
class Residuals:
    """What the backward pass keeps, on one device: fixed (the weights cast to the compute
    dtype) + per_sequence x the micro-batch's sequences."""

    fixed: int
    per_sequence: int

    def at(self, batch: int) -> int:
        return self.fixed + batch * self.per_sequence


def _residual_bytes(run: run_lib.Run, remat: str, batch: int, platform: str) -> tuple[int, int]:
    """(batch-independent, total) bytes of the residuals of one device's micro-step."""
    cfg = dataclasses.replace(run.model_cfg, remat=remat)
    model, T, H = make_model(cfg), cfg.block_size, cfg.n_head
    unsharded = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)  # noqa: E731
    params = jax.tree.map(unsharded, run.abstract_state.params)
    x = jax.ShapeDtypeStruct((batch, T), jnp.int32)
    rngs = {"dropout": jax.random.key(0)}
    loss = lambda p, x: token_losses(model, p, x, x, deterministic=False, rngs=rngs).sum()  # noqa: E731
    try:
        with layers.lowering_for(platform):  # the target's attention kernel keeps its residuals
            res = saved_residuals(loss, params, x)
    except RuntimeError:  # cuDNN's attention asks for the library when traced: XLA's, larger
        res = saved_residuals(loss, params, x)
    tensor, fixed, total = run.mesh.shape["tensor"], 0, 0
    for aval, source in res:
        if source.startswith(("from the argument", "from a literal")) or jax.dtypes.issubdtype(
            aval.dtype, jax.dtypes.prng_key
        ):
            continue  # the params themselves (counted as state), scalars, dropout keys
        n = _bytes(aval.shape, aval.dtype)
        if aval.shape[:1] != (batch,) or len(aval.shape) < 2:
            fixed += n  # weights cast to the compute dtype: no batch dim
            total += n
            continue
        # Tensor parallelism splits heads and the MLP's hidden units (sharding.py's rules).
        split = H in aval.shape[1:3] or aval.shape[-1] in (3 * cfg.n_embd, 4 * cfg.n_embd)
        total += n // tensor if split else n
    return fixed, total


def residuals(run: run_lib.Run, remat: str, platform: str) -> Residuals:
    """The backward pass's residuals per device, linear in the batch (traced at 1 and 2).

    With remat 'block' one block's residuals are recomputed at a time in the backward pass,
    so one layer's worth of the un-rematerialized residuals is added.
    """
    _, one = _residual_bytes(run, remat, 1, platform)
    fixed, two = _residual_bytes(run, remat, 2, platform)
    per_sequence = two - one
    if remat != "none":
        _, none_one = _residual_bytes(run, "none", 1, platform)
        _, none_two = _residual_bytes(run, "none", 2, platform)
        per_sequence += (none_two - none_one) // run.model_cfg.n_layer
    return Residuals(fixed, per_sequence)


@dataclasses.dataclass(frozen=True)
class Measured:
    """compiled.memory_analysis() of the train step on the host's CPU mesh, per device."""

    arguments: int  # state + batch + rng
    temp: int  # gradients, activations, workspace
    total: int  # arguments + outputs not aliased to the donated state + temp
    flops: float | None  # cost_analysis(): one device's FLOPs per step


def measure(run: run_lib.Run) -> Measured:
    """Compiles the run's train step for this host (CPU: XLA attention) and reads its memory."""
    with run.activate():
        compiled = run.train_step.lower(*lowering.train_args(run)).compile()
    m = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    total = (
        m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
        + m.temp_size_in_bytes
    )  # fmt: skip
    flops = float(cost["flops"]) if cost and "flops" in cost else None
    if flops is not None:  # XLA counts a loop's body once: the scan over micro-steps
        flops *= run.config.train.grad_accum
    return Measured(m.argument_size_in_bytes, m.temp_size_in_bytes, total, flops)
