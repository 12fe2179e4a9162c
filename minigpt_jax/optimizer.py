"""Learning-rate schedules, AdamW, and Muon + AdamW. nanoGPT's and minGPT's schedules are written
out (their exact formulas are pinned by tests); warmup-from-zero cosine and constant are optax's
own. opt.optimizer=muon splits the params in two groups (muon.py has the update)."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from minigpt_jax import muon
from minigpt_jax.errors import UsageError

SCHEDULES = ("nanogpt", "constant", "mingpt", "warmup_cosine")
DECAY_MASKS = ("ndim", "linear", "all")
OPTIMIZERS = ("adamw", "muon")


def check_config(o: Any) -> None:
    """AdamW's, Muon's and the schedule's numbers where only one side makes sense (nan fails
    each); config.validate calls it with the other checks."""
    for name in ("lr", "min_lr", "weight_decay", "grad_clip", "warmup_iters", "muon_lr",
                 "muon_weight_decay"):  # fmt: skip
        if not o[name] >= 0:
            raise UsageError(f"opt.{name} must be >= 0, got {o[name]}")
    for name in ("b1", "b2", "muon_momentum"):
        if not 0 <= o[name] < 1:
            raise UsageError(f"opt.{name} must be in [0, 1), got {o[name]}")
    if not o.eps > 0:
        raise UsageError(f"opt.eps must be > 0, got {o.eps}")
    if not 1 <= o.muon_ns_steps < 100:  # torch refuses 100 and more
        raise UsageError(f"opt.muon_ns_steps must be in [1, 99], got {o.muon_ns_steps}")
    if o.optimizer == "muon" and not o.lr > 0:
        raise UsageError("opt.lr must be > 0 with opt.optimizer=muon: Muon's min_lr is "
                         f"opt.min_lr * muon_lr / lr, got lr={o.lr}")  # fmt: skip


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


def make_schedule(
    opt: Any, tokens_per_step: int, *, lr: float | None = None, min_lr: float | None = None
) -> optax.Schedule:
    """The lr as a function of the optimizer step, from the `opt` section (checked by
    config.validate: the decay ends after the warmup, minGPT's token counts are ordered);
    lr and min_lr, when given, replace opt.lr and opt.min_lr (Muon's group)."""
    lr = opt.lr if lr is None else lr
    min_lr = opt.min_lr if min_lr is None else min_lr
    if opt.schedule == "nanogpt":
        return lambda it: nanogpt_lr(
            it,
            lr=lr,
            min_lr=min_lr,
            warmup_iters=opt.warmup_iters,
            lr_decay_iters=opt.lr_decay_iters,
        )
    if opt.schedule == "warmup_cosine":
        # lr * it / warmup from zero (step 0 trains at lr 0), cosine to min_lr at lr_decay_iters
        # (optax counts the warmup in decay_steps), then min_lr: the common hand-written loop.
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=lr,
            warmup_steps=opt.warmup_iters,
            decay_steps=max(opt.lr_decay_iters, opt.warmup_iters + 1),
            end_value=min_lr,
        )
    if opt.schedule == "constant":
        return optax.constant_schedule(lr)
    if opt.schedule == "mingpt":
        return lambda it: mingpt_lr(
            it,
            lr=lr,
            tokens_per_step=tokens_per_step,
            warmup_tokens=opt.warmup_tokens,
            final_tokens=opt.final_tokens,
        )
    raise UsageError(f"opt.schedule must be one of {list(SCHEDULES)}, got {opt.schedule!r}")


def muon_schedule(opt: Any, tokens_per_step: int) -> optax.Schedule:
    """Muon's lr: opt.schedule's shape with peak opt.muon_lr and min_lr in the same proportion
    (opt.min_lr * muon_lr / lr; config.validate asks for lr > 0 with Muon)."""
    min_lr = opt.min_lr * opt.muon_lr / opt.lr
    return make_schedule(opt, tokens_per_step, lr=opt.muon_lr, min_lr=min_lr)


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


def make_optimizer(
    opt: Any, schedule: optax.Schedule, muon_schedule: optax.Schedule | None = None
) -> optax.GradientTransformation:
    """AdamW after global-norm clipping (nanoGPT's order); grad_clip 0 turns clipping off.

    opt.optimizer=muon: the blocks' 2-D kernels (muon.is_hidden_matrix) take Muon at
    muon_schedule, everything else the same AdamW at schedule; the clipping stays global, before
    both, as clip_grad_norm_ over all params before two torch optimizers step.
    """
    tx = optax.adamw(
        schedule,
        b1=opt.b1,
        b2=opt.b2,
        eps=opt.eps,
        weight_decay=opt.weight_decay,
        mask=decay_mask(opt.decay_mask),
    )
    if opt.optimizer == "muon":
        if muon_schedule is None:
            raise ValueError("opt.optimizer=muon needs muon_schedule (optimizer.muon_schedule)")
        hidden = muon.muon(
            muon_schedule,
            momentum=opt.muon_momentum,
            nesterov=opt.muon_nesterov,
            weight_decay=opt.muon_weight_decay,
            ns_steps=opt.muon_ns_steps,
            ns_dtype=opt.muon_ns_dtype,
        )
        tx = optax.partition({"adamw": tx, "muon": hidden}, muon.labels)
    elif opt.optimizer != "adamw":
        raise UsageError(f"opt.optimizer must be one of {list(OPTIMIZERS)}, got {opt.optimizer!r}")
    if opt.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(opt.grad_clip), tx)
    return tx
