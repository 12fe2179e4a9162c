"""`minigpt compare`: both sides train from the same weights on the same batches; the report."""

import json

import pytest
from conftest import ROOT

from minigpt_jax import cli

pytest.importorskip("torch")

POEM = "Tyger Tyger, burning bright,\nIn the forests of the night;\n" * 40


def test_compare_smoke_writes_the_report_and_curves_start_together(tmp_path, capsys):
    (tmp_path / "poem.txt").write_text(POEM)
    out = tmp_path / "report"
    args = [
        "minigpt", "compare", "--config", str(ROOT / "configs/shakespeare_char.py:smoke"),
        f"--config.data.input={tmp_path / 'poem.txt'}", f"--config.data.dir={tmp_path / 'data'}",
        "--config.train.eval_iters=2", "--steps", "6", "--sample_tokens", "40", "--repeats", "1",
        "--torch_threads", "1", "--out_dir", str(out),
    ]  # fmt: skip
    assert cli.main(args) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    jax_losses, torch_losses = report["losses"]["jax"], report["losses"]["torch"]
    assert len(jax_losses) == len(torch_losses) == 6
    # Same init, same batches: the curves coincide at the start (dropout is 0 in :smoke).
    assert max(abs(a - b) for a, b in zip(jax_losses, torch_losses)) < 1e-4
    assert jax_losses[-1] < jax_losses[0]
    for side in ("jax", "torch"):
        e = report["eval"][side]
        assert 0 < e["val_loss"] < 5 and 0 < e["val_loss_full"] < 5
        assert report["ms_per_iter"][side]["min"] <= report["ms_per_iter"][side]["median"]
        assert report["sample_tokens_per_s"][side]["median"] > 0
    assert (
        abs(report["eval"]["jax"]["val_loss_full"] - report["eval"]["torch"]["val_loss_full"])
        < 1e-3
    )
    md = (out / "report.md").read_text()
    assert "ms/iter" in md and "loss.png" in md and (out / "loss.png").stat().st_size > 0


def test_compare_bad_input_gives_one_line(tmp_path, capsys):
    config = ["--config", str(ROOT / "configs/shakespeare_char.py:smoke")]
    cases = [
        ([*config], "--out_dir"),
        ([*config, "--out_dir", str(tmp_path), "--steps", "1"], "--steps"),
        ([*config, "--out_dir", str(tmp_path), "--torch_threads", "-1"], "--torch_threads"),
        (["--out_dir", str(tmp_path)], "--config is required"),
        ([*config, "--out_dir", str(tmp_path), "--config.data.dir=nowhere"], "prepare"),
    ]
    for args, message in cases:
        assert cli.main(["minigpt", "compare", *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, (args, err)
