"""The model's matmul and attention building blocks: a Linear whose backward pass suits XLA:CPU,
causal softmax attention in plain XLA ops, and the flash-attention kernels
(cuDNN, Pallas) with their fallback.

Why a hand-written backward for Linear: XLA:CPU's GEMMs want row-major operands, so for the
weight gradient x^T dy it materialises a transposed copy of x or of dy, and its own choice is
often the wider of the two, with the producer's elementwise work (the GELU or LayerNorm
backward) fused into the strided transposing loop. On this project's 2-core CPU that made the
CPU recipe's train step ~1.4x slower (experiments/perf). `linear_vjp='narrow'` transposes the
narrower operand instead; the math is the same, only the summation order differs.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# 'xla': XLA differentiates the einsum; 'narrow': narrow_matmul's VJP; 'auto': 'narrow' on CPU.
LINEAR_VJPS = ("auto", "xla", "narrow")

# The platforms programs are being lowered for, innermost last (lowering_for): the kernel and
# VJP choices below are made when a function is traced, so a TPU program lowered on a CPU host
# must make the TPU's choices, not the host's.
_TARGETS: list[str] = []


@contextlib.contextmanager
def lowering_for(platform: str) -> Iterator[None]:
    """Trace as if on `platform` ('tpu', 'cuda', 'cpu'), for jax.export to another platform."""
    _TARGETS.append("gpu" if platform in ("cuda", "rocm") else platform)
    try:
        yield
    finally:
        _TARGETS.pop()


def backend() -> str:
    """The backend the traced program will run on: jax's default, or lowering_for's target."""
    return _TARGETS[-1] if _TARGETS else jax.default_backend()


def _matmul(x_NxI: jax.Array, w_IxO: jax.Array, out_dtype: Any) -> jax.Array:
    return jnp.einsum("...i,io->...o", x_NxI, w_IxO, preferred_element_type=out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def narrow_matmul(x_NxI: jax.Array, w_IxO: jax.Array, out_dtype: Any) -> jax.Array:
    """x @ w (leading dims of x kept) whose weight gradient transposes the narrower operand."""
    return _matmul(x_NxI, w_IxO, out_dtype)


def _narrow_fwd(x_NxI, w_IxO, out_dtype):
    return _matmul(x_NxI, w_IxO, out_dtype), (x_NxI, w_IxO)


def _narrow_bwd(out_dtype, residuals, dy_NxO):
    del out_dtype
    x_NxI, w_IxO = residuals
    dx_NxI = jnp.einsum("...o,io->...i", dy_NxO, w_IxO, preferred_element_type=x_NxI.dtype)
    x_MxI = x_NxI.reshape(-1, x_NxI.shape[-1])  # M: every leading dim folded into one
    dy_MxO = dy_NxO.reshape(-1, dy_NxO.shape[-1])
    if x_MxI.shape[1] <= dy_MxO.shape[1]:
        dw_IxO = jnp.dot(x_MxI.T, dy_MxO, preferred_element_type=w_IxO.dtype)
    else:
        dw_IxO = jnp.dot(dy_MxO.T, x_MxI, preferred_element_type=w_IxO.dtype).T
    return dx_NxI, dw_IxO


narrow_matmul.defvjp(_narrow_fwd, _narrow_bwd)


def matmul(x_NxI: jax.Array, w_IxO: jax.Array, out_dtype: Any, vjp: str = "auto") -> jax.Array:
    """x @ w with the backward pass `vjp` picks (LINEAR_VJPS)."""
    if vjp == "auto":  # decided when traced: one compiled program per backend anyway
        vjp = "narrow" if backend() == "cpu" else "xla"
    if vjp == "narrow":
        return narrow_matmul(x_NxI, w_IxO, out_dtype)
    return _matmul(x_NxI, w_IxO, out_dtype)


def normal_init(std: float, axes: tuple[str, ...]) -> nn.initializers.Initializer:
    return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


class Linear(nn.Module):
    """torch.nn.Linear with a (in, out) kernel, logical axes and an output dtype; std 0 starts
    the kernel at zeros."""

    features: int
    axes: tuple[str, str]
    std: float
    use_bias: bool
    dtype: Any
    out_dtype: Any = None  # None: the compute dtype
    vjp: str = "auto"

    @nn.compact
    def __call__(self, x_BxTxI: jax.Array) -> jax.Array:
        init = normal_init(self.std, self.axes)
        if self.std == 0:  # zeros, not N(0, 0) (which can give -0.0)
            init = nn.with_logical_partitioning(nn.initializers.zeros, self.axes)
        kernel = self.param("kernel", init, (x_BxTxI.shape[-1], self.features))
        out_dtype = self.out_dtype or self.dtype
        y_BxTxO = matmul(x_BxTxI.astype(self.dtype), kernel.astype(self.dtype), out_dtype, self.vjp)
        if self.use_bias:
            init = nn.with_logical_partitioning(nn.initializers.zeros, self.axes[1:])
            y_BxTxO = y_BxTxO + self.param("bias", init, (self.features,)).astype(out_dtype)
        return y_BxTxO


def xla_attention(
    q_BxTxHxD: jax.Array,
    k_BxSxHxD: jax.Array,
    v_BxSxHxD: jax.Array,
    mask_BxTxS: jax.Array,
    dropout: Callable[[jax.Array], jax.Array],
    dtype: Any,
) -> jax.Array:
    """Softmax attention over the keys mask_BxTxS allows; scores and softmax in fp32."""
    att_BxHxTxS = jnp.einsum(
        "bqhd,bkhd->bhqk", q_BxTxHxD, k_BxSxHxD, preferred_element_type=jnp.float32
    ) / math.sqrt(q_BxTxHxD.shape[-1])
    att_BxHxTxS = jnp.where(mask_BxTxS[:, None], att_BxHxTxS, -jnp.inf)
    att_BxHxTxS = dropout(jax.nn.softmax(att_BxHxTxS, axis=-1))
    return jnp.einsum("bhqk,bkhd->bqhd", att_BxHxTxS.astype(dtype), v_BxSxHxD)


def flash_attention(
    kind: str,
    q_BxTxHxD: jax.Array,
    k_BxTxHxD: jax.Array,
    v_BxTxHxD: jax.Array,
    attn_dropout: bool,
    dtype: Any,
) -> jax.Array | None:
    """Causal attention by the `kind` kernel (model.attention), or None for the XLA path. A
    kernel that cannot run here says why (logged), rather than failing or silently changing."""
    if kind == "xla":
        return None
    here, T, D = backend(), q_BxTxHxD.shape[1], q_BxTxHxD.shape[-1]
    reason = None
    if attn_dropout:
        reason = "attention dropout runs on the XLA path only"
    elif kind == "cudnn" and here != "gpu":
        reason = f"cuDNN needs a GPU, this backend is {here}"
    elif kind == "cudnn" and dtype == jnp.float32:
        reason = "cuDNN flash attention needs dtype bfloat16 or float16"
    elif kind == "pallas" and here != "tpu":
        reason = f"Pallas flash attention needs a TPU, this backend is {here}"
    elif kind == "pallas" and T % 128:
        reason = f"Pallas flash attention needs a length divisible by 128, got {T}"
    if reason:  # logged when traced: once per compiled program, not per step
        logging.warning("attention=%s falls back to xla: %s", kind, reason)
        return None
    scale = 1.0 / math.sqrt(D)
    if kind == "cudnn":
        return jax.nn.dot_product_attention(
            q_BxTxHxD, k_BxTxHxD, v_BxTxHxD, scale=scale, is_causal=True, implementation="cudnn"
        )
    from jax.experimental.pallas.ops.tpu.flash_attention import flash_attention as pallas_flash

    q, k, v = (a.transpose(0, 2, 1, 3) for a in (q_BxTxHxD, k_BxTxHxD, v_BxTxHxD))  # B H T D
    attend = functools.partial(pallas_flash, causal=True, sm_scale=scale)
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.size > 1:
        # A Mosaic kernel cannot be partitioned by XLA ("wrap the call in a shard_map"): each
        # device runs it on its own rows and heads, laid out by the mesh's logical rules.
        spec = nn.logical_to_mesh_axes(("batch", "heads", None, None))
        attend = jax.shard_map(
            attend, in_specs=(spec,) * 3, out_specs=spec, check_vma=False, mesh=mesh
        )
    return attend(q, k, v).transpose(0, 2, 1, 3)
