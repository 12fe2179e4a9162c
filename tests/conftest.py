"""Shared fixtures: a persistent XLA cache, the Shakespeare text, a tiny model and its params."""

import os
import pathlib
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from minigpt_jax.model import ModelConfig, make_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
CACHE = os.environ.setdefault("MINIGPT_CACHE", os.path.join(tempfile.gettempdir(), "minigpt_xla"))
jax.config.update("jax_compilation_cache_dir", CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

TINY = ModelConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)


def shakespeare_file() -> pathlib.Path | None:
    for p in (os.environ.get("MINIGPT_SHAKESPEARE"), ROOT / "data/tinyshakespeare/input.txt"):
        if p and pathlib.Path(p).is_file():
            return pathlib.Path(p)
    return None


@pytest.fixture(scope="session")
def shakespeare() -> pathlib.Path:
    path = shakespeare_file()
    if path is None:
        pytest.skip("Tiny Shakespeare not found: put it at data/tinyshakespeare/input.txt")
    return path


def init_params(cfg: ModelConfig, seed: int = 0):
    model = make_model(cfg)
    x_1xT = jnp.zeros((1, cfg.block_size), jnp.int32)
    return model, nn.unbox(model.init(jax.random.key(seed), x_1xT))["params"]


@pytest.fixture(scope="session")
def tiny():
    """(cfg, model, params) of a 2-layer, 16-wide GPT over an 11-token vocab."""
    model, params = init_params(TINY)
    return TINY, model, params
