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
Rotary positions (pos_emb='rotary') do not make 'exact' cacheable: a sliding cache keeps each
token's keys and values from layer 2 on as computed from its own earlier context, which the crop
drops, so it equals the crop only for a 1-layer model. 'exact' stays a full-window forward per
token for every model.

Randomness: sample j draws its token at step i from fold_in(fold_in(rng, j), i), whatever else
is in the batch. So a batch of prompts samples exactly as each prompt alone, and a stream in
chunks exactly as one call.

No recompiles: prompts are padded to power-of-two buckets and the loop length to buckets of
steps; temperature, top-k and top-p are traced values.

The loop is a lax.while_loop of cached decode steps with a refill step between, rather than
DESIGN.md's lax.scan: a branch inside a per-token scan made XLA copy the cache every token.

The compiled loops live in decode.py; shapes are named as its legend says.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from minigpt_jax import decode
from minigpt_jax.model import ModelConfig

WINDOWS = ("chunked", "exact")
STREAM_CHUNK = 32  # tokens per decode call when streaming: small enough to feel live
MIN_PROMPT_BUCKET = 16
DEFAULTS = dict(temperature=1.0, top_k=None, top_p=1.0, num_samples=1, window="chunked")


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
    if max_new_tokens < 0 or num_samples < 1:
        raise ValueError("max_new_tokens >= 0 and num_samples >= 1 are required")
    if not (math.isfinite(temperature) and temperature >= 0):  # nan and inf: logits of nan
        raise ValueError(
            f"temperature must be a finite number >= 0 (0 is greedy), got {temperature}"
        )
    if not 0.0 < top_p <= 1.0 or (top_k is not None and top_k < 1):
        raise ValueError("top_p must be in (0, 1] and top_k None or at least 1")
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {WINDOWS}, got {window!r}")


def check_seed(seed: int) -> None:
    """ValueError unless seed is an int in [0, 2**32): jax.random.key keeps only the low 32 bits
    (x64 off), so a larger seed would draw what a smaller one draws, and beyond 2**63 fails."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ValueError(f"must be an integer in [0, 2**32), got {seed!r}")


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
    return decode.prefill(params, ctx_NxP, count_N, cfg=cfg)


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
    args = (rng, ids.astype(np.int32), *decode.traced_settings(temperature, top_k, top_p))
    kw = dict(cfg=cfg, steps=steps, window=window, with_logits=with_logits)
    state, tokens, logits = decode.decode(params, state, *args, **kw)
    for done in range(0, max_new_tokens, steps):
        if done + steps < max_new_tokens:  # dispatch the next call before reading this one
            state, next_tokens, next_logits = decode.decode(params, state, *args, **kw)
        n = min(steps, max_new_tokens - done)
        # Slice on the host: slicing the device array would compile a program per n.
        yield np.asarray(tokens)[:, :n], None if logits is None else np.asarray(logits)[:, :n]
        if done + steps < max_new_tokens:
            tokens, logits = next_tokens, next_logits


def stream(
    params: Any, cfg: ModelConfig, prompt: Any, rng: jax.Array, *, max_new_tokens: int,
    chunk: int = STREAM_CHUNK, first_sample: int = 0, **settings: Any,
) -> Iterator[np.ndarray]:  # fmt: skip
    """Yields the new tokens (N, <= chunk) as they are made; rows are prompt-major. settings:
    generate's (temperature, top_k, top_p, num_samples, window), with its defaults.

    first_sample numbers the samples from there, so samples drawn one at a time equal a batch.
    """
    prompts, _ = _as_prompts(prompt)
    settings = DEFAULTS | settings
    for tokens_NxK, _ in _run(
        params, cfg, prompts, rng, max_new_tokens=max_new_tokens, steps=chunk,
        first_sample=first_sample, with_logits=False, **settings,
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
