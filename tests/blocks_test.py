"""The modern switches (blocks.py, model.py): each changes what the model computes, the default
stays nanoGPT's, and each works with bf16, remat and a sharded mesh. Parity with PyTorch is
torch_ref_test.py's; the KV cache is sample_test.py's; resume is train_test.py's."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import ROOT, SWITCHES, TINY, init_params, xla_flags

from minigpt_jax import blocks, config
from minigpt_jax.model import abstract_params, make_model
from minigpt_jax.model_config import ModelConfig

ALL_ON = {k: v for change in SWITCHES.values() for k, v in change.items()}
OFF = dict(pos_emb="learned", rope_base=10000.0, norm="layernorm", qk_norm=False,
           logit_softcap=0.0, zero_init_proj=False)  # fmt: skip
X = jax.random.randint(jax.random.key(3), (2, TINY.block_size), 0, TINY.vocab_size)


def _logits(cfg, params, x=X):
    return np.asarray(make_model(cfg).apply({"params": params}, x))


def test_every_switch_is_off_by_default_in_the_model_and_the_config():
    assert {k: getattr(ModelConfig(), k) for k in OFF} == OFF
    assert {k: config.base_config().model[k] for k in OFF} == OFF
    assert config.model_config(config.base_config(), 65) == ModelConfig(dropout=0.2)


@pytest.mark.parametrize("name", sorted(SWITCHES))
def test_each_switch_changes_the_logits(tiny, name):
    """The same weights (init's, for zero_init_proj) give other logits with the switch on."""
    cfg, _, params = tiny
    params = jax.tree.map(lambda p: 4 * p, params)  # init's scores are too flat to tell
    on = dataclasses.replace(cfg, **SWITCHES[name])
    if name == "rotary":  # against learned positions whose table is all zeros: no positions
        ours = _logits(on, {k: v for k, v in params.items() if k != "wpe"})
        params = {**params, "wpe": jnp.zeros_like(params["wpe"])}
    elif name == "zero_init_proj":
        ours = _logits(on, init_params(on)[1])
    else:
        ours = _logits(on, params)
    assert np.abs(ours - _logits(cfg, params)).max() > 1e-3


def test_rotary_is_rotate_half_and_sees_only_relative_positions():
    # Rotate-half (GPT-NeoX): pair i is (x[i], x[i + D/2]); at position 1, pair 0 turns by 1 rad.
    e0_1x1x1x4 = jnp.array([1.0, 0.0, 0.0, 0.0]).reshape(1, 1, 1, 4)
    out = blocks.rotary(e0_1x1x1x4, jnp.array([[1]]), 10000.0)
    np.testing.assert_allclose(out.ravel(), [math.cos(1), 0, math.sin(1), 0], atol=1e-6)
    q, k = jax.random.normal(jax.random.key(0), (2, 1, 1, 1, 8))
    dots = [
        float(jnp.sum(blocks.rotary(q, jnp.array([[p + 3]]), 100.0)
                      * blocks.rotary(k, jnp.array([[p]]), 100.0)))
        for p in (0, 5, 40)
    ]  # fmt: skip
    np.testing.assert_allclose(dots, dots[0], rtol=1e-5)
    assert "wpe" not in init_params(dataclasses.replace(TINY, pos_emb="rotary"))[1]


def test_rmsnorm_has_a_scale_and_no_bias_and_normalises_by_the_rms():
    cfg = dataclasses.replace(TINY, norm="rmsnorm", bias=True)
    params = init_params(cfg)[1]
    assert set(params["ln_f"]) == set(params["h_0"]["ln_1"]) == {"scale"}
    assert "bias" in params["h_0"]["mlp"]["c_fc"]  # the other biases stay
    x_1x1x16 = jax.random.normal(jax.random.key(1), (1, 1, 16)) * 3 + 1
    scale = jnp.linspace(0.5, 2, 16)
    y = blocks.norm(cfg, "ln").apply({"params": {"scale": scale}}, x_1x1x16)
    rms = jnp.sqrt(jnp.mean(x_1x1x16**2) + cfg.ln_eps)
    np.testing.assert_allclose(y, x_1x1x16 / rms * scale, rtol=1e-5)
    with pytest.raises(ValueError, match="ModelConfig.bias_ln"):
        dataclasses.replace(cfg, bias_ln=True)


def test_qk_norm_and_relu2_compute_what_they_say():
    x = jax.random.normal(jax.random.key(2), (2, 3, 2, 8)) * 5
    rms = jnp.sqrt(jnp.mean(blocks.rms_normalize(x, 1e-5) ** 2, axis=-1))
    np.testing.assert_allclose(rms, 1.0, rtol=1e-4)
    from minigpt_jax.model_config import ACTIVATIONS

    z = jnp.linspace(-2, 2, 9)
    np.testing.assert_array_equal(ACTIVATIONS["relu2"](z), jnp.maximum(z, 0) ** 2)


def test_softcap_bounds_the_logits_by_tanh(tiny):
    cfg, _, params = tiny
    big = jax.tree.map(lambda p: p * 5, params)  # logits past the cap
    raw = _logits(cfg, big)
    capped = _logits(dataclasses.replace(cfg, logit_softcap=2.0), big)
    assert np.abs(raw).max() > 4 and np.abs(capped).max() <= 2.0
    np.testing.assert_allclose(capped, 2.0 * np.tanh(raw / 2.0), atol=1e-5)


def test_zero_init_proj_zeroes_only_the_projections(tiny):
    cfg, _, params = tiny
    zero = init_params(dataclasses.replace(cfg, zero_init_proj=True))[1]
    for i in range(cfg.n_layer):
        for part in ("attn", "mlp"):
            np.testing.assert_array_equal(zero[f"h_{i}"][part]["c_proj"]["kernel"], 0.0)
    same = jax.tree.map(
        np.array_equal, zero["h_0"]["attn"]["c_attn"], params["h_0"]["attn"]["c_attn"]
    )
    assert all(jax.tree.leaves(same)) and np.array_equal(zero["wte"], params["wte"])


def test_every_param_of_every_switch_has_logical_axis_names():
    boxed = abstract_params(dataclasses.replace(TINY, **ALL_ON, bias=True))
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(
        isinstance(p, nn.Partitioned) and len(p.names) == p.value.ndim for p in leaves
    )


def _loss(cfg, x, y):
    model = make_model(cfg)
    return lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.apply({"params": p}, x), y
    ).mean()


def test_all_switches_work_in_bf16_and_with_remat():
    cfg = dataclasses.replace(TINY, **(ALL_ON | {"zero_init_proj": False}))
    _, params = init_params(cfg)
    fp32 = _logits(cfg, params)
    bf16 = _logits(dataclasses.replace(cfg, dtype="bfloat16"), params)
    assert bf16.dtype == np.float32 and np.abs(bf16 - fp32).max() < 0.05
    y = jnp.roll(X, -1, axis=1)
    grads = {
        remat: jax.jit(jax.grad(_loss(dataclasses.replace(cfg, remat=remat), X, y)))(params)
        for remat in ("none", "block")
    }
    for a, b in zip(jax.tree.leaves(grads["none"]), jax.tree.leaves(grads["block"]), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7)


def test_all_switches_on_a_2x2x2_mesh_match_one_device():
    """tests/scripts/mesh_equivalence.py with every switch on: data, FSDP and tensor parallel."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests/scripts/mesh_equivalence.py"), "[1,1,1]", "[2,2,2]"],
        env={**os.environ, "PYTHONPATH": str(ROOT), "MESH_MODEL": json.dumps(ALL_ON),
             "XLA_FLAGS": xla_flags(8)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    one, mesh = results["[1, 1, 1]"], results["[2, 2, 2]"]
    assert mesh["losses"] == pytest.approx(one["losses"], rel=1e-5)
    assert mesh["wte_max_diff"] < 1e-5 and mesh["bytes"] < one["bytes"]
