"""Evaluation: nanoGPT's estimate_loss, a full pass over the val split, samples at evals, and
`minigpt eval`."""

from __future__ import annotations

import functools
import math
import pathlib
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import config_dict

from minigpt_jax import checkpoint, data, sample, sharding
from minigpt_jax.errors import UsageError
from minigpt_jax.model import ModelConfig, make_model

EVAL_TRAIN_STREAM, EVAL_VAL_STREAM = 1, 2  # batch streams of the config seed (train uses 0)
SAMPLE_STREAM = 2  # a key stream of the config seed (init and dropout use 0 and 1)


def token_losses(
    model: nn.Module, params: Any, x_BxT: jax.Array, y_BxT: jax.Array, **kwargs
) -> jax.Array:
    logits_BxTxV = model.apply({"params": params}, x_BxT, **kwargs)
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, y_BxT)


def process_slice() -> dict[str, int]:
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
    and one deterministic pass over the whole val split (loss and bits per character). Data
    without a val split gets the train estimate alone."""
    stacks = {}
    has_val = len(splits["val"]) > 0
    for split, stream in (("train", EVAL_TRAIN_STREAM), ("val", EVAL_VAL_STREAM))[: 1 + has_val]:
        batches = data.Batches(
            splits[split],
            batch_size=batch_size,
            block_size=block_size,
            seed=(seed, stream, step),
            **process_slice(),
        )
        x, y = (np.stack(a) for a in zip(*(batches.batch(i) for i in range(eval_iters))))
        stacks[split] = (x, y, np.ones(x.shape, np.float32))
    if has_val:
        stacks["full"] = _full_val(splits["val"], batch_size, block_size)
    means = {}
    for name, arrays in stacks.items():
        # One evaluation at a time: independent multi-device programs in flight together can
        # deadlock XLA:CPU's collectives.
        loss_sum, weight = jax.device_get(eval_step(params, *put(arrays)))
        means[name] = float(loss_sum / weight)
    if not has_val:
        return {"train_loss": means["train"]}
    return {
        "train_loss": means["train"],
        "val_loss": means["val"],
        "val_loss_full": means["full"],
        "val_bpc": means["full"] / math.log(2),
    }


def _full_val(val: np.ndarray, batch_size: int, block_size: int) -> tuple[np.ndarray, ...]:
    """Every val prediction once, as whole batches of this process's rows (padding weighs 0)."""
    x, y, w = data.eval_windows(val, block_size)
    pad = -len(x) % batch_size  # whole batches; padded rows weigh 0
    proc = process_slice()
    rows = batch_size // proc["process_count"]
    own = slice(proc["process_index"] * rows, (proc["process_index"] + 1) * rows)
    return tuple(
        np.concatenate([a, np.zeros((pad, block_size), a.dtype)]).reshape(
            -1, batch_size, block_size
        )[:, own]  # this process's rows
        for a in (x, y, w)
    )


def evaluate_checkpoint(
    workdir: str | pathlib.Path, step_spec: str = "latest", data_dir: str | None = None
) -> tuple[int, dict[str, float]]:
    """`minigpt eval`: a run's checkpoint (best | latest | N) on its data; (step, results)."""
    config, meta, model_cfg = checkpoint.read_run(workdir)
    cfg = config_dict.ConfigDict(config)
    ckpt = checkpoint.Checkpointer(workdir, create=False)
    steps = ckpt.steps()
    if not steps:
        raise UsageError(f"{workdir} holds no checkpoint yet; train it first")
    if step_spec == "latest":
        step = steps[-1]
    elif step_spec == "best":
        step = ckpt.best_step()
        if step is None:
            raise UsageError(f"{workdir} has no evaluated checkpoint; use --step latest")
    elif step_spec.isdigit() and int(step_spec) in steps:
        step = int(step_spec)
    else:
        raise UsageError(f"--step must be best, latest or one of the saved steps {steps}")
    data_dir = data_dir or cfg.data.dir  # relative paths resolve from the current directory
    if data.load_meta(data_dir)["itos"] != meta["itos"]:
        raise UsageError(f"{data_dir} holds other data than the run's vocabulary; pass its data")
    splits = {s: data.load_split(data_dir, s) for s in data.SPLITS}
    # Data parallel over as many devices as divide the batch.
    devices = jax.devices()[: math.gcd(cfg.train.batch_size, jax.device_count())]
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, devices)
    model = make_model(model_cfg)
    x_1xT = jnp.zeros((1, model_cfg.block_size), jnp.int32)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        abstract = jax.eval_shape(lambda r: model.init(r, x_1xT)["params"], jax.random.key(0))
        params = ckpt.restore_params(step, sharding.sharded_abstract(abstract, mesh))
        batch_sharding = sharding.batch_sharding(mesh, leading_dims=1)
        eval_step = jax.jit(make_eval_step(model))
        results = evaluate(
            eval_step,
            params,
            splits,
            seed=cfg.train.seed,
            step=step,
            batch_size=cfg.train.batch_size,
            block_size=model_cfg.block_size,
            eval_iters=cfg.train.eval_iters,
            put=functools.partial(sharding.put_batch, sharding=batch_sharding),
        )
    ckpt.close()
    return step, results


def eval_sampler(cfg: Any, model_cfg: ModelConfig, meta: dict) -> Callable | None:
    """(params, step) -> text: what the model writes at each eval, for each of cfg.sample's
    settings ('temperature=0.8 top_k=200; temperature=0.5'), or None when sampling is off."""
    s = cfg.sample
    if s.max_new_tokens <= 0 or not s.settings.strip():
        return None
    tok = data.CharTokenizer.from_json(meta)
    prompt = tok.encode(s.prompt)  # names a character outside the vocabulary
    settings = []
    for part in filter(None, (p.strip() for p in s.settings.split(";"))):
        try:
            kw = {k: float(v) for k, v in (item.split("=") for item in part.split())}
            kw = {"temperature": 1.0, "top_k": None, "top_p": 1.0, **kw}
            if kw["top_k"] is not None:
                if kw["top_k"] != int(kw["top_k"]):
                    raise ValueError
                kw["top_k"] = int(kw["top_k"])
            if set(kw) != {"temperature", "top_k", "top_p"}:
                raise ValueError
            sample.check_args([prompt], model_cfg, 1, **kw, num_samples=1, window="chunked")
        except ValueError:
            raise UsageError(
                f"sample.settings: cannot read {part!r}; write e.g. 'temperature=0.8 top_k=200; "
                "temperature=1.0 top_p=0.9' (temperature >= 0, top_k >= 1, 0 < top_p <= 1)"
            ) from None
        settings.append((part, kw))
    rng = jax.random.fold_in(jax.random.key(cfg.train.seed), SAMPLE_STREAM)

    def draw(params: Any, step: int) -> str:
        texts = []
        for part, kw in settings:
            ids = sample.generate(
                params, model_cfg, prompt, jax.random.fold_in(rng, step),
                max_new_tokens=s.max_new_tokens, num_samples=s.num_samples, **kw,
            )  # fmt: skip
            texts += [f"# step {step}, {part}"] + [tok.decode(row) + "\n" for row in ids]
        return "\n".join(texts)

    return draw
