"""--config FILE[:variant]: a hand-written experiment config loaded as a flag value, each way
it can be wrong one UsageError line (cli_flags.py defines the flag)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import pathlib
import sys
from typing import Any

from absl import flags
from ml_collections import config_dict

from minigpt_jax import config as config_lib
from minigpt_jax.errors import UsageError, one_line

CONFIG_HELP = "Experiment config: FILE[:variant], then --config.a.b=value overrides."
CONFIG_EXAMPLE = "e.g. --config configs/shakespeare_char.py:cpu"


def load_config_file(path: str) -> config_dict.ConfigDict:
    """--config FILE[:arg] -> FILE's get_config(arg), locked; each way a hand-written config file
    can be wrong is one UsageError line."""
    file, *arg = path.split(":", 1)  # as ml_collections: no colon calls get_config()
    if not os.path.isfile(file):
        what = " is a directory, not a config file" if os.path.isdir(file) else ": No such file"
        raise UsageError(f"--config {file}{what}; {CONFIG_EXAMPLE}")
    if file.endswith(".json") and not arg:  # a run's config.json: `train --workdir W --config.x`
        return _saved(file)
    # A fresh module per load: ml_collections' load_module reused the module of an earlier
    # --config in the same process, so a file without get_config ran the earlier file's.
    name = "config_config"  # ml_collections' name for it
    loader = importlib.machinery.SourceFileLoader(name, file)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    sys.modules[name] = module  # as an import would: dataclasses in the file look it up
    try:
        loader.exec_module(module)
    except SyntaxError as e:
        where = f" at line {e.lineno}" if e.lineno else ""
        raise UsageError(f"--config {file}: SyntaxError{where}: {e.msg}; fix the file") from None
    except Exception as e:  # the file's own code: anything at all
        why = f"{type(e).__name__}: {one_line(e)}"
        raise UsageError(f"--config {file}: loading it raised {why}") from None
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise UsageError(
            f"{file} has no get_config(arg) function; a config file defines one that returns a "
            "ConfigDict, as configs/*.py do"
        )
    call = f"--config {path}: get_config({', '.join(repr(a) for a in arg)})"
    try:
        config = get_config(*arg)
    except Exception as e:
        raise UsageError(f"{call} raised {type(e).__name__}: {one_line(e)}") from None
    if not isinstance(config, config_dict.ConfigDict):
        raise UsageError(
            f"{call} returned a {type(config).__name__}, not a ConfigDict; start from "
            "minigpt_jax.config.base_config() as configs/*.py do"
        )
    missing = config_lib.missing_fields(config)
    if missing:
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        raise UsageError(
            f"{call} lacks the field(s) {', '.join(missing[:4])}{more}; start from "
            "minigpt_jax.config.base_config() as configs/*.py do"
        )
    config.lock()  # as ml_collections locks it: an override must name an existing field
    return config


def _saved(file: str) -> config_dict.ConfigDict:
    """A run's config.json (workdir.read_config's checks, without starting jax)."""
    try:
        saved = json.loads(pathlib.Path(file).read_bytes().decode("utf-8"))
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError included
        raise UsageError(f"{file} is an unreadable run file ({one_line(e)}); restore it") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        raise UsageError(f"{file} is not a run's config (no model section)")
    config = config_lib.from_saved(saved)
    config.lock()
    return config


class UnloadableConfig:
    """The value of a --config that failed to load: reading it raises its UsageError. Deferred,
    as ml_collections defers a missing file, so a command first checks its own needs (compare:
    torch)."""

    def __init__(self, error: UsageError):
        self.error = error

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise self.error

    def __getitem__(self, key: str) -> Any:
        raise self.error


class ConfigFileParser(flags.ArgumentParser):
    """ml_collections' parser of config files, through load_config_file."""

    def flag_type(self) -> str:
        return "config object"

    def parse(self, path: str) -> config_dict.ConfigDict | UnloadableConfig:
        try:
            return load_config_file(path)
        except UsageError as e:
            return UnloadableConfig(e)
