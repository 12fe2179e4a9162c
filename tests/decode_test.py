"""The compiled sampling loops: token choice and the uncached baseline (decode.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY

from minigpt_jax import decode, sample

W = TINY.block_size


def test_benchmark_reference_samples_like_exact(tiny):
    """The recompute baseline does the same work as window='exact': same tokens, same seed."""
    cfg, _, params = tiny
    kw = dict(max_new_tokens=3 * W, temperature=1.0, top_k=5)
    ref = decode.recompute_generate(params, cfg, [1, 2, 3], jax.random.key(4), **kw)
    ours = sample.generate(params, cfg, [1, 2, 3], jax.random.key(4), window="exact", **kw)
    np.testing.assert_array_equal(ref, ours)


LOGITS = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))


def _support(temperature=1.0, top_k=None, top_p=1.0):
    kept = decode.filter_logits(LOGITS, jnp.float32(temperature), top_k, jnp.float32(top_p))
    return set(np.flatnonzero(np.isfinite(np.asarray(kept[0]))).tolist())


@pytest.mark.parametrize(
    "kw, support",
    [
        ({}, {0, 1, 2, 3}),
        ({"top_k": 2}, {0, 1}),
        ({"top_k": jnp.int32(2)}, {0, 1}),  # traced top_k: no recompile per k
        ({"top_k": 1}, {0}),
        ({"top_k": 9}, {0, 1, 2, 3}),
        ({"top_p": 0.5}, {0}),  # token 0 alone reaches 0.5
        ({"top_p": 0.6}, {0, 1}),
        ({"top_p": 0.9}, {0, 1, 2}),
        ({"top_k": 2, "top_p": 0.99}, {0, 1}),
    ],
)
def test_top_k_and_top_p_keep_the_right_tokens(kw, support):
    assert _support(**kw) == support


def test_temperature_zero_is_argmax_and_temperature_sharpens():
    keys = jax.random.split(jax.random.key(0), 20)
    logits = jnp.tile(LOGITS, (20, 1))
    greedy = decode.sample_token(logits, keys, jnp.float32(0.0), None, jnp.float32(1.0))
    assert set(np.asarray(greedy).tolist()) == {0}
    warm = decode.sample_token(logits, keys, jnp.float32(1.0), None, jnp.float32(1.0))
    assert len(set(np.asarray(warm).tolist())) > 1
    cold = decode.filter_logits(LOGITS, jnp.float32(0.5), None, jnp.float32(1.0))
    assert float(jax.nn.softmax(cold)[0, 0]) > 0.5
