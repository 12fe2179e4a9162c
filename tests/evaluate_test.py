"""Evaluation: nanoGPT's estimate, the full val pass, the samples drawn at evals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, tiny_config

from minigpt_jax import evaluate
from minigpt_jax.errors import UsageError


def test_full_val_pass_weighs_every_token_once(tiny):
    _, model, params = tiny
    rng = np.random.default_rng(0)
    val = rng.integers(0, TINY.vocab_size, 61).astype(np.uint16)  # 60 targets: 7.5 windows
    splits = {"train": val, "val": val}
    eval_step = jax.jit(evaluate.make_eval_step(model))
    kw = dict(seed=0, step=0, block_size=TINY.block_size, eval_iters=2, put=lambda a: a)
    r3 = evaluate.evaluate(eval_step, params, splits, batch_size=3, **kw)
    r5 = evaluate.evaluate(eval_step, params, splits, batch_size=5, **kw)
    # Reference: every target predicted from its own window's prefix, averaged.
    losses = []
    for s in range(0, 60, TINY.block_size):
        n = min(TINY.block_size, 60 - s)
        x = jnp.asarray(val[s : s + n], jnp.int32)[None]
        y = jnp.asarray(val[s + 1 : s + 1 + n], jnp.int32)
        losses.append(evaluate.token_losses(model, params, x, y[None])[0])
    ref = float(jnp.concatenate(losses).mean())
    assert r3["val_loss_full"] == pytest.approx(ref, rel=1e-5)
    assert r5["val_loss_full"] == pytest.approx(ref, rel=1e-5)
    assert r3["val_bpc"] == pytest.approx(ref / np.log(2), rel=1e-5)


def test_full_val_pads_to_whole_batches_that_weigh_nothing():
    val = np.arange(30, dtype=np.uint16)  # 29 targets: 4 windows of 8, the last one 5 real
    x, y, w = evaluate.full_val(val, batch_size=3, block_size=8)
    assert x.shape == y.shape == w.shape == (2, 3, 8)  # 4 windows padded to 2 batches of 3
    assert w.sum() == 29 and w[1, 1:].sum() == 0
    np.testing.assert_array_equal(y.reshape(-1)[:29], val[1:])


def test_estimate_batches_depend_on_seed_stream_and_step():
    tokens = np.arange(500, dtype=np.uint16) % 11
    kw = dict(batch_size=2, block_size=8, eval_iters=3)
    a = evaluate.estimate_batches(tokens, 1, seed=0, step=10, **kw)
    assert a[0].shape == (3, 2, 8) and a[2].sum() == 3 * 2 * 8
    np.testing.assert_array_equal(
        a[0], evaluate.estimate_batches(tokens, 1, seed=0, step=10, **kw)[0]
    )
    for other in (dict(seed=1, step=10), dict(seed=0, step=11)):
        assert not np.array_equal(a[0], evaluate.estimate_batches(tokens, 1, **other, **kw)[0])
    assert not np.array_equal(a[0], evaluate.estimate_batches(tokens, 2, seed=0, step=10, **kw)[0])


def test_eval_sampler_draws_each_setting_and_refuses_bad_ones(tiny):
    _, _, params = tiny
    meta = {"itos": [chr(ord("a") + i) for i in range(TINY.vocab_size)]}
    config = tiny_config()
    config.sample.update(prompt="abc", max_new_tokens=5, settings="temperature=0; top_k=2")
    draw = evaluate.eval_sampler(config, TINY, meta)
    text = draw(params, 7)
    assert text.count("# step 7, ") == 2 and "temperature=0" in text and "top_k=2" in text
    assert draw(params, 7) == text  # drawn from (seed, step): the same again
    config.sample.max_new_tokens = 0
    assert evaluate.eval_sampler(config, TINY, meta) is None
    config.sample.update(max_new_tokens=5, prompt="xyz!")
    with pytest.raises(UsageError, match="'!'"):
        evaluate.eval_sampler(config, TINY, meta)
