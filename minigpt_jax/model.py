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
Every parameter carries logical axis names; sharding.py maps them onto a mesh.

Decode path: pass `cache` (init_cache) and `pos_BxT` to get (logits, cache). The new tokens' keys
and values are written at slots pos_BxT, and each token attends to the slots at or before its
own position, so a row may sit at any position. Without a cache the forward is the plain one.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from minigpt_jax.layers import (
    Linear,
    flash_attention,
    matmul,
    normal_init,
    xla_attention,
)
from minigpt_jax.model_config import ACTIVATIONS, REMATS, ModelConfig

# One layer's cached (k_BxSxHxD, v_BxSxHxD); the cache is a tuple of n_layer of them.
LayerKV = tuple[jax.Array, jax.Array]
KVCache = tuple[LayerKV, ...]


def _layer_norm(cfg: ModelConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=cfg.ln_eps,
        use_bias=cfg.has_bias("ln"),
        use_fast_variance=False,  # two-pass variance, as torch computes it
        dtype=cfg.compute_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
        name=name,
    )


def _linear(
    cfg: ModelConfig, features: int, axes: tuple[str, str], std: float, place: str, name: str
) -> Linear:
    dt, vjp = cfg.compute_dtype, cfg.linear_vjp
    return Linear(features, axes, std, cfg.has_bias(place), dt, vjp=vjp, name=name)


def _proj_std(cfg: ModelConfig) -> float:
    # nanoGPT: residual projections get std 0.02 / sqrt(2 * n_layer) (GPT-2 paper).
    return 0.02 / math.sqrt(2 * cfg.n_layer) if cfg.init == "nanogpt" else 0.02


class CausalSelfAttention(nn.Module):
    """With kv (and pos_BxT) it writes the new keys and values into the layer's cache."""

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self, x_BxTxC: jax.Array, deterministic: bool, pos_BxT: jax.Array | None = None,
        kv: LayerKV | None = None,
    ) -> tuple[jax.Array, LayerKV | None]:  # fmt: skip
        cfg = self.cfg
        B, T, C = x_BxTxC.shape
        H, D = cfg.n_head, C // cfg.n_head
        dt = cfg.compute_dtype
        c_attn = _linear(cfg, 3 * C, ("embed", "qkv"), 0.02, "qkv", "c_attn")
        qkv_BxTx3C = c_attn(x_BxTxC)
        q_BxTxHxD, k_BxTxHxD, v_BxTxHxD = (
            a.reshape(B, T, H, D) for a in jnp.split(qkv_BxTx3C, 3, axis=-1)
        )
        if kv is None:
            k_BxSxHxD, v_BxSxHxD = k_BxTxHxD, v_BxTxHxD
            mask_BxTxS = jnp.tril(jnp.ones((T, T), dtype=bool))[None]
        else:
            # Each row's T new tokens sit at consecutive slots from its own start.
            write = jax.vmap(lambda c, new, s: jax.lax.dynamic_update_slice_in_dim(c, new, s, 0))
            k_BxSxHxD = write(kv[0], k_BxTxHxD.astype(kv[0].dtype), pos_BxT[:, 0])
            v_BxSxHxD = write(kv[1], v_BxTxHxD.astype(kv[1].dtype), pos_BxT[:, 0])
            kv = (k_BxSxHxD, v_BxSxHxD)
            # Slots past a token's position hold stale or padding entries: never attended.
            S = k_BxSxHxD.shape[1]
            mask_BxTxS = jnp.arange(S)[None, None, :] <= pos_BxT[:, :, None]
        y_BxTxHxD = None
        if kv is None:  # decoding attends over cache slots: always the XLA kernel
            dropping = cfg.attn_pdrop > 0 and not deterministic
            y_BxTxHxD = flash_attention(
                cfg.attention, q_BxTxHxD, k_BxTxHxD, v_BxTxHxD, dropping, dt
            )
        if y_BxTxHxD is None:
            dropout = functools.partial(nn.Dropout(cfg.attn_pdrop), deterministic=deterministic)
            y_BxTxHxD = xla_attention(q_BxTxHxD, k_BxSxHxD, v_BxSxHxD, mask_BxTxS, dropout, dt)
        y_BxTxC = y_BxTxHxD.reshape(B, T, C)
        proj = _linear(cfg, C, ("heads", "embed"), _proj_std(cfg), "attn_proj", "c_proj")
        y_BxTxC = proj(y_BxTxC)
        return nn.Dropout(cfg.dropout)(y_BxTxC, deterministic=deterministic), kv


class MLP(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxC: jax.Array, deterministic: bool) -> jax.Array:
        cfg = self.cfg
        C = x_BxTxC.shape[-1]
        h_BxTxF = _linear(cfg, 4 * C, ("embed", "mlp"), 0.02, "mlp", "c_fc")(x_BxTxC)
        h_BxTxF = ACTIVATIONS[cfg.activation](h_BxTxF)
        proj = _linear(cfg, C, ("mlp", "embed"), _proj_std(cfg), "mlp", "c_proj")
        y_BxTxC = proj(h_BxTxF)
        return nn.Dropout(cfg.dropout)(y_BxTxC, deterministic=deterministic)


class Block(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        x_BxTxC: jax.Array,
        deterministic: bool,
        pos_BxT: jax.Array | None = None,
        kv: LayerKV | None = None,
    ) -> tuple[jax.Array, LayerKV | None]:
        # The residual stream stays fp32 (as under torch autocast); branches compute in dtype.
        cfg = self.cfg
        attn = CausalSelfAttention(cfg, name="attn")
        y_BxTxC, kv = attn(_layer_norm(cfg, "ln_1")(x_BxTxC), deterministic, pos_BxT, kv)
        x_BxTxC = x_BxTxC + y_BxTxC.astype(jnp.float32)
        mlp = MLP(cfg, name="mlp")
        y_BxTxC = mlp(_layer_norm(cfg, "ln_2")(x_BxTxC), deterministic)
        return x_BxTxC + y_BxTxC.astype(jnp.float32), kv


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
        wpe_init = (
            normal_init(0.02, ("pos", "embed"))
            if cfg.wpe_init == "normal"
            else nn.with_logical_partitioning(nn.initializers.zeros, ("pos", "embed"))
        )
        wpe_TxC = self.param("wpe", wpe_init, (cfg.block_size, cfg.n_embd))
        if cache is None:
            x_BxTxC = jnp.take(wte_VxC, idx_BxT, axis=0) + wpe_TxC[:T]
        else:
            x_BxTxC = jnp.take(wte_VxC, idx_BxT, axis=0) + jnp.take(wpe_TxC, pos_BxT, axis=0)
        x_BxTxC = nn.Dropout(cfg.dropout)(x_BxTxC, deterministic)
        new_cache = []
        block = Block
        if cfg.remat != "none" and cache is None:  # argnum 2 (self is 0): `deterministic`
            block = nn.remat(Block, static_argnums=(2,), policy=REMATS[cfg.remat])
        for i in range(cfg.n_layer):
            kv = None if cache is None else cache[i]
            x_BxTxC, kv = block(cfg, name=f"h_{i}")(x_BxTxC, deterministic, pos_BxT, kv)
            new_cache.append(kv)
        x_BxTxC = _layer_norm(cfg, "ln_f")(x_BxTxC)
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
