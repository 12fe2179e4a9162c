"""Run by sharding_test.py in a subprocess with 8 fake CPU devices; prints one JSON line.

For each mesh: the losses of 5 train steps and the per-device bytes of params + Adam state.
"""

import json
import sys

import jax
import numpy as np

from minigpt_jax import config, sharding
from minigpt_jax import run as run_lib

V, T, B, STEPS = 48, 16, 16, 5
CONFIG = config.base_config()
CONFIG.model.update(block_size=T, n_layer=2, n_head=4, n_embd=64, dropout=0.0)
CONFIG.opt.update(schedule="nanogpt", lr=1e-2, min_lr=1e-3, warmup_iters=2, lr_decay_iters=10)
CONFIG.train.update(batch_size=B, seed=0)
rng = np.random.default_rng(0)
BATCHES = [rng.integers(0, V, (2, 1, B, T)).astype(np.int32) for _ in range(STEPS)]


def run_mesh(shape):
    devices = jax.devices()[: int(np.prod(shape))]
    mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, shape)), devices)
    run = run_lib.build(CONFIG, V, mesh=mesh)
    state = run.init_state()
    per_device = sum(
        x.addressable_shards[0].data.nbytes
        for x in jax.tree.leaves((state.params, state.opt_state))
    )
    losses = []
    with run.activate():
        for xy in BATCHES:
            state, m = run.train_step(state, run.put((xy[0], xy[1])), jax.random.key(0))
            losses.append(float(m["loss"]))
    wte = np.asarray(jax.device_get(state.params["wte"]))
    return {"losses": losses, "bytes": per_device, "wte": wte}


if __name__ == "__main__":
    meshes = [tuple(json.loads(m)) for m in sys.argv[1:]]
    results = {str(list(m)): run_mesh(m) for m in meshes}
    ref = results[str([1, 1, 1])]["wte"]
    for r in results.values():
        r["wte_max_diff"] = float(np.abs(r.pop("wte") - ref).max())
    print(json.dumps(results))
