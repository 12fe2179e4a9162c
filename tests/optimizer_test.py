import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import config_dict

from minigpt_jax import muon, optimizer
from minigpt_jax.errors import UsageError
from minigpt_jax.model import ModelConfig, abstract_params


def nanogpt_get_lr(it, lr=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=5000):
    """nanoGPT's train.py get_lr, verbatim in logic."""
    if it < warmup_iters:
        return lr * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (lr - min_lr)


def _opt(**kw):
    c = config_dict.ConfigDict(
        dict(
            schedule="nanogpt",
            lr=1e-3,
            min_lr=1e-4,
            warmup_iters=100,
            lr_decay_iters=5000,
            warmup_tokens=0,
            final_tokens=0,
            b1=0.9,
            b2=0.99,
            eps=1e-8,
            weight_decay=0.1,
            decay_mask="ndim",
            grad_clip=1.0,
            optimizer="adamw",
            muon_lr=0.02,
            muon_momentum=0.95,
            muon_nesterov=True,
            muon_weight_decay=0.0,
            muon_ns_steps=5,
            muon_ns_dtype="float32",
        )
    )
    c.update(kw)
    return c


@pytest.mark.parametrize("it", [0, 1, 50, 99, 100, 101, 2550, 4999, 5000, 5001, 7000])
def test_nanogpt_schedule_matches_get_lr(it):
    schedule = optimizer.make_schedule(_opt(), tokens_per_step=1)
    assert float(schedule(jnp.int32(it))) == pytest.approx(nanogpt_get_lr(it), rel=1e-5)


def test_nanogpt_schedule_landmarks():
    s = optimizer.make_schedule(_opt(), tokens_per_step=1)
    assert float(s(0)) == pytest.approx(1e-3 / 101)  # step 0 is not wasted at lr 0
    assert float(s(100)) == pytest.approx(1e-3)
    assert float(s(2550)) == pytest.approx((1e-3 + 1e-4) / 2)
    assert float(s(5000)) == pytest.approx(1e-4) and float(s(10**6)) == pytest.approx(1e-4)


def mingpt_lr_ref(it, lr, tokens_per_step, warmup_tokens, final_tokens):
    """minGPT's trainer: tokens counted including this batch, then warmup / cosine floor 0.1."""
    tokens = (it + 1) * tokens_per_step
    if tokens < warmup_tokens:
        mult = tokens / max(1, warmup_tokens)
    else:
        progress = (tokens - warmup_tokens) / max(1, final_tokens - warmup_tokens)
        mult = max(0.1, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return lr * mult


@pytest.mark.parametrize("it", [0, 5, 9, 10, 40, 99, 150, 400])
def test_mingpt_schedule_matches_reference(it):
    opt = _opt(schedule="mingpt", lr=6e-4, warmup_tokens=512 * 10, final_tokens=512 * 100)
    s = optimizer.make_schedule(opt, tokens_per_step=512)
    assert float(s(it)) == pytest.approx(mingpt_lr_ref(it, 6e-4, 512, 5120, 51200), rel=1e-5)


@pytest.mark.parametrize("it", [0, 1, 50, 99, 100, 101, 1000, 2999, 3000, 4000])
def test_warmup_cosine_is_the_hand_written_loop_from_zero(it):
    """lr*it/warmup from zero, then cosine to min_lr at lr_decay_iters, then min_lr: the loop
    the lecture-style trainers write by hand (the config uses optax's schedule for it)."""
    opt = _opt(schedule="warmup_cosine", lr=3e-4, min_lr=3e-5, lr_decay_iters=3000)
    if it < 100:
        ref = 3e-4 * it / 100
    else:
        ratio = min((it - 100) / (3000 - 100), 1.0)
        ref = 3e-5 + 0.5 * (1 + math.cos(math.pi * ratio)) * (3e-4 - 3e-5)
    s = optimizer.make_schedule(opt, tokens_per_step=1)
    assert float(s(it)) == pytest.approx(ref, rel=1e-5, abs=1e-12)


def test_constant_schedule_and_bad_names():
    assert float(optimizer.make_schedule(_opt(schedule="constant"), 1)(123)) == pytest.approx(1e-3)
    with pytest.raises(UsageError, match="opt.schedule"):
        optimizer.make_schedule(_opt(schedule="linear"), 1)
    with pytest.raises(UsageError, match="opt.decay_mask"):
        optimizer.decay_mask("biases")


PARAMS = {
    "wte": jnp.ones((5, 4)),
    "wpe": jnp.ones((3, 4)),
    "h_0": {
        "ln_1": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
        "attn": {"c_attn": {"kernel": jnp.ones((4, 12)), "bias": jnp.zeros(12)}},
    },
    "lm_head": {"kernel": jnp.ones((4, 5))},
}


def test_decay_masks():
    nano = optimizer.decay_mask("ndim")(PARAMS)
    assert nano["wte"] and nano["wpe"] and nano["h_0"]["attn"]["c_attn"]["kernel"]
    assert not nano["h_0"]["ln_1"]["scale"] and not nano["h_0"]["attn"]["c_attn"]["bias"]
    mingpt = optimizer.decay_mask("linear")(PARAMS)
    assert mingpt["h_0"]["attn"]["c_attn"]["kernel"] and mingpt["lm_head"]["kernel"]
    assert not mingpt["wte"] and not mingpt["wpe"] and not mingpt["h_0"]["ln_1"]["scale"]
    assert all(jax.tree.leaves(optimizer.decay_mask("all")(PARAMS)))


def adamw_reference(params, grads_seq, *, lr, b1, b2, eps, wd, clip, decay):
    """torch.optim.AdamW after clip_grad_norm_, step by step in numpy."""
    p = {k: np.array(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, grads in enumerate(grads_seq, start=1):
        norm = math.sqrt(sum(float((np.asarray(g) ** 2).sum()) for g in grads.values()))
        scale = min(1.0, clip / (norm + 1e-6))
        for k in p:
            g = np.asarray(grads[k], np.float64) * scale
            if decay[k]:
                p[k] *= 1 - lr * wd
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            m_hat, v_hat = m[k] / (1 - b1**t), v[k] / (1 - b2**t)
            p[k] -= lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def test_adamw_steps_match_torch_semantics():
    """Three updates with gradients of very different norms: clipping changes their relative
    weight in Adam's moments, so this fails if clipping is missing or misplaced."""
    opt = _opt(schedule="constant", lr=0.1, grad_clip=1.0, weight_decay=0.5)
    tx = optimizer.make_optimizer(opt, optimizer.make_schedule(opt, 1))
    params = {"w": jnp.array([[2.0, -1.0], [0.5, 3.0]]), "b": jnp.array([3.0, -2.0])}
    rng = np.random.default_rng(0)
    grads_seq = [
        {k: jnp.asarray(rng.normal(size=v.shape) * scale, jnp.float32) for k, v in params.items()}
        for scale in (10.0, 0.05, 3.0)
    ]
    state, p = tx.init(params), params
    for grads in grads_seq:
        updates, state = tx.update(grads, state, p)
        p = jax.tree.map(lambda a, u: a + u, p, updates)
    hyper = dict(lr=0.1, b1=0.9, b2=0.99, eps=1e-8, wd=0.5, decay={"w": True, "b": False})
    ref = adamw_reference(params, grads_seq, clip=1.0, **hyper)
    for k in params:
        np.testing.assert_allclose(p[k], ref[k], rtol=1e-5, atol=1e-6)
    unclipped = adamw_reference(params, grads_seq, clip=1e9, **hyper)
    assert not np.allclose(ref["w"], unclipped["w"], atol=1e-4)  # the test can tell


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    """Pinned by name on an untied model with biases (boxed params, as the run builder's init
    sees them): the head, embeddings, norms and biases stay with AdamW."""
    cfg = ModelConfig(vocab_size=7, block_size=4, n_layer=2, n_head=2, n_embd=8, bias=True,
                      tie_embeddings=False, bias_head=True)  # fmt: skip
    labels = muon.labels(abstract_params(cfg))
    flat = jax.tree_util.tree_flatten_with_path(labels)[0]
    names = {"/".join(k.key for k in path if hasattr(k, "key")): v for path, v in flat}
    hidden = [f"h_{i}/{m}/kernel" for i in (0, 1) for m in
              ("attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj")]  # fmt: skip
    assert sorted(n for n, v in names.items() if v == "muon") == sorted(hidden)
    for name in ("wte", "wpe", "lm_head/kernel", "lm_head/bias", "ln_f/scale", "h_0/ln_1/bias",
                 "h_1/attn/c_attn/bias", "h_1/mlp/c_proj/bias"):  # fmt: skip
        assert names[name] == "adamw", name


def newton_schulz_reference(g, steps=5, eps=1e-7):
    """torch's _zeropower_via_newtonschulz in float64 numpy, on a torch-layout (out, in) matrix."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = np.array(g, np.float64)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / max(np.linalg.norm(x), eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


@pytest.mark.parametrize("shape", [(6, 10), (10, 6), (8, 8)])
def test_newton_schulz_against_numpy_and_optax(shape):
    g = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    ref = newton_schulz_reference(g)
    ours = np.asarray(muon.newton_schulz(jnp.asarray(g), dtype="float32"))
    np.testing.assert_allclose(ours, ref, atol=2e-5)
    # optax's iteration (scale_by_muon without momentum: its bias correction is then 1) adds
    # eps to the norm where torch clamps at it: the same up to 1e-8 / norm.
    plain = optax.contrib.scale_by_muon(beta=0.0, nesterov=False, eps=1e-8)
    theirs, _ = plain.update(jnp.asarray(g), plain.init(jnp.asarray(g)))
    np.testing.assert_allclose(ours, np.asarray(theirs), atol=2e-5)
    bf16 = np.asarray(muon.newton_schulz(jnp.asarray(g), dtype="bfloat16").astype(jnp.float32))
    assert 1e-4 < np.abs(bf16 - ref).max() < 0.05  # bfloat16's 8 bits, not float32's
    zero = muon.newton_schulz(jnp.zeros(shape), dtype="float32")  # clamped norm: no 0/0
    assert not np.asarray(zero).any()


def test_muon_and_adamw_steps_by_hand():
    """Two updates of a kernel inside a block (Muon) and an embedding and a norm (AdamW), after
    global clipping, against torch's formulas written out: buf.lerp_(g, 1 - m), the Nesterov
    lerp, NS on the (out, in) transpose, lr * sqrt(max(1, out / in)), param *= 1 - lr * wd."""
    opt = _opt(schedule="constant", lr=0.1, optimizer="muon", muon_lr=0.05,
               muon_weight_decay=0.3, weight_decay=0.5, grad_clip=1.0)  # fmt: skip
    tx = optimizer.make_optimizer(opt, optimizer.make_schedule(opt, 1),
                                  optimizer.muon_schedule(opt, 1))  # fmt: skip
    rng = np.random.default_rng(1)
    params = {"h_0": {"mlp": {"c_fc": {"kernel": rng.standard_normal((3, 5))}},
                      "ln_1": {"scale": rng.standard_normal(3)}},
              "wte": rng.standard_normal((4, 3))}  # fmt: skip
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    grads_seq = [jax.tree.map(lambda a, s=s: jnp.asarray(rng.standard_normal(a.shape) * s,
                 jnp.float32), params) for s in (2.0, 0.1)]  # fmt: skip
    state, p = tx.init(params), params
    for grads in grads_seq:
        updates, state = tx.update(grads, state, p)
        p = optax.apply_updates(p, updates)

    k = np.array(params["h_0"]["mlp"]["c_fc"]["kernel"], np.float64).T  # torch's (out, in)
    buf = np.zeros_like(k)
    adam_in = {"w": params["wte"], "s": params["h_0"]["ln_1"]["scale"]}
    adam_grads = []
    for grads in grads_seq:
        norm = math.sqrt(sum(float((np.asarray(g, np.float64) ** 2).sum())
                             for g in jax.tree.leaves(grads)))  # fmt: skip
        scale = min(1.0, 1.0 / norm)  # optax divides by the norm (torch: norm + 1e-6)
        g = np.asarray(grads["h_0"]["mlp"]["c_fc"]["kernel"], np.float64).T * scale
        buf = buf + 0.05 * (g - buf)
        u = g + 0.95 * (buf - g)
        k = k * (1 - 0.05 * 0.3) - 0.05 * math.sqrt(5 / 3) * newton_schulz_reference(u)
        adam_grads.append({"w": grads["wte"] * scale, "s": grads["h_0"]["ln_1"]["scale"] * scale})
    adam = adamw_reference(adam_in, adam_grads, lr=0.1, b1=0.9, b2=0.99, eps=1e-8, wd=0.5,
                           clip=1e9, decay={"w": True, "s": False})  # fmt: skip
    np.testing.assert_allclose(p["h_0"]["mlp"]["c_fc"]["kernel"], k.T, atol=1e-5)
    np.testing.assert_allclose(p["wte"], adam["w"], atol=1e-5)
    np.testing.assert_allclose(p["h_0"]["ln_1"]["scale"], adam["s"], atol=1e-5)
    moved = np.asarray(p["h_0"]["mlp"]["c_fc"]["kernel"] - params["h_0"]["mlp"]["c_fc"]["kernel"])
    assert np.abs(moved).max() > 0.05  # Muon's step, not AdamW's at lr 0.1 on a unit-ish norm


@pytest.mark.parametrize("schedule", optimizer.SCHEDULES)
def test_muon_schedule_is_the_same_shape_at_its_own_peak(schedule):
    opt = _opt(schedule=schedule, warmup_iters=10, lr_decay_iters=50, warmup_tokens=640,
               final_tokens=3200, muon_lr=0.02)  # fmt: skip
    ours, theirs = optimizer.make_schedule(opt, 64), optimizer.muon_schedule(opt, 64)
    for it in [0, 5, 10, 30, 50, 80]:
        assert float(theirs(it)) == pytest.approx(float(ours(it)) * 0.02 / 1e-3, rel=1e-5)
