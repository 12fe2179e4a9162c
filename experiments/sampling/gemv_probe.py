"""The floor under a batch-1 decode step: the 24 weight GEMVs of the 6/6/384 model, nothing else.

    python experiments/sampling/gemv_probe.py            # 1 XLA device: fp32, bf16, rows 1-16
    python experiments/sampling/gemv_probe.py --tp       # also 2 CPU devices, tensor parallel

Each layer runs x @ c_attn, x @ attn.c_proj, gelu(x @ c_fc) @ mlp.c_proj (10.6M fp32 weights,
42 MB: more than the 32 MiB L3) inside one jitted fori_loop; prints ms per token. With --tp the
weights are split Megatron-style over two CPU devices (shard_map, a psum after each c_proj).
"""

import os
import sys
import time

TP = "--tp" in sys.argv
if TP:  # XLA reads this when its CPU backend starts
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

C, L, ITERS = 384, 6, 200
SHAPES = {"qkv": (C, 3 * C), "ap": (C, C), "fc": (C, 4 * C), "mp": (4 * C, C)}
SPLIT = {"qkv": P(None, "t"), "ap": P("t", None), "fc": P(None, "t"), "mp": P("t", None)}


def weights(dtype) -> dict:
    rng = np.random.default_rng(0)
    return {
        f"{k}{i}": jnp.asarray(rng.standard_normal(s, np.float32) * 0.02, dtype)
        for k, s in SHAPES.items()
        for i in range(L)
    }


def chain(x, w, reduce):
    def mm(a, b):
        return jnp.dot(a.astype(b.dtype), b, preferred_element_type=jnp.float32)

    def body(_, x):
        for i in range(L):
            q = mm(x, w[f"qkv{i}"])[:, : w[f"ap{i}"].shape[0]]  # stands in for attention
            x = x + reduce(mm(q, w[f"ap{i}"]))
            x = x + reduce(mm(jax.nn.gelu(mm(x, w[f"fc{i}"])), w[f"mp{i}"]))
        return x / jnp.linalg.norm(x)

    return jax.lax.fori_loop(0, ITERS, body, x)


def ms_per_token(f, *args) -> float:
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(7):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t)
    return sorted(times)[3] / ITERS * 1e3


def main() -> None:
    single = jax.jit(lambda x, w: chain(x, w, lambda a: a))
    w32, w16 = weights(jnp.float32), weights(jnp.bfloat16)
    x = jnp.ones((1, C), jnp.float32)
    print(f"1 device, fp32:  {ms_per_token(single, x, w32):.2f} ms/token")
    print(f"1 device, bf16 weights: {ms_per_token(single, x, w16):.2f} ms/token")
    rows = {n: ms_per_token(single, jnp.ones((n, C)), w32) for n in (1, 2, 4, 8, 16)}
    print("rows per step (ms/step): " + ", ".join(f"{n}: {t:.2f}" for n, t in rows.items()))
    if TP:
        mesh = jax.make_mesh((2,), ("t",))
        specs = {k: SPLIT[k.rstrip("0123456789")] for k in w32}
        ws = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in w32.items()}
        for name, reduce in (("psum", lambda a: jax.lax.psum(a, "t")), ("no psum", lambda a: a)):
            f = jax.jit(
                jax.shard_map(
                    lambda x, w, r=reduce: chain(x, w, r),
                    mesh=mesh,
                    in_specs=(P(), specs),
                    out_specs=P(),
                    check_vma=False,
                )
            )
            print(f"2 devices, tensor parallel ({name}): {ms_per_token(f, x, ws):.2f} ms/token")


if __name__ == "__main__":
    main()
