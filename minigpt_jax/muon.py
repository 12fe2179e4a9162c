"""Muon as torch.optim.Muon (torch 2.13) computes it, for the blocks' 2-D kernels.

Per matrix (torch's names): buf.lerp_(g, 1 - m); nesterov: u = g.lerp(buf, m), else u = buf;
O = Newton-Schulz(u); param *= 1 - lr * wd; param -= lr * sqrt(max(1, A / B)) * O, with
(A, B) = (out, in), torch's weight shape. Our kernels are (in, out): the lr factor reads
sqrt(max(1, shape[1] / shape[0])), and the iteration runs on the transpose (torch's layout), so
square matrices take the same path torch takes.

Why not optax.contrib.muon (0.2.8): its momentum is bias-corrected (torch's is not), it adds eps
to the Frobenius norm where torch clamps the norm at eps, it iterates in the input's dtype where
torch iterates in bfloat16, and it sends every 2-D tensor to Muon. Its iteration computes our
float32 one up to that eps (tests/optimizer_test.py checks), but 0.2.8 exports neither it
(orthogonalize_via_newton_schulz) nor scale_by_shape (torch's lr factor) outside the private
optax.contrib._muon; so momentum, the iteration and the factor are written here and the rest is
optax's: weight decay (add_decayed_weights), the schedule (scale_by_learning_rate), the two
groups (optax.partition, in optimizer.py).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

NS_COEFFS = (3.4445, -4.7750, 2.0315)  # torch's and Keller Jordan's quintic
NS_EPS = 1e-7  # torch.optim._muon.EPS: the norm is clamped at it
NS_DTYPES = ("bfloat16", "float32")


def is_hidden_matrix(path: tuple[str, ...], ndim: int) -> bool:
    """Muon's params: the 2-D kernels inside the blocks h_i (attention c_attn / c_proj, MLP
    c_fc / c_proj). Embeddings, the head, norms and biases stay with AdamW."""
    return path[0].startswith("h_") and path[-1] == "kernel" and ndim == 2


def labels(params: Any) -> Any:
    """'muon' or 'adamw' per leaf; params may be boxed (nn.Partitioned) or plain."""

    def label(path, leaf):
        keys = tuple(k.key for k in path if hasattr(k, "key"))  # a box adds a .value step
        return "muon" if is_hidden_matrix(keys, jnp.ndim(leaf)) else "adamw"

    return jax.tree_util.tree_map_with_path(label, params)


def _lerp(start: jax.Array, end: jax.Array, weight: float) -> jax.Array:
    """torch.lerp's formula on CPU: the weight in float32, the branch at 0.5."""
    w = np.float32(weight)  # a host constant: the branch is taken at trace time
    if w < 0.5:
        return start + w * (end - start)
    return end - (end - start) * (np.float32(1) - w)


def newton_schulz(
    x_AxB: jax.Array, *, steps: int = 5, dtype: str = "bfloat16", eps: float = NS_EPS
) -> jax.Array:
    """torch's _zeropower_via_newtonschulz on a torch-layout (out, in) matrix, in `dtype`.

    Each product accumulates in float32 and is rounded to `dtype` once, as torch's bf16 mm /
    addmm on CPU do; in float32 the products ask for full precision (no TF32 or bf16 passes on
    GPU and TPU), so 'float32' means float32 everywhere.
    """
    dt = jnp.dtype(dtype)
    f32 = jnp.float32
    prec = jax.lax.Precision.HIGHEST

    def dot(a, b):
        return jnp.matmul(a, b, precision=prec, preferred_element_type=f32)

    a, b, c = NS_COEFFS
    x = x_AxB.astype(dt)
    tall = x.shape[0] > x.shape[1]
    if tall:  # iterate on the wide side: the Gram matrix is the smaller one
        x = x.T
    norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(f32)))).astype(dt)  # torch: bf16 in, f32 sum
    x = x / jnp.maximum(norm, jnp.asarray(eps, dt))
    for _ in range(steps):
        gram = dot(x, x.T).astype(dt)
        poly = (b * gram.astype(f32) + c * dot(gram, gram)).astype(dt)  # addmm(gram, gram, gram)
        x = (a * x.astype(f32) + dot(poly, x)).astype(dt)  # addmm(x, poly, x, beta=a)
    return x.T if tall else x


class MuonState(NamedTuple):
    momentum: Any  # torch's momentum_buffer: zeros like the params at the start


def scale_by_muon(
    *, momentum: float, nesterov: bool, ns_steps: int, ns_dtype: str
) -> optax.GradientTransformation:
    """Gradients of (in, out) kernels -> sqrt(max(1, out / in)) * NS(momentum update), in
    float32: what torch's Muon multiplies by -lr (weight decay aside)."""

    def init(params):
        return MuonState(jax.tree.map(jnp.zeros_like, params))

    def orthogonal(g_IxO, buf_IxO):
        u = _lerp(g_IxO, buf_IxO, momentum) if nesterov else buf_IxO
        o_OxI = newton_schulz(u.T, steps=ns_steps, dtype=ns_dtype)
        fan_in, fan_out = g_IxO.shape
        return math.sqrt(max(1.0, fan_out / fan_in)) * o_OxI.T.astype(jnp.float32)

    def update(updates, state, params=None):
        del params
        bufs = jax.tree.map(lambda g, b: _lerp(b, g, 1 - momentum), updates, state.momentum)
        return jax.tree.map(orthogonal, updates, bufs), MuonState(bufs)

    return optax.GradientTransformation(init, update)


def muon(
    schedule: optax.Schedule,
    *,
    momentum: float = 0.95,
    nesterov: bool = True,
    weight_decay: float = 0.0,
    ns_steps: int = 5,
    ns_dtype: str = "bfloat16",
) -> optax.GradientTransformation:
    """torch.optim.Muon with adjust_lr_fn='original': -lr * (lr factor * O + wd * param)."""
    return optax.chain(
        scale_by_muon(momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, ns_dtype=ns_dtype),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(schedule),
    )
