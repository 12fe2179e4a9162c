"""Parity with the PyTorch reference model: same weights -> same logits; its init and generate
follow nanoGPT's. Training parity is torch_train_test.py's."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import TINY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ml_collections import config_dict

from minigpt_jax import convert
from minigpt_jax.model import ModelConfig, abstract_params, init_params, make_model

torch = pytest.importorskip("torch")
from minigpt_jax import torch_ref  # noqa: E402  (needs torch)

# Tiny models gain nothing from threads, and on a shared CPU torch's OpenMP threads can wait on
# each other for seconds per step.
torch.set_num_threads(1)


def _opt(**kw):
    c = dict(schedule="nanogpt", lr=1e-2, min_lr=1e-3, warmup_iters=5, lr_decay_iters=20,
             warmup_tokens=0, final_tokens=0, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.1,
             decay_mask="ndim", grad_clip=1.0)  # fmt: skip
    return config_dict.ConfigDict({**c, **kw})


def _perturbed(params, seed=0):
    """Random values everywhere (biases and LayerNorm scales too), so no name can hide."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda p: np.asarray(p + 0.1 * rng.standard_normal(p.shape), np.float32), params
    )


def _torch_model(cfg, params):
    model = torch_ref.make_model(cfg)
    model.load_state_dict(torch_ref.tensors(convert.to_state_dict(params, cfg)))
    return model


def _params(cfg: ModelConfig, seed: int):
    return jax.device_get(nn.unbox(init_params(cfg, jax.random.key(seed))))


@st.composite
def model_configs(draw):
    bias = st.sampled_from([None, True, False])
    tie = draw(st.booleans())
    head = draw(st.integers(1, 2))
    norm = draw(st.sampled_from(["layernorm", "rmsnorm"]))
    return ModelConfig(
        vocab_size=draw(st.integers(3, 17)), block_size=draw(st.integers(2, 9)),
        n_layer=draw(st.integers(1, 2)), n_head=head, n_embd=head * draw(st.sampled_from([4, 8])),
        bias=draw(st.booleans()), bias_qkv=draw(bias), bias_attn_proj=draw(bias),
        bias_mlp=draw(bias), bias_ln=draw(bias) and norm == "layernorm", tie_embeddings=tie,
        bias_head=False if tie else draw(st.booleans()),
        activation=draw(st.sampled_from(["gelu", "gelu_tanh", "relu", "relu2"])),
        ln_eps=draw(st.sampled_from([1e-5, 1e-3])),
        arch=draw(st.sampled_from(["gpt"] * 4 + ["bigram"])),
        # The modern switches, in every combination (head dims 4 and 8 are even, as rotary needs)
        pos_emb=draw(st.sampled_from(["learned", "rotary"])),
        rope_base=draw(st.sampled_from([10000.0, 7.0])), norm=norm, qk_norm=draw(st.booleans()),
        logit_softcap=draw(st.sampled_from([0.0, 1.5, 30.0])),
        zero_init_proj=draw(st.booleans()),
    )  # fmt: skip


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=model_configs(), seed=st.integers(0, 2**16))
def test_same_weights_same_logits_and_round_trip(cfg, seed):
    # Random params from the tree's shapes alone: no init to compile, one jit of the forward.
    rng = np.random.default_rng(seed)
    params = jax.tree.map(
        lambda a: (0.3 * rng.standard_normal(a.shape)).astype(np.float32),
        nn.unbox(abstract_params(cfg)),
    )
    x_BxT = rng.integers(0, cfg.vocab_size, (3, cfg.block_size))
    model = make_model(cfg)
    ours = np.asarray(jax.jit(model.apply)({"params": params}, x_BxT))
    with torch.no_grad():
        theirs = _torch_model(cfg, params)(torch.from_numpy(x_BxT)).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    back = convert.from_state_dict(convert.to_state_dict(params, cfg), cfg)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
        np.testing.assert_array_equal(a, b)


def test_torch_init_follows_the_init_switches():
    big = ModelConfig(vocab_size=50, block_size=64, n_layer=8, n_head=4, n_embd=128)
    sd = torch_ref.make_model(big).state_dict()
    assert sd["transformer.h.0.mlp.c_fc.weight"].std().item() == pytest.approx(0.02, rel=0.05)
    assert sd["transformer.h.0.mlp.c_proj.weight"].std().item() == pytest.approx(0.02 / 4, rel=0.05)
    sd = torch_ref.make_model(
        dataclasses.replace(big, init="normal", wpe_init="zeros")
    ).state_dict()
    assert sd["transformer.h.0.attn.c_proj.weight"].std().item() == pytest.approx(0.02, rel=0.05)
    assert not sd["transformer.wpe.weight"].any()
    assert sd["lm_head.weight"].data_ptr() == sd["transformer.wte.weight"].data_ptr()  # tied
    sd = torch_ref.make_model(
        dataclasses.replace(big, zero_init_proj=True, pos_emb="rotary", norm="rmsnorm")
    ).state_dict()
    assert not sd["transformer.h.7.attn.c_proj.weight"].any()
    assert not sd["transformer.h.7.mlp.c_proj.weight"].any()
    assert sd["transformer.h.7.mlp.c_fc.weight"].std().item() == pytest.approx(0.02, rel=0.05)
    assert "transformer.wpe.weight" not in sd and "transformer.ln_f.bias" not in sd


def test_generate_is_nanogpts_loop():
    cfg = TINY
    model = _torch_model(cfg, _perturbed(_params(cfg, 0)))
    idx = torch.zeros((2, 1), dtype=torch.long)
    out = torch_ref.generate(model, idx, 20, top_k=3, generator=torch.Generator().manual_seed(0))
    again = torch_ref.generate(model, idx, 20, top_k=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 21) and torch.equal(out, again)  # past block_size 8: cropped
    greedy = torch_ref.generate(model, idx[:1], 3, top_k=1)
    with torch.no_grad():
        first = model(idx[:1])[0, -1].argmax().item()
    assert greedy[0, 1].item() == first
