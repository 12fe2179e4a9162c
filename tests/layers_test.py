"""minigpt_jax.layers: matmul and its hand-written backward, Linear, and the attention paths.

tests/model_test.py checks narrow vs xla gradients through the whole model and the kernels'
fallback through the model's output; here each layer is checked on its own against numpy.
"""

import logging
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minigpt_jax import layers


def _normal(seed, shape, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


@pytest.mark.parametrize("vjp", layers.LINEAR_VJPS)
def test_matmul_forward_is_x_at_w_over_the_last_axis(vjp):
    x, w = _normal(0, (2, 3, 5)), _normal(1, (5, 4))
    y = layers.matmul(x, w, jnp.float32, vjp)
    assert y.shape == (2, 3, 4) and y.dtype == jnp.float32
    want = np.einsum("bti,io->bto", np.asarray(x, np.float64), np.asarray(w, np.float64))
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("vjp", ["xla", "narrow"])
def test_matmul_output_dtype_is_out_dtype_not_the_inputs(vjp):
    """bf16 operands, fp32 output: the lm head's logits stay fp32."""
    x, w = _normal(0, (3, 8), jnp.bfloat16), _normal(1, (8, 2), jnp.bfloat16)
    y = layers.matmul(x, w, jnp.float32, vjp)
    assert y.dtype == jnp.float32
    want = np.asarray(x, np.float32) @ np.asarray(w, np.float32)
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("vjp", ["xla", "narrow"])
@pytest.mark.parametrize(
    "x_shape, w_shape",
    [((2, 3, 4), (4, 7)), ((2, 3, 7), (7, 4)), ((6, 5), (5, 5))],
    ids=["in<out", "in>out", "2d-square"],  # both of narrow's transposes, and no leading dims
)
def test_matmul_gradients_are_dy_wT_and_xT_dy_for_both_operands(vjp, x_shape, w_shape):
    x, w = _normal(0, x_shape), _normal(1, w_shape)
    dy = _normal(2, (*x_shape[:-1], w_shape[1]))
    y, pullback = jax.vjp(lambda a, b: layers.matmul(a, b, jnp.float32, vjp), x, w)
    dx, dw = pullback(dy)
    assert dx.shape == x.shape and dw.shape == w.shape
    x64, w64, dy64 = (np.asarray(a, np.float64) for a in (x, w, dy))
    np.testing.assert_allclose(np.asarray(dx), dy64 @ w64.T, rtol=1e-5, atol=1e-6)
    x_MxI, dy_MxO = x64.reshape(-1, x_shape[-1]), dy64.reshape(-1, w_shape[1])
    np.testing.assert_allclose(np.asarray(dw), x_MxI.T @ dy_MxO, rtol=1e-5, atol=1e-6)


def test_narrow_and_xla_gradients_agree_under_jit():
    """The two backward passes differ only in summation order: equal to fp32 rounding."""
    x, w = _normal(3, (4, 6, 16)), _normal(4, (16, 48))

    def grads(vjp):
        loss = lambda a, b: jnp.sum(jnp.tanh(layers.matmul(a, b, jnp.float32, vjp)))  # noqa: E731
        return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)

    for narrow, xla in zip(grads("narrow"), grads("xla"), strict=True):
        np.testing.assert_allclose(np.asarray(narrow), np.asarray(xla), rtol=1e-5, atol=1e-5)


def _primitives(vjp):
    jaxpr = jax.make_jaxpr(lambda a, b: layers.matmul(a, b, jnp.float32, vjp))(
        jnp.ones((2, 3)), jnp.ones((3, 4))
    )
    return {str(e.primitive) for e in jaxpr.jaxpr.eqns}


def test_auto_vjp_picks_narrow_on_cpu_and_xla_is_a_plain_dot():
    assert jax.default_backend() == "cpu"
    custom = {p for p in _primitives("narrow") if p.startswith("custom_vjp")}
    assert custom, _primitives("narrow")
    assert _primitives("auto") == _primitives("narrow")
    assert not {p for p in _primitives("xla") if p.startswith("custom")}


def test_linear_is_x_at_an_in_by_out_kernel_plus_bias():
    lin = layers.Linear(
        features=3, axes=("embed", "mlp"), std=0.02, use_bias=True, dtype=jnp.float32
    )
    x = _normal(0, (2, 4, 5))
    params = nn.unbox(lin.init(jax.random.key(1), x))["params"]
    assert params["kernel"].shape == (5, 3) and params["bias"].shape == (3,)
    np.testing.assert_array_equal(params["bias"], 0)  # zero-initialised, like nanoGPT
    assert 0.01 < float(jnp.std(params["kernel"])) < 0.04  # normal(0.02)
    params = {"kernel": params["kernel"], "bias": jnp.array([1.0, -2.0, 3.0])}
    y = lin.apply({"params": params}, x)
    want = np.asarray(x) @ np.asarray(params["kernel"]) + np.array([1.0, -2.0, 3.0])
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-6)


def test_linear_without_bias_has_no_bias_param():
    lin = layers.Linear(
        features=3, axes=("embed", "mlp"), std=0.02, use_bias=False, dtype=jnp.float32
    )
    params = nn.unbox(lin.init(jax.random.key(1), jnp.ones((1, 2, 5))))["params"]
    assert set(params) == {"kernel"}


def test_linear_computes_in_dtype_and_returns_out_dtype():
    """fp32 params, bf16 compute, fp32 output (out_dtype); without out_dtype, bf16 out."""
    x = _normal(0, (2, 3, 8))
    kw = dict(features=4, axes=("embed", "vocab"), std=0.5, use_bias=True, dtype=jnp.bfloat16)
    params = nn.unbox(layers.Linear(**kw).init(jax.random.key(1), x))["params"]
    assert params["kernel"].dtype == jnp.float32  # stored fp32 whatever the compute dtype
    assert layers.Linear(**kw).apply({"params": params}, x).dtype == jnp.bfloat16
    y = layers.Linear(**kw, out_dtype=jnp.float32).apply({"params": params}, x)
    assert y.dtype == jnp.float32
    xb, kb = (np.asarray(jnp.asarray(a, jnp.bfloat16), np.float32) for a in (x, params["kernel"]))
    np.testing.assert_allclose(np.asarray(y), xb @ kb, rtol=1e-5, atol=1e-5)


def _naive_attention(q, k, v, mask_TxS):
    """softmax(q k^T / sqrt(d)) v per batch and head, masked scores set to -inf, in float64."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    scores = np.where(mask_TxS, scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def _qkv(B=2, T=5, S=5, H=2, D=4, seed=0):
    return (
        _normal(seed, (B, T, H, D)),
        _normal(seed + 1, (B, S, H, D)),
        _normal(seed + 2, (B, S, H, D)),
    )


def _causal(T):
    return jnp.tril(jnp.ones((T, T), dtype=bool))[None]  # as model.py builds it: 1 x T x T


def _identity(p):
    return p


def test_xla_attention_equals_naive_causal_softmax():
    q, k, v = _qkv()
    y = layers.xla_attention(q, k, v, _causal(5), _identity, jnp.float32)
    assert y.shape == q.shape and y.dtype == jnp.float32
    want = _naive_attention(q, k, v, np.tril(np.ones((5, 5), bool)))
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-6)


def test_xla_attention_first_token_attends_only_to_itself():
    q, k, v = _qkv()
    y = layers.xla_attention(q, k, v, _causal(5), _identity, jnp.float32)
    np.testing.assert_allclose(np.asarray(y[:, 0]), np.asarray(v[:, 0]), rtol=1e-6)


def test_xla_attention_is_causal_later_tokens_do_not_change_earlier_outputs():
    q, k, v = _qkv(T=6, S=6)
    base = layers.xla_attention(q, k, v, _causal(6), _identity, jnp.float32)
    t = 3
    q2, k2, v2 = (a.at[:, t:].set(_normal(9, a[:, t:].shape)) for a in (q, k, v))
    changed = layers.xla_attention(q2, k2, v2, _causal(6), _identity, jnp.float32)
    np.testing.assert_array_equal(np.asarray(changed[:, :t]), np.asarray(base[:, :t]))
    assert not np.allclose(np.asarray(changed[:, t:]), np.asarray(base[:, t:]))


def test_xla_attention_follows_a_cache_mask_with_more_keys_than_queries():
    """Decoding with a KV cache: queries at positions 3 and 4 over 6 cached keys."""
    q, k, v = _qkv(T=2, S=6)
    pos_BxT = jnp.array([[3, 4], [3, 4]])
    mask_BxTxS = jnp.arange(6)[None, None, :] <= pos_BxT[:, :, None]  # as model.py builds it
    y = layers.xla_attention(q, k, v, mask_BxTxS, _identity, jnp.float32)
    want = _naive_attention(q, k, v, np.asarray(mask_BxTxS)[:, None])
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-6)
    k_late = k.at[:, 5].set(100.0)  # key 5 is past both queries: masked out
    same = layers.xla_attention(q, k_late, v, mask_BxTxS, _identity, jnp.float32)
    np.testing.assert_array_equal(np.asarray(same), np.asarray(y))


def test_xla_attention_applies_dropout_to_the_attention_weights():
    """The dropout callable gets the B x H x T x S probabilities; its output weights the values."""
    q, k, v = _qkv()
    seen = []

    def all_on_key0(p_BxHxTxS):
        seen.append(p_BxHxTxS.shape)
        return jnp.zeros_like(p_BxHxTxS).at[..., 0].set(1.0)

    y = layers.xla_attention(q, k, v, _causal(5), all_on_key0, jnp.float32)
    assert seen == [(2, 2, 5, 5)]
    want = np.broadcast_to(np.asarray(v[:, :1]), v.shape)
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-6)


def test_xla_attention_in_bf16_returns_bf16_close_to_fp32():
    q, k, v = _qkv()
    bf = [a.astype(jnp.bfloat16) for a in (q, k, v)]
    y = layers.xla_attention(*bf, _causal(5), _identity, jnp.bfloat16)
    assert y.dtype == jnp.bfloat16
    want = _naive_attention(*bf, np.tril(np.ones((5, 5), bool)))
    np.testing.assert_allclose(np.asarray(y, np.float32), want, atol=3e-2)


def test_flash_attention_xla_kind_returns_none_without_a_warning(caplog):
    q, k, v = _qkv()
    with caplog.at_level(logging.WARNING):
        assert layers.flash_attention("xla", q, k, v, False, jnp.float32) is None
    assert "falls back" not in caplog.text


@pytest.mark.parametrize(
    "kind, backend, T, dropout, dtype, reason",
    [
        ("cudnn", "cpu", 8, False, jnp.bfloat16, "cuDNN needs a GPU, this backend is cpu"),
        ("pallas", "cpu", 128, False, jnp.float32, "needs a TPU, this backend is cpu"),
        ("cudnn", "gpu", 8, True, jnp.bfloat16, "attention dropout runs on the XLA path only"),
        ("cudnn", "gpu", 8, False, jnp.float32, "needs dtype bfloat16 or float16"),
        ("pallas", "tpu", 100, False, jnp.float32, "divisible by 128, got 100"),
    ],
    ids=["cudnn-on-cpu", "pallas-on-cpu", "dropout", "cudnn-fp32", "pallas-length"],
)
def test_flash_attention_falls_back_to_xla_and_logs_why(
    monkeypatch, caplog, kind, backend, T, dropout, dtype, reason
):
    """None means 'use xla_attention'; the reason is logged. Backends other than this CPU are
    faked: every such case returns before touching a kernel."""
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    q, k, v = (a.astype(dtype) for a in _qkv(B=1, T=T, S=T, H=1, D=4))
    with caplog.at_level(logging.WARNING):
        assert layers.flash_attention(kind, q, k, v, dropout, dtype) is None
    assert f"attention={kind} falls back to xla: " in caplog.text and reason in caplog.text
