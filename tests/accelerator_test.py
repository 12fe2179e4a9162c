"""experiments/accelerator/run.sh --dry: every step of the accelerator check at toy size on this
CPU, one JSON file per step, and the README's table filled from them."""

import json
import os
import re
import subprocess
import sys

from conftest import ROOT, xla_flags

from minigpt_jax import bench_sample

HERE = ROOT / "experiments/accelerator"
sys.path.insert(0, str(HERE))
import table  # noqa: E402  (experiments/accelerator/table.py)


def _rows(readme: str) -> dict[str, str]:
    """Step name -> result cell of the README's results table."""
    block = readme[readme.index(table.BEGIN) : readme.index(table.END)]
    lines = [line for line in block.splitlines() if line.startswith("| ")][1:]  # not the header
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
    return {c[0]: c[2] for c in cells}


def test_dry_run_runs_every_step_at_toy_size_and_fills_the_table(corpus, tmp_path):
    readme_before = (HERE / "README.md").read_text()
    out, data_dir = tmp_path / "out", tmp_path / "data"
    env = {**os.environ, "XLA_FLAGS": xla_flags()}  # one CPU device
    args = ["--dry", "--jobs", "2", "--input", str(corpus), "--out", str(out)]
    proc = subprocess.run(
        ["bash", str(HERE / "run.sh"), *args, "--data_dir", str(data_dir)],
        capture_output=True, text=True, timeout=600, env={**env, "PYTHON": sys.executable},
    )  # fmt: skip
    logs = "".join(p.read_text()[-2000:] for p in out.glob("log_*.txt"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + logs
    records = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    assert set(records) == set(table.ROWS)  # a file per step, a row per file
    assert all(r["dry"] for r in records.values())
    # Every step ran; cuDNN, which needs a GPU, says so by name instead of passing.
    status = {name: r["status"] for name, r in records.items()}
    assert status == {**dict.fromkeys(table.ROWS, "ok"), "attention": "cannot run here"}
    assert "attention=cudnn falls back to xla: cuDNN needs a GPU" in records["attention"]["reason"]

    char, gpt2, cudnn = (
        records[n]["result"] for n in ("bench_char", "bench_gpt2", "bench_gpt2_cudnn")
    )
    assert char["config"] == "1/2/32 block 32 batch 8x1 (bfloat16)"  # the presets' dtype
    assert gpt2["config"] == "1/2/32 block 32 batch 8x4 (bfloat16)"  # its 4 micro-steps
    assert (
        gpt2["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1}
        and "tpu.py:gpt2_124m" in gpt2["command"]
    )
    for row in (char, gpt2, cudnn):
        assert 0 < row["mfu"] <= 1 and 0 < row["mfu_nanogpt"] <= 1
    # The kernel each preset asked for and what ran instead are on record.
    assert any("Pallas" in f for f in records["bench_gpt2"]["fallbacks"])
    assert any("cuDNN needs a GPU" in f for f in records["bench_gpt2_cudnn"]["fallbacks"])
    # The sampler's three methods, without PyTorch's generate although torch is installed.
    rows = records["sample"]["result"]["rows"]
    assert [r["method"] for r in rows] == list(bench_sample.METHODS)
    assert all(r["new_tokens"] == 40 and r["tok_s"] > 0 for r in rows)
    # The recipe trained on the given text, and its run files sit beside the JSON.
    summary = records["recipe"]["result"]["summary"]
    assert summary["step"] == 4 and summary["finished"] and (data_dir / "meta.json").is_file()
    config = json.loads((out / "recipe_run/config.json").read_text())
    assert config["data"]["dir"] == str(data_dir) and config["dist"]["auto"] is False

    # The dry run filled a copy of the README, every row, and left the checkout's alone.
    assert (HERE / "README.md").read_text() == readme_before
    assert list(_rows(readme_before)) == list(table.ROWS)  # the README has the renderer's rows
    filled = _rows((out / "README.md").read_text())
    assert list(filled) == list(table.ROWS)
    assert all(cell.startswith("(dry, toy size) ") and len(cell) > 40 for cell in filled.values())
    assert "cannot run here: attention=cudnn falls back" in filled["attention"]
    assert "MFU" in filled["bench_char"] and "cached exact" in filled["sample"]
