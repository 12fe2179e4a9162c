"""TrainState, the jitted train step, and the training loop that resumes exactly."""

from __future__ import annotations

import contextlib
import functools
import math
import pathlib
import shutil
import signal
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
from minigpt_jax.errors import RunStopped, UsageError
from minigpt_jax.evaluate import eval_sampler, evaluate, make_eval_step, process_slice, token_losses
from minigpt_jax.model import ModelConfig, count_params, make_model
from minigpt_jax.preemption import StopRequest, sync

# Separate random streams derived from the one config seed (fold_in), so each is reproducible.
INIT_STREAM, DROPOUT_STREAM = 0, 1
TRAIN_BATCH_STREAM = 0
EVAL_KEYS = ("train_loss", "val_loss", "val_loss_full", "val_bpc")


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


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    skip_nonfinite: bool = False,
) -> Callable:
    """train_step(state, batch, rng) -> (state, metrics); batch is (x_AxBxT, y_AxBxT).

    A micro-batches are scanned and their gradients summed (token-weighted), then clipped and
    applied once, so grad_accum=A equals one A-times-larger batch. Dropout keys are
    fold_in(rng, step, micro), so they depend on nothing but the seed and the step. With
    skip_nonfinite, an update whose loss or gradient norm is not finite is dropped.
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
        loss, grad_norm = losses_A.sum() / tokens, optax.tree.norm(grads)  # norm before clipping
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if skip_nonfinite:
            keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
            params = jax.tree.map(keep, params, state.params)
            opt_state = jax.tree.map(keep, opt_state, state.opt_state)
        step_metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "lr": schedule(state.step),
            "nonfinite": (~finite).astype(jnp.int32),
        }
        return TrainState(state.step + 1, params, opt_state), step_metrics

    return train_step


def jit_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    shardings: Any,
    mesh: Any,
    *,
    skip_nonfinite: bool = False,
) -> Callable:
    """The train step jitted over the mesh: state donated, batches split over data x fsdp."""
    batch = sharding.batch_sharding(mesh, leading_dims=1)
    repl = sharding.replicated(mesh)
    return jax.jit(
        make_train_step(model, tx, schedule, skip_nonfinite=skip_nonfinite),
        in_shardings=(shardings, (batch, batch), repl),
        out_shardings=(shardings, repl),
        donate_argnums=0,
    )


def host_batch(batches: data.Batches, step: int, *, grad_accum: int, batch_sharding: Any) -> tuple:
    """Update `step`'s micro-batches (x_AxBxT, y_AxBxT) as global arrays laid out by
    batch_sharding."""
    micro = [batches.batch(step * grad_accum + m) for m in range(grad_accum)]
    return sharding.put_batch(tuple(np.stack(a) for a in zip(*micro)), batch_sharding)


def create_train_state(
    model: nn.Module, tx: optax.GradientTransformation, model_cfg: ModelConfig, mesh, seed: int
):
    """(state, shardings, abstract state): params and optimizer state initialised directly into
    their shardings, with no host copy."""

    def init(rng):
        x_1xT = jnp.zeros((1, model_cfg.block_size), jnp.int32)
        params = model.init(rng, x_1xT)["params"]
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

    rng = jax.random.fold_in(jax.random.key(seed), INIT_STREAM)
    abstract = jax.eval_shape(init, rng)
    shardings = sharding.logical_shardings(abstract, mesh)
    state = jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(rng)
    return state, shardings, sharding.sharded_abstract(abstract, mesh)


def _check_train_config(cfg: Any) -> None:
    t = cfg.train
    for name in ("batch_size", "max_iters", "eval_interval", "eval_iters", "log_interval"):
        if t[name] <= 0:
            raise UsageError(f"train.{name} must be positive, got {t[name]}")
    if t.grad_accum <= 0 or t.ckpt_interval <= 0:
        raise UsageError("train.grad_accum and train.ckpt_interval must be positive")
    if t.init_from not in ("resume", "scratch"):
        raise UsageError(f"train.init_from must be 'resume' or 'scratch', got {t.init_from!r}")


def _discard_run(workdir: pathlib.Path) -> None:
    """--overwrite: the user asked to replace the run, so its files go."""
    shutil.rmtree(workdir / checkpoint.CKPT_DIR, ignore_errors=True)
    shutil.rmtree(workdir / "tb", ignore_errors=True)
    for name in (metrics.METRICS_FILE, "loss.png"):
        (workdir / name).unlink(missing_ok=True)


def train_and_evaluate(
    cfg: Any, workdir: str | pathlib.Path, *, overwrite: bool = False
) -> dict[str, Any]:
    """Trains cfg in workdir, resuming from its newest readable checkpoint. Returns the last
    eval metrics plus 'step' and 'stopped_by' (a signal name, or None when it ran to the end)."""
    if "://" in str(workdir):
        raise UsageError(f"--workdir {workdir}: only local or shared-filesystem paths work so far")
    started = time.perf_counter()
    workdir = pathlib.Path(workdir)
    _check_train_config(cfg)
    sharding.initialize_distributed(cfg.dist)  # before anything touches a device
    model_config(cfg, cfg.model.vocab_size or 1)  # config errors first, before reading data
    meta, splits = data.load_prepared(
        cfg.data.dir,
        block_size=cfg.model.block_size,
        input_path=cfg.data.input,
        val_fraction=cfg.data.val_fraction,
    )
    model_cfg = model_config(cfg, meta["vocab_size"])
    # Samples at evals need the whole params on one host: single-process runs only, for now.
    draw = eval_sampler(cfg, model_cfg, meta) if jax.process_count() == 1 else None
    t = cfg.train
    train_batches = data.Batches(
        splits["train"],
        batch_size=t.batch_size,
        block_size=model_cfg.block_size,
        seed=(t.seed, TRAIN_BATCH_STREAM),
        sampling=cfg.data.sampling,
        **process_slice(),
    )
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
    resolved = cfg.to_dict()
    resolved["model"] = dict(resolved["model"], vocab_size=model_cfg.vocab_size)
    is_main = jax.process_index() == 0
    log = print if is_main else (lambda _: None)

    # Every check has passed: only now does the run touch its workdir.
    data.make_dir(workdir, "--workdir")
    # Process 0 owns the workdir's files; orbax saves and restores with every process.
    lock = checkpoint.WorkdirLock(workdir, log) if is_main else contextlib.nullcontext()
    with lock:
        ckpt = checkpoint.Checkpointer(workdir)
        try:
            resume = checkpoint.should_resume(
                ckpt, cfg.train.init_from, overwrite, resolved, meta, log
            )
            if not resume and ckpt.steps():  # init_from=scratch --overwrite
                ckpt.close()
                if is_main:
                    _discard_run(workdir)
                sync("discarded")
                ckpt = checkpoint.Checkpointer(workdir)
            with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
                state, shardings, target = create_train_state(model, tx, model_cfg, mesh, t.seed)
                skipped, last_eval = 0, {}
                if resume:
                    restored = ckpt.restore_newest_readable(target, log)
                    if restored is None:
                        raise UsageError(
                            f"no checkpoint in {ckpt.directory} is readable (the damaged ones "
                            "were kept, renamed *.unreadable-*); pass --config.train.init_from="
                            "scratch --overwrite to start over"
                        )
                    step, params, opt_state, step_meta = restored
                    state = TrainState(jnp.asarray(step, jnp.int32), params, opt_state)
                    skipped = step_meta.get("nonfinite_skipped", 0)
                    last_eval = {k: v for k, v in step_meta.items() if k in EVAL_KEYS}
                    log(f"resuming from {ckpt.step_dir(step)} (step {step})")
                if is_main:
                    checkpoint.write_run_files(workdir, resolved, meta)
                nano, total = count_params(state.params)
                log(
                    f"number of parameters: {nano / 1e6:.2f}M (nanoGPT's count, without wpe); "
                    f"{total / 1e6:.2f}M in all ({total:,})"
                )
                batch_sharding = sharding.batch_sharding(mesh, leading_dims=1)
                repl = sharding.replicated(mesh)
                train_step = jit_train_step(
                    model, tx, schedule, shardings, mesh, skip_nonfinite=t.skip_nonfinite
                )
                eval_step = jax.jit(
                    make_eval_step(model),
                    in_shardings=(shardings.params, *(batch_sharding,) * 3),
                    out_shardings=repl,
                )

                train_batch = functools.partial(
                    host_batch, train_batches, grad_accum=t.grad_accum,
                    batch_sharding=batch_sharding,
                )  # fmt: skip

                run_eval = functools.partial(
                    evaluate,
                    eval_step,
                    splits=splits,
                    seed=t.seed,
                    batch_size=t.batch_size,
                    block_size=model_cfg.block_size,
                    eval_iters=t.eval_iters,
                    put=functools.partial(sharding.put_batch, sharding=batch_sharding),
                )
                writer = metrics.MetricsWriter(
                    workdir,
                    total=t.max_iters,
                    resume_step=int(state.step) if resume else None,
                    enabled=is_main,
                )
                try:
                    results = _loop(
                        state,
                        t=t,
                        train_step=train_step,
                        dropout_rng=jax.random.fold_in(jax.random.key(t.seed), DROPOUT_STREAM),
                        train_batch=train_batch,
                        run_eval=run_eval,
                        draw=draw,
                        ckpt=ckpt,
                        writer=writer,
                        tokens_per_step=tokens_per_step,
                        skipped=skipped,
                        last_eval=last_eval,
                    )
                finally:
                    writer.close()
        finally:
            ckpt.wait()
            ckpt.close()
    if is_main:
        metrics.plot_losses(workdir, tokens_per_step)
        params = {"nanogpt_count": nano, "total": total}
        wall_s = time.perf_counter() - started
        metrics.write_summary(
            workdir, params=params, tokens_per_step=tokens_per_step, wall_s=wall_s
        )
    return results


def _loop(
    state: TrainState,
    *,
    t: Any,
    train_step: Callable,
    dropout_rng: jax.Array,
    train_batch: Callable,
    run_eval: Callable,
    draw: Callable | None,
    ckpt: checkpoint.Checkpointer,
    writer: metrics.MetricsWriter,
    tokens_per_step: int,
    skipped: int,
    last_eval: dict[str, float],
) -> dict[str, Any]:
    """Steps from state.step to max_iters; evaluates, checkpoints, and stops when asked."""
    start = int(state.step)
    results = dict(last_eval)
    if start == 0:
        results = run_eval(state.params, step=0)
        writer.write("eval", 0, results)
        if draw:
            writer.write_samples(0, draw(state.params, 0))
    stop = StopRequest()
    pending = None  # (step, device metrics) of the step dispatched last
    last_time, last_step = time.perf_counter(), start

    def flush(pending) -> None:
        nonlocal last_time, last_step, skipped
        step, device_metrics = pending
        values = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
        writer.advance()
        bad = [k for k in ("loss", "grad_norm") if not math.isfinite(values[k])]
        if bad and not t.skip_nonfinite:
            last = ckpt.latest_step()
            where = ckpt.step_dir(last) if last is not None else "none"
            raise RunStopped(
                f"non-finite {' and '.join(bad)} at step {step} ({values[bad[0]]}); the last good "
                f"checkpoint is {where}; nothing after it was saved. Lower opt.lr or set "
                "--config.train.skip_nonfinite=true"
            )
        skipped += int(values.pop("nonfinite"))
        if step % t.log_interval == 0 or step == t.max_iters:
            now = time.perf_counter()
            ms = 1000 * (now - last_time) / max(step - last_step, 1)
            last_time, last_step = now, step
            values.update(ms_per_iter=ms, tokens_per_s=tokens_per_step / (ms / 1000))
            values["nonfinite_skipped"] = skipped
            writer.write("train", step, values)

    try:
        for step in range(start + 1, t.max_iters + 1):
            state, step_metrics = train_step(state, train_batch(step - 1), dropout_rng)
            # Read the previous step's metrics only now: the device is already busy with this one.
            if pending is not None:
                flush(pending)
            pending = (step, step_metrics)
            stopping = stop.should_stop(step)
            evaluating = step % t.eval_interval == 0 or step == t.max_iters
            if evaluating or stopping or step % t.ckpt_interval == 0:
                flush(pending)  # before saving: a non-finite step is never checkpointed
                pending = None
                step_meta = {"step": step, "nonfinite_skipped": skipped}
                if evaluating:
                    results = run_eval(state.params, step=step)
                    writer.write("eval", step, results)
                    if draw:
                        writer.write_samples(step, draw(state.params, step))
                    step_meta.update(results)
                ckpt.save(step, state, step_meta)
                last_time, last_step = time.perf_counter(), step  # evals are not train time
            if stopping:
                ckpt.wait()
                name = signal.Signals(stop.signum).name if stop.signum else "preemption"
                writer.log(f"stopped by {name} at step {step}; checkpoint saved")
                return {**results, "step": step, "stopped_by": name}
        if pending is not None:
            flush(pending)
    finally:
        stop.close()
    return {**results, "step": t.max_iters, "stopped_by": None}
