import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minigpt_jax import sample


def test_greedy_generation_crops_like_nanogpt(tiny):
    """Past block_size each token is predicted from exactly the last block_size tokens."""
    cfg, model, params = tiny
    prompt = np.array([1, 2, 3, 4, 5], np.int32)
    n_new = 2 * cfg.block_size  # well past the window
    out = sample.generate(
        params, cfg, prompt, jax.random.key(0), max_new_tokens=n_new, temperature=0.0
    )
    assert out.shape == (1, len(prompt) + n_new)
    idx = list(prompt)
    for _ in range(n_new):  # nanoGPT's generate: crop, forward, take the last position
        window = jnp.asarray(idx[-cfg.block_size :], jnp.int32)[None]
        idx.append(int(jnp.argmax(model.apply({"params": params}, window)[0, -1])))
    np.testing.assert_array_equal(out[0], idx)


def test_sampling_is_seeded_and_batched(tiny):
    cfg, _, params = tiny
    prompt = np.array([3], np.int32)
    kw = dict(max_new_tokens=12, temperature=1.0, num_samples=3)
    a = sample.generate(params, cfg, prompt, jax.random.key(1), **kw)
    b = sample.generate(params, cfg, prompt, jax.random.key(1), **kw)
    c = sample.generate(params, cfg, prompt, jax.random.key(2), **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len({tuple(row) for row in a}) > 1  # rows draw independently


LOGITS = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))


def _support(temperature=1.0, top_k=None, top_p=1.0):
    kept = sample.filter_logits(LOGITS, jnp.float32(temperature), top_k, jnp.float32(top_p))
    return set(np.flatnonzero(np.isfinite(np.asarray(kept[0]))).tolist())


@pytest.mark.parametrize(
    "kw, support",
    [
        ({}, {0, 1, 2, 3}),
        ({"top_k": 2}, {0, 1}),
        ({"top_k": 1}, {0}),
        ({"top_p": 0.5}, {0}),  # token 0 alone reaches 0.5
        ({"top_p": 0.6}, {0, 1}),
        ({"top_p": 0.9}, {0, 1, 2}),
        ({"top_k": 2, "top_p": 0.99}, {0, 1}),
    ],
)
def test_top_k_and_top_p_keep_the_right_tokens(kw, support):
    assert _support(**kw) == support


def test_temperature_zero_is_argmax_and_temperature_sharpens():
    rng = jax.random.key(0)
    greedy = [
        int(sample.sample_token(LOGITS, jax.random.fold_in(rng, i), 0.0, None, 1.0)[0])
        for i in range(20)
    ]
    assert set(greedy) == {0}
    cold = sample.filter_logits(LOGITS, jnp.float32(0.5), None, jnp.float32(1.0))
    assert float(jax.nn.softmax(cold)[0, 0]) > 0.5
