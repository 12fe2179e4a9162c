import os, time
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, PartitionSpec as P, NamedSharding
mesh = Mesh(np.array(jax.devices()), ("data",))
shapes = [(128, 384), (384,), (128, 128), (128,), (128, 512), (512,), (512, 128), (128,), (128,), (128,)] * 3
shapes = shapes[:30]
xs = [jnp.ones((2,) + s) for s in shapes]
xs = [jax.device_put(x, NamedSharding(mesh, P("data"))) for x in xs]
def many(xs):  # per-array sums over the sharded axis: one all-reduce per array (combined)
    return [x.sum(0) * 1.0001 for x in xs]
def one(xs):
    flat = jnp.concatenate([x.reshape(2, -1) for x in xs], axis=1)
    s = flat.sum(0) * 1.0001
    out, i = [], 0
    for sh in shapes:
        n = int(np.prod(sh)); out.append(s[i:i+n].reshape(sh)); i += n
    return out
for name, f in [("many", many), ("one", one), ("many", many), ("one", one)]:
    g = jax.jit(f, out_shardings=NamedSharding(mesh, P()))
    jax.block_until_ready(g(xs))
    t = time.perf_counter()
    for _ in range(200): r = jax.block_until_ready(g(xs))
    jax.block_until_ready(r)
    print(name, f"{(time.perf_counter()-t)/200*1000:.3f} ms")
hlo = jax.jit(many, out_shardings=NamedSharding(mesh, P())).lower(xs).compile().as_text()
print("all-reduce ops in many:", hlo.count("all-reduce("), hlo.count("all-reduce-start"))
