import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY
from ml_collections import config_dict
from optimizer_test import _opt

from minigpt_jax import evaluate, optimizer, sharding, train
from minigpt_jax.model import make_model

MESH = config_dict.ConfigDict(dict(data=1, fsdp=1, tensor=1))


def _setup(model_cfg=TINY, **opt_kw):
    opt = _opt(schedule="constant", lr=1e-2, **opt_kw)
    schedule = optimizer.make_schedule(opt, tokens_per_step=1)
    tx = optimizer.make_optimizer(opt, schedule)
    model = make_model(model_cfg)
    mesh = sharding.make_mesh(MESH)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        state, _, _ = train.create_train_state(model, tx, model_cfg, mesh, seed=0)
    step = jax.jit(train.make_train_step(model, tx, schedule))
    return model, state, step


@pytest.fixture(scope="module")
def setup():
    return _setup()


def _batch(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, TINY.vocab_size, (n, TINY.block_size)).astype(np.int32)
    y = rng.integers(0, TINY.vocab_size, (n, TINY.block_size)).astype(np.int32)
    return x, y


def test_grad_accumulation_equals_one_big_batch(setup):
    _, state, step = setup
    x, y = _batch(8)
    rng = jax.random.key(0)
    big, m_big = step(state, (x[None], y[None]), rng)
    acc, m_acc = step(state, (x.reshape(4, 2, -1), y.reshape(4, 2, -1)), rng)
    assert float(m_acc["loss"]) == pytest.approx(float(m_big["loss"]), rel=1e-6)
    assert float(m_acc["grad_norm"]) == pytest.approx(float(m_big["grad_norm"]), rel=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), acc.params, big.params)
    assert int(acc.step) == int(big.step) == 1
    # Accumulating differs from using only the first micro-batch.
    first, _ = step(state, (x[None, :2], y[None, :2]), rng)
    assert not np.allclose(first.params["wte"], big.params["wte"])


def test_train_step_learns_a_fixed_batch(setup):
    _, state, step = setup
    x, y = _batch(4, seed=1)
    losses = []
    for _ in range(20):
        state, m = step(state, (x[None], y[None]), jax.random.key(0))
        losses.append(float(m["loss"]))
    assert losses[-1] < losses[0] - 0.5


def test_dropout_keys_come_from_rng_and_step():
    cfg = dataclasses.replace(TINY, dropout=0.3)
    _, state, step = _setup(cfg)
    x, y = _batch(2)
    batch = (x[None], y[None])
    a, ma = step(state, batch, jax.random.key(5))
    b, mb = step(state, batch, jax.random.key(5))
    c, mc = step(state, batch, jax.random.key(6))
    assert float(ma["loss"]) == float(mb["loss"])  # same seed and step: identical
    assert float(ma["loss"]) != float(mc["loss"])
    later = state.replace(step=state.step + 1)
    _, ml = step(later, batch, jax.random.key(5))
    assert float(ml["loss"]) != float(ma["loss"])  # a new step draws new dropout masks


def test_full_val_pass_weighs_every_token_once(setup):
    model, state, _ = setup
    rng = np.random.default_rng(0)
    val = rng.integers(0, TINY.vocab_size, 61).astype(np.uint16)  # 60 targets: 7.5 windows
    splits = {"train": val, "val": val}
    eval_step = jax.jit(evaluate.make_eval_step(model))
    kw = dict(seed=0, step=0, block_size=TINY.block_size, eval_iters=2, put=lambda a: a)
    r3 = evaluate.evaluate(eval_step, state.params, splits, batch_size=3, **kw)
    r5 = evaluate.evaluate(eval_step, state.params, splits, batch_size=5, **kw)
    # Reference: every target predicted from its own window's prefix, averaged.
    losses = []
    for s in range(0, 60, TINY.block_size):
        n = min(TINY.block_size, 60 - s)
        x = jnp.asarray(val[s : s + n], jnp.int32)[None]
        y = jnp.asarray(val[s + 1 : s + 1 + n], jnp.int32)
        losses.append(evaluate.token_losses(model, state.params, x, y[None])[0])
    ref = float(jnp.concatenate(losses).mean())
    assert r3["val_loss_full"] == pytest.approx(ref, rel=1e-5)
    assert r5["val_loss_full"] == pytest.approx(ref, rel=1e-5)
    assert r3["val_bpc"] == pytest.approx(ref / np.log(2), rel=1e-5)
