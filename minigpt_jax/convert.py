"""Weights both ways between our Flax params and nanoGPT / minGPT state_dicts, and `minigpt
convert`: import a nanoGPT checkpoint (or a minGPT state_dict) into a run workdir, export a run
to a ckpt.pt that nanoGPT's sample.py loads.

The name table is one rule: Flax path h_3/attn/c_attn/kernel <-> transformer.h.3.attn.c_attn.weight
(kernels transposed: Flax's are (in, out), torch's Linear weights (out, in)), LayerNorm scale <->
weight, wte / wpe / ln_f under transformer., lm_head at the top, the bigram table as
token_embedding_table.weight. Conversion works on numpy arrays, so this module needs torch only to
read and write .pt files; torch comes in through require_torch(), never at import.

Safety: .pt files are read with torch.load(weights_only=True) only, and nanoGPT's meta.pkl with
an unpickler that builds plain containers, strings and numbers and refuses any other object.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import pickle
import shutil
import tempfile
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_dict

from minigpt_jax import checkpoint, data, optimizer
from minigpt_jax.errors import UsageError
from minigpt_jax.model import ModelConfig, make_model
from minigpt_jax.model_config import BIAS_PLACES
from minigpt_jax.train import TrainState

COMPILE_PREFIX = "_orig_mod."  # torch.compile's wrapper adds it to every key
# Buffers, not weights: the causal masks of older nanoGPT (no flash) and of minGPT.
MASK_BUFFERS = (".attn.bias", ".attn.masked_bias")
BIGRAM_KEY = "token_embedding_table.weight"
SOURCES = ("nanogpt", "mingpt")
# nanoGPT train.py's defaults, for what a checkpoint's 'config' does not say.
NANOGPT_DEFAULTS = dict(
    learning_rate=6e-4, min_lr=6e-5, warmup_iters=2000, lr_decay_iters=600000, decay_lr=True,
    beta1=0.9, beta2=0.95, weight_decay=0.1, grad_clip=1.0, batch_size=12,
    gradient_accumulation_steps=40, max_iters=600000, eval_interval=2000, eval_iters=200,
    log_interval=1, dataset="shakespeare_char",
)  # fmt: skip
NANOGPT_MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")


def require_torch():
    """The torch_ref module, or a one-line UsageError saying how to install torch."""
    try:
        from minigpt_jax import torch_ref
    except ImportError as e:
        if not (e.name or "").startswith("torch"):
            raise
        raise UsageError(
            "this command needs PyTorch: pip install -e '.[torch]' (torch==2.13.0, CPU wheel)"
        ) from None
    return torch_ref


def torch_name(path: tuple[str, ...], arch: str = "gpt") -> str:
    """The state_dict key of a Flax param path, e.g. ('h_0', 'ln_1', 'scale')."""
    if arch == "bigram":
        return BIGRAM_KEY
    head, *rest = path
    if head in ("wte", "wpe"):
        return f"transformer.{head}.weight"
    leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[rest[-1]]
    if head.startswith("h_"):
        head = f"transformer.h.{head[2:]}"
    elif head == "ln_f":
        head = "transformer.ln_f"
    return ".".join([head, *rest[:-1], leaf])


def _paths(tree: Any) -> list[tuple[tuple[str, ...], Any]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [(tuple(k.key for k in path), leaf) for path, leaf in flat]


def to_state_dict(params: Any, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Flax params -> {nanoGPT key: float32 array}; a tied head appears as wte and lm_head."""
    sd = {}
    for path, leaf in _paths(params):
        arr = np.asarray(leaf, np.float32)
        sd[torch_name(path, cfg.arch)] = arr.T if path[-1] == "kernel" else arr
    if cfg.arch == "gpt" and cfg.tie_embeddings:
        sd["lm_head.weight"] = sd["transformer.wte.weight"]
    return sd


def abstract_params(cfg: ModelConfig) -> Any:
    x_1xT = jnp.zeros((1, cfg.block_size), jnp.int32)
    return jax.eval_shape(
        lambda r: nn.unbox(make_model(cfg).init(r, x_1xT))["params"], jax.random.key(0)
    )


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, perhaps bf16: numpy has no bf16
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, np.float32)


def strip_prefix(sd: dict) -> dict:
    return {k.removeprefix(COMPILE_PREFIX): v for k, v in sd.items()}


def from_state_dict(sd: dict, cfg: ModelConfig, source: str = "state_dict") -> Any:
    """A nanoGPT / minGPT state_dict -> Flax params for cfg. Missing or unknown keys, wrong
    shapes and an untied head under a tied config are UsageErrors naming the key."""
    sd = {k: v for k, v in strip_prefix(sd).items() if not k.endswith(MASK_BUFFERS)}
    expected = _paths(abstract_params(cfg))
    used, leaves = set(), []
    for path, shaped in expected:
        name = torch_name(path, cfg.arch)
        if name not in sd:
            raise UsageError(f"{source} lacks {name} (needed by {'/'.join(path)}); wrong model?")
        arr = _numpy(sd[name])
        arr = arr.T if path[-1] == "kernel" else arr
        if arr.shape != shaped.shape:
            raise UsageError(
                f"{source}: {name} has shape {tuple(_numpy(sd[name]).shape)}, the model needs "
                f"{tuple(reversed(shaped.shape)) if path[-1] == 'kernel' else shaped.shape}"
            )
        used.add(name)
        leaves.append(arr)
    if cfg.arch == "gpt" and cfg.tie_embeddings and "lm_head.weight" in sd:
        if not np.array_equal(_numpy(sd["lm_head.weight"]), _numpy(sd["transformer.wte.weight"])):
            raise UsageError(f"{source}: lm_head.weight differs from wte but the model is tied")
        used.add("lm_head.weight")
    unknown = sorted(set(sd) - used)
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise UsageError(f"{source} has keys the model does not: {', '.join(unknown[:3])}{more}")
    treedef = jax.tree.structure(abstract_params(cfg))
    return jax.tree.unflatten(treedef, leaves)


def infer_config(
    sd: dict, model_args: dict, *, kind: str, source: str, overrides: dict
) -> ModelConfig:
    """ModelConfig from a checkpoint's model_args, completed from the weights' shapes and keys;
    overrides (the CLI's --n_head, --activation, --block_size) fill what neither says."""
    sd = strip_prefix(sd)
    fields: dict[str, Any] = {"dropout": float(model_args.get("dropout", 0.0))}
    fields["activation"] = overrides.get("activation") or (
        "gelu_tanh" if kind == "mingpt" else "gelu"
    )
    if BIGRAM_KEY in sd:
        V = _numpy(sd[BIGRAM_KEY]).shape[0]
        block = model_args.get("block_size") or overrides.get("block_size") or 8
        return _model_config(dict(arch="bigram", vocab_size=V, block_size=block, n_layer=1,
                                  n_head=1, n_embd=V), source)  # fmt: skip
    for key in ("transformer.wte.weight", "transformer.wpe.weight"):
        if key not in sd:
            raise UsageError(f"{source} has no {key}: not a nanoGPT / minGPT state_dict")
    V, C = _numpy(sd["transformer.wte.weight"]).shape
    layers = {int(k.split(".")[2]) for k in sd if k.startswith("transformer.h.")}
    fields.update(
        vocab_size=V, n_embd=C, block_size=_numpy(sd["transformer.wpe.weight"]).shape[0],
        n_layer=max(layers) + 1 if layers else 0, bias_head="lm_head.bias" in sd,
    )  # fmt: skip
    fields.update({k: model_args[k] for k in NANOGPT_MODEL_ARGS if k in model_args})
    # Biases by place, from layer 0's keys: `bias` when all agree, else per-place switches.
    places = {
        "bias_qkv": "transformer.h.0.attn.c_attn.bias",
        "bias_attn_proj": "transformer.h.0.attn.c_proj.bias",
        "bias_mlp": "transformer.h.0.mlp.c_fc.bias",
        "bias_ln": "transformer.ln_f.bias",
    }
    found = {place: key in sd for place, key in places.items()}
    if len(set(found.values())) == 1:
        fields["bias"] = next(iter(found.values()))
    else:
        fields.update(found)
    fields["n_head"] = overrides.get("n_head") or model_args.get("n_head")
    if not fields["n_head"]:
        raise UsageError(f"{source} does not say n_head (the weights cannot); pass --n_head")
    head = sd.get("lm_head.weight")
    fields["tie_embeddings"] = head is None or np.array_equal(
        _numpy(head), _numpy(sd["transformer.wte.weight"])
    )
    return _model_config(fields, source)


def _model_config(fields: dict, source: str) -> ModelConfig:
    try:
        return ModelConfig.from_dict(fields)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{source}: {e}") from None


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


def run_config(cfg: ModelConfig, nano: dict, data_dir: str) -> dict:
    """A run's config.json for imported weights: the model, and nanoGPT's training settings
    (its checkpoint's 'config', else train.py's defaults) in our sections."""
    n = {**NANOGPT_DEFAULTS, **{k: v for k, v in nano.items() if k in NANOGPT_DEFAULTS}}
    return {
        "data": {"dir": data_dir, "input": "", "val_fraction": 0.1, "sampling": "random"},
        "model": dataclasses.asdict(cfg),
        "opt": {
            "schedule": "nanogpt" if n["decay_lr"] else "constant", "lr": n["learning_rate"],
            "min_lr": n["min_lr"], "warmup_iters": n["warmup_iters"],
            "lr_decay_iters": n["lr_decay_iters"], "warmup_tokens": 0, "final_tokens": 0,
            "b1": n["beta1"], "b2": n["beta2"], "eps": 1e-8, "weight_decay": n["weight_decay"],
            "decay_mask": "ndim", "grad_clip": n["grad_clip"],
        },
        "train": {
            "seed": 1337, "batch_size": n["batch_size"],
            "grad_accum": n["gradient_accumulation_steps"], "max_iters": n["max_iters"],
            "eval_interval": n["eval_interval"], "eval_iters": n["eval_iters"],
            "ckpt_interval": n["eval_interval"], "log_interval": n["log_interval"],
            "init_from": "resume", "skip_nonfinite": False,
        },
        "sample": {"prompt": "\n", "max_new_tokens": 200, "num_samples": 1,
                   "settings": "temperature=0.8 top_k=200"},
        "mesh": {"data": -1, "fsdp": 1, "tensor": 1},
        "dist": {"coordinator": "", "num_processes": 1, "process_id": 0, "auto": False},
    }  # fmt: skip


def load_torch_file(path: str | os.PathLike) -> Any:
    """torch.load(weights_only=True), every failure one UsageError line."""
    torch = require_torch().torch
    p = pathlib.Path(path)
    if not p.is_file():
        raise UsageError(f"checkpoint {p} does not exist; pass nanoGPT's ckpt.pt")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [s.strip() for s in str(e).splitlines() if s.strip()]
        why = next((s for s in lines if "Unsupported global" in s), lines[0] if lines else "")
        raise UsageError(f"{p} was refused by torch.load(weights_only=True): {why}") from None
    except Exception as e:  # torch raises RuntimeError, EOFError, zipfile errors, ...
        raise UsageError(
            f"{p} is not a torch checkpoint ({' '.join(str(e).split())[:160]})"
        ) from None


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
    opt = config_dict.ConfigDict(config["opt"])
    t = config["train"]
    tokens = t["batch_size"] * t["grad_accum"] * cfg.block_size
    tx = optimizer.make_optimizer(opt, optimizer.make_schedule(opt, tokens))
    params = jax.tree.map(jnp.asarray, params)
    state = TrainState(jnp.asarray(step, jnp.int32), params, tx.init(params))
    data.make_dir(target.absolute().parent, "--workdir")
    tmp = pathlib.Path(tempfile.mkdtemp(dir=target.absolute().parent, prefix=f".{target.name}."))
    try:
        checkpoint.write_run_files(tmp, config, meta)
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


def nanogpt_incompatible(cfg: ModelConfig) -> list[str]:
    """The switches nanoGPT's GPT (GPTConfig + model.py) cannot express."""
    bad = []
    if cfg.arch != "gpt":
        bad.append(f"arch={cfg.arch!r}")
    if not cfg.tie_embeddings:
        bad.append("tie_embeddings=False")
    if cfg.activation != "gelu":
        bad.append(f"activation={cfg.activation!r}")
    if cfg.ln_eps != 1e-5:
        bad.append(f"ln_eps={cfg.ln_eps}")
    if cfg.bias_head or len({cfg.has_bias(p) for p in BIAS_PLACES}) > 1:
        bad.append("per-place biases")
    return bad


def export_nanogpt(workdir: str, out: str, step_spec: str = "latest") -> int:
    """`minigpt convert --to nanogpt`: a run's checkpoint as nanoGPT's ckpt.pt (model,
    model_args, iter_num, best_val_loss, config), written to a temp file and renamed."""
    torch = require_torch().torch
    config, meta, cfg = checkpoint.read_run(workdir)
    bad = nanogpt_incompatible(cfg)
    if bad:
        raise UsageError(
            f"nanoGPT's GPT cannot express {', '.join(bad)}; export a nanoGPT-style run"
        )
    ckpt = checkpoint.Checkpointer(workdir, create=False)
    try:
        steps = ckpt.steps()
        step = {"latest": steps[-1] if steps else None, "best": ckpt.best_step()}.get(step_spec)
        if step is None and step_spec.isdigit() and int(step_spec) in steps:
            step = int(step_spec)
        if step is None:
            raise UsageError(f"{workdir}: --step {step_spec} names no saved checkpoint ({steps})")
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract_params(cfg)
        )
        params = ckpt.restore_params(step, abstract)
        val = ckpt.read_meta(step).get("val_loss")
    finally:
        ckpt.close()
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
            "log_interval": t["log_interval"], "dataset": pathlib.Path(config["data"]["dir"]).name,
            **{k: getattr(cfg, k) for k in NANOGPT_MODEL_ARGS if k != "vocab_size"},
        },
    }  # fmt: skip
    del meta
    dest = pathlib.Path(out)
    if dest.is_dir() or not dest.absolute().parent.is_dir():
        raise UsageError(f"--out {out} must be a file path in an existing folder")
    fd, tmp = tempfile.mkstemp(dir=dest.absolute().parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, dest)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return step
