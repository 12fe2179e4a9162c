"""The run folder: one run per workdir, its run files, and what a resume may change."""

import pytest

from minigpt_jax import checkpoint, workdir
from minigpt_jax.errors import UsageError


def test_config_changes_fills_fields_a_run_predates_with_their_defaults():
    old = {"model": {"n_layer": 2}, "train": {"max_iters": 10}}
    new = {
        "model": {"n_layer": 2, "bias_head": False, "bias_mlp": None},
        "train": {"max_iters": 20},
    }
    assert workdir.config_changes(old, new) == ([], ["train.max_iters: 10 -> 20"])
    refused, _ = workdir.config_changes(old, {**new, "model": {"n_layer": 2, "bias_mlp": True}})
    assert refused == ["model.bias_mlp: None -> True"]


def test_run_files_round_trip_and_name_what_is_missing(tmp_path):
    config, meta = {"model": {"n_layer": 2, "vocab_size": 3}}, {"itos": ["a", "b", "é"]}
    with pytest.raises(UsageError, match="does not exist"):
        workdir.read_run_files(tmp_path / "nope")
    with pytest.raises(UsageError, match="config.json not found"):
        workdir.read_run_files(tmp_path)
    workdir.write_run_files(tmp_path, config, meta)
    assert workdir.read_run_files(tmp_path) == (config, meta)
    (tmp_path / workdir.CONFIG_FILE).write_text("{cut")
    with pytest.raises(UsageError, match="unreadable run file"):
        workdir.read_run_files(tmp_path)


def test_discard_run_removes_records_and_keeps_the_run_files(tmp_path):
    (tmp_path / checkpoint.CKPT_DIR / "10").mkdir(parents=True)
    (tmp_path / "tb").mkdir()
    for name in ("metrics.jsonl", "loss.png", workdir.CONFIG_FILE):
        (tmp_path / name).write_text("x")
    workdir.discard_run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [workdir.CONFIG_FILE]


@pytest.mark.parametrize(
    "name, payload, message",
    [
        ("meta.json", "café".encode("latin-1"), r"meta.json is not UTF-8 \(byte 3\)"),
        ("config.json", b"\xff{}", r"config.json is not UTF-8 \(byte 0\)"),
        ("meta.json", b"[1, 2]", "meta.json is not a tokenizer's vocabulary"),
        ("meta.json", b'{"itos": ["a", 5]}', "meta.json is not a tokenizer's vocabulary"),
        ("meta.json", b'{"itos": ["a", "a"]}', "meta.json is not a tokenizer's vocabulary"),
        ("config.json", b'["model"]', "config.json is not a run's config"),
        ("config.json", b'{"model": 3}', "config.json is not a run's config"),
    ],
)
def test_run_files_not_utf8_or_of_the_wrong_shape_are_one_line(tmp_path, name, payload, message):
    workdir.write_run_files(tmp_path, {"model": {"n_layer": 2}}, {"itos": ["a", "b"]})
    (tmp_path / name).write_bytes(payload)
    with pytest.raises(UsageError, match=message) as info:
        workdir.read_run(tmp_path)
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)


def test_a_workdir_that_is_a_file_says_so(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UsageError, match="afile is a file, not a run folder"):
        workdir.read_run_files(tmp_path / "afile")


def test_a_resume_may_not_change_the_function_the_weights_compute():
    """activation and ln_eps change what the same weights compute, like the shapes; dtype,
    attention kernel, remat, linear_vjp and dropout compute the same function (or only train
    differently), and init and wpe_init only matter before the first step."""
    old = {"model": {"activation": "gelu", "ln_eps": 1e-5, "dtype": "float32"}}
    new = {"model": {"activation": "relu", "ln_eps": 1e-6, "dtype": "bfloat16"}}
    refused, allowed = workdir.config_changes(old, new)
    assert refused == ["model.activation: 'gelu' -> 'relu'", "model.ln_eps: 1e-05 -> 1e-06"]
    assert allowed == ["model.dtype: 'float32' -> 'bfloat16'"]
    free = {"attention": "cudnn", "remat": "block", "linear_vjp": "xla", "dropout": 0.1}
    free |= {"attn_dropout": 0.0, "init": "normal", "wpe_init": "zeros", "zero_init_proj": True}
    refused, allowed = workdir.config_changes({"model": {}}, {"model": free})
    assert refused == [] and len(allowed) == len(free)
    # The modern switches change the params' shapes (wpe, LayerNorm biases) or the function.
    modern = {"pos_emb": "rotary", "norm": "rmsnorm", "qk_norm": True, "rope_base": 500.0}
    modern |= {"logit_softcap": 30.0}
    refused, _ = workdir.config_changes({"model": {}}, {"model": modern})
    assert sorted(r.split(":")[0] for r in refused) == sorted(f"model.{k}" for k in modern)


def test_a_resume_may_not_switch_the_optimizer():
    """Muon's groups change the optimizer state's structure; a run saved before opt.optimizer
    existed trained with AdamW."""
    refused, _ = workdir.config_changes(
        {"opt": {"optimizer": "adamw"}}, {"opt": {"optimizer": "muon"}}
    )
    assert refused == ["opt.optimizer: 'adamw' -> 'muon'"]
    assert workdir.config_changes({"opt": {}}, {"opt": {"optimizer": "adamw"}}) == ([], [])
    refused, _ = workdir.config_changes({"opt": {}}, {"opt": {"optimizer": "muon"}})
    assert refused == ["opt.optimizer: 'adamw' -> 'muon'"]
    _, allowed = workdir.config_changes({"opt": {"muon_lr": 0.02}}, {"opt": {"muon_lr": 0.01}})
    assert allowed == ["opt.muon_lr: 0.02 -> 0.01"]
