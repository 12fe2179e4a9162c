"""Run by sharding_test.py in a subprocess with 8 fake CPU devices; prints one JSON line.

For each mesh: the losses of 5 train steps and the per-device bytes of params + Adam state.
"""

import json
import sys

import flax.linen as nn
import jax
import numpy as np
from ml_collections import config_dict

from minigpt_jax import optimizer, sharding, train
from minigpt_jax.model import ModelConfig, make_model

CFG = ModelConfig(vocab_size=48, block_size=16, n_layer=2, n_head=4, n_embd=64, dropout=0.0)
OPT = config_dict.ConfigDict(
    dict(schedule="nanogpt", lr=1e-2, min_lr=1e-3, warmup_iters=2, lr_decay_iters=10,
         warmup_tokens=0, final_tokens=0, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.1,
         decay_mask="ndim", grad_clip=1.0)
)  # fmt: skip
B, STEPS = 16, 5
rng = np.random.default_rng(0)
BATCHES = [rng.integers(0, CFG.vocab_size, (2, 1, B, CFG.block_size)).astype(np.int32)
           for _ in range(STEPS)]  # fmt: skip


def run_mesh(shape):
    devices = jax.devices()[: int(np.prod(shape))]
    mesh_cfg = config_dict.ConfigDict(dict(zip(sharding.MESH_AXES, shape)))
    mesh = sharding.make_mesh(mesh_cfg, devices)
    schedule = optimizer.make_schedule(OPT, 1)
    tx = optimizer.make_optimizer(OPT, schedule)
    model = make_model(CFG)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        state, shardings, _ = train.create_train_state(model, tx, CFG, mesh, seed=0)
        per_device = sum(
            x.addressable_shards[0].data.nbytes
            for x in jax.tree.leaves((state.params, state.opt_state))
        )
        batch_sharding = sharding.batch_sharding(mesh, leading_dims=1)
        repl = sharding.replicated(mesh)
        step = jax.jit(
            train.make_train_step(model, tx, schedule),
            in_shardings=(shardings, (batch_sharding, batch_sharding), repl),
            out_shardings=(shardings, repl),
            donate_argnums=0,
        )
        losses = []
        for xy in BATCHES:
            batch = sharding.put_batch((xy[0], xy[1]), batch_sharding)
            state, m = step(state, batch, jax.random.key(0))
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
