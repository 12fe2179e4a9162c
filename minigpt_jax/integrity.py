"""Fingerprints that make a saved step trustworthy: of every array's bits (the same however the
arrays are sharded or on how many hosts) and of the step's metadata.

A step's meta carries them (`integrity`), written in the same save as the arrays, so there is no
moment at which a step exists without them. A restore recomputes and compares: a flipped byte
anywhere is a damaged step. Steps saved before fingerprints existed restore unverified.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jax
import jax.numpy as jnp

KEY = "integrity"
# Odd multipliers: a change of d * 2^k in one element's bits (0 < |d| < 2^8, k < 32) changes a
# sum of bits * odd by a non-multiple of 2^32, so every single-byte change is always caught;
# two independent sums make a random many-byte change go unseen with odds ~2^-64.
_GOLDEN = 0x9E3779B1


class DamagedStep(Exception):
    """A step whose arrays or metadata do not match the fingerprints saved with them."""


def _bits(x: jax.Array) -> jax.Array:
    """The array's raw bits as a flat uint32 vector (narrower dtypes widened, wider split)."""
    flat = x.reshape(-1)
    if flat.dtype == jnp.bool_:
        return flat.astype(jnp.uint32)
    width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[flat.dtype.itemsize]
    return jax.lax.bitcast_convert_type(flat, width).reshape(-1).astype(jnp.uint32)


@jax.jit
def _sums(tree: Any) -> list[jax.Array]:
    out = []
    for x in jax.tree.leaves(tree):
        bits = _bits(jnp.asarray(x))
        i = jnp.arange(bits.size, dtype=jnp.uint32)
        rotated = (bits << 7) | (bits >> 25)
        weights = i * jnp.uint32(_GOLDEN) | jnp.uint32(1)
        sums = [
            jnp.sum(bits * (2 * i + 1), dtype=jnp.uint32),
            jnp.sum(rotated * weights, dtype=jnp.uint32),
        ]
        out.append(jnp.stack(sums))
    return out


def fingerprint(tree: Any) -> str:
    """A hex digest of every leaf's shape, dtype and bits, independent of sharding: integer sums
    wrap mod 2^32 in any order, so any mesh (and a restore onto another) gets the same one."""
    sums = jax.device_get(_sums(tree))
    h = hashlib.sha256()
    for x, s in zip(jax.tree.leaves(tree), sums):
        h.update(f"{tuple(x.shape)}{x.dtype}{int(s[0])}:{int(s[1])};".encode())
    return h.hexdigest()[:32]


def _meta_digest(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]


def seal(meta: dict, **arrays: Any) -> dict:
    """meta with the fingerprints of each named tree (params=..., opt_state=...) and of itself."""
    fingerprints = {name: fingerprint(tree) for name, tree in arrays.items()}
    return {**meta, KEY: {"meta": _meta_digest(meta), **fingerprints}}


def check(meta: dict, **arrays: Any) -> bool:
    """True when the step carries fingerprints and every given tree and the meta match them;
    False for a step saved before fingerprints; DamagedStep naming what differs otherwise."""
    saved = meta.get(KEY)
    if saved is None:
        return False
    if saved.get("meta") != _meta_digest(meta):
        raise DamagedStep("its metadata does not match its fingerprint")
    for name, tree in arrays.items():
        if saved.get(name) != fingerprint(tree):
            raise DamagedStep(f"its {name} do not match their fingerprint")
    return True
