"""nanoGPT's GPT in flax.linen, plus the bigram baseline.

Shape legend (in variable names, nanodo style):
  B  batch                 T  sequence length (<= block_size)
  C  n_embd                V  vocab_size
  H  n_head                D  head dim = C // H
  F  MLP hidden = 4 * C    3C fused q, k, v
  S  keys attended: the T tokens themselves, or with a KV cache its block_size slots
     (slot s holds the token at position s)

Parameter names follow nanoGPT's state_dict (wte, wpe, h_{i}/{ln_1, attn/{c_attn, c_proj},
ln_2, mlp/{c_fc, c_proj}}, ln_f, lm_head), so a checkpoint converts with one rename table.
Every parameter carries logical axis names; sharding.py maps them onto a mesh. The block's parts
(norms, attention, MLP) live in blocks.py; pos_emb='rotary' drops wpe, logit_softcap > 0 bounds
the logits.

Decode path: pass `cache` (init_cache) and `pos_BxT` to get (logits, cache). The new tokens' keys
and values are written at slots pos_BxT, and each token attends to the slots at or before its
own position, so a row may sit at any position. Without a cache the forward is the plain one.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from minigpt_jax.blocks import Block, LayerKV, norm
from minigpt_jax.layers import Linear, matmul, normal_init
from minigpt_jax.model_config import REMATS, ModelConfig

KVCache = tuple[LayerKV, ...]  # one (k, v) pair per layer (blocks.LayerKV)


class GPT(nn.Module):
    """Decoder-only transformer: idx_BxT -> logits_BxTxV (fp32); with a cache, (logits, cache)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        idx_BxT: jax.Array,
        deterministic: bool = True,
        *,
        pos_BxT: jax.Array | None = None,
        cache: KVCache | None = None,
    ) -> jax.Array | tuple[jax.Array, KVCache]:
        cfg = self.cfg
        T = idx_BxT.shape[1]
        if T > cfg.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {cfg.block_size}")
        wte_VxC = self.param(
            "wte", normal_init(0.02, ("vocab", "embed")), (cfg.vocab_size, cfg.n_embd)
        )
        x_BxTxC = jnp.take(wte_VxC, idx_BxT, axis=0)
        if cfg.pos_emb == "learned":  # rotary: positions enter in attention, no wpe
            wpe_init = (
                normal_init(0.02, ("pos", "embed"))
                if cfg.wpe_init == "normal"
                else nn.with_logical_partitioning(nn.initializers.zeros, ("pos", "embed"))
            )
            wpe_TxC = self.param("wpe", wpe_init, (cfg.block_size, cfg.n_embd))
            pos_emb = wpe_TxC[:T] if cache is None else jnp.take(wpe_TxC, pos_BxT, axis=0)
            x_BxTxC = x_BxTxC + pos_emb
        x_BxTxC = nn.Dropout(cfg.dropout)(x_BxTxC, deterministic)
        new_cache = []
        block = Block
        if cfg.remat != "none" and cache is None:  # argnum 2 (self is 0): `deterministic`
            block = nn.remat(Block, static_argnums=(2,), policy=REMATS[cfg.remat])
        for i in range(cfg.n_layer):
            kv = None if cache is None else cache[i]
            x_BxTxC, kv = block(cfg, name=f"h_{i}")(x_BxTxC, deterministic, pos_BxT, kv)
            new_cache.append(kv)
        x_BxTxC = norm(cfg, "ln_f")(x_BxTxC)
        if cfg.tie_embeddings:
            wte_CxV = wte_VxC.astype(cfg.compute_dtype).T
            logits_BxTxV = matmul(x_BxTxC, wte_CxV, jnp.float32, cfg.linear_vjp)
        else:
            head = Linear(
                cfg.vocab_size,
                ("embed", "vocab"),
                0.02,
                cfg.bias_head,
                cfg.compute_dtype,
                out_dtype=jnp.float32,
                vjp=cfg.linear_vjp,
                name="lm_head",
            )
            logits_BxTxV = head(x_BxTxC)
        if cfg.logit_softcap:  # Gemma 2 / modded-nanogpt: logits bounded by +-cap, in fp32
            cap = jnp.float32(cfg.logit_softcap)
            logits_BxTxV = cap * jnp.tanh(logits_BxTxV / cap)
        return logits_BxTxV if cache is None else (logits_BxTxV, tuple(new_cache))


class Bigram(nn.Module):
    """The bigram baseline: each token's row of a VxV table is the next token's logits.
    It takes GPT's arguments, so the trainer and the sampler need not tell them apart."""

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self, idx_BxT: jax.Array, deterministic: bool = True, *, pos_BxT: jax.Array | None = None,
        cache: KVCache | None = None,
    ) -> jax.Array | tuple[jax.Array, KVCache]:  # fmt: skip
        del deterministic, pos_BxT  # no dropout, no positions: the table is the whole model
        V = self.cfg.vocab_size
        table_VxV = self.param("wte", normal_init(0.02, ("vocab", "vocab_out")), (V, V))
        logits_BxTxV = jnp.take(table_VxV, idx_BxT, axis=0).astype(jnp.float32)
        return logits_BxTxV if cache is None else (logits_BxTxV, cache)


def make_model(cfg: ModelConfig) -> nn.Module:
    return Bigram(cfg) if cfg.arch == "bigram" else GPT(cfg)


def init_params(cfg: ModelConfig, rng: jax.Array) -> Any:
    """Fresh params, each leaf boxed with its logical axis names (nn.unbox drops them)."""
    x_1xT = jnp.zeros((1, cfg.block_size), jnp.int32)
    return make_model(cfg).init(rng, x_1xT)["params"]


def abstract_params(cfg: ModelConfig) -> Any:
    """The params' shapes and logical names, with no memory allocated (jax.eval_shape)."""
    return jax.eval_shape(functools.partial(init_params, cfg), jax.random.key(0))


def init_cache(cfg: ModelConfig, batch: int) -> KVCache:
    """An empty decode cache: one (k, v) pair of B x S x H x D zeros per layer; bigram: none."""
    if cfg.arch == "bigram":
        return ()
    H, D = cfg.n_head, cfg.n_embd // cfg.n_head
    shape = (batch, cfg.block_size, H, D)
    return tuple(
        (jnp.zeros(shape, cfg.compute_dtype), jnp.zeros(shape, cfg.compute_dtype))
        for _ in range(cfg.n_layer)
    )


def count_params(params: Any) -> tuple[int, int]:
    """(nanoGPT's count, total): nanoGPT's count leaves out wpe; a tied head counts once."""
    total = sum(int(p.size) for p in jax.tree.leaves(params))
    wpe = params.get("wpe")
    return total - (int(wpe.size) if wpe is not None else 0), total
