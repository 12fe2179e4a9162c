"""Learning-rate schedules and AdamW. nanoGPT's and minGPT's schedules are written out (their
exact formulas are pinned by tests); warmup-from-zero cosine and constant are optax's own."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from minigpt_jax.errors import UsageError

SCHEDULES = ("nanogpt", "constant", "mingpt", "warmup_cosine")
DECAY_MASKS = ("ndim", "linear", "all")


def nanogpt_lr(it: jax.Array, *, lr: float, min_lr: float, warmup_iters: int, lr_decay_iters: int):
    """nanoGPT's get_lr: linear warmup, cosine down to min_lr at lr_decay_iters, then min_lr."""
    it = jnp.asarray(it, jnp.float32)
    warm = lr * (it + 1) / (warmup_iters + 1)
    ratio = jnp.clip((it - warmup_iters) / max(lr_decay_iters - warmup_iters, 1), 0.0, 1.0)
    cosine = min_lr + 0.5 * (1.0 + jnp.cos(math.pi * ratio)) * (lr - min_lr)
    return jnp.where(it < warmup_iters, warm, jnp.where(it > lr_decay_iters, min_lr, cosine))


def mingpt_lr(
    it: jax.Array, *, lr: float, tokens_per_step: int, warmup_tokens: int, final_tokens: int
):
    """minGPT's token-based schedule, as in its char-level trainer.

    The token counter includes the current batch; after warmup the multiplier is
    max(0.1, cosine), and minGPT lets the cosine rise again past final_tokens.
    """
    tokens = (jnp.asarray(it, jnp.float32) + 1) * tokens_per_step
    warm = tokens / max(1, warmup_tokens)
    progress = (tokens - warmup_tokens) / max(1, final_tokens - warmup_tokens)
    decay = jnp.maximum(0.1, 0.5 * (1.0 + jnp.cos(math.pi * progress)))
    return lr * jnp.where(tokens < warmup_tokens, warm, decay)


def make_schedule(opt: Any, tokens_per_step: int) -> optax.Schedule:
    """The lr as a function of the optimizer step, from the `opt` section (checked by
    config.validate: the decay ends after the warmup, minGPT's token counts are ordered)."""
    if opt.schedule == "nanogpt":
        return lambda it: nanogpt_lr(
            it,
            lr=opt.lr,
            min_lr=opt.min_lr,
            warmup_iters=opt.warmup_iters,
            lr_decay_iters=opt.lr_decay_iters,
        )
    if opt.schedule == "warmup_cosine":
        # lr * it / warmup from zero (step 0 trains at lr 0), cosine to min_lr at lr_decay_iters
        # (optax counts the warmup in decay_steps), then min_lr: the common hand-written loop.
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=opt.lr,
            warmup_steps=opt.warmup_iters,
            decay_steps=max(opt.lr_decay_iters, opt.warmup_iters + 1),
            end_value=opt.min_lr,
        )
    if opt.schedule == "constant":
        return optax.constant_schedule(opt.lr)
    if opt.schedule == "mingpt":
        return lambda it: mingpt_lr(
            it,
            lr=opt.lr,
            tokens_per_step=tokens_per_step,
            warmup_tokens=opt.warmup_tokens,
            final_tokens=opt.final_tokens,
        )
    raise UsageError(f"opt.schedule must be one of {list(SCHEDULES)}, got {opt.schedule!r}")


def decay_mask(kind: str):
    """Which params get weight decay.

    'ndim': every tensor with ndim >= 2, embeddings included (nanoGPT).
    'linear': Linear kernels only; no embeddings, LayerNorms or biases (minGPT).
    'all': every parameter (torch.optim.AdamW(model.parameters()), as the lecture's loop).
    """
    if kind == "all":
        return lambda params: jax.tree.map(lambda p: True, params)
    if kind == "ndim":
        return lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    if kind == "linear":

        def mask(params):
            return jax.tree_util.tree_map_with_path(
                lambda path, _: [k.key for k in path if hasattr(k, "key")][-1] == "kernel", params
            )

        return mask
    raise UsageError(f"opt.decay_mask must be one of {list(DECAY_MASKS)}, got {kind!r}")


def make_optimizer(opt: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
    """AdamW after global-norm clipping (nanoGPT's order); grad_clip 0 turns clipping off."""
    adamw = optax.adamw(
        schedule,
        b1=opt.b1,
        b2=opt.b2,
        eps=opt.eps,
        weight_decay=opt.weight_decay,
        mask=decay_mask(opt.decay_mask),
    )
    if opt.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(opt.grad_clip), adamw)
    return adamw
