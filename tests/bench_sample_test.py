"""`minigpt bench sample`: the cached sampler, recompute and PyTorch's generate in one table."""

import pytest
from conftest import ROOT, one_line_error

from minigpt_jax import bench_sample, cli, config


@pytest.mark.parametrize(
    "args, message",
    [
        (["bench", "sample", "--lengths", "500,lots"], "--lengths"),
        (["bench", "sample", "--repeats", "0"], "--repeats"),
        (["bench", "sample", "--config", "nope.py"], "No such file"),
        (["bench", "sample", "--out", "nodir/t.md", "--lengths", "8"], "nodir"),
    ],
)
def test_bad_bench_sample_flags_give_one_line_and_exit_2(
    args, message, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert message in one_line_error(args, capsys)


def test_bench_sample_times_pytorch_generate_on_the_same_weights(capsys):
    smoke = str(ROOT / "configs/shakespeare_char.py:smoke")
    args = ["minigpt", "bench", "sample", "--config", smoke, "--lengths", "40", "--repeats", "1"]
    assert cli.main([*args, "--torch_threads", "1"]) == 0, capsys.readouterr().err
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 40 |")]
    assert [r.split(" | ")[1] for r in rows] == [*bench_sample.METHODS, bench_sample.TORCH_METHOD]
    assert all(r.rstrip(" |").endswith("x") for r in rows)  # every row has its x PyTorch


def test_the_table_file_holds_what_was_printed(tmp_path, capsys):
    out = tmp_path / "t.md"
    smoke = config.sibling(str(ROOT / "configs/x.py"), "shakespeare_char.py", "smoke")
    rows = bench_sample.run_sample(smoke, lengths=["4"], repeats=1, table_out=str(out))
    assert len(rows) >= 3 and out.read_text() == bench_sample.table(rows) + "\n"
    assert out.read_text() in capsys.readouterr().out
