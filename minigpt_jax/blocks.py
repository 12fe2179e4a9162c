"""The transformer block's parts: the norms, causal self-attention (rotary positions, QK-norm,
the decode cache) and the MLP. model.py stacks them into the GPT.

Shapes are named as in model.py's legend. Every switch here is a ModelConfig field that is off
by default (nanoGPT's block): pos_emb='rotary', norm='rmsnorm', qk_norm, activation='relu2',
zero_init_proj. torch_ref.py computes each the same way.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from minigpt_jax.layers import Linear, flash_attention, xla_attention
from minigpt_jax.model_config import ACTIVATIONS, ModelConfig

# One layer's cached (k_BxSxHxD, v_BxSxHxD); the cache is a tuple of n_layer of them.
LayerKV = tuple[jax.Array, jax.Array]


def norm(cfg: ModelConfig, name: str) -> nn.Module:
    """ln_1, ln_2 or ln_f: nanoGPT's LayerNorm, or RMSNorm (a learned scale, no bias)."""
    scale_init = nn.with_logical_partitioning(nn.initializers.ones, ("norm",))
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.ln_eps, cfg.compute_dtype, scale_init=scale_init, name=name)
    return nn.LayerNorm(
        epsilon=cfg.ln_eps,
        use_bias=cfg.has_bias("ln"),
        use_fast_variance=False,  # two-pass variance, as torch computes it
        dtype=cfg.compute_dtype,
        scale_init=scale_init,
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
        name=name,
    )


def _linear(
    cfg: ModelConfig, features: int, axes: tuple[str, str], std: float, place: str, name: str
) -> Linear:
    dt, vjp = cfg.compute_dtype, cfg.linear_vjp
    return Linear(features, axes, std, cfg.has_bias(place), dt, vjp=vjp, name=name)


def _proj_std(cfg: ModelConfig) -> float:
    """The residual projections' (c_proj) init std; 0 means zeros (Linear's rule)."""
    if cfg.zero_init_proj:  # modded-nanogpt: each block starts as the identity
        return 0.0
    # nanoGPT: residual projections get std 0.02 / sqrt(2 * n_layer) (GPT-2 paper).
    return 0.02 / math.sqrt(2 * cfg.n_layer) if cfg.init == "nanogpt" else 0.02


def rms_normalize(x_BxTxHxD: jax.Array, eps: float) -> jax.Array:
    """x / sqrt(mean(x^2) + eps) over the last axis, in fp32, back in x's dtype (no scale)."""
    x = x_BxTxHxD.astype(jnp.float32)
    y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)
    return y.astype(x_BxTxHxD.dtype)


def rotary(x_BxTxHxD: jax.Array, pos_BxT: jax.Array, base: float) -> jax.Array:
    """Rotary position embedding, GPT-NeoX's rotate-half convention: pair i is (x[i], x[i+D/2]),
    rotated by the angle pos * base^(-2i/D). Angles and rotation in fp32."""
    D = x_BxTxHxD.shape[-1]
    inv_freq_D2 = base ** (-jnp.arange(0, D, 2, dtype=jnp.float32) / D)
    angle_BxTx1xD2 = (pos_BxT.astype(jnp.float32)[..., None] * inv_freq_D2)[:, :, None, :]
    cos, sin = jnp.cos(angle_BxTx1xD2), jnp.sin(angle_BxTx1xD2)
    x = x_BxTxHxD.astype(jnp.float32)
    x1_BxTxHxD2, x2_BxTxHxD2 = x[..., : D // 2], x[..., D // 2 :]
    y = jnp.concatenate([x1_BxTxHxD2 * cos - x2_BxTxHxD2 * sin,
                         x2_BxTxHxD2 * cos + x1_BxTxHxD2 * sin], axis=-1)  # fmt: skip
    return y.astype(x_BxTxHxD.dtype)


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
        if cfg.qk_norm:  # before the rotation, as modded-nanogpt (a rotation keeps the RMS)
            q_BxTxHxD, k_BxTxHxD = (rms_normalize(a, cfg.ln_eps) for a in (q_BxTxHxD, k_BxTxHxD))
        if cfg.pos_emb == "rotary":
            # Cached keys are stored rotated by their own position (slot s = position s).
            pos = jnp.arange(T)[None] if pos_BxT is None else pos_BxT
            q_BxTxHxD, k_BxTxHxD = (rotary(a, pos, cfg.rope_base) for a in (q_BxTxHxD, k_BxTxHxD))
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
        y_BxTxC, kv = attn(norm(cfg, "ln_1")(x_BxTxC), deterministic, pos_BxT, kv)
        x_BxTxC = x_BxTxC + y_BxTxC.astype(jnp.float32)
        mlp = MLP(cfg, name="mlp")
        y_BxTxC = mlp(norm(cfg, "ln_2")(x_BxTxC), deterministic)
        return x_BxTxC + y_BxTxC.astype(jnp.float32), kv
