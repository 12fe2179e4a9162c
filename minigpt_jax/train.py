"""TrainState, the jitted train and eval steps, evaluation, and the training loop."""

from __future__ import annotations

import functools
import logging
import math
import pathlib
import time
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from minigpt_jax import checkpoint, data, metrics, optimizer, sharding
from minigpt_jax.errors import UsageError
from minigpt_jax.model import ModelConfig, count_params, make_model

# Separate random streams derived from the one config seed (fold_in), so each is reproducible.
INIT_STREAM, DROPOUT_STREAM = 0, 1
TRAIN_BATCH_STREAM, EVAL_TRAIN_STREAM, EVAL_VAL_STREAM = 0, 1, 2


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def model_config(cfg: Any, vocab_size: int | None = None) -> ModelConfig:
    """ModelConfig from the config's model section; vocab_size comes from the data's meta."""
    fields = dict(cfg.model)
    if vocab_size is not None:
        fields["vocab_size"] = vocab_size
    try:
        return ModelConfig.from_dict(fields)
    except (TypeError, ValueError) as e:
        raise UsageError(f"bad model config: {e}") from None


def token_losses(
    model: nn.Module, params: Any, x_BxT: jax.Array, y_BxT: jax.Array, **kwargs
) -> jax.Array:
    logits_BxTxV = model.apply({"params": params}, x_BxT, **kwargs)
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, y_BxT)


def make_train_step(
    model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule
) -> Callable:
    """train_step(state, batch, rng) -> (state, metrics); batch is (x_AxBxT, y_AxBxT).

    A micro-batches are scanned and their gradients summed (token-weighted), then clipped and
    applied once, so grad_accum=A equals one A-times-larger batch. Dropout keys are
    fold_in(rng, step, micro), so they depend on nothing but the seed and the step.
    """

    def train_step(state: TrainState, batch: tuple, rng: jax.Array):
        x_AxBxT, y_AxBxT = batch
        step_rng = jax.random.fold_in(rng, state.step)

        def loss_sum(params, x_BxT, y_BxT, micro):
            rngs = {"dropout": jax.random.fold_in(step_rng, micro)}
            losses_BxT = token_losses(model, params, x_BxT, y_BxT, deterministic=False, rngs=rngs)
            return losses_BxT.sum()

        def micro_step(grads_sum, inputs):
            x_BxT, y_BxT, micro = inputs
            loss, grads = jax.value_and_grad(loss_sum)(state.params, x_BxT, y_BxT, micro)
            return jax.tree.map(jnp.add, grads_sum, grads), loss

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        micro_ids = jnp.arange(x_AxBxT.shape[0])
        grads_sum, losses_A = jax.lax.scan(micro_step, zeros, (x_AxBxT, y_AxBxT, micro_ids))
        tokens = x_AxBxT.size
        grads = jax.tree.map(lambda g: g / tokens, grads_sum)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        step_metrics = {
            "loss": losses_A.sum() / tokens,
            "grad_norm": optax.tree.norm(grads),  # before clipping
            "lr": schedule(state.step),
        }
        return TrainState(state.step + 1, params, opt_state), step_metrics

    return train_step


def _process_slice() -> dict[str, int]:
    # Each process loads only its rows of every global batch.
    return {"process_index": jax.process_index(), "process_count": jax.process_count()}


def make_eval_step(model: nn.Module) -> Callable:
    """eval_step(params, x_NxBxT, y_NxBxT, w_NxBxT) -> (weighted loss sum, weight sum).

    One call scans all N batches: one dispatch per evaluation, not one per batch.
    """

    def eval_step(params, x_NxBxT, y_NxBxT, w_NxBxT):
        def add_batch(sums, batch):
            x_BxT, y_BxT, w_BxT = batch
            losses_BxT = token_losses(model, params, x_BxT, y_BxT, deterministic=True)
            return (sums[0] + (losses_BxT * w_BxT).sum(), sums[1] + w_BxT.sum()), None

        zero = jnp.zeros((), jnp.float32)
        sums, _ = jax.lax.scan(add_batch, (zero, zero), (x_NxBxT, y_NxBxT, w_NxBxT))
        return sums

    return eval_step


def evaluate(
    eval_step: Callable,
    params: Any,
    splits: dict[str, np.ndarray],
    *,
    seed: int,
    step: int,
    batch_size: int,
    block_size: int,
    eval_iters: int,
    put: Callable,
) -> dict[str, float]:
    """nanoGPT's estimate_loss (eval_iters random batches of each split, drawn from (seed, step))
    and one deterministic pass over the whole val split (loss and bits per character)."""
    stacks = {}
    for split, stream in (("train", EVAL_TRAIN_STREAM), ("val", EVAL_VAL_STREAM)):
        batches = data.Batches(
            splits[split],
            batch_size=batch_size,
            block_size=block_size,
            seed=(seed, stream, step),
            **_process_slice(),
        )
        x, y = (np.stack(a) for a in zip(*(batches.batch(i) for i in range(eval_iters))))
        stacks[split] = (x, y, np.ones(x.shape, np.float32))
    x, y, w = data.eval_windows(splits["val"], block_size)
    pad = -len(x) % batch_size  # whole batches; padded rows weigh 0
    stacks["full"] = tuple(
        np.concatenate([a, np.zeros((pad, block_size), a.dtype)]).reshape(
            -1, batch_size, block_size
        )
        for a in (x, y, w)
    )
    proc = _process_slice()
    rows = batch_size // proc["process_count"]
    own = slice(proc["process_index"] * rows, (proc["process_index"] + 1) * rows)
    stacks["full"] = tuple(a[:, own] for a in stacks["full"])  # this process's rows
    means = {}
    for name, arrays in stacks.items():
        # One evaluation at a time: independent multi-device programs in flight together can
        # deadlock XLA:CPU's collectives.
        loss_sum, weight = jax.device_get(eval_step(params, *put(arrays)))
        means[name] = float(loss_sum / weight)
    return {
        "train_loss": means["train"],
        "val_loss": means["val"],
        "val_loss_full": means["full"],
        "val_bpc": means["full"] / math.log(2),
    }


def _prepare_workdir(workdir: pathlib.Path) -> None:
    data.make_dir(workdir, "--workdir")
    try:
        (workdir / ".write_test").touch()
        (workdir / ".write_test").unlink()
    except OSError:
        raise UsageError(f"workdir {workdir} is not writable; pick another --workdir") from None


def _check_train_config(cfg: Any) -> None:
    t = cfg.train
    for name in ("batch_size", "max_iters", "eval_interval", "eval_iters", "log_interval"):
        if t[name] <= 0:
            raise UsageError(f"train.{name} must be positive, got {t[name]}")
    if t.grad_accum <= 0 or t.ckpt_interval <= 0:
        raise UsageError("train.grad_accum and train.ckpt_interval must be positive")


def create_train_state(
    model: nn.Module, tx: optax.GradientTransformation, model_cfg: ModelConfig, mesh, seed: int
):
    """Initialises params and optimizer state directly into their shardings (no host copy)."""

    def init(rng):
        x_1xT = jnp.zeros((1, model_cfg.block_size), jnp.int32)
        params = model.init(rng, x_1xT)["params"]
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

    rng = jax.random.fold_in(jax.random.key(seed), INIT_STREAM)
    abstract = jax.eval_shape(init, rng)
    shardings = sharding.logical_shardings(abstract, mesh)
    state = jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(rng)
    return state, shardings


def train_and_evaluate(cfg: Any, workdir: str | pathlib.Path) -> dict[str, float]:
    """Trains cfg in workdir; returns the final eval metrics."""
    workdir = pathlib.Path(workdir)
    _check_train_config(cfg)
    model_config(cfg, cfg.model.vocab_size or 1)  # config errors first, before reading data
    if cfg.data.input and not (pathlib.Path(cfg.data.dir) / data.META_FILE).exists():
        # A corpus given in the config is prepared on first use, as `minigpt prepare` would.
        text = data.read_text(cfg.data.input)
        data.prepare(
            text,
            cfg.data.dir,
            val_fraction=cfg.data.val_fraction,
            block_size=cfg.model.block_size,
        )
    meta = data.load_meta(cfg.data.dir)
    splits = {s: data.load_split(cfg.data.dir, s) for s in data.SPLITS}
    model_cfg = model_config(cfg, meta["vocab_size"])
    t = cfg.train
    seed = t.seed
    train_batches = data.Batches(
        splits["train"],
        batch_size=t.batch_size,
        block_size=model_cfg.block_size,
        seed=(seed, TRAIN_BATCH_STREAM),
        sampling=cfg.data.sampling,
        **_process_slice(),
    )
    for split in data.SPLITS:  # fail before compiling if a split cannot hold a window
        data.Batches(splits[split], batch_size=1, block_size=model_cfg.block_size, seed=0)
    tokens_per_step = t.batch_size * model_cfg.block_size * t.grad_accum
    schedule = optimizer.make_schedule(cfg.opt, tokens_per_step)
    tx = optimizer.make_optimizer(cfg.opt, schedule)
    model = make_model(model_cfg)
    mesh = sharding.make_mesh(cfg.mesh)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if t.batch_size % shards:
        raise UsageError(
            f"train.batch_size={t.batch_size} must be divisible by mesh data x fsdp = {shards}"
        )

    # Every check has passed: only now does the run touch its workdir.
    _prepare_workdir(workdir)
    resolved = cfg.to_dict()
    resolved["model"] = dict(resolved["model"], vocab_size=model_cfg.vocab_size)
    checkpoint.write_run_files(workdir, resolved, meta)
    ckpt = checkpoint.Checkpointer(workdir)
    is_main = jax.process_index() == 0
    writer = metrics.MetricsWriter(workdir, total=t.max_iters, enabled=is_main)

    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        state, state_shardings = create_train_state(model, tx, model_cfg, mesh, seed)
        nano, total = count_params(state.params)
        writer.log(
            f"number of parameters: {nano / 1e6:.2f}M (nanoGPT's count, without wpe); "
            f"{total / 1e6:.2f}M in all ({total:,})"
        )
        batch_sharding = sharding.batch_sharding(mesh, leading_dims=1)
        repl = sharding.replicated(mesh)
        train_step = jax.jit(
            make_train_step(model, tx, schedule),
            in_shardings=(state_shardings, (batch_sharding, batch_sharding), repl),
            out_shardings=(state_shardings, repl),
            donate_argnums=0,
        )
        eval_sharding = sharding.batch_sharding(mesh, leading_dims=1)
        eval_step = jax.jit(
            make_eval_step(model),
            in_shardings=(state_shardings.params, eval_sharding, eval_sharding, eval_sharding),
            out_shardings=repl,
        )
        put_eval = functools.partial(sharding.put_batch, sharding=eval_sharding)
        dropout_rng = jax.random.fold_in(jax.random.key(seed), DROPOUT_STREAM)

        def train_batch(step: int):
            micro = [train_batches.batch(step * t.grad_accum + m) for m in range(t.grad_accum)]
            x_AxBxT, y_AxBxT = (np.stack(a) for a in zip(*micro))
            return sharding.put_batch((x_AxBxT, y_AxBxT), batch_sharding)

        def run_eval(step: int) -> dict[str, float]:
            return evaluate(
                eval_step,
                state.params,
                splits,
                seed=seed,
                step=step,
                batch_size=t.batch_size,
                block_size=model_cfg.block_size,
                eval_iters=t.eval_iters,
                put=put_eval,
            )

        results = run_eval(0)
        writer.write("eval", 0, results)
        pending = None  # (step, device metrics) of the step dispatched last
        last_time, last_step = time.perf_counter(), 0

        def flush(pending) -> None:
            nonlocal last_time, last_step
            step, device_metrics = pending
            values = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
            writer.advance()
            if step % t.log_interval == 0 or step == t.max_iters:
                now = time.perf_counter()
                ms = 1000 * (now - last_time) / max(step - last_step, 1)
                last_time, last_step = now, step
                values.update(ms_per_iter=ms, tokens_per_s=tokens_per_step / (ms / 1000))
                writer.write("train", step, values)

        for step in range(1, t.max_iters + 1):
            batch = train_batch(step - 1)
            state, step_metrics = train_step(state, batch, dropout_rng)
            # Read the previous step's metrics only now: the device is already busy with this one.
            if pending is not None:
                flush(pending)
            pending = (step, step_metrics)
            if step % t.eval_interval == 0 or step % t.ckpt_interval == 0 or step == t.max_iters:
                flush(pending)
                pending = None
                ckpt_meta = {"step": step}
                if step % t.eval_interval == 0 or step == t.max_iters:
                    results = run_eval(step)
                    writer.write("eval", step, results)
                    ckpt_meta.update(results)
                ckpt.save(step, state, ckpt_meta)
                last_time, last_step = time.perf_counter(), step  # evals are not train time
        ckpt.wait()
        ckpt.close()
    writer.close()
    if is_main:
        metrics.plot_losses(workdir)
    logging.info("finished %d steps in %s", t.max_iters, workdir)
    return results
