"""The README's "From Python" block, run as it stands on a generated text."""

import json
import re

from conftest import ROOT

from minigpt_jax import data, metrics


def readme_block(section: str) -> str:
    """The first ```python block under the README heading `## {section}`."""
    text = (ROOT / "README.md").read_text()
    after = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def test_the_readme_python_api_block_trains_samples_and_evaluates(
    corpus, tmp_path, monkeypatch, capsys
):
    (tmp_path / "input.txt").write_bytes(corpus.read_bytes())
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_block("From Python"), "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    # What it says it did, it did: the run a `minigpt train` would leave, with its numbers.
    summary = json.loads((tmp_path / "runs/api/summary.json").read_text())
    assert summary["step"] == 150 and summary["finished"]
    assert json.loads((tmp_path / "runs/api/config.json").read_text())["train"]["seed"] == 1
    final = [r for r in metrics.read_metrics(tmp_path / "runs/api") if r["kind"] == "eval"][-1]
    assert f"step 150: full val loss {final['val_loss_full']:.4f}" in printed
    assert len([line for line in printed if line.startswith("O God, O God!")]) == 2  # 2 rows
    assert data.load_meta(tmp_path / "data/shakespeare_char")["vocab_size"] == 65
    # The full val pass again, from the saved step: the number training logged.
    evaluated = f"step 150: full val {final['val_loss_full']:.4f}, {final['val_bpc']:.4f} bits/char"
    assert evaluated in printed
