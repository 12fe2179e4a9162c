"""All-reduce over 2 XLA CPU devices: 30 arrays of the :cpu model's gradient shapes summed one by
one (XLA combines them into one all-reduce op that makes a rendezvous per array) against the
same arrays concatenated into one (concatenate and split included). Output: allreduce_probe.log.

    python experiments/perf/probe4/allreduce_probe.py
"""

import os
import time

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"  # before jax starts

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

LAYER = [(128, 384), (384,), (128, 128), (128,), (128, 512), (512,), (512, 128), (128,)]
SHAPES = (LAYER + [(128,), (128,)]) * 3  # 30 arrays, about one layer's worth each third


def per_array(xs: list[jax.Array]) -> list[jax.Array]:
    return [x.sum(0) * 1.0001 for x in xs]


def flattened(xs: list[jax.Array]) -> list[jax.Array]:
    summed = jnp.concatenate([x.reshape(2, -1) for x in xs], axis=1).sum(0) * 1.0001
    sizes = np.cumsum([int(np.prod(s)) for s in SHAPES])[:-1]
    return [part.reshape(s) for part, s in zip(jnp.split(summed, sizes), SHAPES)]


def main() -> None:
    mesh = Mesh(np.array(jax.devices()), ("data",))
    split = NamedSharding(mesh, P("data"))
    xs = [jax.device_put(jnp.ones((2, *s)), split) for s in SHAPES]
    for f in (per_array, flattened, per_array, flattened):
        g = jax.jit(f, out_shardings=NamedSharding(mesh, P()))
        jax.block_until_ready(g(xs))
        start = time.perf_counter()
        for _ in range(200):
            jax.block_until_ready(g(xs))  # one at a time: many in flight can stall the rendezvous
        print(f"{f.__name__}: {(time.perf_counter() - start) / 200 * 1000:.3f} ms")


if __name__ == "__main__":
    main()
