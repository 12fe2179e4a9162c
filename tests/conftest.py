"""Shared fixtures: a persistent XLA cache, a generated corpus, a tiny model and its params."""

import os
import pathlib
import socket
import tempfile

# Tests compile hundreds of tiny programs and run each for milliseconds: LLVM at -O0 compiles
# them about a third faster (sample_test + model_test, cold cache: 84 s against 130 s) and
# leaves the HLO, hence every result the tests compare, as it is. Set before jax starts; the
# subprocesses the tests start get it through xla_flags().
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = f"{TEST_XLA_FLAGS} {os.environ.get('XLA_FLAGS', '')}".strip()

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import pytest  # noqa: E402
from corpus import make_text  # noqa: E402

from minigpt_jax import config, data, files, model, train  # noqa: E402
from minigpt_jax.model import ModelConfig, make_model  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
CACHE = os.environ.setdefault("MINIGPT_CACHE", os.path.join(tempfile.gettempdir(), "minigpt_xla"))
jax.config.update("jax_compilation_cache_dir", CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def free_port() -> int:
    """A TCP port on 127.0.0.1 no one listens on now: a test's jax.distributed coordinator."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def xla_flags(devices: int | None = None) -> str:
    """XLA_FLAGS for a test's subprocess: the suite's, and `devices` CPU devices if given."""
    count = f" --xla_force_host_platform_device_count={devices}" if devices else ""
    return TEST_XLA_FLAGS + count


TINY_CONFIG_FILE = """
from minigpt_jax import config

def get_config(arg=""):
    c = config.base_config()
    c.model.update(block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    c.opt.update(schedule="constant", lr=1e-2)
    c.train.update(batch_size=4, eval_iters=2, **{train!r})
    c.sample.max_new_tokens = 0
    c.data.dir = {data!r}
    return c
"""


def write_tiny_config(path: pathlib.Path, data_dir: pathlib.Path, **train) -> pathlib.Path:
    """A config file of tiny_config's model on data_dir, with these train fields, no samples:
    for the tests that start `minigpt` processes (a sweep's runs read their config from a file)."""
    path.write_text(TINY_CONFIG_FILE.format(data=str(data_dir), train=train))
    return path


# The modern model switches, each as the ModelConfig fields that turn it on (tiny values).
SWITCHES = {
    "rotary": {"pos_emb": "rotary"},
    "rmsnorm": {"norm": "rmsnorm"},
    "qk_norm": {"qk_norm": True},
    "relu2": {"activation": "relu2"},
    "softcap": {"logit_softcap": 0.5},
    "zero_init_proj": {"zero_init_proj": True},
}

TINY = ModelConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)


def tiny_config(**fields):
    """The schema with TINY's model (vocab from build's argument), a constant lr 1e-2, batch 4
    and seed 0; each keyword overrides the field of that name in model, train or opt."""
    c = config.base_config()
    c.model.update(block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    c.opt.update(schedule="constant", lr=1e-2)
    c.train.update(batch_size=4, seed=0)
    for name, value in fields.items():
        section = next(s for s in ("model", "train", "opt") if name in c[s])
        c[section][name] = value
    return c


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A 200 KB generated text over Tiny Shakespeare's 65 characters, written once a session."""
    path = tmp_path_factory.mktemp("corpus") / "input.txt"
    path.write_text(make_text(200_000, seed=0), encoding="utf-8")
    return path


def init_params(cfg: ModelConfig, seed: int = 0):
    """(model, unboxed params) of cfg, drawn from key(seed)."""
    return make_model(cfg), nn.unbox(model.init_params(cfg, jax.random.key(seed)))


@pytest.fixture(scope="session")
def tiny():
    """(cfg, model, params) of a 2-layer, 16-wide GPT over an 11-token vocab."""
    model, params = init_params(TINY)
    return TINY, model, params


@pytest.fixture(scope="session")
def tiny_data(corpus, tmp_path_factory) -> pathlib.Path:
    """20,000 characters of the corpus, prepared for block 8."""
    out = tmp_path_factory.mktemp("tiny_data")
    data.prepare(files.read_text(corpus)[:20_000], out, block_size=8)
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory):
    """(workdir, config) of a tiny_config run of 8 steps, evaluated and saved at 4 and 8, no
    samples. Shared: a test that changes the run copies it first."""
    c = tiny_config(max_iters=8, eval_interval=4, ckpt_interval=4, eval_iters=2)
    c.data.dir = str(tiny_data)
    c.sample.max_new_tokens = 0
    workdir = tmp_path_factory.mktemp("tiny_run") / "run"
    train.train_and_evaluate(c, workdir)
    return workdir, c


def one_line_error(args: list[str], capsys) -> str:
    """stderr of `minigpt ARGS`, checked to be exit 2, one line and no traceback."""
    from minigpt_jax import cli

    code = cli.main(["minigpt", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err, (args, code, err)
    return err
