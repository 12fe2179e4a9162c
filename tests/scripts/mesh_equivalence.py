"""Run by sharding_test.py in a subprocess with 8 fake CPU devices; prints one JSON line.

For each mesh: the losses of 5 train steps and the per-device bytes of params + Adam state;
"pmap": the same steps as a pmap + pmean data-parallel step over 8 devices, the classic
reference the sharded jit replaces (its params are compared with the 8x1x1 mesh's).
MESH_MODEL (JSON, optional) overrides model fields, e.g. the modern switches.
"""

import json
import os
import sys

import jax
import numpy as np
import optax

from minigpt_jax import config, sharding
from minigpt_jax import run as run_lib
from minigpt_jax.evaluate import token_losses
from minigpt_jax.run import TrainState

V, T, B, STEPS = 48, 16, 16, 5
CONFIG = config.base_config()
CONFIG.model.update(block_size=T, n_layer=2, n_head=4, n_embd=64, dropout=0.0)
CONFIG.model.update(json.loads(os.environ.get("MESH_MODEL", "{}")))  # e.g. blocks_test's switches
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
    params = jax.device_get(state.params)
    return {"losses": losses, "bytes": per_device, "wte": params["wte"], "params": params}


def run_pmap(n: int = 8):
    """Data parallel the pmap way: each device its B/n rows, gradients summed with psum."""
    run = run_lib.build(CONFIG, V, mesh=sharding.one_device_mesh())
    model, tx, schedule = run.model, run.tx, run.schedule

    def step(state, x_BxT, y_BxT):
        def loss_sum(params):
            return token_losses(model, params, x_BxT, y_BxT, deterministic=False).sum()

        loss, grads = jax.value_and_grad(loss_sum)(state.params)
        tokens = jax.lax.psum(x_BxT.size, "d")
        loss, grads = jax.lax.psum((loss, grads), "d")
        grads = jax.tree.map(lambda g: g / tokens, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        lr = schedule(state.step)
        return TrainState(state.step + 1, params, opt_state), loss / tokens, lr

    devices = jax.devices()[:n]
    host = jax.device_get(run.init_state())
    state = jax.tree.map(lambda a: np.broadcast_to(a, (n, *np.shape(a))), host)  # one per device
    pstep = jax.pmap(step, axis_name="d", devices=devices)
    losses = []
    for xy in BATCHES:
        rows = lambda a: a[0].reshape(n, B // n, T)  # noqa: E731  (micro-batch 0: A == 1)
        state, loss, _ = pstep(state, rows(xy[0]), rows(xy[1]))
        losses.append(float(loss[0]))
    params = jax.tree.map(lambda a: a[0], jax.device_get(state.params))  # host: no programs
    return {"losses": losses, "wte": params["wte"], "params": params}


if __name__ == "__main__":
    names = sys.argv[1:]
    results = {n: run_pmap() if n == "pmap" else run_mesh(tuple(json.loads(n))) for n in names}
    results = {n if n == "pmap" else str(json.loads(n)): r for n, r in results.items()}
    ref = results[str([1, 1, 1])]["wte"]
    if "pmap" in results:  # against the sharded jit's data-parallel mesh, every param
        pairs = (results["pmap"]["params"], results[str([8, 1, 1])]["params"])
        diffs = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), *pairs)
        results["pmap"]["params_max_diff_vs_8x1x1"] = max(jax.tree.leaves(diffs))
    for r in results.values():
        r["wte_max_diff"] = float(np.abs(r.pop("wte") - ref).max())
        r.pop("params")
    print(json.dumps(results))
