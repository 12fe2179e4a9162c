"""`minigpt eval`: a run's checkpoint (best | latest | N) evaluated on its data, data parallel
over as many devices as divide the batch."""

from __future__ import annotations

import math
import pathlib
import sys

import jax

from minigpt_jax import checkpoint, data, files, per_token, sharding
from minigpt_jax import config as config_lib
from minigpt_jax import lock as lock_lib
from minigpt_jax import run as run_lib
from minigpt_jax import workdir as workdir_lib
from minigpt_jax.errors import UsageError
from minigpt_jax.evaluate import evaluate, make_token_loss_step, val_token_losses


def evaluate_checkpoint(
    workdir: str | pathlib.Path,
    step_spec: str = "latest",
    data_dir: str | None = None,
    per_token_html: pathlib.Path | None = None,
) -> tuple[int, dict[str, float]]:
    """(step, results): estimate_loss and the full val pass of the checkpoint `step_spec` names;
    with per_token_html, also that page: the val text coloured by each character's loss."""
    saved, meta, model_cfg = workdir_lib.read_run(workdir)
    cfg = config_lib.from_saved(saved)
    ckpt = checkpoint.Checkpointer(workdir, create=False)
    try:
        checkpoint.resolve_step(ckpt, step_spec)  # a bad --step is refused before reading data
    finally:
        ckpt.close()
    data_dir = data_dir or cfg.data.dir  # relative paths resolve from the current directory
    if data.load_meta(data_dir)["itos"] != meta["itos"]:
        raise UsageError(f"{data_dir} holds other data than the run's vocabulary; pass its data")
    splits = {s: data.load_split(data_dir, s) for s in data.SPLITS}
    devices = jax.devices()[: math.gcd(cfg.train.batch_size, jax.device_count())]
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, devices)
    run = run_lib.build(cfg, model_cfg.vocab_size, mesh=mesh)
    # The step again: a damaged one is set aside and the spec names another.
    step, params = checkpoint.load_params(
        workdir, run.model_cfg, step_spec, mesh, set_aside=not lock_lib.in_use(workdir),
        log=lambda line: print(line, file=sys.stderr),
    )  # fmt: skip
    with run.activate():
        results = evaluate(
            run.eval_step, params, splits, seed=cfg.train.seed, step=step,
            batch_size=cfg.train.batch_size, block_size=model_cfg.block_size,
            eval_iters=cfg.train.eval_iters, put=run.put,
        )  # fmt: skip
        if per_token_html is not None:
            if not len(splits["val"]):
                raise UsageError(f"{data_dir} has no val split to colour; drop --per_token")
            losses = val_token_losses(
                jax.jit(make_token_loss_step(run.model)), params, splits["val"],
                batch_size=cfg.train.batch_size, block_size=model_cfg.block_size, put=run.put,
            )  # fmt: skip
            page = per_token.render(
                data.CharTokenizer.from_json(meta).decode(splits["val"]), losses,
                title=f"{workdir} step {step}: the val text by loss", vocab_size=len(meta["itos"]),
            )  # fmt: skip
            files.atomic_write_bytes(per_token_html, page.encode("utf-8"))
    return step, results
