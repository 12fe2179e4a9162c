"""The config schema: defaults, the smoke helper, reading a saved config, the checks."""

import subprocess
import sys

import pytest
from conftest import ROOT

from minigpt_jax import config
from minigpt_jax.errors import UsageError


def test_base_config_is_nanogpts_shakespeare_char():
    c = config.base_config()
    assert (c.model.n_layer, c.model.n_head, c.model.n_embd, c.model.block_size) == (6, 6, 384, 256)
    assert (c.opt.lr, c.opt.min_lr, c.opt.warmup_iters, c.opt.lr_decay_iters) == (
        1e-3, 1e-4, 100, 5000,
    )  # fmt: skip
    assert (c.opt.b2, c.train.batch_size, c.train.max_iters, c.model.dropout) == (
        0.99, 64, 5000, 0.2,
    )  # fmt: skip
    config.validate(c)


@pytest.mark.parametrize("schedule", ["nanogpt", "warmup_cosine", "mingpt", "constant"])
def test_smoke_shrinks_a_preset_and_keeps_its_schedule(schedule):
    c = config.base_config()
    c.opt.update(schedule=schedule, warmup_tokens=10, final_tokens=100)
    config.smoke(c, steps=30, warmup=5, sample_tokens=7)
    config.validate(c)
    assert c.opt.schedule == schedule and c.model.n_embd == 32 and c.train.max_iters == 30
    assert c.train.eval_interval == c.train.ckpt_interval == 15 and c.sample.max_new_tokens == 7
    if schedule in ("nanogpt", "warmup_cosine"):
        assert (c.opt.warmup_iters, c.opt.lr_decay_iters) == (5, 30)
    if schedule == "mingpt":
        assert c.opt.final_tokens == 30 * 16 * 32 and c.opt.warmup_tokens < c.opt.final_tokens


def test_from_saved_fills_fields_a_run_predates():
    saved = config.base_config().to_dict()
    del saved["model"]["remat"], saved["train"]["skip_nonfinite"]
    saved["model"]["vocab_size"], saved["opt"]["lr"] = 65, 3e-4
    c = config.from_saved(saved)
    assert c.model.remat == "none" and c.train.skip_nonfinite is False
    assert c.model.vocab_size == 65 and c.opt.lr == 3e-4 and c.model.bias_qkv is None


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("train.eval_iters", 0, "train.eval_iters must be positive"),
        ("train.init_from", "latest", "train.init_from"),
        ("data.sampling", "sequential", "data.sampling"),
        ("opt.schedule", "linear", "opt.schedule"),
        ("opt.decay_mask", "biases", "opt.decay_mask"),
        ("opt.lr_decay_iters", 50, "opt.lr_decay_iters=50 is below"),
        ("model.n_head", 5, "divisible by n_head=5"),
        ("sample.settings", "top_p=2", "sample.settings"),
        ("sample.settings", "temperature=nan", "sample.settings"),
        ("train.seed", -1, r"train.seed must be an integer in \[0, 2\*\*32\)"),
        ("train.seed", 2**32, r"train.seed must be an integer in \[0, 2\*\*32\)"),
        ("opt.lr", -1.0, r"opt.lr must be >= 0, got -1.0"),
        ("opt.lr", float("nan"), "opt.lr must be >= 0, got nan"),
        ("opt.min_lr", -1e-4, "opt.min_lr must be >= 0"),
        ("opt.weight_decay", -0.1, "opt.weight_decay must be >= 0"),
        ("opt.grad_clip", -1.0, "opt.grad_clip must be >= 0"),
        ("opt.warmup_iters", -1, "opt.warmup_iters must be >= 0"),
        ("opt.b1", 1.0, r"opt.b1 must be in \[0, 1\), got 1.0"),
        ("opt.b2", -0.5, r"opt.b2 must be in \[0, 1\)"),
        ("opt.eps", 0.0, "opt.eps must be > 0, got 0.0"),
        ("opt.optimizer", "sgd", "opt.optimizer must be one of"),
        ("opt.muon_ns_dtype", "float16", "opt.muon_ns_dtype must be one of"),
        ("opt.muon_lr", -0.02, "opt.muon_lr must be >= 0"),
        ("opt.muon_weight_decay", float("nan"), "opt.muon_weight_decay must be >= 0"),
        ("opt.muon_momentum", 1.0, r"opt.muon_momentum must be in \[0, 1\)"),
        ("opt.muon_ns_steps", 0, r"opt.muon_ns_steps must be in \[1, 99\], got 0"),
        ("opt.muon_ns_steps", 100, r"opt.muon_ns_steps must be in \[1, 99\]"),
        ("train.profile_steps", "10", "train.profile_steps must be 'START,N'"),
    ],
)
def test_validate_names_the_bad_field(field, value, message):
    c = config.base_config()
    section, name = field.split(".")
    c[section][name] = value
    with pytest.raises(UsageError, match=message):
        config.validate(c)


def test_muon_needs_a_positive_adamw_lr_to_scale_its_min_lr():
    c = config.base_config()
    c.opt.update(optimizer="muon", lr=0.0)
    with pytest.raises(UsageError, match="opt.lr must be > 0 with opt.optimizer=muon") as info:
        config.validate(c)
    assert "\n" not in str(info.value)
    c.opt.lr = 1e-3
    config.validate(c)


def test_sample_settings_parse_into_sampler_arguments():
    parsed = config.sample_settings("temperature=0.8 top_k=200; top_p=0.9")
    assert parsed == [
        ("temperature=0.8 top_k=200", {"temperature": 0.8, "top_k": 200, "top_p": 1.0}),
        ("top_p=0.9", {"temperature": 1.0, "top_k": None, "top_p": 0.9}),
    ]
    for bad in ("top_k=2.5", "heat=1", "temperature=-1", "top_k=0"):
        with pytest.raises(UsageError, match="sample.settings"):
            config.sample_settings(bad)


def test_loading_a_preset_does_not_start_jax():
    """--cpu_devices must reach XLA before jax starts, and the CLI loads --config first."""
    code = (
        "import sys; from minigpt_jax import config; "
        "config.sibling('configs/x.py', 'tpu.py', 'smoke'); print('jax' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
