"""The compiled loops behind the sampler: token choice (temperature, top-k, top-p), the prefill,
the cached decode loop, and the uncached nanoGPT-style baseline it is measured against.

sample.py is the public face (generate, stream); this module holds what runs on the device.
Shape legend (beyond model.py's): N rows (prompts x samples, prompt-major), W the window
(= block_size), P the prompt bucket, K the steps of one compiled decode call, L a row's length.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from minigpt_jax.model import KVCache, ModelConfig, init_cache, make_model


class DecodeState(NamedTuple):
    """What the decode loop carries from one token to the next."""

    cache: KVCache
    window_NxW: jax.Array  # the tokens the cache holds, left-aligned; slot s = position s
    count_N: jax.Array  # how many tokens of window_NxW are real
    logits_NxV: jax.Array  # the next token's logits
    step: jax.Array  # tokens sampled so far: the fold_in index of the next draw


def filter_logits(
    logits_NxV: jax.Array,
    temperature: jax.Array,
    top_k: jax.Array | int | None,
    top_p: jax.Array,
) -> jax.Array:
    """Temperature-scaled logits with everything outside top-k / the top-p nucleus at -inf.

    top_k may be traced; None or 0 keeps every token. Ties with the k-th logit are kept (nanoGPT).
    """
    V = logits_NxV.shape[-1]
    logits_NxV = logits_NxV / jnp.maximum(temperature, 1e-6)
    sorted_NxV = -jnp.sort(-logits_NxV, axis=-1)  # descending
    k = jnp.asarray(0 if top_k is None else top_k, jnp.int32)
    k = jnp.where(k > 0, jnp.minimum(k, V), V)
    kth_Nx1 = jax.lax.dynamic_slice_in_dim(sorted_NxV, k - 1, 1, axis=-1)
    logits_NxV = jnp.where(logits_NxV < kth_Nx1, -jnp.inf, logits_NxV)
    sorted_NxV = jnp.where(sorted_NxV < kth_Nx1, -jnp.inf, sorted_NxV)
    # Nucleus: keep the smallest set of tokens whose probability mass reaches top_p.
    probs_NxV = jax.nn.softmax(sorted_NxV, axis=-1)
    mass_before_NxV = jnp.cumsum(probs_NxV, axis=-1) - probs_NxV
    cutoff_Nx1 = jnp.min(
        jnp.where(mass_before_NxV < top_p, sorted_NxV, jnp.inf), axis=-1, keepdims=True
    )
    nucleus_NxV = jnp.where(logits_NxV < cutoff_Nx1, -jnp.inf, logits_NxV)
    return jnp.where(top_p < 1.0, nucleus_NxV, logits_NxV)


def sample_token(
    logits_NxV: jax.Array,
    rng_N: jax.Array,
    temperature: jax.Array,
    top_k: jax.Array | int | None,
    top_p: jax.Array,
) -> jax.Array:
    """One token per row, row n drawn with key rng_N[n]; temperature 0 means greedy (argmax)."""
    filtered_NxV = filter_logits(logits_NxV, temperature, top_k, top_p)
    sampled_N = jax.vmap(jax.random.categorical)(rng_N, filtered_NxV)
    return jnp.where(temperature > 0, sampled_N, jnp.argmax(logits_NxV, axis=-1))


def _forward_tail(
    params: Any, cfg: ModelConfig, cache: KVCache, window_NxW: jax.Array, count_N: jax.Array, T: int
) -> tuple[jax.Array, KVCache]:
    """Next-token logits of each row, from a cached forward over (up to) its last T tokens.

    T=1 is a decode step; T=W from position 0 is a full-window recompute; in between, a prefill.
    """
    start_N = jnp.maximum(count_N - T, 0)
    tokens_NxT = jax.vmap(lambda w, s: jax.lax.dynamic_slice_in_dim(w, s, T))(window_NxW, start_N)
    pos_NxT = start_N[:, None] + jnp.arange(T)
    logits_NxTxV, cache = make_model(cfg).apply(
        {"params": params}, tokens_NxT, pos_BxT=pos_NxT, cache=cache
    )
    # Slots past a row's count hold padding; causal masking keeps them out of earlier positions.
    last_Nx1x1 = (count_N - 1 - start_N)[:, None, None]
    return jnp.take_along_axis(logits_NxTxV, last_Nx1x1, axis=1)[:, 0], cache


@functools.partial(jax.jit, static_argnames=("cfg",))
def prefill(params: Any, ctx_NxP: jax.Array, count_N: jax.Array, *, cfg: ModelConfig):
    N, P = ctx_NxP.shape
    window_NxW = jnp.zeros((N, cfg.block_size), jnp.int32).at[:, :P].set(ctx_NxP)
    logits_NxV, cache = _forward_tail(params, cfg, init_cache(cfg, N), window_NxW, count_N, P)
    return DecodeState(cache, window_NxW, count_N, logits_NxV, jnp.int32(0))


@functools.partial(
    jax.jit,
    static_argnames=("cfg", "steps", "window", "with_logits"),
    donate_argnames=("state",),
)
def decode(
    params, state, rng, sample_ids_N, temperature, top_k, top_p, *, cfg, steps, window, with_logits
):
    """`steps` tokens per row in one compiled loop -> (state, tokens_NxK, logits_NxKxV or None).

    The loop runs cached decode steps until some row's window is full, then one refill step
    (chunked: re-prefill the last keep tokens; exact: a full-window forward), and again. A
    lax.cond between the two inside a per-token scan made XLA copy the whole cache twice per
    token; here the per-token loop has no branch and updates the cache in place.
    """
    W, V, N = cfg.block_size, cfg.vocab_size, sample_ids_N.shape[0]
    keep = W if window == "exact" else max(1, W // 2)  # tokens left when the window is full
    row_keys_N = jax.vmap(jax.random.fold_in, (None, 0))(rng, sample_ids_N)
    rows_N = jnp.arange(N)
    first = state.step

    def step(T: int, carry):
        state, tokens_NxK, logits_NxKxV = carry
        keys_N = jax.vmap(jax.random.fold_in, (0, None))(row_keys_N, state.step)
        tok_N = sample_token(state.logits_NxV, keys_N, temperature, top_k, top_p)
        tok_N = tok_N.astype(jnp.int32)
        # A full row drops its oldest tokens (one for exact, all but keep - 1 for chunked).
        drop_N = jnp.where(state.count_N == W, W - keep + 1, 0)
        shifted_NxW = (jnp.arange(W)[None] + drop_N[:, None]) % W
        window_NxW = jnp.take_along_axis(state.window_NxW, shifted_NxW, axis=1)
        count_N = state.count_N - drop_N + 1
        window_NxW = window_NxW.at[rows_N, count_N - 1].set(tok_N)
        # T=keep serves every row: a row that is not full recomputes its last tokens.
        logits_NxV, cache = _forward_tail(params, cfg, state.cache, window_NxW, count_N, T)
        k = state.step - first
        tokens_NxK = tokens_NxK.at[:, k].set(tok_N)
        if with_logits:
            logits_NxKxV = logits_NxKxV.at[:, k].set(state.logits_NxV)
        state = DecodeState(cache, window_NxW, count_N, logits_NxV, state.step + 1)
        return state, tokens_NxK, logits_NxKxV

    def segment(carry):
        state = carry[0]
        left = steps - (state.step - first)
        n = jnp.minimum(jnp.min(W - state.count_N), left)  # steps before a window is full
        carry = jax.lax.fori_loop(0, n, lambda _, c: step(1, c), carry)
        return jax.lax.cond(n < left, functools.partial(step, keep), lambda c: c, carry)

    logits_NxKxV = jnp.zeros((N, steps, V), jnp.float32) if with_logits else None
    carry = (state, jnp.zeros((N, steps), jnp.int32), logits_NxKxV)
    return jax.lax.while_loop(lambda c: c[0].step - first < steps, segment, carry)


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens"))
def _recompute(params, tokens_NxL, prompt_len, rng, sample_ids_N, temperature, top_k, top_p, *,
               cfg, max_new_tokens):  # fmt: skip
    model = make_model(cfg)
    W = cfg.block_size
    G = max(1, W // 8)  # context lengths are rounded up to a multiple of G
    row_keys_N = jax.vmap(jax.random.fold_in, (None, 0))(rng, sample_ids_N)

    def forward(T, tokens_NxL, length):
        # nanoGPT: crop to the last block_size tokens, forward, keep the last position.
        start = jnp.maximum(length - W, 0)
        ctx_NxT = jax.lax.dynamic_slice_in_dim(tokens_NxL, start, T, axis=1)
        logits_NxTxV = model.apply({"params": params}, ctx_NxT)
        return jax.lax.dynamic_index_in_dim(logits_NxTxV, length - 1 - start, 1, False)

    # One branch per context length G, 2G, ..., W: each step does about the work nanoGPT's
    # forward over min(length, W) tokens does, not always a full window.
    branches = [functools.partial(forward, min(T, W)) for T in range(G, W + G, G)]

    def step(tokens_NxL, i):
        length = prompt_len + i
        branch = (jnp.minimum(length, W) - 1) // G
        logits_NxV = jax.lax.switch(branch, branches, tokens_NxL, length)
        keys_N = jax.vmap(jax.random.fold_in, (0, None))(row_keys_N, i)
        next_N = sample_token(logits_NxV, keys_N, temperature, top_k, top_p)
        tokens_NxL = jax.lax.dynamic_update_slice_in_dim(
            tokens_NxL, next_N[:, None].astype(tokens_NxL.dtype), length, axis=1
        )
        return tokens_NxL, None

    return jax.lax.scan(step, tokens_NxL, jnp.arange(max_new_tokens))[0]


def traced_settings(temperature: float, top_k: int | None, top_p: float) -> tuple:
    """Sampling settings as device scalars: traced values, so a new value does not recompile."""
    return np.float32(temperature), np.int32(top_k or 0), np.float32(top_p)


def recompute_generate(
    params: Any, cfg: ModelConfig, prompt: Sequence[int] | np.ndarray, rng: jax.Array, *,
    max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0,
    num_samples: int = 1,
) -> np.ndarray:  # fmt: skip
    """The uncached baseline: one jitted scan, each token a forward over its cropped context.

    Same keys as sample.generate, so it samples what window='exact' samples.
    """
    prompt = np.asarray(prompt, np.int32)
    P = len(prompt)
    # The padded tail holds at least one full window; causal masking ignores the padding.
    tokens_NxL = np.zeros((num_samples, max(P + max_new_tokens, cfg.block_size)), np.int32)
    tokens_NxL[:, :P] = prompt
    ids_N = np.arange(num_samples, dtype=np.int32)
    settings = traced_settings(temperature, top_k, top_p)
    out = _recompute(params, tokens_NxL, np.int32(P), rng, ids_N, *settings, cfg=cfg,
                     max_new_tokens=max_new_tokens)  # fmt: skip
    return np.asarray(out)[:, : P + max_new_tokens]
