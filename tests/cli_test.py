"""The command line as a user meets it: the smoke pipeline, and bad input -> one line, exit 2."""

import errno
import json
import math
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import ROOT

from minigpt_jax import cli, data, metrics

SMOKE = str(ROOT / "configs/shakespeare_char.py:smoke")


def minigpt(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "minigpt_jax.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=600,
    )


@pytest.fixture(scope="module")
def smoke_run(corpus, tmp_path_factory):
    """prepare -> train :smoke, through the real entry point, once for the module."""
    tmp = tmp_path_factory.mktemp("smoke")
    prep = minigpt("prepare", "--input", str(corpus), "--data_dir", "data", cwd=tmp)
    assert prep.returncode == 0, prep.stderr
    run = minigpt("train", "--config", SMOKE, "--workdir", "run", "--config.data.dir=data", cwd=tmp)
    assert run.returncode == 0, run.stderr
    (tmp / "train.out").write_text(run.stdout)
    return tmp


def test_smoke_pipeline_learns_below_unigram_entropy(smoke_run):
    counts = np.bincount(data.load_split(smoke_run / "data", "train"))
    p = counts[counts > 0] / counts.sum()
    unigram_entropy = float(-(p * np.log(p)).sum())  # ~3.3 nats for Tiny Shakespeare
    records = [
        json.loads(line) for line in (smoke_run / "run/metrics.jsonl").read_text().splitlines()
    ]
    evals = [r for r in records if r["kind"] == "eval"]
    trains = [r for r in records if r["kind"] == "train"]
    assert evals[0]["step"] == 0 and abs(evals[0]["val_loss"] - math.log(65)) < 0.1
    final = evals[-1]
    assert final["step"] == 150
    assert final["val_loss"] < unigram_entropy and final["val_loss_full"] < unigram_entropy
    assert final["val_bpc"] == pytest.approx(final["val_loss_full"] / math.log(2))
    for key in ("loss", "lr", "grad_norm", "ms_per_iter", "tokens_per_s"):
        assert key in trains[-1]
    summary = json.loads((smoke_run / "run/summary.json").read_text())
    assert summary["step"] == 150 and summary["tokens_seen"] == 150 * 16 * 32
    assert summary["final_val_loss_full"] == final["val_loss_full"]
    assert summary["best_val_loss"] == min(r["val_loss"] for r in evals)
    assert summary["params"]["total"] == 27_840 and summary["median_ms_per_iter"] > 0
    for name in ("config.json", "meta.json", "loss.png", "checkpoints/150"):
        assert (smoke_run / "run" / name).exists(), name
    assert list((smoke_run / "run/tb").glob("events.out.tfevents.*"))
    config = json.loads((smoke_run / "run/config.json").read_text())
    assert config["model"]["vocab_size"] == 65 and config["model"]["n_layer"] == 2


def test_sample_continues_the_prompt(smoke_run, monkeypatch, capsys):
    args = ["--workdir", "run", "--prompt", "O God, O God!", "--max_new_tokens", "100"]
    out = minigpt("sample", *args, "--top_k", "10", "--seed", "0", cwd=smoke_run)
    assert out.returncode == 0, out.stderr
    head, body = out.stdout.split("\n", 1)
    assert head.startswith("# run step 150 (--step latest): seed 0, temperature 1.0, top_k 10")
    text = body.split("---------------")[0].strip("\n")
    assert text.startswith("O God, O God!") and len(text) == len("O God, O God!") + 100
    # Again in this process (a new process costs seconds): same seed, same text; another, not.
    monkeypatch.chdir(smoke_run)
    for seed, same in (("0", True), ("1", False)):
        assert cli.main(["minigpt", "sample", *args, "--top_k", "10", "--seed", seed]) == 0
        assert (capsys.readouterr().out == out.stdout) == same, seed
    # --step names the checkpoint: an older one samples other text, and the header says which.
    assert cli.main(["minigpt", "sample", *args, "--top_k", "10", "--step", "75"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# run step 75: seed 0") and printed.split("\n", 1)[1] != body


def test_report_tables_runs_and_overlays_their_curves(smoke_run, tmp_path, capsys):
    run = str(smoke_run / "run")
    out = tmp_path / "rep"
    assert cli.main(["minigpt", "report", run, run, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((smoke_run / "run/summary.json").read_text())
    rows = [line for line in printed.splitlines() if line.startswith(f"| {run} |")]
    assert len(rows) == 2 and f"| {summary['best_val_loss']:.4f} |" in rows[0]
    assert f"| {summary['final_val_bpc']:.4f} |" in rows[0] and "| 150 |" in rows[0]
    assert (out / "report.md").read_text() in printed
    assert (out / "val_curves.png").stat().st_size > 1000


def test_train_with_a_workdir_alone_resumes_with_its_own_config(smoke_run, monkeypatch, capsys):
    """What `minigpt sweep` runs: `train --workdir W` reads W/config.json (no --config)."""
    shutil.copytree(smoke_run / "run", smoke_run / "alone")
    monkeypatch.chdir(smoke_run)  # the run's data.dir is relative to it
    assert cli.main(["minigpt", "train", "--workdir", "alone"]) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and "(step 150)" in out and "done:" in out
    # The config it came from is still named; the command is the resume's.
    assert f"config: {SMOKE}, --config.data.dir=data\n" in out
    assert "budget: 150 steps x 512 tokens = 0.08M tokens, resuming at step 150" in out
    source = json.loads((smoke_run / "alone/config.json").read_text())["source"]
    assert source == {"config": SMOKE, "overrides": ["--config.data.dir=data"],
                      "command": "minigpt train --workdir alone",
                      "cpu_devices": jax.device_count()}  # this process's, as it ran  # fmt: skip


def test_the_log_starts_with_a_header_of_what_runs(smoke_run):
    """Off a terminal too: the config and overrides, the devices and mesh (train's default
    --cpu_devices auto: a device per core when the batch splits), the budget, the model."""
    lines = (smoke_run / "train.out").read_text().splitlines()
    cores = len(os.sched_getaffinity(0))
    n = cores if 16 % cores == 0 else 1
    assert lines[0] == f"config: {SMOKE}, --config.data.dir=data"
    assert lines[1] == f"devices: {n} x cpu (1 process); mesh data {n} x fsdp 1 x tensor 1"
    assert lines[2].startswith("budget: 150 steps x 512 tokens = 0.08M tokens, from scratch;")
    assert lines[3] == "model: 2 layers, 2 heads, 32 wide, block 32, vocab 65, float32"
    assert lines[4].startswith("number of parameters: 0.03M")
    source = json.loads((smoke_run / "run/config.json").read_text())["source"]
    assert source["command"] == f"minigpt train --config {SMOKE} --workdir run " + (
        "--config.data.dir=data"
    )


def test_every_run_writes_samples_and_a_curve_with_lr_and_tokens(smoke_run):
    samples = sorted((smoke_run / "run/samples").glob("step_*.txt"))
    assert [p.name for p in samples] == ["step_000000.txt", "step_000075.txt", "step_000150.txt"]
    first, last = samples[0].read_text(), samples[-1].read_text()
    assert first.startswith("# step 0, temperature=0.8 top_k=200\n\n") and len(last) > 200
    assert first != last  # the model changed between the evals
    assert (smoke_run / "run/loss.png").stat().st_size > 1000
    fig = metrics.loss_figure(metrics.read_metrics(smoke_run / "run"), tokens_per_step=512)
    axes = [*fig.axes, *(c for a in fig.axes for c in a.child_axes)]  # + the top tokens axis
    labels = {a.get_xlabel() for a in axes} | {a.get_ylabel() for a in axes}
    assert {"step", "tokens (millions)", "learning rate", "cross-entropy (nats)"} <= labels
    (lr_line,) = [line for a in fig.axes for line in a.get_lines() if line.get_label() == "lr"]
    assert max(lr_line.get_ydata()) == pytest.approx(1e-2, rel=0.05)  # smoke's peak lr


def test_bad_input_from_the_real_entry_point(tmp_path):
    out = minigpt(
        "train", "--config", SMOKE, "--workdir", "w", "--config.model.n_head=3", cwd=tmp_path
    )
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    assert "n_embd=32 must be divisible by n_head=3" in out.stderr


def _bad_inputs(tmp, smoke_dir):
    (tmp / "empty.txt").write_text("")
    (tmp / "latin1.txt").write_bytes("café".encode("latin-1") * 100)
    (tmp / "short.txt").write_text("to be or not to be")
    (tmp / "ok.txt").write_text("to be or not to be, that is the question\n" * 20)
    (tmp / "afile").write_text("x")
    (tmp / "corrupt").mkdir()
    (tmp / "corrupt" / "meta.json").write_text("{not json")
    (tmp / "norun").mkdir()
    (tmp / "untrained").mkdir()
    for name in ("config.json", "meta.json"):
        (tmp / "untrained" / name).write_text((smoke_dir / "run" / name).read_text())
    # Config files wrong in each way a hand-written one can be.
    (tmp / "syntax.py").write_text("def get_config(arg:\n")
    (tmp / "nul.py").write_bytes(b"x = 1\x00\n")
    (tmp / "raises.py").write_text("def get_config(arg=''):\n    raise RuntimeError('boom')\n")
    (tmp / "dict.py").write_text("def get_config(arg=''):\n    return {'train': {}}\n")
    (tmp / "noget.py").write_text("x = 1\n")
    # Run folders whose run files are damaged: not UTF-8, or JSON of the wrong shape.
    for name, meta, config in (
        ("latin1meta", "café".encode("latin-1"), None),
        ("listmeta", b"[1, 2]", None),
        ("listconfig", None, b'["model"]'),
    ):
        (tmp / name).mkdir()
        (tmp / name / "meta.json").write_bytes(meta or (smoke_dir / "run/meta.json").read_bytes())
        (tmp / name / "config.json").write_bytes(
            config or (smoke_dir / "run/config.json").read_bytes()
        )
    (tmp / "latin1metrics").mkdir()
    (tmp / "latin1metrics" / "metrics.jsonl").write_bytes(b'{"kind": "eval", "caf\xe9": 1}\n')
    # A data dir whose train.bin holds an id outside its vocabulary (65 characters).
    (tmp / "badids").mkdir()
    for name in ("meta.json", "val.bin"):
        (tmp / "badids" / name).write_bytes((smoke_dir / "data" / name).read_bytes())
    (tmp / "badids" / "train.bin").write_bytes(np.arange(0, 300, dtype=np.uint16).tobytes())
    data_flag = f"--config.data.dir={smoke_dir / 'data'}"
    run = str(smoke_dir / "run")
    train = ["train", "--config", SMOKE, "--workdir", "w"]
    resume = ["train", "--config", SMOKE, "--workdir", run, data_flag]  # the trained run
    return [
        (["prepare", "--input", "missing.txt"], "does not exist"),
        (["prepare", "--input", "empty.txt", "--data_dir", "d"], "empty"),
        (["prepare", "--input", "latin1.txt", "--data_dir", "d"], "not UTF-8"),
        (["prepare", "--input", "short.txt", "--data_dir", "d"], "block_size + 1"),
        (["prepare", "--input", "ok.txt", "--data_dir", "afile", "--block_size", "8"], "is a file"),
        (["prepare", "--input", "ok.txt", "--data_dir", "afile/sub", "--block_size", "8"], "afile"),
        (["prepare", "--input", "ok.txt", "--block_size", "0"], "block_size must be positive"),
        (["prepare", "ok.txt"], "unexpected argument 'ok.txt'"),
        (["train", "--workdir", "w"], "--config is required"),
        (["train", "--config", "nope.py", "--workdir", "w"], "No such file"),
        (["train", "--config", SMOKE.replace("smoke", "huge"), "--workdir", "w"], "variant"),
        ([*train, "--config.train.max_iters=lots"], "invalid"),
        ([*train, "--config.model.nlayer=2"], "n_layer"),
        (["train", "--config", SMOKE, "--workdir", "gs://bucket/run"], "only local"),
        ([*train, "--config.data.dir=nowhere"], "prepare"),
        (["train", "--config", SMOKE, "--workdir", "afile", data_flag], "is a file"),
        (["train", "--config", SMOKE, "--workdir", "afile/run", data_flag], "afile"),
        ([*train, "--config.data.dir=corrupt"], "corrupt"),
        ([*train, data_flag, "--config.opt.schedule=mingpt"], "warmup_tokens"),
        ([*train, data_flag, "--config.model.block_size=200000"], "too short"),
        ([*train, data_flag, "--config.train.batch_size=0"], "batch_size"),
        ([*train, data_flag, "--config.opt.schedule=linear"], "opt.schedule"),
        ([*train, data_flag, "--config.train.profile_steps=10"], "train.profile_steps"),
        (["eval", "--workdir", run, "--per_token", "nodir/x.html"], "--per_token nodir"),
        ([*train, data_flag, "--config.mesh.data=3"], "needs 3 devices"),
        ([*resume, "--config.model.n_layer=3"], "model.n_layer: 2 -> 3"),
        ([*resume, "--config.train.init_from=scratch"], "--overwrite"),
        ([*resume, "--config.train.init_from=x"], "init_from"),
        (["eval", "--workdir", run, "--step", "99"], "--step must be"),
        (["eval", "--workdir", "untrained"], "no checkpoint"),
        (["eval", "--workdir", run, "--data_dir", "corrupt"], "corrupt"),
        (["sample", "--workdir", run, "--prompt", "O Gød"], "'ø'"),
        (["sample", "--workdir", "missing"], "does not exist"),
        (["sample", "--workdir", "norun"], "config.json not found"),
        (["sample", "--workdir", "untrained"], "no checkpoint"),
        (["sample", "--workdir", run, "--top_p", "0"], "top_p"),
        (["sample", "--workdir", run, "--top_k", "0"], "top_k"),
        (["sample", "--workdir", run, "--temperature", "-1"], "temperature"),
        (["sample", "--workdir", run, "--max_new_tokens", "-1"], "max_new_tokens"),
        (["sample", "--workdir", run, "--prompt_file", "missing.txt"], "does not exist"),
        (["frobnicate"], "unknown command"),
        ([*train, data_flag, "--config.sample.settings=temperature=hot"], "sample.settings"),
        ([*train, data_flag, "--config.sample.settings=top_k=0"], "sample.settings"),
        ([*train, data_flag, "--config.sample.prompt=Gød"], "'ø'"),
        ([*train, data_flag, "--config.model.bias_head=true"], "untied head"),
        (["report"], "name the runs"),
        (["report", run, "norun", "--out", "rep"], "norun has no metrics.jsonl"),
        (["report", run, "--out", "afile"], "is a file"),
        (["report", run, "missing"], "missing does not exist; pass the --workdir of"),
        (["report", run], "--out is required"),  # rather than a report/ folder in the cwd
        (["report", run, "--out", "rep", "--x_axis", "epochs"], "--x_axis"),
        # Issue 15, 9: tracebacks before.
        (["train", "--config", "syntax.py", "--workdir", "w"], "SyntaxError at line 1"),
        (["train", "--config", "nul.py", "--workdir", "w"], "null bytes"),
        (["train", "--config", "raises.py", "--workdir", "w"], "raised RuntimeError: boom"),
        (["train", "--config", "dict.py", "--workdir", "w"], "returned a dict, not a ConfigDict"),
        (["bench", "sample", "--config", "dict.py"], "returned a dict, not a ConfigDict"),
        (["sample", "--workdir", "latin1meta"], "meta.json is not UTF-8"),
        (["eval", "--workdir", "listmeta"], "meta.json is not a tokenizer's vocabulary"),
        (["sample", "--workdir", "listconfig"], "config.json is not a run's config"),
        (["report", "latin1metrics", "--out", "rep"], "metrics.jsonl line 1 is not UTF-8"),
        (["sample", "--workdir", run, "--seed", "1180591620717411303424"], "--seed must be"),
        ([*train, data_flag, "--config.train.seed=-1"], "train.seed must be"),
        # Issue 15, 10: accepted before.
        (["sample", "--workdir", run, "--temperature", "nan"], "temperature"),
        (["sample", "--workdir", run, "--temperature", "inf"], "temperature"),
        (["sample", "--workdir", run, "--top_p", "nan"], "top_p"),
        ([*train, data_flag, "--config.opt.lr=-1"], "opt.lr must be"),
        ([*train, data_flag, "--config.opt.b2=1.0"], "opt.b2 must be"),
        ([*train, "--config.data.dir=badids"], "token id 299"),
        (["eval", "--workdir", run, "--data_dir", "badids"], "token id 299"),
        ([*resume, "--config.model.ln_eps=1e-6"], "model.ln_eps: 1e-05 -> 1e-06"),
        ([*resume, "--config.model.activation=relu"], "model.activation: 'gelu' -> 'relu'"),
        # Issue 15, 11: misleading before.
        (["sample", "--workdir", "afile"], "afile is a file, not a run folder"),
        (["eval", "--workdir", "afile"], "afile is a file, not a run folder"),
        (["train", "--config", "noget.py", "--workdir", "w"], "noget.py has no get_config(arg)"),
        # Issue 16: a target, and a workdir's own config.json.
        ([*train, data_flag, "--config.train.target_val_loss=-1"], "train.target_val_loss must"),
        (["train", "--workdir", "listconfig"], "config.json is not a run's config"),
    ]


def test_bad_inputs_give_one_line_and_exit_2(smoke_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = sorted(p.relative_to(smoke_run) for p in smoke_run.rglob("*"))
    for args, message in _bad_inputs(tmp_path, smoke_run):
        code = cli.main(["minigpt", *args])
        err = capsys.readouterr().err.strip()
        assert code == 2, (args, err)
        assert message in err, (args, err)
        assert "\n" not in err and "Traceback" not in err, (args, err)
    assert sorted(p.relative_to(smoke_run) for p in smoke_run.rglob("*")) == before
    assert not (tmp_path / "w").exists()  # no half-made run left behind
    assert not (tmp_path / "rep").exists() and not (tmp_path / "report").exists()


def test_train_on_a_workdir_that_cannot_be_written_is_one_line(
    smoke_run, tmp_path, capsys, monkeypatch
):
    """A workdir on a read-only mount: it exists, but every write in it fails with EROFS. Tests
    run as root, where chmod stops no write, so the fault is injected where files are opened."""
    ro = tmp_path / "ro"
    ro.mkdir()
    opened = os.open

    def read_only_open(path, flags, *args, **kw):
        if os.path.abspath(path).startswith(f"{ro}{os.sep}") and flags & (
            os.O_WRONLY | os.O_RDWR | os.O_CREAT
        ):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return opened(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", read_only_open)
    data_flag = f"--config.data.dir={smoke_run / 'data'}"
    code = cli.main(["minigpt", "train", "--config", SMOKE, "--workdir", str(ro), data_flag])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Read-only file system" in err and str(ro) in err, err
    assert "\n" not in err and list(ro.iterdir()) == []


def test_offline_download_says_how_to_pass_the_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(data, "SHAKESPEARE_URL", "http://127.0.0.1:9/input.txt")
    assert cli.main(["minigpt", "prepare", "--data_dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "--input" in err and "\n" not in err.strip()
    assert "put a copy at data/tinyshakespeare/input.txt (where `make demo` looks)" in err
    assert "--input $(SHAKESPEARE)" in (ROOT / "Makefile").read_text()
    assert f"SHAKESPEARE := {data.DEMO_INPUT}" in (ROOT / "Makefile").read_text()
    assert not (tmp_path / "d" / "input.txt").exists()


def test_bigram_config_trains_and_samples(smoke_run, capsys):
    workdir = str(smoke_run / "bigram")
    data_flag = f"--config.data.dir={smoke_run / 'data'}"
    config = str(ROOT / "configs/bigram.py:smoke")
    assert cli.main(["minigpt", "train", "--config", config, "--workdir", workdir, data_flag]) == 0
    evals = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl") if '"eval"' in line]
    assert evals[-1]["val_loss_full"] < math.log(65) - 0.5
    capsys.readouterr()
    assert cli.main(["minigpt", "sample", "--workdir", workdir, "--max_new_tokens", "20"]) == 0
    body = capsys.readouterr().out.split("\n", 1)[1]  # below the header line
    assert len(body.split("---------------")[0]) == 1 + 20 + 1  # "\n" + 20 + "\n"


def test_train_prepares_any_corpus_given_as_data_input(tmp_path, capsys):
    poem = "Tyger Tyger, burning bright,\nIn the forests of the night;\n"
    (tmp_path / "poems.txt").write_text(poem * 40)
    args = [
        "minigpt",
        "train",
        "--config",
        SMOKE,
        "--workdir",
        str(tmp_path / "run"),
        f"--config.data.input={tmp_path / 'poems.txt'}",
        f"--config.data.dir={tmp_path / 'poems'}",
        "--config.train.max_iters=4",
        "--config.train.eval_interval=2",
    ]
    assert cli.main(args) == 0, capsys.readouterr().err
    meta = json.loads((tmp_path / "poems/meta.json").read_text())
    assert meta["itos"] == sorted(set(poem))
    assert json.loads((tmp_path / "run/config.json").read_text())["model"]["vocab_size"] == len(
        set(poem)
    )


def test_report_draws_a_run_without_val_split_by_its_train_estimate(tmp_path):
    """minGPT's recipe has no val split: its row shows '-' for val, its curve the train loss."""
    from minigpt_jax import report

    run = tmp_path / "noval"
    run.mkdir()
    evals = [{"kind": "eval", "step": s, "train_loss": 4.0 - s / 100} for s in (0, 50, 100)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
    loaded = report.load_run(run)
    row = report.table([loaded]).splitlines()[-1]
    assert row.startswith(f"| {run} |") and "| - |" in row
    report.report([str(run)], tmp_path / "rep")  # plots the train estimate: no val points
    assert (tmp_path / "rep/val_curves.png").stat().st_size > 1000
