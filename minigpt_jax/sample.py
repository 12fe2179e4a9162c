"""Autoregressive sampling in one jitted lax.scan: temperature, top-k, top-p, greedy.

The sampler takes params and a prompt and knows nothing of training. This version recomputes
the whole window for every token, with nanoGPT's crop past block_size (each token is predicted
from at most the last block_size tokens).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from minigpt_jax.model import ModelConfig, make_model


def filter_logits(
    logits_NxV: jax.Array, temperature: jax.Array, top_k: int | None, top_p: jax.Array
) -> jax.Array:
    """Temperature-scaled logits with everything outside top-k / the top-p nucleus at -inf."""
    logits_NxV = logits_NxV / jnp.maximum(temperature, 1e-6)
    if top_k:
        kth_Nx1 = jax.lax.top_k(logits_NxV, min(top_k, logits_NxV.shape[-1]))[0][:, -1:]
        logits_NxV = jnp.where(logits_NxV < kth_Nx1, -jnp.inf, logits_NxV)
    # Nucleus: keep the smallest set of tokens whose probability mass reaches top_p.
    sorted_NxV = jnp.sort(logits_NxV, axis=-1)[:, ::-1]
    probs_NxV = jax.nn.softmax(sorted_NxV, axis=-1)
    mass_before_NxV = jnp.cumsum(probs_NxV, axis=-1) - probs_NxV
    cutoff_Nx1 = jnp.min(
        jnp.where(mass_before_NxV < top_p, sorted_NxV, jnp.inf), axis=-1, keepdims=True
    )
    nucleus_NxV = jnp.where(logits_NxV < cutoff_Nx1, -jnp.inf, logits_NxV)
    return jnp.where(top_p < 1.0, nucleus_NxV, logits_NxV)


def sample_token(
    logits_NxV: jax.Array,
    rng: jax.Array,
    temperature: jax.Array,
    top_k: int | None,
    top_p: jax.Array,
) -> jax.Array:
    """One token per row; temperature 0 means greedy (argmax)."""
    sampled_N = jax.random.categorical(rng, filter_logits(logits_NxV, temperature, top_k, top_p))
    return jnp.where(temperature > 0, sampled_N, jnp.argmax(logits_NxV, axis=-1))


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "top_k"))
def _generate(
    params, tokens_NxL, prompt_len, rng, temperature, top_p, *, cfg, max_new_tokens, top_k
):
    model = make_model(cfg)
    W = cfg.block_size

    def step(tokens_NxL, i):
        length = prompt_len + i  # tokens so far
        start = jnp.maximum(length - W, 0)  # nanoGPT's crop to the last block_size tokens
        window_NxW = jax.lax.dynamic_slice_in_dim(tokens_NxL, start, W, axis=1)
        logits_NxWxV = model.apply({"params": params}, window_NxW)
        # Positions past `length` hold padding; causal attention keeps them out of this row.
        logits_NxV = jax.lax.dynamic_index_in_dim(logits_NxWxV, length - 1 - start, 1, False)
        next_N = sample_token(logits_NxV, jax.random.fold_in(rng, i), temperature, top_k, top_p)
        tokens_NxL = jax.lax.dynamic_update_slice_in_dim(
            tokens_NxL, next_N[:, None].astype(tokens_NxL.dtype), length, axis=1
        )
        return tokens_NxL, None

    tokens_NxL, _ = jax.lax.scan(step, tokens_NxL, jnp.arange(max_new_tokens))
    return tokens_NxL


def generate(
    params: Any,
    cfg: ModelConfig,
    prompt: np.ndarray,
    rng: jax.Array,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    num_samples: int = 1,
) -> np.ndarray:
    """prompt (P,) token ids -> (num_samples, P + max_new_tokens) token ids."""
    prompt = np.asarray(prompt, np.int32)
    P = len(prompt)
    if P == 0:
        raise ValueError("the prompt must hold at least one token")
    L = max(P + max_new_tokens, cfg.block_size)  # room for one full window
    tokens_NxL = np.zeros((num_samples, L), np.int32)
    tokens_NxL[:, :P] = prompt
    out = _generate(
        params,
        jnp.asarray(tokens_NxL),
        jnp.int32(P),
        rng,
        jnp.float32(temperature),
        jnp.float32(top_p),
        cfg=cfg,
        max_new_tokens=max_new_tokens,
        top_k=top_k or None,
    )
    return np.asarray(out)[:, : P + max_new_tokens]
