"""The real programs as abstract arguments, and lowered for another platform on any host.

The train step is the one run.build jits (state donated, shardings from the mesh rules, grad
accumulation, the config's dtype and attention); the sampler's programs are decode.py's prefill
and decode over the run's sharded params. `jax.export` lowers them for 'tpu' or 'cuda' on a CPU
host, NamedShardings over fake CPU devices included, so a preset that would not build on the
accelerator fails here first. plan.py compiles the same train step on the host to read its memory.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import export
from jax.sharding import Mesh

from minigpt_jax import decode, layers, sharding
from minigpt_jax import run as run_lib
from minigpt_jax.model import init_cache

PROMPT_BUCKET = 16  # the sampler's smallest prompt bucket (sample.MIN_PROMPT_BUCKET)
DECODE_STEPS = 16  # one compiled decode call's tokens (sample.steps_bucket's smallest)


def train_args(run: run_lib.Run) -> tuple:
    """(state, (x_AxBxT, y_AxBxT), rng) as ShapeDtypeStructs with the shardings the run uses."""
    A, B = run.config.train.grad_accum, run.config.train.batch_size
    x = jax.ShapeDtypeStruct(
        (A, B, run.model_cfg.block_size), jnp.int32, sharding=run.batch_sharding
    )
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=sharding.replicated(run.mesh))
    return run.abstract_state, (x, x), rng


def export_train_step(
    config: Any, vocab_size: int, platforms: tuple[str, ...], mesh: Mesh
) -> tuple[run_lib.Run, dict[str, export.Exported]]:
    """The run's jitted train step lowered for each of `platforms` on `mesh`.

    The kernel and VJP choices are made when tracing (layers.lowering_for), and a jitted
    function reuses its trace for the same arguments: one build serves TPU and GPU only when
    their choices agree (XLA attention); a kernel gets a fresh build per platform.
    """
    shared = config.model.attention == "xla" and "cpu" not in platforms
    run, exported = None, {}
    for platform in platforms:
        if run is None or not shared:
            run = run_lib.build(config, vocab_size, mesh=mesh)
        with run.activate(), layers.lowering_for(platform):
            exported[platform] = export.export(run.train_step, platforms=[platform])(
                *train_args(run)
            )
    return run, exported


@dataclasses.dataclass(frozen=True)
class SamplerPrograms:
    prefill: export.Exported
    decode: export.Exported


def export_sampler(
    run: run_lib.Run, platforms: tuple[str, ...], rows: int = 1
) -> dict[str, SamplerPrograms]:
    """prefill (a 16-token prompt bucket) and one 16-token decode call over the run's params in
    their shardings, as a run's eval samples use them. Their trace makes no platform choice
    (cached decoding is XLA attention, forward only), so one trace serves every platform."""
    cfg, params = run.model_cfg, run.abstract_state.params
    ctx_NxP = jax.ShapeDtypeStruct((rows, min(PROMPT_BUCKET, cfg.block_size)), jnp.int32)
    count_N = jax.ShapeDtypeStruct((rows,), jnp.int32)
    state = jax.eval_shape(lambda: decode.DecodeState(
        init_cache(cfg, rows), jnp.zeros((rows, cfg.block_size), jnp.int32),
        jnp.zeros((rows,), jnp.int32), jnp.zeros((rows, cfg.vocab_size), jnp.float32),
        jnp.int32(0),
    ))  # fmt: skip
    settings = [
        jax.ShapeDtypeStruct((), np.asarray(v).dtype) for v in decode.traced_settings(1, 1, 1)
    ]
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
    programs = {}
    for platform in platforms:
        with run.activate(), layers.lowering_for(platform):
            pre = export.export(decode.prefill, platforms=[platform])(
                params, ctx_NxP, count_N, cfg=cfg
            )
            dec = export.export(decode.decode, platforms=[platform])(
                params, state, rng, count_N, *settings, cfg=cfg, steps=DECODE_STEPS,
                window="chunked", with_logits=False,
            )  # fmt: skip
        programs[platform] = SamplerPrograms(pre, dec)
    return programs


def shard_ways(exported: export.Exported, mesh: Mesh, which: str = "in") -> list[int]:
    """For each flat input (or output) of a lowered program: into how many pieces its sharding
    cuts the array (1: replicated)."""
    shardings = (
        exported.in_shardings_jax(mesh) if which == "in" else exported.out_shardings_jax(mesh)
    )
    avals = exported.in_avals if which == "in" else exported.out_avals
    return [
        1 if s is None else int(np.prod(a.shape)) // max(1, int(np.prod(s.shard_shape(a.shape))))
        for s, a in zip(shardings, avals, strict=True)
    ]
