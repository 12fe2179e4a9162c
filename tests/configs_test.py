"""Every config file and variant loads and holds what train.py reads; tpu.py:smoke trains here."""

import importlib.util
import itertools
import json
import math
import pathlib
import re
from types import ModuleType

import jax
import jax.numpy as jnp
import pytest
from conftest import ROOT

from minigpt_jax import cli, data, files, optimizer, sharding
from minigpt_jax.model import ModelConfig, make_model

CONFIGS = ROOT / "configs"
# The variants each config file documents ('' is the default). A new file must be listed here.
VARIANTS = {
    "shakespeare_char.py": ("", "cpu", "smoke"),
    "bigram.py": ("", "smoke"),
    "tpu.py": ("", "char", "gpt2_124m", "smoke"),
    "mingpt_char.py": ("", "smoke"),
    "lecture_gpt.py": ("", "smoke"),
    "day20.py": ("", "smoke"),
    "mini_gpt.py": ("", "smoke"),
    "frost.py": ("", "smoke"),
    "modern.py": ("", "cpu", "smoke"),
}
# The configs that reproduce a source's recipe (the others are launch presets).
SOURCES = ["mingpt_char.py", "lecture_gpt.py", "day20.py", "mini_gpt.py", "frost.py"]
# The fields train.py, optimizer.py and sharding.py read from each section.
FIELDS = {
    "data": ("dir", "input", "val_fraction", "sampling"),
    "opt": (
        "schedule", "lr", "min_lr", "warmup_iters", "lr_decay_iters", "warmup_tokens",
        "final_tokens", "b1", "b2", "eps", "weight_decay", "decay_mask", "grad_clip",
    ),
    "train": (
        "seed", "batch_size", "grad_accum", "max_iters", "eval_interval", "eval_iters",
        "ckpt_interval", "log_interval", "init_from", "skip_nonfinite", "skip_nonfinite_limit",
        "target_val_loss", "stop_at_target", "profile_steps",
    ),
    "mesh": ("data", "fsdp", "tensor"),
    "sample": ("prompt", "max_new_tokens", "num_samples", "settings"),
    "dist": ("coordinator", "num_processes", "process_id", "auto"),
}  # fmt: skip


def load(name: str) -> ModuleType:
    """A config file as a module, by path: configs are not a package."""
    spec = importlib.util.spec_from_file_location(f"config_{name[:-3]}", CONFIGS / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tpu(variant: str):
    return load("tpu.py").get_config(variant)


def test_every_config_file_is_listed():
    assert sorted(p.name for p in CONFIGS.glob("*.py")) == sorted(VARIANTS)


@pytest.mark.parametrize(
    "name,variant", [(name, v) for name, variants in VARIANTS.items() for v in variants]
)
def test_variant_loads_and_holds_what_train_reads(name: str, variant: str):
    module = load(name)
    if variant:
        assert re.search(rf"\b{variant}\b", module.__doc__), f"{variant} is not documented"
    cfg = module.get_config(variant)
    assert isinstance(ModelConfig.from_dict({**cfg.model.to_dict(), "vocab_size": 65}), ModelConfig)
    for section, fields in FIELDS.items():
        missing = [f for f in fields if f not in cfg[section]]
        assert not missing, f"{name}:{variant} lacks {section}.{missing}"
    t = cfg.train
    assert min(t.batch_size, t.grad_accum, t.max_iters, t.eval_iters, t.ckpt_interval) > 0
    assert t.init_from in ("resume", "scratch")
    tokens = t.batch_size * cfg.model.block_size * t.grad_accum
    muon = optimizer.muon_schedule(cfg.opt, tokens) if cfg.opt.optimizer == "muon" else None
    optimizer.make_optimizer(cfg.opt, optimizer.make_schedule(cfg.opt, tokens), muon)
    sharding.mesh_shape(cfg.mesh, 1)  # this CPU: every config runs on one device


def test_default_variant_is_the_empty_one():
    for name in VARIANTS:
        module = load(name)
        assert module.get_config().to_dict() == module.get_config("").to_dict()
    with pytest.raises(ValueError, match="unknown variant"):
        tpu("v5e")


def test_char_is_nanogpts_recipe_in_bf16_data_parallel():
    nanogpt, char = load("shakespeare_char.py").get_config(""), tpu("char")
    assert char.model.dtype == "bfloat16"
    assert {**char.model.to_dict(), "dtype": "float32"} == nanogpt.model.to_dict()
    assert char.opt.to_dict() == nanogpt.opt.to_dict()
    assert char.train.to_dict() == nanogpt.train.to_dict()
    for chips in (4, 8):  # a v4-8 shows JAX 4 devices (megacore), a v5e-8 shows 8
        assert sharding.mesh_shape(char.mesh, chips) == (chips, 1, 1)
        assert char.train.batch_size % chips == 0


def test_gpt2_124m_is_gpt2_small_with_nanogpts_optimizer():
    cfg = tpu("gpt2_124m")
    m, o, t = cfg.model, cfg.opt, cfg.train
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size) == (12, 12, 768, 1024)
    assert (m.dropout, m.bias, m.dtype) == (0.0, False, "bfloat16")
    assert (o.lr, o.min_lr, o.warmup_iters, o.lr_decay_iters) == (6e-4, 6e-5, 2000, 600_000)
    assert (o.b1, o.b2, o.weight_decay, o.grad_clip) == (0.9, 0.95, 0.1, 1.0)
    tokens = t.batch_size * t.grad_accum * m.block_size
    assert tokens == pytest.approx(12 * 40 * 1024, rel=0.1)  # nanoGPT's train_gpt2: ~0.5M
    for chips in (8, 16, 32, 64, 128):
        assert sharding.mesh_shape(cfg.mesh, chips) == (1, chips, 1)
        assert t.batch_size % chips == 0
    # With GPT-2's vocabulary and biases this is GPT-2 small: nanoGPT's 123.65M exactly.
    assert nanogpt_count({**m.to_dict(), "vocab_size": 50257, "bias": True}) == 123_653_376
    assert nanogpt_count({**m.to_dict(), "vocab_size": 65}) == 85_003_776  # characters, no bias


def nanogpt_count(fields: dict) -> int:
    """Parameters as nanoGPT counts them (all but wpe), from shapes alone."""
    cfg = ModelConfig.from_dict(fields)
    x_1xT = jnp.zeros((1, cfg.block_size), jnp.int32)
    abstract = jax.eval_shape(make_model(cfg).init, jax.random.key(0), x_1xT)["params"]
    return sum(x.size for k, v in abstract.items() if k != "wpe" for x in jax.tree.leaves(v))


def test_tpu_smoke_trains_on_this_cpu(corpus: pathlib.Path, tmp_path: pathlib.Path, capsys):
    data.prepare(files.read_text(corpus), tmp_path / "data", block_size=32)
    workdir = tmp_path / "run"
    code = cli.main(
        [
            "minigpt",
            "train",
            "--config",
            f"{CONFIGS / 'tpu.py'}:smoke",
            "--workdir",
            str(workdir),
            f"--config.data.dir={tmp_path / 'data'}",
        ]
    )
    assert code == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 15, 30]
    assert abs(evals[0]["val_loss"] - math.log(65)) < 0.1  # tiny widths start at uniform
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5
    config = json.loads((workdir / "config.json").read_text())
    assert config["model"]["dtype"] == "float32" and config["mesh"]["data"] == -1
    assert (workdir / "checkpoints" / "30").is_dir()


def test_source_configs_hold_their_sources_numbers():
    m = load("mingpt_char.py").get_config()
    assert (m.model.n_layer, m.model.n_head, m.model.n_embd, m.model.block_size) == (8, 8, 512, 128)
    assert (m.model.tie_embeddings, m.model.bias, m.model.bias_head) == (False, True, False)
    assert (m.model.wpe_init, m.model.init, m.model.dropout) == ("zeros", "normal", 0.1)
    assert (m.opt.schedule, m.opt.decay_mask, m.opt.b2, m.opt.lr) == (
        "mingpt",
        "linear",
        0.95,
        6e-4,
    )
    assert m.opt.warmup_tokens == 512 * 20 and m.opt.final_tokens == 2 * 1_115_394 * 128
    assert (m.data.val_fraction, m.data.sampling, m.train.batch_size) == (0.0, "epoch", 512)
    assert m.train.max_iters * 512 >= 2 * (1_115_394 - 128) > (m.train.max_iters - 1) * 512
    lec = load("lecture_gpt.py").get_config()
    assert (lec.opt.schedule, lec.opt.decay_mask, lec.opt.weight_decay) == ("constant", "all", 0.01)
    assert (lec.opt.b2, lec.opt.grad_clip, lec.model.activation) == (0.999, 0.0, "relu")
    assert lec.model.bias_qkv is False and lec.model.bias_head and not lec.model.tie_embeddings
    lec_model = ModelConfig.from_dict({**lec.model.to_dict(), "vocab_size": 65})
    x_1xT = jnp.zeros((1, 8), jnp.int32)
    abstract = jax.eval_shape(make_model(lec_model).init, jax.random.key(0), x_1xT)["params"]
    assert sum(x.size for x in jax.tree.leaves(abstract)) == 10_788_929  # the lecture prints it
    d = load("day20.py").get_config()
    assert (d.opt.schedule, d.opt.decay_mask, d.model.tie_embeddings) == (
        "warmup_cosine",
        "all",
        True,
    )
    assert d.model.bias_mlp and not d.model.bias and d.sample.settings.count("=") == 4


@pytest.mark.parametrize("name", SOURCES)
def test_source_smoke_trains_and_writes_samples(name, corpus, tmp_path, capsys):
    """Each source's :smoke variant through the CLI; data prepared from data.input on first use
    (minGPT's without a val split)."""
    workdir = tmp_path / "run"
    args = ["minigpt", "train", "--config", f"{CONFIGS / name}:smoke", "--workdir", str(workdir)]
    args += [f"--config.data.dir={tmp_path / 'data'}", f"--config.data.input={corpus}"]
    assert cli.main(args) == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 30, 60]
    assert evals[-1]["train_loss"] < evals[0]["train_loss"] - 0.3
    assert ("val_loss" in evals[-1]) == (name != "mingpt_char.py")
    samples = sorted((workdir / "samples").glob("step_*.txt"))
    assert [p.name for p in samples] == ["step_000000.txt", "step_000030.txt", "step_000060.txt"]
    cfg = load(name).get_config("smoke")
    text = samples[-1].read_text()
    assert text.count("# step 60, ") == cfg.sample.settings.count(";") + 1
    assert cfg.sample.prompt in text
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["final_train_loss"] == evals[-1]["train_loss"]


def test_source_smokes_differ_where_their_full_models_do():
    """A smoke run stands for its config: sources with different models keep different smoke
    models, and the lecture's family (lecture_gpt > frost > mini_gpt in depth or width and
    context) keeps its order."""
    for a, b in itertools.combinations(SOURCES + ["shakespeare_char.py"], 2):
        if load(a).get_config().model != load(b).get_config().model:
            smokes = [load(n).get_config("smoke").model for n in (a, b)]
            assert smokes[0] != smokes[1], f"{a}:smoke and {b}:smoke train the same model"
    family = ["lecture_gpt.py", "frost.py", "mini_gpt.py"]
    for variant in ("", "smoke"):
        m = [load(n).get_config(variant).model for n in family]
        for dim in ("n_layer", "n_embd", "block_size"):
            assert m[0][dim] >= m[1][dim] >= m[2][dim], (variant, dim)
        assert m[0].n_layer * m[0].n_embd > m[1].n_layer * m[1].n_embd, variant


def test_the_modern_experiments_recipe_arm_is_configs_modern_cpu():
    """experiments/modern/sweep.py's 'modern' arm on shakespeare_char:cpu is modern.py:cpu."""
    from minigpt_jax import sweep_spec

    path = str(ROOT / "experiments/modern/sweep.py")
    base = load("shakespeare_char.py").get_config("cpu")
    arm = next(a for a in sweep_spec.file_arms(base, path) if a["name"] == "modern")
    recipe = sweep_spec.run_config(base, arm, seed=base.train.seed)
    assert recipe.to_dict() == load("modern.py").get_config("cpu").to_dict()
