"""The run folder: one run per workdir (a lock), its config.json and meta.json beside the
checkpoints, whether a start resumes, and what a resume may change.

  workdir/config.json    the resolved config (vocab_size from the data)
  workdir/meta.json      the tokenizer
  workdir/checkpoints/   orbax steps (checkpoint.py)
  workdir/.lock          pid and host of the run writing here
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
from collections.abc import Callable
from typing import Any

import jax
from flax.traverse_util import flatten_dict

from minigpt_jax.checkpoint import CKPT_DIR, Checkpointer
from minigpt_jax.data import META_FILE, CharTokenizer
from minigpt_jax.errors import UsageError
from minigpt_jax.files import atomic_write_bytes
from minigpt_jax.metrics import METRICS_FILE
from minigpt_jax.model_config import ModelConfig

CONFIG_FILE = "config.json"

# Fields a resume may not change: they fix the shapes of params, batches or the optimizer state.
FIXED_ON_RESUME = (
    "model.vocab_size",
    "model.block_size",
    "model.n_layer",
    "model.n_head",
    "model.n_embd",
    "model.bias",
    "model.bias_qkv",
    "model.bias_attn_proj",
    "model.bias_mlp",
    "model.bias_ln",
    "model.bias_head",
    "model.tie_embeddings",
    "model.arch",
    "model.pos_emb",  # rotary has no wpe
    "model.norm",  # rmsnorm has no bias
    # Nor what the same weights compute (dtype, attention kernel, remat, linear_vjp compute the
    # same function; dropout only trains; init, wpe_init and zero_init_proj act before the first
    # step).
    "model.activation",
    "model.ln_eps",
    "model.rope_base",
    "model.qk_norm",
    "model.logit_softcap",
    "train.batch_size",
    "train.grad_accum",
    "opt.decay_mask",
    "opt.optimizer",  # Muon's groups change the optimizer state's structure
)


def with_source(workdir: str | pathlib.Path, config: dict, source: dict | None) -> dict:
    """config plus its `source` (header.source_of): a start by `--workdir` alone (a resume, or a
    sweep's run) keeps the config file and overrides its config.json already names; on a CPU
    host, the XLA device count it runs on."""
    if source is None:
        return config
    try:
        old = json.loads((pathlib.Path(workdir) / CONFIG_FILE).read_bytes()).get("source") or {}
    except (OSError, ValueError, AttributeError):
        old = {}
    if source.get("config") is None and old.get("config"):
        source = {**old, "command": source["command"]}
    if jax.default_backend() == "cpu":  # --cpu_devices auto resumes on as many (startup.py)
        source = {**source, "cpu_devices": jax.device_count()}
    return {**config, "source": source}


def write_run_files(workdir: str | pathlib.Path, config: dict, meta: dict) -> None:
    """The resolved config and the tokenizer's meta.json, so a workdir is self-describing."""
    workdir = pathlib.Path(workdir)
    atomic_write_bytes(workdir / CONFIG_FILE, json.dumps(config, indent=2).encode())
    atomic_write_bytes(workdir / META_FILE, json.dumps(meta, ensure_ascii=False).encode())


def read_run_files(workdir: str | pathlib.Path) -> tuple[dict, dict]:
    """(config, meta) of a run folder; each way they can be missing or damaged is one line."""
    workdir = pathlib.Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise UsageError(
            f"workdir {workdir} is a file, not a run folder; pass the --workdir of a training run"
        )
    if not workdir.is_dir():
        raise UsageError(f"workdir {workdir} does not exist; pass the --workdir of a training run")
    config, meta = (_read_json(workdir, name) for name in (CONFIG_FILE, META_FILE))
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise UsageError(
            f"{workdir / CONFIG_FILE} is not a run's config (no model section); restore it from "
            "a copy, or retrain"
        )
    try:
        CharTokenizer.from_json(meta)
    except ValueError as e:
        raise UsageError(
            f"{workdir / META_FILE} is not a tokenizer's vocabulary ({e}); copy the meta.json of "
            "the run's data dir there"
        ) from None
    return config, meta


def read_config(workdir: str | pathlib.Path) -> dict:
    """A workdir's config.json alone (a sweep writes it before the run's first start)."""
    workdir = pathlib.Path(workdir)
    config = _read_json(workdir, CONFIG_FILE)
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise UsageError(f"{workdir / CONFIG_FILE} is not a run's config (no model section)")
    return config


def _read_json(workdir: pathlib.Path, name: str) -> Any:
    path = workdir / name
    if not path.exists():
        raise UsageError(f"{path} not found; is {workdir} the workdir of a `minigpt train` run?")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        why = f"{name} is not UTF-8 (byte {e.start})"
    except (OSError, json.JSONDecodeError) as e:
        why = f"{name}: {e.strerror if isinstance(e, OSError) else e}"
    raise UsageError(f"{workdir} holds an unreadable run file: {why}; restore it, or retrain")


def read_run(workdir: str | pathlib.Path) -> tuple[dict, dict, ModelConfig]:
    """(config, meta, ModelConfig) of a training run's workdir, for eval and sample."""
    config, meta = read_run_files(workdir)
    try:
        return config, meta, ModelConfig.from_dict(config["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"{workdir}/config.json has a bad model section: {e}") from None


def config_changes(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """(refused, allowed) differences between a run's saved config and a resume's config."""
    # Where a config came from is not the config: a resume may name it otherwise.
    old, new = ({k: v for k, v in c.items() if k != "source"} for c in (old, new))
    a, b = flatten_dict(old, sep="."), flatten_dict(new, sep=".")
    # A run saved before a model field existed ran with that field's default.
    defaults = {f"model.{f.name}": f.default for f in dataclasses.fields(ModelConfig)}
    defaults["opt.optimizer"] = "adamw"  # and the optimizer before opt.optimizer was AdamW
    a = {**{k: v for k, v in defaults.items() if k in b and k not in a}, **a}
    refused, allowed = [], []
    for key in sorted(a.keys() | b.keys()):
        if a.get(key) != b.get(key):
            line = f"{key}: {a.get(key)!r} -> {b.get(key)!r}"
            fixed = key in FIXED_ON_RESUME
            # Clipping on or off changes the optimizer state's structure; its value does not.
            fixed |= key == "opt.grad_clip" and (a.get(key, 0) > 0) != (b.get(key, 0) > 0)
            (refused if fixed else allowed).append(line)
    return refused, allowed


def should_resume(
    ckpt: Checkpointer,
    init_from: str,
    overwrite: bool,
    resolved: dict,
    meta: dict,
    log: Callable[[str], None],
) -> bool:
    """Whether a run resumes from ckpt; refuses what would lose or mix runs, logs the allowed
    config changes. resolved and meta are the new run's config and tokenizer."""
    if not ckpt.steps():
        return False
    workdir = ckpt.directory.parent
    if init_from == "scratch":
        if not overwrite:
            raise UsageError(
                f"{workdir} holds checkpoints and init_from=scratch would replace them; pass "
                "--overwrite to discard them, or leave init_from=resume to continue the run"
            )
        return False
    saved_cfg, saved_meta = read_run_files(workdir)
    if saved_meta.get("itos") != meta.get("itos"):
        raise UsageError(
            f"the data in {resolved['data']['dir']} has another vocabulary than the run in "
            f"{workdir}; point --config.data.dir at the run's data"
        )
    refused, allowed = config_changes(saved_cfg, resolved)
    if refused:
        raise UsageError(
            f"cannot resume {workdir}: these fields differ from its config: {'; '.join(refused)}"
            " (use a new --workdir, or --config.train.init_from=scratch --overwrite)"
        )
    for line in allowed:
        log(f"config change on resume: {line}")
    return True


def discard_run(workdir: pathlib.Path) -> None:
    """--overwrite: the user asked to replace the run, so its checkpoints and records go."""
    shutil.rmtree(workdir / CKPT_DIR, ignore_errors=True)
    shutil.rmtree(workdir / "tb", ignore_errors=True)
    for name in (METRICS_FILE, "loss.png"):
        (workdir / name).unlink(missing_ok=True)
