"""The run builder: one config in, model, optimizer, mesh, state and jitted steps out."""

import jax
import numpy as np
import pytest
from conftest import TINY, tiny_config

from minigpt_jax import run as run_lib
from minigpt_jax.errors import UsageError


def _setup(**model):
    run = run_lib.build(tiny_config(**model), TINY.vocab_size)
    # The jitted train step donates its state: each call gets a fresh copy of the initial one.
    state = run.init_state()

    def step(s, batch, rng):
        with run.activate():
            return run.train_step(jax.tree.map(lambda x: x.copy(), s), run.put(batch), rng)

    return run, state, step


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
    _, state, step = _setup(dropout=0.3)
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


def test_build_matches_the_config_and_checks_it_first():
    run = run_lib.build(tiny_config(), TINY.vocab_size)
    assert run.model_cfg == TINY and run.tokens_per_step == 4 * TINY.block_size
    assert dict(run.mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    state = run.init_state()
    shapes = jax.tree.map(lambda a: (a.shape, a.dtype), state)
    assert shapes == jax.tree.map(lambda a: (a.shape, a.dtype), run.abstract_state)
    again = run_lib.build(tiny_config(), TINY.vocab_size).init_state()  # the seed's init stream
    np.testing.assert_array_equal(state.params["wte"], again.params["wte"])
    with pytest.raises(UsageError, match="train.batch_size"):
        run_lib.build(tiny_config(batch_size=0), TINY.vocab_size)


def test_host_batch_stacks_micro_batches_of_the_train_stream():
    config = tiny_config()
    config.train.grad_accum = 3
    run = run_lib.build(config, TINY.vocab_size)
    tokens = np.arange(200, dtype=np.uint16) % TINY.vocab_size
    batches = run.train_batches(tokens)
    x, y = run.host_batch(batches, 2)
    assert x.shape == y.shape == (3, 4, TINY.block_size)
    np.testing.assert_array_equal(np.asarray(x[1]), batches.batch(2 * 3 + 1)[0])


def test_log_norms_are_each_layers_grad_param_and_update_norms(setup):
    _, state, step = _setup(log_norms=True)
    x, y = _batch(4)
    new, m = step(state, (x[None], y[None]), jax.random.key(0))
    layers = sorted(state.params)  # h_0, h_1, ln_f, wpe, wte
    for name in ("grad_norm", "param_norm", "update_norm"):
        assert sorted(k.split("/")[1] for k in m if k.startswith(f"{name}/")) == layers, name

    def flat(tree):
        return np.concatenate([np.ravel(a) for a in jax.tree.leaves(tree)])

    # The layers' gradient norms make up the global one; params and updates are the step's own.
    total = np.sqrt(sum(float(m[f"grad_norm/{k}"]) ** 2 for k in layers))
    assert total == pytest.approx(float(m["grad_norm"]), rel=1e-5)
    for k in layers:
        after, before = flat(new.params[k]), flat(state.params[k])
        assert float(m[f"param_norm/{k}"]) == pytest.approx(np.linalg.norm(after), rel=1e-5)
        assert float(m[f"update_norm/{k}"]) == pytest.approx(
            np.linalg.norm(after - before), rel=1e-4
        )
    _, plain = setup[2](setup[1], (x[None], y[None]), jax.random.key(0))
    assert not [k for k in plain if "/" in k]  # off by default: the step computes none


def test_log_norms_reach_metrics_jsonl_and_tensorboard(tiny_data, tmp_path):
    from metrics_test import _scalars

    from minigpt_jax import metrics, train

    c = tiny_config(max_iters=2, eval_interval=2, ckpt_interval=2, eval_iters=1, log_norms=True)
    c.data.dir, c.sample.max_new_tokens, c.train.log_interval = str(tiny_data), 0, 1
    train.train_and_evaluate(c, tmp_path)
    records = [r for r in metrics.read_metrics(tmp_path) if r["kind"] == "train"]
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["update_norm/h_1"] > 0 and r["grad_norm/wte"] > 0 for r in records)
    scalars = _scalars(tmp_path)
    assert [s for s, _ in scalars["train/param_norm/ln_f"]] == [1, 2]
