"""Weights both ways between Flax params and nanoGPT state_dicts, on numpy (no torch)."""

import dataclasses

import jax
import numpy as np
import pytest
from conftest import TINY, init_params

from minigpt_jax import convert
from minigpt_jax.errors import UsageError

UNTIED = dataclasses.replace(TINY, bias=True, tie_embeddings=False, bias_head=True)


def test_names_follow_nanogpts_state_dict():
    assert convert.torch_name(("h_3", "attn", "c_attn", "kernel")) == (
        "transformer.h.3.attn.c_attn.weight"
    )
    assert convert.torch_name(("ln_f", "scale")) == "transformer.ln_f.weight"
    assert convert.torch_name(("wpe",)) == "transformer.wpe.weight"
    assert convert.torch_name(("lm_head", "bias")) == "lm_head.bias"
    assert convert.torch_name(("wte",), arch="bigram") == convert.BIGRAM_KEY


@pytest.mark.parametrize("cfg", [TINY, UNTIED, dataclasses.replace(TINY, arch="bigram")])
def test_state_dict_round_trips_and_transposes_kernels(cfg):
    _, params = init_params(cfg, seed=1)
    sd = convert.to_state_dict(params, cfg)
    if cfg.arch == "gpt":
        kernel = np.asarray(params["h_0"]["mlp"]["c_fc"]["kernel"])
        np.testing.assert_array_equal(sd["transformer.h.0.mlp.c_fc.weight"], kernel.T)
        assert ("lm_head.weight" in sd) and (cfg.tie_embeddings or "lm_head.bias" in sd)
    back = convert.from_state_dict(sd, cfg)
    jax.tree.map(np.testing.assert_array_equal, back, jax.device_get(params))


def test_infer_config_reads_shapes_biases_and_the_head():
    _, params = init_params(UNTIED)
    sd = {f"_orig_mod.{k}": v for k, v in convert.to_state_dict(params, UNTIED).items()}
    cfg = convert.infer_config(sd, {"n_head": 2}, kind="nanogpt", source="x", overrides={})
    assert cfg == dataclasses.replace(UNTIED, dropout=0.0)
    with pytest.raises(UsageError, match="--n_head"):
        convert.infer_config(sd, {}, kind="nanogpt", source="x", overrides={})


def test_bad_state_dicts_name_the_key():
    _, params = init_params(TINY)
    sd = convert.to_state_dict(params, TINY)
    missing = {k: v for k, v in sd.items() if k != "transformer.ln_f.weight"}
    with pytest.raises(UsageError, match="lacks transformer.ln_f.weight"):
        convert.from_state_dict(missing, TINY)
    with pytest.raises(UsageError, match="shape"):
        convert.from_state_dict({**sd, "transformer.wpe.weight": np.zeros((3, 3))}, TINY)
    with pytest.raises(UsageError, match="extra"):
        convert.from_state_dict({**sd, "extra": np.zeros(1)}, TINY)
    with pytest.raises(UsageError, match="differs from wte"):
        convert.from_state_dict({**sd, "lm_head.weight": sd["lm_head.weight"] + 1}, TINY)
    # The causal-mask buffers of older checkpoints are not weights.
    convert.from_state_dict({**sd, "transformer.h.0.attn.bias": np.ones((1, 1, 8, 8))}, TINY)


def test_nanogpt_incompatible_names_each_switch():
    assert convert.nanogpt_incompatible(TINY) == []
    bad = convert.nanogpt_incompatible(dataclasses.replace(UNTIED, activation="relu"))
    assert bad == ["tie_embeddings=False", "activation='relu'", "per-place biases"]
    modern = dataclasses.replace(
        TINY, pos_emb="rotary", norm="rmsnorm", qk_norm=True, logit_softcap=30.0,
        activation="relu2", zero_init_proj=True, bias=True,
    )  # fmt: skip
    assert convert.nanogpt_incompatible(modern) == [
        "activation='relu2'", "pos_emb='rotary'", "norm='rmsnorm'", "qk_norm=True",
        "logit_softcap=30.0",
    ]  # fmt: skip
    # zero_init_proj only sets where training starts: nanoGPT runs the weights it ends with.
    assert convert.nanogpt_incompatible(dataclasses.replace(TINY, zero_init_proj=True)) == []
