"""ModelConfig: every switch checked on construction, read from a config's model section."""

import dataclasses

import pytest
from conftest import TINY

from minigpt_jax.model_config import ModelConfig


@pytest.mark.parametrize(
    "change, field",
    [
        ({"n_embd": 30, "n_head": 4}, "n_embd"),
        ({"n_layer": 0}, "n_layer"),
        ({"block_size": -1}, "block_size"),
        ({"vocab_size": 2.5}, "vocab_size"),
        ({"activation": "swish"}, "activation"),
        ({"dtype": "float8"}, "dtype"),
        ({"dropout": 1.0}, "dropout"),
        ({"arch": "rnn"}, "arch"),
        ({"attention": "flash"}, "attention"),
        ({"attn_dropout": -0.1}, "attn_dropout"),
        ({"init": "xavier"}, "init"),
        ({"wpe_init": "ones"}, "wpe_init"),
        ({"bias_head": True}, "bias_head"),  # with the tied head
        ({"bias_mlp": "yes"}, "bias_mlp"),
        ({"linear_vjp": "fast"}, "linear_vjp"),
        ({"remat": "all"}, "remat"),
        ({"pos_emb": "alibi"}, "pos_emb"),
        ({"pos_emb": "rotary", "n_embd": 6, "n_head": 2}, "pos_emb"),  # odd head dim
        ({"rope_base": 1.0}, "rope_base"),
        ({"norm": "batchnorm"}, "norm"),
        ({"norm": "rmsnorm", "bias_ln": True}, "bias_ln"),
        ({"qk_norm": 1}, "qk_norm"),
        ({"logit_softcap": -1.0}, "logit_softcap"),
        ({"logit_softcap": float("inf")}, "logit_softcap"),
        ({"zero_init_proj": "yes"}, "zero_init_proj"),
    ],
)
def test_invalid_config_names_the_field(change, field):
    with pytest.raises(ValueError, match=f"ModelConfig.{field}"):
        dataclasses.replace(TINY, **change)


def test_from_dict_refuses_unknown_fields_and_keeps_the_rest():
    assert ModelConfig.from_dict({"n_layer": 2, "n_embd": 32, "n_head": 2}).n_layer == 2
    with pytest.raises(ValueError, match="unknown ModelConfig field.*nlayer"):
        ModelConfig.from_dict({"nlayer": 2})


def test_bias_places_follow_the_flag_unless_set():
    cfg = dataclasses.replace(TINY, bias=True, bias_ln=False)
    assert [cfg.has_bias(p) for p in ("qkv", "attn_proj", "mlp", "ln")] == [True, True, True, False]
    # RMSNorm has no bias whatever the flag says; the other places keep theirs.
    cfg = dataclasses.replace(TINY, bias=True, norm="rmsnorm")
    assert [cfg.has_bias(p) for p in ("qkv", "attn_proj", "mlp", "ln")] == [True, True, True, False]
    assert dataclasses.replace(TINY, dropout=0.1).attn_pdrop == 0.1
    assert dataclasses.replace(TINY, dropout=0.1, attn_dropout=0.0).attn_pdrop == 0.0
