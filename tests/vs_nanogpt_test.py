"""experiments/vs_nanogpt/run.py: the rounds alternate, each arm's wall and results are kept,
and the ratios are ours over nanoGPT's of the same round. nanoGPT itself is not here (CI has no
checkout), so a stand-in checkout checks the command it is given and prints nanoGPT's lines."""

import json
import os
import pathlib
import subprocess
import sys

from conftest import ROOT

FAKE_TRAIN = r"""
import sys
args = dict(a[2:].split("=", 1) for a in sys.argv[2:])
assert sys.argv[1] == "config/train_shakespeare_char.py", sys.argv
assert args["device"] == "cpu" and args["compile"] == "False" and args["n_embd"] == "128"
n = int(args["max_iters"])
assert args["lr_decay_iters"] == str(n)
for i in range(n + 1):
    if i % 2 == 0:
        print(f"step {i}: train loss 2.5000, val loss {3.0 - i / 10:.4f}")
    print(f"iter {i}: loss 2.4000, time {40 + i}.00ms, mfu -100.00%")
open(args["out_dir"] + "/ckpt.pt", "w").write("x")
"""

FAKE_PREPARE = 'import requests\nopen("train.bin", "w").write(open("input.txt").read()[:10])\n'


def test_rounds_alternate_and_ratios_pair_the_rounds(corpus, tmp_path):
    nano = tmp_path / "nanoGPT"
    (nano / "data/shakespeare_char").mkdir(parents=True)
    (nano / "train.py").write_text(FAKE_TRAIN)
    (nano / "data/shakespeare_char/prepare.py").write_text(FAKE_PREPARE)
    text = tmp_path / "input.txt"  # small: the val pass at each eval reads it all
    text.write_text(corpus.read_text()[:20_000])
    out = tmp_path / "out"
    script = ROOT / "experiments/vs_nanogpt/run.py"
    command = [sys.executable, str(script), "--nanogpt", str(nano), "--input", str(text),
               "--out", str(out), "--rounds", "2", "--max_iters", "4",
               "--warmup_iters", "2", "--ours=--config.sample.max_new_tokens=0",
               "--ours=--config.model.n_layer=1", "--ours=--config.train.eval_iters=2"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (nano / "data/shakespeare_char/train.bin").read_text() == text.read_text()[:10]

    results = json.loads((out / "results.json").read_text())
    order = [(r["round"], r["arm"]) for r in results["runs"]]
    assert order == [(0, "nanogpt"), (0, "minigpt"), (1, "minigpt"), (1, "nanogpt")]
    nano_runs = [r for r in results["runs"] if r["arm"] == "nanogpt"]
    assert all(r["val_loss"] == 2.6 and r["ms_per_step"] == 43.0 for r in nano_runs)
    assert not (out / "round_0/nanogpt/ckpt.pt").exists()  # the stand-in wrote one

    ours = {r["round"]: r for r in results["runs"] if r["arm"] == "minigpt"}
    theirs = {r["round"]: r for r in nano_runs}
    s = results["summary"]["minigpt"]
    assert s["ratio"] == [ours[i]["wall_s"] / theirs[i]["wall_s"] for i in (0, 1)]
    summary = json.loads((out / "round_1/minigpt/summary.json").read_text())
    assert summary["step"] == 4 and summary["wall"] == ours[1]["wall"]
    assert set(s["breakdown_mean"]) >= {"startup", "compile", "train", "eval", "total"}
    assert not (out / "round_1/minigpt/checkpoints").exists()
    report = (out / "report.md").read_text()
    assert "| minigpt | 2 |" in report and f"{s['ratio_mean']:.2f}x" in report


def test_an_existing_out_is_refused(tmp_path, corpus):
    (tmp_path / "out").mkdir()
    command = [sys.executable, str(ROOT / "experiments/vs_nanogpt/run.py"), "--nanogpt",
               str(tmp_path), "--input", str(corpus), "--out", str(tmp_path / "out")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "--out must not" in done.stderr
    assert pathlib.Path(tmp_path / "out").exists() and not list((tmp_path / "out").iterdir())
