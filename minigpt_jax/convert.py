"""Weights both ways between our Flax params and nanoGPT / minGPT state_dicts, on numpy arrays
(no torch needed), and the ModelConfig a state_dict implies.

The name table is one rule: Flax path h_3/attn/c_attn/kernel <-> transformer.h.3.attn.c_attn.weight
(kernels transposed: Flax's are (in, out), torch's Linear weights (out, in)), LayerNorm scale <->
weight, wte / wpe / ln_f under transformer., lm_head at the top, the bigram table as
token_embedding_table.weight. nanogpt.py reads and writes the files around them.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np

from minigpt_jax.errors import UsageError
from minigpt_jax.model import ModelConfig, abstract_params
from minigpt_jax.model_config import BIAS_PLACES

COMPILE_PREFIX = "_orig_mod."  # torch.compile's wrapper adds it to every key
# Buffers, not weights: the causal masks of older nanoGPT (no flash) and of minGPT.
MASK_BUFFERS = (".attn.bias", ".attn.masked_bias")
BIGRAM_KEY = "token_embedding_table.weight"
NANOGPT_MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")


def torch_name(path: tuple[str, ...], arch: str = "gpt") -> str:
    """The state_dict key of a Flax param path, e.g. ('h_0', 'ln_1', 'scale')."""
    if arch == "bigram":
        return BIGRAM_KEY
    head, *rest = path
    if head in ("wte", "wpe"):
        return f"transformer.{head}.weight"
    leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[rest[-1]]
    if head.startswith("h_"):
        head = f"transformer.h.{head[2:]}"
    elif head == "ln_f":
        head = "transformer.ln_f"
    return ".".join([head, *rest[:-1], leaf])


def _paths(tree: Any) -> list[tuple[tuple[str, ...], Any]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [(tuple(k.key for k in path), leaf) for path, leaf in flat]


def to_state_dict(params: Any, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Flax params -> {nanoGPT key: float32 array}; a tied head appears as wte and lm_head."""
    sd = {}
    for path, leaf in _paths(params):
        arr = np.asarray(leaf, np.float32)
        sd[torch_name(path, cfg.arch)] = arr.T if path[-1] == "kernel" else arr
    if cfg.arch == "gpt" and cfg.tie_embeddings:
        sd["lm_head.weight"] = sd["transformer.wte.weight"]
    return sd


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, perhaps bf16: numpy has no bf16
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, np.float32)


def strip_prefix(sd: dict) -> dict:
    return {k.removeprefix(COMPILE_PREFIX): v for k, v in sd.items()}


def from_state_dict(sd: dict, cfg: ModelConfig, source: str = "state_dict") -> Any:
    """A nanoGPT / minGPT state_dict -> Flax params for cfg. Missing or unknown keys, wrong
    shapes and an untied head under a tied config are UsageErrors naming the key."""
    sd = {k: v for k, v in strip_prefix(sd).items() if not k.endswith(MASK_BUFFERS)}
    expected = _paths(nn.unbox(abstract_params(cfg)))
    used, leaves = set(), []
    for path, shaped in expected:
        name = torch_name(path, cfg.arch)
        if name not in sd:
            raise UsageError(f"{source} lacks {name} (needed by {'/'.join(path)}); wrong model?")
        arr = _numpy(sd[name])
        arr = arr.T if path[-1] == "kernel" else arr
        if arr.shape != shaped.shape:
            raise UsageError(
                f"{source}: {name} has shape {tuple(_numpy(sd[name]).shape)}, the model needs "
                f"{tuple(reversed(shaped.shape)) if path[-1] == 'kernel' else shaped.shape}"
            )
        used.add(name)
        leaves.append(arr)
    if cfg.arch == "gpt" and cfg.tie_embeddings and "lm_head.weight" in sd:
        if not np.array_equal(_numpy(sd["lm_head.weight"]), _numpy(sd["transformer.wte.weight"])):
            raise UsageError(f"{source}: lm_head.weight differs from wte but the model is tied")
        used.add("lm_head.weight")
    unknown = sorted(set(sd) - used)
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise UsageError(f"{source} has keys the model does not: {', '.join(unknown[:3])}{more}")
    treedef = jax.tree.structure(nn.unbox(abstract_params(cfg)))
    return jax.tree.unflatten(treedef, leaves)


def infer_config(
    sd: dict, model_args: dict, *, kind: str, source: str, overrides: dict
) -> ModelConfig:
    """ModelConfig from a checkpoint's model_args, completed from the weights' shapes and keys;
    overrides (the CLI's --n_head, --activation, --block_size) fill what neither says."""
    sd = strip_prefix(sd)
    fields: dict[str, Any] = {"dropout": float(model_args.get("dropout", 0.0))}
    fields["activation"] = overrides.get("activation") or (
        "gelu_tanh" if kind == "mingpt" else "gelu"
    )
    if BIGRAM_KEY in sd:
        V = _numpy(sd[BIGRAM_KEY]).shape[0]
        block = model_args.get("block_size") or overrides.get("block_size") or 8
        return _model_config(dict(arch="bigram", vocab_size=V, block_size=block, n_layer=1,
                                  n_head=1, n_embd=V), source)  # fmt: skip
    for key in ("transformer.wte.weight", "transformer.wpe.weight"):
        if key not in sd:
            raise UsageError(f"{source} has no {key}: not a nanoGPT / minGPT state_dict")
    V, C = _numpy(sd["transformer.wte.weight"]).shape
    layers = {int(k.split(".")[2]) for k in sd if k.startswith("transformer.h.")}
    fields.update(
        vocab_size=V, n_embd=C, block_size=_numpy(sd["transformer.wpe.weight"]).shape[0],
        n_layer=max(layers) + 1 if layers else 0, bias_head="lm_head.bias" in sd,
    )  # fmt: skip
    fields.update({k: model_args[k] for k in NANOGPT_MODEL_ARGS if k in model_args})
    # Biases by place, from layer 0's keys: `bias` when all agree, else per-place switches.
    places = {
        "bias_qkv": "transformer.h.0.attn.c_attn.bias",
        "bias_attn_proj": "transformer.h.0.attn.c_proj.bias",
        "bias_mlp": "transformer.h.0.mlp.c_fc.bias",
        "bias_ln": "transformer.ln_f.bias",
    }
    found = {place: key in sd for place, key in places.items()}
    if len(set(found.values())) == 1:
        fields["bias"] = next(iter(found.values()))
    else:
        fields.update(found)
    fields["n_head"] = overrides.get("n_head") or model_args.get("n_head")
    if not fields["n_head"]:
        raise UsageError(f"{source} does not say n_head (the weights cannot); pass --n_head")
    head = sd.get("lm_head.weight")
    fields["tie_embeddings"] = head is None or np.array_equal(
        _numpy(head), _numpy(sd["transformer.wte.weight"])
    )
    return _model_config(fields, source)


def _model_config(fields: dict, source: str) -> ModelConfig:
    try:
        return ModelConfig.from_dict(fields)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{source}: {e}") from None


def nanogpt_incompatible(cfg: ModelConfig) -> list[str]:
    """The switches nanoGPT's GPT (GPTConfig + model.py) cannot express."""
    bad = []
    if cfg.arch != "gpt":
        bad.append(f"arch={cfg.arch!r}")
    if not cfg.tie_embeddings:
        bad.append("tie_embeddings=False")
    if cfg.activation != "gelu":
        bad.append(f"activation={cfg.activation!r}")
    if cfg.ln_eps != 1e-5:
        bad.append(f"ln_eps={cfg.ln_eps}")
    # RMSNorm never has a bias: its place is not a per-place choice (norm is reported below).
    places = [p for p in BIAS_PLACES if p != "ln" or cfg.norm == "layernorm"]
    if cfg.bias_head or len({cfg.has_bias(p) for p in places}) > 1:
        bad.append("per-place biases")
    # The modern switches (zero_init_proj only sets the starting weights: nanoGPT runs them).
    if cfg.pos_emb != "learned":
        bad.append(f"pos_emb={cfg.pos_emb!r}")
    if cfg.norm != "layernorm":
        bad.append(f"norm={cfg.norm!r}")
    if cfg.qk_norm:
        bad.append("qk_norm=True")
    if cfg.logit_softcap:
        bad.append(f"logit_softcap={cfg.logit_softcap}")
    return bad
