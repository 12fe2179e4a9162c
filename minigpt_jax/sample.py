"""Autoregressive sampling with a KV cache: prefill once, then one compiled loop.

The sampler takes params and prompts and knows nothing of training. Controls: temperature
(0 is greedy), top-k, top-p (nucleus), num_samples, and a batch of prompts of different lengths
(each row keeps its own length and positions).

Past block_size. Positions are learned and absolute, so cached keys and values cannot be shifted:
  window='exact'    nanoGPT's crop, token for token: once the window is full, each token is
                    predicted from exactly the last block_size tokens, by a full-window forward
                    per token (still inside the one compiled loop).
  window='chunked'  the fast default: when the window is full, keep the last block_size // 2
                    tokens, prefill them once and continue cached. The context never drops
                    below half a window.

Randomness: sample j draws its token at step i from fold_in(fold_in(rng, j), i), whatever else
is in the batch. So a batch of prompts samples exactly as each prompt alone, and a stream in
chunks exactly as one call.

No recompiles: prompts are padded to power-of-two buckets and the loop length to buckets of
steps; temperature, top-k and top-p are traced values.

The loop is a lax.while_loop of cached decode steps with a refill step between, rather than
DESIGN.md's lax.scan: a branch inside a per-token scan made XLA copy the cache every token.

Shape legend (beyond model.py's): N rows (prompts x samples, prompt-major), W the window
(= block_size), P the prompt bucket, K the steps of one compiled decode call.
"""

from __future__ import annotations

import contextlib
import functools
import pathlib
import sys
from collections.abc import Iterator
from typing import Any, NamedTuple, TextIO

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from minigpt_jax.errors import UsageError
from minigpt_jax.model import KVCache, ModelConfig, init_cache, make_model

WINDOWS = ("chunked", "exact")
STREAM_CHUNK = 32  # tokens per decode call when streaming: small enough to feel live
MIN_PROMPT_BUCKET = 16


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
def _prefill(params: Any, ctx_NxP: jax.Array, count_N: jax.Array, *, cfg: ModelConfig):
    N, P = ctx_NxP.shape
    window_NxW = jnp.zeros((N, cfg.block_size), jnp.int32).at[:, :P].set(ctx_NxP)
    logits_NxV, cache = _forward_tail(params, cfg, init_cache(cfg, N), window_NxW, count_N, P)
    return DecodeState(cache, window_NxW, count_N, logits_NxV, jnp.int32(0))


@functools.partial(
    jax.jit,
    static_argnames=("cfg", "steps", "window", "with_logits"),
    donate_argnames=("state",),
)
def _decode(
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


def prompt_bucket(length: int, block_size: int) -> int:
    """The padded prompt length: a power of two (at least 16), at most block_size."""
    return min(block_size, max(MIN_PROMPT_BUCKET, 1 << (length - 1).bit_length()))


def steps_bucket(n: int) -> int:
    """The loop length for n new tokens: a power of two up to 256, then multiples of 256."""
    return max(16, 1 << (n - 1).bit_length()) if n <= 256 else -(-n // 256) * 256


def _as_prompts(prompt: Any) -> tuple[list[np.ndarray], bool]:
    """(prompts, single): one prompt is a 1-D sequence of ids, a batch a sequence of them."""
    if isinstance(prompt, list | tuple) and prompt and all(np.ndim(p) == 1 for p in prompt):
        return [np.asarray(p, np.int32) for p in prompt], False
    return [np.asarray(prompt, np.int32)], True


def check_settings(
    *,
    temperature: float,
    top_k: int | None,
    top_p: float,
    max_new_tokens: int = 0,
    num_samples: int = 1,
    window: str = "chunked",
) -> None:
    """ValueError naming the first bad sampling setting (the CLI's flags and config settings)."""
    if max_new_tokens < 0 or num_samples < 1 or temperature < 0:
        raise ValueError("max_new_tokens >= 0, num_samples >= 1 and temperature >= 0 are required")
    if not 0.0 < top_p <= 1.0 or (top_k is not None and top_k < 1):
        raise ValueError("top_p must be in (0, 1] and top_k None or at least 1")
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {WINDOWS}, got {window!r}")


def check_args(prompts: list[np.ndarray], cfg: ModelConfig, **settings: Any) -> None:
    """ValueError naming the first bad prompt or sampling setting."""
    if not prompts or any(p.ndim != 1 or len(p) == 0 for p in prompts):
        raise ValueError("each prompt must be a non-empty 1-D sequence of token ids")
    for p in prompts:
        if p.min() < 0 or p.max() >= cfg.vocab_size:
            raise ValueError(f"prompt token ids must be in [0, {cfg.vocab_size})")
    check_settings(**settings)


def _start(params: Any, cfg: ModelConfig, prompts: list[np.ndarray], num_samples: int):
    """Prefill every row's last block_size prompt tokens (nanoGPT's crop) in one forward."""
    W = cfg.block_size
    ctx = [p[-W:] for p in prompts for _ in range(num_samples)]
    count_N = np.array([len(c) for c in ctx], np.int32)
    ctx_NxP = np.zeros((len(ctx), prompt_bucket(int(count_N.max()), W)), np.int32)
    for n, c in enumerate(ctx):
        ctx_NxP[n, : len(c)] = c
    # numpy in, not jnp.asarray: that would compile a copy program per new shape.
    return _prefill(params, ctx_NxP, count_N, cfg=cfg)


def _run(
    params, cfg, prompts, rng, *, max_new_tokens, temperature, top_k, top_p, num_samples, window,
    steps, first_sample, with_logits,
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:  # fmt: skip
    """Yields (tokens_NxK, logits_NxKxV or None), one decode call of `steps` tokens at a time."""
    check_args(
        prompts, cfg, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
        top_p=top_p, num_samples=num_samples, window=window,
    )  # fmt: skip
    if max_new_tokens == 0:
        return
    state = _start(params, cfg, prompts, num_samples)
    ids = np.tile(np.arange(first_sample, first_sample + num_samples), len(prompts))
    args = (
        rng,
        ids.astype(np.int32),
        np.float32(temperature),
        np.int32(top_k or 0),
        np.float32(top_p),
    )
    kw = dict(cfg=cfg, steps=steps, window=window, with_logits=with_logits)
    state, tokens, logits = _decode(params, state, *args, **kw)
    for done in range(0, max_new_tokens, steps):
        if done + steps < max_new_tokens:  # dispatch the next call before reading this one
            state, next_tokens, next_logits = _decode(params, state, *args, **kw)
        n = min(steps, max_new_tokens - done)
        # Slice on the host: slicing the device array would compile a program per n.
        yield np.asarray(tokens)[:, :n], None if logits is None else np.asarray(logits)[:, :n]
        if done + steps < max_new_tokens:
            tokens, logits = next_tokens, next_logits


def stream(
    params: Any,
    cfg: ModelConfig,
    prompt: Any,
    rng: jax.Array,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    num_samples: int = 1,
    window: str = "chunked",
    chunk: int = STREAM_CHUNK,
    first_sample: int = 0,
) -> Iterator[np.ndarray]:
    """Yields the new tokens (N, <= chunk) as they are made; rows are prompt-major.

    first_sample numbers the samples from there, so samples drawn one at a time equal a batch.
    """
    prompts, _ = _as_prompts(prompt)
    for tokens_NxK, _ in _run(
        params, cfg, prompts, rng, max_new_tokens=max_new_tokens, temperature=temperature,
        top_k=top_k, top_p=top_p, num_samples=num_samples, window=window, steps=chunk,
        first_sample=first_sample, with_logits=False,
    ):  # fmt: skip
        yield tokens_NxK


def generate(
    params: Any,
    cfg: ModelConfig,
    prompt: Any,
    rng: jax.Array,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    num_samples: int = 1,
    window: str = "chunked",
    return_logits: bool = False,
) -> Any:
    """prompt (P,) ids -> (num_samples, P + max_new_tokens) ids; a list of prompts -> a list.

    With return_logits, also the raw logits each new token was drawn from, (N, max_new, V).
    """
    prompts, single = _as_prompts(prompt)
    chunks = list(
        _run(
            params, cfg, prompts, rng, max_new_tokens=max_new_tokens, temperature=temperature,
            top_k=top_k, top_p=top_p, num_samples=num_samples, window=window,
            steps=steps_bucket(max_new_tokens), first_sample=0, with_logits=return_logits,
        )
    )  # fmt: skip
    N = len(prompts) * num_samples
    new_NxM = np.concatenate([t for t, _ in chunks], 1) if chunks else np.zeros((N, 0), np.int32)
    out = [
        np.concatenate([np.tile(p, (num_samples, 1)), new_NxM[i * num_samples :][:num_samples]], 1)
        for i, p in enumerate(prompts)
    ]
    out = out[0] if single else out
    if not return_logits:
        return out
    V = cfg.vocab_size
    logits = np.concatenate([lg for _, lg in chunks], 1) if chunks else np.zeros((N, 0, V))
    return out, logits


def sample_run(
    workdir: str | pathlib.Path,
    prompt: str,
    *,
    seed: int = 0,
    max_new_tokens: int = 500,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    num_samples: int = 1,
    window: str = "chunked",
    out: pathlib.Path | None = None,
    stdout: TextIO | None = None,
) -> None:
    """`minigpt sample`: the run's latest checkpoint continues `prompt`, streamed as it is made.

    Samples are drawn one after another (each equals its row of a batched generate), each
    followed by a line of dashes; `out` gets the same text.
    """
    from minigpt_jax import checkpoint, data  # here, so generate() alone never loads orbax

    _, meta, cfg = checkpoint.read_run(workdir)
    tokenizer = data.CharTokenizer.from_json(meta)
    ids = tokenizer.encode(prompt)  # names any character outside the vocabulary
    ckpt = checkpoint.Checkpointer(workdir, create=False)
    step = ckpt.latest_step()
    if step is None:
        raise UsageError(f"{workdir} holds no checkpoint yet; train it first")
    x_1xT = jnp.zeros((1, cfg.block_size), jnp.int32)
    abstract = jax.eval_shape(
        lambda r: nn.unbox(make_model(cfg).init(r, x_1xT))["params"], jax.random.key(0)
    )
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract
    )
    params = ckpt.restore_params(step, abstract)
    ckpt.close()
    sinks = [stdout or sys.stdout]  # looked up now: tests and callers swap sys.stdout
    with contextlib.ExitStack() as stack:
        if out is not None:
            try:
                sinks.append(stack.enter_context(open(out, "w", encoding="utf-8")))
            except OSError as e:
                raise UsageError(f"cannot write --out {out}: {e.strerror}") from None

        def write(text: str) -> None:
            for sink in sinks:
                sink.write(text)
                sink.flush()

        for j in range(num_samples):
            write(prompt)
            for tokens_1xK in stream(
                params, cfg, ids, jax.random.key(seed), max_new_tokens=max_new_tokens,
                temperature=temperature, top_k=top_k, top_p=top_p, window=window,
                first_sample=j,
            ):  # fmt: skip
                write(tokenizer.decode(tokens_1xK[0]))
            write("\n---------------\n")
