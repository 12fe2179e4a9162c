"""What a sweep runs: arms (named sets of config overrides) from `--grid` flags or a sweep file,
checked against the config's schema before anything starts, and each arm x seed's config.

An arm is {"name": str, "overrides": {"section.field": value}}; values are typed as the config's
field is, so the manifest's JSON and each run's config.json hold the same numbers.
"""

from __future__ import annotations

import copy
import importlib.machinery
import importlib.util
import itertools
import re
from typing import Any

from ml_collections import config_dict

from minigpt_jax import config as config_lib
from minigpt_jax import header
from minigpt_jax.errors import UsageError, one_line

Arm = dict[str, Any]
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")
SEED_FIELD = "train.seed"  # set by --seeds, never by an arm
DEFAULT_SEEDS = "3"  # one seed is an anecdote


def _field(c: config_dict.ConfigDict, field: str) -> tuple[config_dict.ConfigDict, str]:
    """(section, name) of a dotted field that c's schema has; UsageError otherwise."""
    *path, name = field.split(".")
    node = c
    for part in path:
        node = node.get(part) if isinstance(node, config_dict.ConfigDict) else None
    if not path or not isinstance(node, config_dict.ConfigDict) or name not in node:
        raise UsageError(f"sweep: no such config field {field!r}; write section.field, e.g. opt.lr")
    if isinstance(node[name], config_dict.ConfigDict):
        raise UsageError(f"sweep: {field!r} is a section, not a field; name one of its fields")
    if field == SEED_FIELD:
        raise UsageError("sweep: seeds come from --seeds, not from an arm's train.seed")
    return node, name


def typed(c: config_dict.ConfigDict, field: str, value: Any) -> Any:
    """value as field's type (a string from --grid is parsed; a Python value is checked)."""
    node, name = _field(c, field)
    kind = node.get_type(name)
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        try:
            if text.lower() == "none":
                value = None
            elif kind is bool:
                if text.lower() not in TRUE + FALSE:
                    raise ValueError
                value = text.lower() in TRUE
            else:
                value = kind(text)
        except (TypeError, ValueError):
            raise UsageError(
                f"sweep: {field}={value!r} is not of the field's type, {kind.__name__}"
            ) from None
    probe = copy.deepcopy(node)  # ConfigDict's own check: int -> float is fine, str -> int is not
    try:
        probe[name] = value
    except (TypeError, ValueError) as e:
        raise UsageError(f"sweep: {field}={value!r}: {one_line(e)}") from None
    return probe[name]


def _format(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def arm_name(overrides: dict[str, Any]) -> str:
    """'activation=relu,lr=0.003': each field's last name, unless two share it; a folder name."""
    if not overrides:
        return "base"
    last = [f.rsplit(".", 1)[-1] for f in overrides]
    parts = [
        f"{short if last.count(short) == 1 else field}={_format(value)}"
        for (field, value), short in zip(overrides.items(), last)
    ]
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", ",".join(parts))


def grid_arms(c: config_dict.ConfigDict, grid: list[str]) -> list[Arm]:
    """--grid field=v1,v2 (repeated): the product of the fields' values, in the given order."""
    axes = []
    for spec in grid:
        field, sep, values = spec.partition("=")
        items = [v for v in values.split(",") if v.strip()] if sep else []
        if not items:
            raise UsageError(f"--grid {spec!r}: write field=value1,value2, e.g. opt.lr=1e-3,3e-3")
        if field in (f for f, _ in axes):
            raise UsageError(f"--grid names {field} twice; give all its values in one --grid")
        axes.append((field, [typed(c, field, v) for v in items]))
    return [
        {"name": arm_name(dict(zip((f for f, _ in axes), combo))),
         "overrides": dict(zip((f for f, _ in axes), combo))}
        for combo in itertools.product(*(values for _, values in axes))
    ]  # fmt: skip


def file_arms(c: config_dict.ConfigDict, path: str) -> list[Arm]:
    """A sweep file's get_sweep(): a list of dicts, each of 'section.field': value overrides and
    an optional 'name' (for arms that are no product: a baseline plus one change at a time)."""
    loader = importlib.machinery.SourceFileLoader("minigpt_sweep_file", path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    try:
        loader.exec_module(module)
        arms = module.get_sweep()
    except FileNotFoundError:
        raise UsageError(f"--sweep {path}: No such file") from None
    except Exception as e:
        raise UsageError(f"--sweep {path}: {type(e).__name__}: {one_line(e)}") from None
    if not isinstance(arms, list) or not all(isinstance(a, dict) for a in arms):
        raise UsageError(f"--sweep {path}: get_sweep() must return a list of dicts (the arms)")
    out = []
    for arm in arms:
        overrides = {f: typed(c, f, v) for f, v in arm.items() if f != "name"}
        name = arm.get("name") or arm_name(overrides)
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._=,+-]+", name):
            raise UsageError(f"--sweep {path}: arm name {name!r}: use letters, digits and ._=,+-")
        out.append({"name": name, "overrides": overrides})
    return out


def check_arms(c: config_dict.ConfigDict, arms: list[Arm], seeds: list[int]) -> None:
    """Every arm's config passes config.validate, names are unique, something is asked for."""
    if not arms:
        raise UsageError("sweep: no arms; pass --grid field=v1,v2 or --sweep FILE")
    if not seeds:
        raise UsageError("sweep: no seeds; pass --seeds N (seeds 0..N-1) or --seeds 0,5,7")
    names = [a["name"] for a in arms]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"sweep: arm name(s) {', '.join(twice)} used twice; name each arm once")
    for arm in arms:
        try:
            config_lib.validate(run_config(c, arm, seeds[0]))
        except UsageError as e:
            raise UsageError(f"sweep arm {arm['name']}: {e}") from None


def run_config(c: config_dict.ConfigDict, arm: Arm, seed: int) -> config_dict.ConfigDict:
    """The config of one arm x seed: the base, the arm's overrides, train.seed = seed."""
    out = copy.deepcopy(c)
    for field, value in arm["overrides"].items():
        node, name = _field(out, field)
        node[name] = value
    out.train.seed = seed
    return out


def as_flags(arm: Arm) -> list[str]:
    """An arm's overrides as the --config.* flags that set them."""
    return [f"--config.{k}={v}" for k, v in arm["overrides"].items()]


def source(argv: list[str]) -> dict[str, Any]:
    """For the manifest: the --config a command named and its --config.* overrides."""
    named = header.source_of(argv)
    return {"config": named["config"], "overrides": named["overrides"]}


def parse_seeds(text: str) -> list[int]:
    """--seeds: 'N' is seeds 0..N-1; 'a,b,c' names them."""
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise UsageError(f"--seeds {text!r}: give a count (3) or a list (0,5,7)") from None
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise UsageError(f"--seeds {text!r}: seeds must be distinct and >= 0")
    return seeds


def resolve(
    config: config_dict.ConfigDict | None,
    manifest: dict[str, Any] | None,
    grid: list[str],
    sweep_file: str | None,
    seeds: str | None,
) -> tuple[config_dict.ConfigDict, list[Arm], list[int]]:
    """(base config, arms, seeds) of a `minigpt sweep` command: what it names, and what an
    existing root's manifest holds for what it leaves out (so `--root R` alone continues R)."""
    if config is None:
        if manifest is None:
            raise UsageError("--config is required for a new sweep, e.g. --config configs/x.py:cpu")
        config = config_lib.from_saved(manifest["base_config"])
    if grid and sweep_file:
        raise UsageError("pass --grid or --sweep, not both (a sweep file can express any grid)")
    if grid:
        arms = grid_arms(config, grid)
    elif sweep_file:
        arms = file_arms(config, sweep_file)
    elif manifest is not None:
        arms = manifest["arms"]
    else:
        raise UsageError("name the arms: --grid section.field=v1,v2 (repeatable) or --sweep FILE")
    if seeds is None:
        chosen = manifest["seeds"] if manifest is not None else parse_seeds(DEFAULT_SEEDS)
    else:
        chosen = parse_seeds(seeds)
    return config, arms, chosen
