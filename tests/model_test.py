import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import TINY, init_params

from minigpt_jax.model import ModelConfig, count_params, make_model


def _shapes(params):
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {"/".join(k.key for k in path): tuple(v.shape) for path, v in flat}


def test_param_tree_reads_like_nanogpt(tiny):
    cfg, _, params = tiny
    C, V, T = cfg.n_embd, cfg.vocab_size, cfg.block_size
    expected = {"wte": (V, C), "wpe": (T, C), "ln_f/scale": (C,)}
    for i in range(cfg.n_layer):
        expected |= {
            f"h_{i}/ln_1/scale": (C,),
            f"h_{i}/attn/c_attn/kernel": (C, 3 * C),
            f"h_{i}/attn/c_proj/kernel": (C, C),
            f"h_{i}/ln_2/scale": (C,),
            f"h_{i}/mlp/c_fc/kernel": (C, 4 * C),
            f"h_{i}/mlp/c_proj/kernel": (4 * C, C),
        }
    assert _shapes(params) == expected


def test_bias_and_untied_head_add_their_params():
    cfg = dataclasses.replace(TINY, bias=True, tie_embeddings=False)
    shapes = _shapes(init_params(cfg)[1])
    C, V = cfg.n_embd, cfg.vocab_size
    assert shapes["lm_head/kernel"] == (C, V) and "lm_head/bias" not in shapes
    assert shapes["h_0/attn/c_attn/bias"] == (3 * C,)
    assert shapes["h_1/mlp/c_proj/bias"] == (C,)
    assert shapes["h_0/ln_1/bias"] == (C,) and shapes["ln_f/bias"] == (C,)


def test_bias_per_place_overrides_the_flag():
    """The lecture's model: no q/k/v bias, biases in projections, MLP, LayerNorms and head."""
    cfg = dataclasses.replace(TINY, bias=True, bias_qkv=False, tie_embeddings=False, bias_head=True)
    shapes = _shapes(init_params(cfg)[1])
    assert "h_0/attn/c_attn/bias" not in shapes
    assert shapes["h_0/attn/c_proj/bias"] == (cfg.n_embd,)
    assert shapes["lm_head/bias"] == (cfg.vocab_size,)
    # day20's: biases in the MLP only (and LayerNorms), none in attention or head
    cfg = dataclasses.replace(TINY, bias=False, bias_mlp=True, bias_ln=True)
    biased = {k for k in _shapes(init_params(cfg)[1]) if k.endswith("/bias")}
    assert biased == {
        *(f"h_{i}/{m}/bias" for i in range(cfg.n_layer) for m in ("mlp/c_fc", "mlp/c_proj")),
        *(f"h_{i}/{n}/bias" for i in range(cfg.n_layer) for n in ("ln_1", "ln_2")),
        "ln_f/bias",
    }


def test_head_bias_shifts_logits():
    cfg = dataclasses.replace(TINY, tie_embeddings=False, bias_head=True)
    model, params = init_params(cfg)
    x = jnp.array([[1, 2, 3]])
    shift = jnp.arange(cfg.vocab_size, dtype=jnp.float32)
    moved = {**params, "lm_head": {**params["lm_head"], "bias": shift}}
    delta = model.apply({"params": moved}, x) - model.apply({"params": params}, x)
    np.testing.assert_allclose(delta, jnp.broadcast_to(shift, delta.shape), atol=1e-5)


def test_normal_init_and_zero_wpe():
    cfg = ModelConfig(
        vocab_size=64, block_size=64, n_layer=8, n_head=4, n_embd=256, init="normal",
        wpe_init="zeros",
    )  # fmt: skip
    params = init_params(cfg)[1]
    assert np.std(params["h_3"]["mlp"]["c_proj"]["kernel"]) == pytest.approx(0.02, rel=0.05)
    assert np.std(params["h_3"]["attn"]["c_proj"]["kernel"]) == pytest.approx(0.02, rel=0.05)
    np.testing.assert_array_equal(params["wpe"], 0.0)


def test_attention_dropout_is_its_own_switch():
    """attn_dropout alone changes training outputs; dropout with attn_dropout=0 differs from
    dropout everywhere, so the attention weights are (or are not) dropped."""
    x = jax.random.randint(jax.random.key(5), (2, TINY.block_size), 0, TINY.vocab_size)
    model, params = init_params(TINY)

    def run(**kw):
        cfg = dataclasses.replace(TINY, **kw)
        return make_model(cfg).apply(
            {"params": params}, x, deterministic=False, rngs={"dropout": jax.random.key(0)}
        )

    base = model.apply({"params": params}, x)
    np.testing.assert_array_equal(run(dropout=0.0, attn_dropout=0.0), base)
    assert not np.allclose(run(dropout=0.0, attn_dropout=0.5), base)
    assert not np.allclose(run(dropout=0.3), run(dropout=0.3, attn_dropout=0.0))


def test_nanogpt_preset_param_count():
    cfg = ModelConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384)
    model = make_model(cfg)
    abstract = jax.eval_shape(
        lambda r: nn.unbox(model.init(r, jnp.zeros((1, 8), jnp.int32)))["params"],
        jax.random.key(0),
    )
    nano, total = count_params(abstract)
    assert round(nano / 1e6, 2) == 10.65  # nanoGPT prints "number of parameters: 10.65M"
    assert total - nano == 256 * 384  # wpe


def test_init_follows_nanogpt():
    cfg = ModelConfig(vocab_size=64, block_size=64, n_layer=8, n_head=4, n_embd=256)
    params = init_params(cfg)[1]
    assert np.std(params["wte"]) == pytest.approx(0.02, rel=0.05)
    assert np.std(params["h_0"]["attn"]["c_attn"]["kernel"]) == pytest.approx(0.02, rel=0.05)
    proj = 0.02 / math.sqrt(2 * cfg.n_layer)
    assert np.std(params["h_3"]["mlp"]["c_proj"]["kernel"]) == pytest.approx(proj, rel=0.05)
    assert np.std(params["h_3"]["attn"]["c_proj"]["kernel"]) == pytest.approx(proj, rel=0.05)
    np.testing.assert_array_equal(params["ln_f"]["scale"], 1.0)


def test_causal_future_tokens_do_not_change_earlier_logits(tiny):
    cfg, model, params = tiny
    x = jax.random.randint(jax.random.key(1), (2, cfg.block_size), 0, cfg.vocab_size)
    y = x.at[:, 5].set((x[:, 5] + 1) % cfg.vocab_size)
    a, b = model.apply({"params": params}, x), model.apply({"params": params}, y)
    np.testing.assert_array_equal(a[:, :5], b[:, :5])  # bit-identical before the change
    assert not np.allclose(a[:, 5:], b[:, 5:])


def test_initial_loss_is_near_log_vocab(tiny):
    cfg, model, params = tiny
    k1, k2 = jax.random.split(jax.random.key(2))
    x = jax.random.randint(k1, (16, cfg.block_size), 0, cfg.vocab_size)
    y = jax.random.randint(k2, (16, cfg.block_size), 0, cfg.vocab_size)
    logits = model.apply({"params": params}, x)
    assert logits.dtype == jnp.float32
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    assert abs(float(loss) - math.log(cfg.vocab_size)) < 0.1


def test_activation_switch_is_exact_gelu_by_default(tiny):
    _, _, params = tiny
    x = jax.random.randint(jax.random.key(3), (1, TINY.block_size), 0, TINY.vocab_size)
    outs = {}
    for act in ("gelu", "gelu_tanh", "relu"):
        cfg = dataclasses.replace(TINY, activation=act)
        outs[act] = make_model(cfg).apply({"params": params}, x)
    assert not np.allclose(outs["gelu"], outs["relu"])
    assert not np.array_equal(outs["gelu"], outs["gelu_tanh"])
    z = jnp.linspace(-3, 3, 7)
    from minigpt_jax.model_config import ACTIVATIONS

    erf_gelu = 0.5 * z * (1 + jax.scipy.special.erf(z / math.sqrt(2)))
    np.testing.assert_allclose(ACTIVATIONS["gelu"](z), erf_gelu, atol=1e-6)


def test_dropout_is_active_only_in_training():
    cfg = dataclasses.replace(TINY, dropout=0.5)
    model, params = init_params(cfg)
    x = jnp.zeros((1, cfg.block_size), jnp.int32)
    ev = model.apply({"params": params}, x)
    np.testing.assert_array_equal(ev, model.apply({"params": params}, x))
    tr = [
        model.apply({"params": params}, x, deterministic=False, rngs={"dropout": jax.random.key(i)})
        for i in range(2)
    ]
    assert not np.allclose(tr[0], ev) and not np.allclose(tr[0], tr[1])


def test_bigram_is_a_table_of_next_token_logits():
    cfg = dataclasses.replace(TINY, arch="bigram")
    model, params = init_params(cfg)
    assert _shapes(params) == {"wte": (cfg.vocab_size, cfg.vocab_size)}
    x = jnp.array([[3, 1, 4]])
    np.testing.assert_array_equal(model.apply({"params": params}, x)[0], params["wte"][x[0]])


def test_longer_than_block_size_is_rejected(tiny):
    cfg, model, params = tiny
    with pytest.raises(ValueError, match="block_size"):
        model.apply({"params": params}, jnp.zeros((1, cfg.block_size + 1), jnp.int32))


@pytest.mark.parametrize("attention", ["cudnn", "pallas"])
def test_unavailable_attention_kernel_falls_back_to_xla_and_says_so(tiny, attention, caplog):
    """On this CPU neither kernel can run: the output is the XLA path's, and a warning says why."""
    cfg, model, params = tiny
    x = jax.random.randint(jax.random.key(4), (2, cfg.block_size), 0, cfg.vocab_size)
    fast = dataclasses.replace(cfg, attention=attention)
    with caplog.at_level("WARNING"):
        out = make_model(fast).apply({"params": params}, x)
    np.testing.assert_array_equal(out, model.apply({"params": params}, x))
    assert f"attention={attention} falls back to xla" in caplog.text


def _loss_fn(cfg, x, y):
    """params -> mean next-token cross-entropy of cfg's model on (x, y)."""
    model = make_model(cfg)

    def loss(p):
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return loss


@pytest.mark.parametrize(
    "change",
    [{}, {"bias": True, "tie_embeddings": False, "bias_head": True}, {"dtype": "bfloat16"}],
    ids=["tied", "bias-untied", "bf16"],
)
def test_narrow_linear_vjp_gives_xla_gradients(change):
    """layers.narrow_matmul's hand-written backward equals XLA's own (inputs' grads included)."""
    cfg = dataclasses.replace(TINY, **change)
    _, params = init_params(cfg)
    x = jax.random.randint(jax.random.key(1), (3, cfg.block_size), 0, cfg.vocab_size)
    y = jnp.roll(x, -1, axis=1)

    xla, narrow = (
        jax.jit(jax.grad(_loss_fn(dataclasses.replace(cfg, linear_vjp=vjp), x, y)))(params)
        for vjp in ("xla", "narrow")
    )
    tol = 2e-2 if cfg.dtype == "bfloat16" else 1e-5
    assert jax.tree.structure(xla) == jax.tree.structure(narrow)
    for a, b in zip(jax.tree.leaves(xla), jax.tree.leaves(narrow), strict=True):
        scale = float(jnp.abs(a).max()) or 1.0
        np.testing.assert_allclose(np.asarray(b) / scale, np.asarray(a) / scale, atol=tol)


def test_remat_keeps_the_gradients_and_saves_fewer_activations():
    """Recomputing blocks in the backward pass changes what the forward keeps, not the math.
    (What XLA then allocates is the backend's business: bench train reports its temp memory.)"""
    cfg = dataclasses.replace(TINY, n_layer=4, n_embd=64, n_head=4, block_size=64)
    _, params = init_params(cfg)
    x = jax.random.randint(jax.random.key(1), (8, cfg.block_size), 0, cfg.vocab_size)
    y = jnp.roll(x, -1, axis=1)
    kept, grads = {}, {}
    for remat in ("none", "dots", "block"):
        loss = _loss_fn(dataclasses.replace(cfg, remat=remat), x, y)
        residuals = jax.eval_shape(lambda p: jax.vjp(loss, p)[1], params)  # noqa: B023
        kept[remat] = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(residuals))
        grads[remat] = jax.jit(jax.grad(loss))(params)
    for remat in ("dots", "block"):
        for a, b in zip(jax.tree.leaves(grads["none"]), jax.tree.leaves(grads[remat]), strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    assert kept["block"] < kept["dots"] < kept["none"] / 2, kept
