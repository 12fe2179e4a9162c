"""nanoGPT's files in and out (`minigpt convert`): import a nanoGPT checkpoint (or a minGPT
state_dict) and its meta.pkl into a run workdir; export a run as a ckpt.pt that nanoGPT's
sample.py loads. The weights themselves are converted by convert.py.

Safety: .pt files are read with torch.load(weights_only=True) only, and nanoGPT's meta.pkl with
an unpickler that builds plain containers, strings and numbers and refuses any other object.
torch comes in through errors.require_torch(), never at import.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import pickle
import re
import shutil
import tempfile
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_dict

from minigpt_jax import checkpoint, data, errors, files, sharding
from minigpt_jax import config as config_lib
from minigpt_jax import run as run_lib
from minigpt_jax import workdir as workdir_lib
from minigpt_jax.convert import (
    NANOGPT_MODEL_ARGS,
    from_state_dict,
    infer_config,
    nanogpt_incompatible,
    to_state_dict,
)
from minigpt_jax.errors import UsageError
from minigpt_jax.model import ModelConfig
from minigpt_jax.run import TrainState

SOURCES = ("nanogpt", "mingpt")
# nanoGPT train.py's defaults, for what a checkpoint's 'config' does not say.
NANOGPT_DEFAULTS = dict(
    learning_rate=6e-4, min_lr=6e-5, warmup_iters=2000, lr_decay_iters=600000, decay_lr=True,
    beta1=0.9, beta2=0.95, weight_decay=0.1, grad_clip=1.0, batch_size=12,
    gradient_accumulation_steps=40, max_iters=600000, eval_interval=2000, eval_iters=200,
    log_interval=1, dataset="shakespeare_char",
)  # fmt: skip


class RefusedPickle(pickle.UnpicklingError):
    """A pickle that names a class or function: never loaded."""


class _PlainUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings and numbers; any class or function is refused."""

    def find_class(self, module: str, name: str):
        raise RefusedPickle(f"it refers to {module}.{name}")


def read_meta(path: str | os.PathLike) -> dict:
    """A tokenizer's meta (our meta.json) from nanoGPT's meta.pkl or a meta.json."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise UsageError(f"meta file {p} does not exist; pass nanoGPT's meta.pkl or a meta.json")
    try:
        if p.suffix == ".json":
            meta = json.loads(p.read_text())
        else:
            with open(p, "rb") as f:
                meta = _PlainUnpickler(f).load()
    except RefusedPickle as e:
        raise UsageError(
            f"{p} was not read: {e}; only a plain dict of str and int (nanoGPT's meta.pkl) is "
            "unpickled, never an object"
        ) from None
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as e:
        raise UsageError(f"{p} is not a meta.pkl or meta.json ({e})") from None
    itos = meta.get("itos") if isinstance(meta, dict) else None
    if isinstance(itos, dict):  # nanoGPT: {id: char}
        itos = [itos.get(i) for i in range(len(itos))]
    if not isinstance(itos, list) or not all(isinstance(c, str) for c in itos):
        raise UsageError(f"{p} has no itos of characters (ids 0..V-1); not a char-level meta")
    return {**data.CharTokenizer(itos).to_json()}


def run_config(cfg: ModelConfig, nano: dict, data_dir: str) -> config_dict.ConfigDict:
    """A run's config for imported weights: the schema's defaults, the model, and nanoGPT's
    training settings (its checkpoint's 'config', else train.py's defaults) in our sections."""
    n = {**NANOGPT_DEFAULTS, **{k: v for k, v in nano.items() if k in NANOGPT_DEFAULTS}}
    c = config_lib.base_config()
    c.data.dir = data_dir
    c.model.update(dataclasses.asdict(cfg))
    c.opt.update(
        schedule="nanogpt" if n["decay_lr"] else "constant", lr=n["learning_rate"],
        min_lr=n["min_lr"], warmup_iters=n["warmup_iters"], lr_decay_iters=n["lr_decay_iters"],
        b1=n["beta1"], b2=n["beta2"], weight_decay=n["weight_decay"], grad_clip=n["grad_clip"],
    )  # fmt: skip
    c.train.update(
        batch_size=n["batch_size"], grad_accum=n["gradient_accumulation_steps"],
        max_iters=n["max_iters"], eval_interval=n["eval_interval"], eval_iters=n["eval_iters"],
        ckpt_interval=n["eval_interval"], log_interval=n["log_interval"],
    )  # fmt: skip
    return c


def load_torch_file(path: str | os.PathLike) -> Any:
    """torch.load(weights_only=True), every failure one UsageError line."""
    torch = errors.require_torch().torch
    p = pathlib.Path(path)
    if not p.is_file():
        raise UsageError(f"checkpoint {p} does not exist; pass nanoGPT's ckpt.pt")
    try:
        with warnings.catch_warnings():  # e.g. a pickle's protocol: lines on stderr
            warnings.simplefilter("ignore")
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message advises weights_only=False or allowlisting the global: the unsafe
        # path, never ours to suggest. Only its reason is kept.
        name = re.search(r"GLOBAL (\S+)", str(e))
        if name:
            raise UsageError(
                f"{p} was refused by torch.load(weights_only=True): it needs {name[1]}, which "
                "only an unsafe load builds; pass a checkpoint of tensors (nanoGPT's ckpt.pt)"
            ) from None
        operand = re.search(r"Unsupported operand \d+", str(e))
        why = operand[0].lower() if operand else "an unreadable pickle"
        raise UsageError(
            f"{p} is not a torch checkpoint (torch.load(weights_only=True): {why}); pass "
            "nanoGPT's ckpt.pt"
        ) from None
    except Exception as e:  # torch raises RuntimeError, EOFError, zipfile errors, ...
        why = f"{type(e).__name__}: {' '.join(str(e).split())[:160]}".rstrip(": ")
        raise UsageError(f"{p} is not a torch checkpoint ({why}); pass nanoGPT's ckpt.pt") from None


def import_checkpoint(
    src: str, meta_path: str, workdir: str, *, source: str = "nanogpt",
    overrides: dict | None = None, data_dir: str | None = None, overwrite: bool = False,
) -> tuple[ModelConfig, int]:  # fmt: skip
    """`minigpt convert --from nanogpt|mingpt`: a workdir that sample, eval and train accept.

    The optimizer state is a fresh AdamW state for the run's opt config (nanoGPT's Adam moments
    are not converted), so `minigpt train` on the workdir resumes from the imported weights and
    step with new moments. Built in a temp dir beside the workdir and renamed into place.
    """
    if source not in SOURCES:
        raise UsageError(f"--from must be one of {', '.join(SOURCES)}, got {source!r}")
    target = pathlib.Path(workdir)
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not overwrite:
        raise UsageError(
            f"--workdir {target} exists and is not empty; pass --overwrite to replace it"
        )
    obj = load_torch_file(src)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        sd, model_args, nano = obj["model"], obj.get("model_args") or {}, obj.get("config") or {}
        step = int(obj.get("iter_num", 0))
    elif isinstance(obj, dict) and obj and all(hasattr(v, "shape") for v in obj.values()):
        sd, model_args, nano, step = obj, {}, {}, 0  # a bare state_dict (minGPT)
    else:
        raise UsageError(
            f"{src} is neither a nanoGPT checkpoint (a dict with 'model') nor a state_dict"
        )
    cfg = infer_config(sd, model_args, kind=source, source=src, overrides=overrides or {})
    params = from_state_dict(sd, cfg, src)
    meta = read_meta(meta_path)
    if meta["vocab_size"] != cfg.vocab_size:
        raise UsageError(
            f"{meta_path} has {meta['vocab_size']} characters but the model's vocab_size is "
            f"{cfg.vocab_size}; pass the meta of the checkpoint's dataset"
        )
    nano_dir = f"data/{nano.get('dataset', NANOGPT_DEFAULTS['dataset'])}"
    config = run_config(cfg, nano, data_dir or nano_dir)
    run = run_lib.build(config, cfg.vocab_size, mesh=sharding.one_device_mesh())
    params = jax.tree.map(jnp.asarray, params)
    state = TrainState(jnp.asarray(step, jnp.int32), params, run.tx.init(params))
    files.make_dir(target.absolute().parent, "--workdir")
    tmp = pathlib.Path(tempfile.mkdtemp(dir=target.absolute().parent, prefix=f".{target.name}."))
    os.chmod(tmp, files.umasked(0o777))  # a workdir like a trained run's, not mkdtemp's 0700
    try:
        workdir_lib.write_run_files(tmp, config.to_dict(), meta)
        ckpt = checkpoint.Checkpointer(tmp)
        ckpt.save(step, state, {"step": step, "nonfinite_skipped": 0, "imported_from": str(src)})
        ckpt.wait()
        ckpt.close()
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.replaced-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return cfg, step


def export_nanogpt(
    workdir: str, out: str, step_spec: str = "latest", meta_out: str | None = None,
    overwrite: bool = False,
) -> tuple[int, pathlib.Path, str]:  # fmt: skip
    """`minigpt convert --to nanogpt`: a run's checkpoint as nanoGPT's ckpt.pt (model,
    model_args, iter_num, best_val_loss, config) and the meta.pkl its sample.py decodes with
    (beside it unless meta_out says), both written whole; an existing file is replaced only
    with overwrite. -> (step, meta.pkl, dataset name)."""
    torch = errors.require_torch().torch
    config, meta, cfg = workdir_lib.read_run(workdir)
    bad = nanogpt_incompatible(cfg)
    if bad:
        raise UsageError(
            f"nanoGPT's GPT cannot express {', '.join(bad)}; export a nanoGPT-style run"
        )
    dest = files.out_path(out)
    meta_path = files.out_path(meta_out, "--meta_out") or dest.absolute().with_name("meta.pkl")
    for path in (dest, meta_path):  # before any weight is read, as the import checks --workdir
        if path.exists() and not overwrite:
            raise UsageError(f"{path} exists; pass --overwrite to replace it")
    step, params = checkpoint.load_params(workdir, cfg, step_spec)
    ckpt = checkpoint.Checkpointer(workdir, create=False)
    val = ckpt.read_meta(step).get("val_loss")
    ckpt.close()
    # sample.py decodes with data/<dataset>/meta.pkl: a name of our own, so that copying our
    # meta.pkl there never overwrites one of nanoGPT's own datasets.
    dataset = f"minigpt_{pathlib.Path(config['data']['dir']).name}"
    sd = {k: torch.from_numpy(np.array(v)) for k, v in to_state_dict(params, cfg).items()}
    sd["lm_head.weight"] = sd["transformer.wte.weight"]  # one tensor under both, as nanoGPT's
    o, t = config["opt"], config["train"]
    payload = {
        "model": sd,
        "model_args": {k: getattr(cfg, k) for k in NANOGPT_MODEL_ARGS},
        "iter_num": step,
        "best_val_loss": float(val) if val is not None else 1e9,  # nanoGPT's "none yet"
        "config": {
            "learning_rate": o["lr"], "min_lr": o["min_lr"], "warmup_iters": o["warmup_iters"],
            "lr_decay_iters": o["lr_decay_iters"], "decay_lr": o["schedule"] != "constant",
            "beta1": o["b1"], "beta2": o["b2"], "weight_decay": o["weight_decay"],
            "grad_clip": o["grad_clip"], "batch_size": t["batch_size"],
            "gradient_accumulation_steps": t["grad_accum"], "max_iters": t["max_iters"],
            "eval_interval": t["eval_interval"], "eval_iters": t["eval_iters"],
            "log_interval": t["log_interval"], "dataset": dataset,
            **{k: getattr(cfg, k) for k in NANOGPT_MODEL_ARGS if k != "vocab_size"},
        },
    }  # fmt: skip
    itos = dict(enumerate(meta["itos"]))  # nanoGPT's prepare.py: {id: char} and {char: id}
    nano_meta = {"vocab_size": len(itos), "itos": itos, "stoi": {c: i for i, c in itos.items()}}
    fd, tmp = tempfile.mkstemp(dir=dest.absolute().parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.chmod(tmp, files.umasked(0o666))  # like any file the user writes, not mkstemp's 0600
        files.atomic_write_bytes(meta_path, pickle.dumps(nano_meta))
        os.replace(tmp, dest)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return step, meta_path, dataset


def convert(
    *, source: str | None, target: str | None, ckpt: list[str], workdir: str | None,
    meta: str | None, out: str | None, step: str, overrides: dict, data_dir: str | None,
    overwrite: bool, meta_out: str | None = None,
) -> str:  # fmt: skip
    """`minigpt convert`: import (--from, one CKPT argument, --meta) or export (--to, --out);
    returns the line to print."""
    errors.require_torch()  # before anything else: the one line that says how to get it
    if (source is None) == (target is None):
        raise UsageError("pass --from nanogpt|mingpt CKPT.pt to import, or --to nanogpt")
    if not workdir:
        raise UsageError("--workdir is required, the run to write (import) or read (export)")
    if target:
        if ckpt or not out:
            raise UsageError("export takes no CKPT argument; pass --out ckpt.pt")
        saved, meta_path, dataset = export_nanogpt(workdir, out, step, meta_out, overwrite)
        ckpt_dir = pathlib.Path(out).absolute().parent
        name = "" if pathlib.Path(out).name == "ckpt.pt" else f" (as {ckpt_dir}/ckpt.pt)"
        return (
            f"wrote {out}: step {saved} of {workdir}, nanoGPT's checkpoint format, and "
            f"{meta_path}; in a nanoGPT checkout, sample it{name} with: mkdir -p data/{dataset} "
            f"&& cp {meta_path} data/{dataset}/ && python sample.py --out_dir={ckpt_dir}"
        )
    if len(ckpt) != 1 or not meta:
        raise UsageError(
            f"usage: minigpt convert --from {source} CKPT.pt --meta META --workdir DIR"
        )
    cfg, saved = import_checkpoint(
        ckpt[0], meta, workdir, source=source, overrides=overrides, data_dir=data_dir,
        overwrite=overwrite,
    )  # fmt: skip
    return (
        f"imported {ckpt[0]} (step {saved}, {cfg.n_layer} layers, {cfg.n_embd} wide, vocab "
        f"{cfg.vocab_size}) into {workdir}; try: minigpt sample --workdir {workdir}"
    )
