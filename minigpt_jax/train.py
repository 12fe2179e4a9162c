"""The training loop over a Run: evals, checkpoints, metrics, and stops that resume exactly."""

from __future__ import annotations

import contextlib
import functools
import math
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from minigpt_jax import checkpoint, clock, data, faults, files, metrics, sharding, startup, summary
from minigpt_jax import config as config_lib
from minigpt_jax import header as header_lib
from minigpt_jax import lock as lock_lib
from minigpt_jax import run as run_lib
from minigpt_jax import workdir as workdir_lib
from minigpt_jax.errors import RunStopped, UsageError
from minigpt_jax.evaluate import eval_sampler, evaluate
from minigpt_jax.model import count_params
from minigpt_jax.preemption import StopRequest, sync
from minigpt_jax.profiler import StepTrace
from minigpt_jax.run import TrainState

EVAL_KEYS = ("train_loss", "val_loss", "val_loss_full", "val_bpc")


def train_and_evaluate(
    cfg: Any, workdir: str | pathlib.Path, *, overwrite: bool = False, source: dict | None = None
) -> dict[str, Any]:
    """Trains cfg in workdir, resuming from its newest readable checkpoint. Returns the last
    eval metrics plus 'step' and 'stopped_by' (a signal name, 'target' when it reached
    train.target_val_loss, or None when it ran to max_iters). source (header.source_of): the
    command that named cfg, kept in config.json and printed in the header."""
    if "://" in str(workdir):
        raise UsageError(f"--workdir {workdir}: only local or shared-filesystem paths work so far")
    workdir = pathlib.Path(workdir)
    config_lib.validate(cfg)  # config errors first, before reading data
    sharding.initialize_distributed(cfg.dist)  # before anything touches a device
    sharding.check_same_run(workdir)
    # From here a SIGTERM never kills the run silently: until the workdir is locked it raises
    # Terminated (nothing written yet), then it asks for a stop that saves and unlocks.
    stop = StopRequest(armed=False)
    try:
        return _train(cfg, workdir, overwrite, stop, source)
    except Exception as e:
        if isinstance(e, UsageError) or not faults.is_disk_full(e):
            raise
        raise faults.disk_full(workdir, getattr(e, "step_bytes", None)) from None
    finally:
        stop.close()


def _train(
    cfg: Any, workdir: pathlib.Path, overwrite: bool, stop: StopRequest, source: dict | None
) -> dict:
    """train_and_evaluate once the config is checked and signals are handled."""
    started = time.perf_counter()
    timer = clock.Clock()
    meta, splits = data.load_prepared(
        cfg.data.dir,
        block_size=cfg.model.block_size,
        input_path=cfg.data.input,
        val_fraction=cfg.data.val_fraction,
    )
    run = run_lib.build(cfg, meta["vocab_size"])
    # Samples at evals need the whole params on one host: single-process runs only, for now.
    draw = eval_sampler(cfg, run.model_cfg, meta) if jax.process_count() == 1 else None
    t = cfg.train
    train_batches = run.train_batches(splits["train"])
    resolved = cfg.to_dict()
    resolved["model"] = dict(resolved["model"], vocab_size=run.model_cfg.vocab_size)
    is_main = jax.process_index() == 0
    log = print if is_main else (lambda _: None)

    # Every check has passed: only now does the run touch its workdir.
    files.make_dir(workdir, "--workdir")
    faults.check_directory(workdir)
    # Process 0 owns the workdir's files; orbax saves and restores with every process.
    lock = lock_lib.WorkdirLock(workdir, log) if is_main else contextlib.nullcontext()
    with lock:
        stop.arm()  # locked: a stop now ends the run cleanly and unlocks the workdir
        faults.remove_half_saves(workdir)  # left by a run cut short; orbax would skip them
        ckpt = checkpoint.Checkpointer(workdir)
        try:
            resume = workdir_lib.should_resume(ckpt, t.init_from, overwrite, resolved, meta, log)
            if not resume and ckpt.steps():  # init_from=scratch --overwrite
                ckpt.close()
                if is_main:
                    workdir_lib.discard_run(workdir)
                sync("discarded")
                ckpt = checkpoint.Checkpointer(workdir)
            skipped, last_eval = 0, {}
            if resume:
                restored = ckpt.restore_newest_readable(run.abstract_state, log)
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
            else:
                state = run.init_state()
            if is_main:
                run_files = workdir_lib.with_source(workdir, resolved, source)
                source = run_files.get("source")
                workdir_lib.write_run_files(workdir, run_files, meta)
            nano, total = count_params(state.params)
            for line in header_lib.lines(
                cfg, run.model_cfg, run.mesh, source=source, params=(nano, total),
                tokens_per_step=run.tokens_per_step,
                resume_step=int(state.step) if resume else None,
            ):  # fmt: skip
                log(line)
            run_eval = functools.partial(
                evaluate,
                run.eval_step,
                splits=splits,
                seed=t.seed,
                batch_size=t.batch_size,
                block_size=run.model_cfg.block_size,
                eval_iters=t.eval_iters,
                put=run.put,
            )
            writer = metrics.MetricsWriter(
                workdir,
                total=t.max_iters,
                resume_step=int(state.step) if resume else None,
                enabled=is_main,
                started=started,
                config=run_files if is_main else None,  # TensorBoard's text, wandb's config
            )
            timer.seconds["startup"] = time.perf_counter() - startup.STARTED
            loop_started = time.perf_counter()
            trace = StepTrace(t.profile_steps, workdir, writer.log)
            try:
                with writer, run.activate(), trace:  # the writer closes last, failed or not
                    results = _loop(
                        state,
                        t=t,
                        train_step=trace.wrap(run.train_step),
                        dropout_rng=run.dropout_rng,
                        train_batch=functools.partial(run.host_batch, train_batches),
                        run_eval=run_eval,
                        draw=draw,
                        ckpt=ckpt,
                        writer=writer,
                        tokens_per_step=run.tokens_per_step,
                        skipped=skipped,
                        last_eval=last_eval,
                        timer=timer,
                    )
            finally:
                timer.end_loop(time.perf_counter() - loop_started)
        finally:
            with timer("checkpoint"):  # the save in flight
                faults.close(ckpt)  # waits for it; no orbax thread outlives a failure
    if is_main:
        with timer("end"):
            metrics.plot_losses(workdir, run.tokens_per_step)
        results["wall"] = timer.breakdown()
        params = {"nanogpt_count": nano, "total": total}
        wall_s = time.perf_counter() - started
        summary.write_summary(
            workdir, params=params, tokens_per_step=run.tokens_per_step, wall_s=wall_s,
            stopped_by=results["stopped_by"], target=t.target_val_loss, wall=results["wall"],
            step=results["step"], checkpoint_step=ckpt.latest_step(),
        )  # fmt: skip
    if t.skip_nonfinite and results["skipped"] > t.skip_nonfinite_limit * results["step"]:
        raise RunStopped(
            f"{results['skipped']} of {results['step']} updates were skipped as non-finite, over "
            f"train.skip_nonfinite_limit={t.skip_nonfinite_limit}: the run trained on what was "
            "left; lower opt.lr (checkpoints and metrics are kept)"
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
    timer: clock.Clock,
) -> dict[str, Any]:
    """Steps from state.step to max_iters; evaluates, checkpoints, and stops when asked."""
    start = int(state.step)
    results = dict(last_eval)
    stop = StopRequest()  # inside train's: it carries a stop asked for since the lock was taken
    if start == 0 and not stop.asked():
        with timer("eval"):
            results = run_eval(state.params, step=0)
        writer.write("eval", 0, results)
        if draw:
            with timer("samples"):
                writer.write_samples(0, draw(state.params, 0))
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

    def at_target(results: dict) -> bool:
        return t.stop_at_target and summary.target_reached(results, t.target_val_loss)

    try:
        if at_target(results):  # step 0's eval, or a resumed run that already got there
            writer.log(f"step {start}: full val {results['val_loss_full']:.4f} is at the target")
            return {**results, "step": start, "stopped_by": summary.TARGET_STOP, "skipped": skipped}
        if stop.asked():  # before the first step: step 0 is the seed's init, a later one is saved
            return {**results, "step": start, "stopped_by": stop.name(), "skipped": skipped}
        for step in range(start + 1, t.max_iters + 1):
            with timer("compile") if step == start + 1 else contextlib.nullcontext():
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
                    with timer("eval"):
                        results = run_eval(state.params, step=step)
                    writer.write("eval", step, results)
                    if draw:
                        with timer("samples"):
                            writer.write_samples(step, draw(state.params, step))
                    step_meta.update(results)
                with timer("checkpoint"):
                    faults.ensure_room(ckpt, state)
                    ckpt.save(step, state, step_meta)
                last_time, last_step = time.perf_counter(), step  # evals are not train time
            if evaluating and at_target(results):
                with timer("checkpoint"):
                    ckpt.wait()
                writer.log(
                    f"step {step}: full val {results['val_loss_full']:.4f} reached the target "
                    f"train.target_val_loss={t.target_val_loss}; stopping"
                )
                return {
                    **results,
                    "step": step,
                    "stopped_by": summary.TARGET_STOP,
                    "skipped": skipped,
                }
            if stopping:
                with timer("checkpoint"):
                    ckpt.wait()
                # No line here: the caller says it once, with the command that resumes.
                return {**results, "step": step, "stopped_by": stop.name(), "skipped": skipped}
        if pending is not None:
            flush(pending)
    finally:
        stop.close()
    return {**results, "step": t.max_iters, "stopped_by": None, "skipped": skipped}
