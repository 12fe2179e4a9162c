"""Evaluation: nanoGPT's estimate_loss, a full pass over the val split, per-token losses, and
the samples drawn at evals. `minigpt eval` over a run's checkpoint is eval_run.py's."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from minigpt_jax import config as config_lib
from minigpt_jax import data, sample, sharding
from minigpt_jax.model import ModelConfig

EVAL_TRAIN_STREAM, EVAL_VAL_STREAM = 1, 2  # batch streams of the config seed (train uses 0)
SAMPLE_STREAM = 2  # a key stream of the config seed (init and dropout use 0 and 1)


def token_losses(
    model: nn.Module, params: Any, x_BxT: jax.Array, y_BxT: jax.Array, **kwargs
) -> jax.Array:
    logits_BxTxV = model.apply({"params": params}, x_BxT, **kwargs)
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, y_BxT)


def make_eval_step(model: nn.Module) -> Callable:
    """eval_step(params, x_NxBxT, y_NxBxT, w_NxBxT) -> (weighted loss sum, weight sum).

    One call scans all N batches: one dispatch per evaluation, not one per batch.
    """

    def eval_step(params, x_NxBxT, y_NxBxT, w_NxBxT):
        def add_batch(sums, batch):
            x_BxT, y_BxT, w_BxT = batch
            losses_BxT = token_losses(model, params, x_BxT, y_BxT, deterministic=True)
            return (sums[0] + (losses_BxT * w_BxT).sum(), sums[1] + w_BxT.sum()), None

        zero = jnp.zeros((), jnp.float32)
        sums, _ = jax.lax.scan(add_batch, (zero, zero), (x_NxBxT, y_NxBxT, w_NxBxT))
        return sums

    return eval_step


def make_token_loss_step(model: nn.Module) -> Callable:
    """token_loss_step(params, x_NxBxT, y_NxBxT) -> losses_NxBxT: every token's loss, one call."""

    def token_loss_step(params, x_NxBxT, y_NxBxT):
        one = lambda b: token_losses(model, params, *b, deterministic=True)  # noqa: E731
        return jax.lax.map(one, (x_NxBxT, y_NxBxT))

    return token_loss_step


def val_token_losses(
    token_loss_step: Callable, params: Any, val: np.ndarray, *, batch_size: int, block_size: int,
    put: Callable,
) -> np.ndarray:  # fmt: skip
    """Each val prediction's loss in text order (len(val) - 1 of them): the windows of the full
    val pass, so their mean is val_loss_full. One process's view: single-host runs only."""
    x, y, _ = full_val(val, batch_size, block_size)
    losses_NxBxT = jax.device_get(token_loss_step(params, *put((x, y))))
    return np.asarray(losses_NxBxT).reshape(-1)[: len(val) - 1]


def estimate_batches(
    tokens: np.ndarray, stream: int, *, seed: int, step: int, batch_size: int, block_size: int,
    eval_iters: int,
) -> tuple[np.ndarray, ...]:  # fmt: skip
    """nanoGPT's estimate_loss batches of one split, drawn from (seed, stream, step): this
    process's rows as (x_NxBxT, y_NxBxT, w_NxBxT), every weight 1."""
    batches = data.Batches(
        tokens, batch_size=batch_size, block_size=block_size, seed=(seed, stream, step),
        **sharding.process_slice(),
    )  # fmt: skip
    x, y = (np.stack(a) for a in zip(*(batches.batch(i) for i in range(eval_iters))))
    return x, y, np.ones(x.shape, np.float32)


def full_val(val: np.ndarray, batch_size: int, block_size: int) -> tuple[np.ndarray, ...]:
    """Every val prediction once, as whole batches of this process's rows (padding weighs 0)."""
    x, y, w = data.eval_windows(val, block_size)
    pad = -len(x) % batch_size  # whole batches; padded rows weigh 0
    proc = sharding.process_slice()
    rows = batch_size // proc["process_count"]
    own = slice(proc["process_index"] * rows, (proc["process_index"] + 1) * rows)
    return tuple(
        np.concatenate([a, np.zeros((pad, block_size), a.dtype)]).reshape(
            -1, batch_size, block_size
        )[:, own]  # this process's rows
        for a in (x, y, w)
    )


def evaluate(
    eval_step: Callable,
    params: Any,
    splits: dict[str, np.ndarray],
    *,
    seed: int,
    step: int,
    batch_size: int,
    block_size: int,
    eval_iters: int,
    put: Callable,
) -> dict[str, float]:
    """nanoGPT's estimate_loss (eval_iters random batches of each split, drawn from (seed, step))
    and one deterministic pass over the whole val split (loss and bits per character). Data
    without a val split gets the train estimate alone."""
    has_val = len(splits["val"]) > 0
    kw = dict(seed=seed, step=step, batch_size=batch_size, block_size=block_size,
              eval_iters=eval_iters)  # fmt: skip
    stacks = {"train": estimate_batches(splits["train"], EVAL_TRAIN_STREAM, **kw)}
    if has_val:
        stacks["val"] = estimate_batches(splits["val"], EVAL_VAL_STREAM, **kw)
        stacks["full"] = full_val(splits["val"], batch_size, block_size)
    means = {}
    for name, arrays in stacks.items():
        # One evaluation at a time: independent multi-device programs in flight together can
        # deadlock XLA:CPU's collectives.
        loss_sum, weight = jax.device_get(eval_step(params, *put(arrays)))
        means[name] = float(loss_sum / weight)
    if not has_val:
        return {"train_loss": means["train"]}
    return {
        "train_loss": means["train"],
        "val_loss": means["val"],
        "val_loss_full": means["full"],
        "val_bpc": means["full"] / math.log(2),
    }


def eval_sampler(cfg: Any, model_cfg: ModelConfig, meta: dict) -> Callable | None:
    """(params, step) -> text: what the model writes at each eval, for each of cfg.sample's
    settings ('temperature=0.8 top_k=200; temperature=0.5'), or None when sampling is off."""
    s = cfg.sample
    if s.max_new_tokens <= 0 or not s.settings.strip():
        return None
    tok = data.CharTokenizer.from_json(meta)
    prompt = tok.encode(s.prompt)  # names a character outside the vocabulary
    settings = config_lib.sample_settings(s.settings)
    rng = jax.random.fold_in(jax.random.key(cfg.train.seed), SAMPLE_STREAM)

    def draw(params: Any, step: int) -> str:
        texts = []
        for part, kw in settings:
            ids = sample.generate(
                params, model_cfg, prompt, jax.random.fold_in(rng, step),
                max_new_tokens=s.max_new_tokens, num_samples=s.num_samples, **kw,
            )  # fmt: skip
            texts += [f"# step {step}, {part}"] + [tok.decode(row) + "\n" for row in ids]
        return "\n".join(texts)

    return draw
