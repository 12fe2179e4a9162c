"""`minigpt convert`: nanoGPT and minGPT checkpoints in, nanoGPT's ckpt.pt out, bad input refused
in one line; torch stays optional."""

import dataclasses
import datetime
import os
import pickle
import subprocess
import sys
import warnings

import pytest
from conftest import ROOT
from ml_collections import config_dict

import minigpt_jax
from minigpt_jax import cli, convert, data, nanogpt, workdir
from minigpt_jax.model import ModelConfig

torch = pytest.importorskip("torch")
from minigpt_jax import torch_ref  # noqa: E402  (needs torch)

# Tiny models gain nothing from threads, and on a shared CPU torch's OpenMP threads can wait on
# each other for seconds per step.
torch.set_num_threads(1)

POEM = "Tyger Tyger, burning bright,\nIn the forests of the night;\n" * 40


class Pwn:
    """A pickle that would run a shell command when loaded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _run(args, capsys):
    code = cli.main(["minigpt", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err.strip()


def _greedy_torch(model, ids, n):
    out = torch_ref.generate(model, torch.tensor([[int(i) for i in ids]]), n, top_k=1)
    return out[0].tolist()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A prepared corpus, a nanoGPT checkpoint (torch.compile prefixes, tied, no bias) with its
    meta.pkl, and a minGPT state_dict (untied, biases, NewGELU, mask buffers)."""
    tmp = tmp_path_factory.mktemp("convert")
    meta = data.prepare(POEM, tmp / "data", block_size=8)
    V = meta["vocab_size"]
    with open(tmp / "meta.pkl", "wb") as f:  # nanoGPT's prepare.py: itos is {id: char}
        pickle.dump(
            {"vocab_size": V, "itos": dict(enumerate(meta["itos"])), "stoi": meta["stoi"]}, f
        )
    torch.manual_seed(0)
    nano_cfg = ModelConfig(vocab_size=V, block_size=8, n_layer=2, n_head=2, n_embd=16)
    nano = torch_ref.make_model(nano_cfg)
    args = {k: getattr(nano_cfg, k) for k in convert.NANOGPT_MODEL_ARGS}
    ckpt = {
        "model": {f"_orig_mod.{k}": v for k, v in nano.state_dict().items()},
        "model_args": args, "iter_num": 42, "best_val_loss": torch.tensor(2.5),
        "config": {"learning_rate": 1e-3, "batch_size": 4, "dataset": "poem", "max_iters": 99},
    }  # fmt: skip
    torch.save(ckpt, tmp / "ckpt.pt")
    min_cfg = dataclasses.replace(nano_cfg, bias=True, tie_embeddings=False, activation="gelu_tanh")
    mingpt = torch_ref.make_model(min_cfg)
    with torch.no_grad():
        for p in mingpt.parameters():  # biases and LayerNorms away from their init
            p.add_(0.1 * torch.randn_like(p))
    sd = dict(mingpt.state_dict())
    for i in range(2):  # minGPT registers its causal mask as a buffer named attn.bias
        sd[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(8, 8)).view(1, 1, 8, 8)
    torch.save(sd, tmp / "mingpt.pt")
    torch.save({"model": {**ckpt["model"], "_orig_mod.transformer.h.0.extra.weight": torch.ones(2)},
                "model_args": args}, tmp / "unknown.pt")  # fmt: skip
    torch.save({"model": ckpt["model"], "model_args": {**args, "n_embd": 32}}, tmp / "shape.pt")
    torch.save({"model": Pwn(tmp / "pwned")}, tmp / "evil.pt")
    with open(tmp / "evil.pkl", "wb") as f:
        pickle.dump({"vocab_size": V, "itos": Pwn(tmp / "pwned")}, f)
    (tmp / "notckpt.pt").write_text("hello")
    (tmp / "notes.pt").write_text(
        "# Notes\nnot a checkpoint at all\n"
    )  # torch: unsupported operand
    torch.save({"model": {}, "when": datetime.date(2020, 1, 1)}, tmp / "class.pt")
    (tmp / "meta_small.json").write_text('{"itos": ["a", "b"]}')
    (tmp / "busy").mkdir()
    (tmp / "busy" / "keep.txt").write_text("x")
    return tmp, nano, mingpt


def test_nanogpt_checkpoint_imports_samples_evaluates_and_exports(files, capsys, monkeypatch):
    tmp, nano, _ = files
    monkeypatch.chdir(tmp)
    args = ["convert", "--from", "nanogpt", "ckpt.pt", "--meta", "meta.pkl", "--workdir", "imp"]
    code, out, err = _run([*args, "--data_dir", "data"], capsys)
    assert code == 0, err
    assert "step 42" in out and not any(p.name.startswith(".imp") for p in tmp.iterdir())
    config, meta, cfg = workdir.read_run("imp")
    assert cfg.n_layer == 2 and cfg.tie_embeddings and not cfg.bias
    assert config["opt"]["lr"] == 1e-3 and config["train"]["max_iters"] == 99
    # Greedy sampling within one window: the same text as the torch model's own greedy loop.
    code, out, err = _run(["sample", "--workdir", "imp", "--prompt", "T", "--temperature", "0",
                           "--max_new_tokens", "7"], capsys)  # fmt: skip
    tok = data.CharTokenizer.from_json(meta)
    assert code == 0, err
    assert out.split("\n", 1)[1].split("\n---")[0] == tok.decode(
        _greedy_torch(nano, list(tok.encode("T")), 7)
    )
    code, out, err = _run(["eval", "--workdir", "imp"], capsys)
    assert code == 0 and "step 42: train loss" in out and "full val" in out, err
    # Export: a ckpt.pt nanoGPT's sample.py loads (model_args -> GPTConfig, strict state_dict).
    # meta.pkl beside back.pt is the user's own, imported above: replaced only with --overwrite.
    export = ["convert", "--to", "nanogpt", "--workdir", "imp", "--out", "back.pt"]
    code, out, err = _run(export, capsys)
    assert code == 2 and f"{tmp / 'meta.pkl'} exists; pass --overwrite to replace it" in err
    code, out, err = _run([*export, "--overwrite"], capsys)
    assert code == 0, err
    code, _, err = _run([*export, "--meta_out", "other.pkl"], capsys)  # back.pt exists now
    assert code == 2 and "back.pt exists; pass --overwrite" in err
    assert not (tmp / "other.pkl").exists()
    back = torch.load(tmp / "back.pt", weights_only=True)
    assert back["iter_num"] == 42 and back["model_args"] == {
        k: getattr(cfg, k) for k in convert.NANOGPT_MODEL_ARGS
    }
    assert set(back["config"]) >= {"learning_rate", "batch_size", "n_layer", "bias"}
    original = nano.state_dict()
    assert back["model"].keys() == original.keys()
    for k, v in original.items():
        assert torch.equal(back["model"][k], v), k
    again = torch_ref.make_model(cfg)
    again.load_state_dict(back["model"], strict=True)
    # nanoGPT's sample.py, as it reads the pair: the printed command puts meta.pkl at
    # data/<config.dataset>/meta.pkl; it is a plain pickle of stoi / itos dicts.
    dataset = back["config"]["dataset"]
    assert f"mkdir -p data/{dataset} && cp {tmp / 'meta.pkl'} data/{dataset}/" in out
    with open(tmp / "meta.pkl", "rb") as f:
        nano_meta = pickle.load(f)
    assert nano_meta["itos"] == dict(enumerate(meta["itos"]))
    assert nano_meta["vocab_size"] == len(meta["itos"]) == cfg.vocab_size
    ids = [nano_meta["stoi"][c] for c in "T"]
    text = "".join(nano_meta["itos"][i] for i in _greedy_torch(again, ids, 7))
    code, ours, err = _run(["sample", "--workdir", "imp", "--prompt", "T", "--temperature", "0",
                            "--max_new_tokens", "7"], capsys)  # fmt: skip
    assert code == 0 and ours.split("\n", 1)[1].split("\n---")[0] == text, err
    assert "window chunked" in err and "--window exact" in err  # said where users read
    # Files a user can share: not mkstemp's 0600 nor mkdtemp's 0700.
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp / "back.pt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp / "imp").stat().st_mode & 0o777 == 0o777 & ~umask
    # An existing workdir is kept unless --overwrite; with it, replaced whole.
    code, _, err = _run([*args, "--data_dir", "data"], capsys)
    assert code == 2 and "--overwrite" in err
    assert _run([*args, "--overwrite"], capsys)[0] == 0
    assert workdir.read_run("imp")[0]["data"]["dir"] == "data/poem"


def test_mingpt_state_dict_imports_with_its_head_and_biases(files, capsys, monkeypatch):
    tmp, _, mingpt = files
    monkeypatch.chdir(tmp)
    code, _, err = _run(["convert", "--from", "mingpt", "mingpt.pt", "--meta", "data/meta.json",
                         "--workdir", "min", "--n_head", "2"], capsys)  # fmt: skip
    assert code == 0, err
    _, meta, cfg = workdir.read_run("min")
    assert (cfg.tie_embeddings, cfg.bias, cfg.activation) == (False, True, "gelu_tanh")
    code, out, err = _run(["sample", "--workdir", "min", "--prompt", "In", "--temperature", "0",
                           "--max_new_tokens", "6"], capsys)  # fmt: skip
    tok = data.CharTokenizer.from_json(meta)
    assert out.split("\n", 1)[1].split("\n---")[0] == tok.decode(
        _greedy_torch(mingpt, list(tok.encode("In")), 6)
    )
    code, _, err = _run(["convert", "--to", "nanogpt", "--workdir", "min", "--out", "x.pt"], capsys)
    assert code == 2 and "tie_embeddings=False" in err and "gelu_tanh" in err


def test_bad_inputs_give_one_line_and_exit_2(files, capsys, monkeypatch):
    tmp, _, _ = files
    monkeypatch.chdir(tmp)
    imp = ["convert", "--from", "nanogpt"]
    w = ["--workdir", "w"]
    cases = [
        ([*imp, "missing.pt", "--meta", "meta.pkl", *w], "does not exist"),
        ([*imp, "notckpt.pt", "--meta", "meta.pkl", *w], "not a torch checkpoint"),
        ([*imp, "evil.pt", "--meta", "meta.pkl", *w], "weights_only=True"),
        ([*imp, "notes.pt", "--meta", "meta.pkl", *w], "notes.pt is not a torch checkpoint"),
        ([*imp, "meta.pkl", "--meta", "meta.pkl", *w], "meta.pkl is not a torch checkpoint"),
        ([*imp, "class.pt", "--meta", "meta.pkl", *w], "refused by torch.load(weights_only=True)"),
        ([*imp, "ckpt.pt", "--meta", "evil.pkl", *w], "system"),
        ([*imp, "ckpt.pt", "--meta", "missing.pkl", *w], "does not exist"),
        ([*imp, "ckpt.pt", "--meta", "notckpt.pt", *w], "not a meta.pkl"),
        ([*imp, "unknown.pt", "--meta", "meta.pkl", *w], "transformer.h.0.extra.weight"),
        ([*imp, "shape.pt", "--meta", "meta.pkl", *w], "shape"),
        ([*imp, "ckpt.pt", "--meta", "meta_small.json", *w], "vocab_size"),
        ([*imp, "ckpt.pt", "--meta", "meta.pkl", "--workdir", "busy"], "--overwrite"),
        ([*imp, "ckpt.pt", *w], "--meta"),
        ([*imp, "--meta", "meta.pkl", *w], "CKPT.pt"),
        (["convert", "--from", "mingpt", "mingpt.pt", "--meta", "meta.pkl", *w], "--n_head"),
        (["convert", "ckpt.pt", "--meta", "meta.pkl", *w], "--from"),
        (["convert", "--from", "nanogpt", "--to", "nanogpt", *w], "--from"),
        (["convert", "--to", "nanogpt", "--workdir", "nowhere", "--out", "x.pt"], "does not exist"),
        (["convert", "--to", "nanogpt", "--workdir", "busy"], "--out"),
        (["convert", "--from", "keras", "ckpt.pt"], "--from"),
    ]
    for args, message in cases:
        with warnings.catch_warnings(record=True) as warned:  # torch's go to stderr: lines more
            warnings.simplefilter("always")
            code, _, err = _run(args, capsys)
        assert code == 2, (args, err)
        assert message in err, (args, err)
        assert "\n" not in err and "Traceback" not in err and not warned, (args, err, warned)
        # Never torch's advice to load unsafely: weights_only=False, or allowlisting a global.
        assert "False" not in err and "safe_globals" not in err, (args, err)
    assert not (tmp / "pwned").exists()  # neither pickle ran its command
    assert not (tmp / "w").exists() and (tmp / "busy" / "keep.txt").exists()
    assert not [p for p in tmp.iterdir() if p.name.startswith(".w.")]  # no temp dir left


def test_without_torch_convert_and_compare_say_how_to_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    monkeypatch.delitem(sys.modules, "minigpt_jax.torch_ref", raising=False)
    monkeypatch.delattr(minigpt_jax, "torch_ref", raising=False)
    for args in (["convert", "--from", "nanogpt", "x.pt", "--meta", "m", "--workdir", "w"],
                 ["compare", "--config", "c.py", "--out_dir", "o"]):  # fmt: skip
        code, _, err = _run(args, capsys)
        assert code == 2 and "pip install -e '.[torch]'" in err and "\n" not in err, err


def test_no_module_but_torch_ref_imports_torch():
    modules = "minigpt_jax.cli, minigpt_jax.nanogpt, minigpt_jax.compare, minigpt_jax.bench"
    code = f"import sys, {modules}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)  # fmt: skip
    assert out.stdout.strip() == "False", out.stderr


def test_imported_run_config_has_every_field_of_a_real_config():
    spec = config_dict.ConfigDict
    real = _load_config()
    imported = spec(nanogpt.run_config(ModelConfig(), {}, "data/x"))
    for section in real:
        assert sorted(imported[section].keys()) == sorted(real[section].keys()), section


def _load_config():
    import importlib.util

    spec = importlib.util.spec_from_file_location("sc", ROOT / "configs/shakespeare_char.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("")
