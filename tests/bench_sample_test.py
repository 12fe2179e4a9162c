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
        (["bench", "sample", "--vs", "torch", "--num_samples", "2"], "drop --num_samples"),
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
    assert cli.main([*args, "--vs", "torch", "--torch_threads", "1"]) == 0, capsys.readouterr().err
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 40 |")]
    assert [r.split(" | ")[1] for r in rows] == [*bench_sample.METHODS, bench_sample.TORCH_METHOD]
    assert all(r.rstrip(" |").endswith("x") for r in rows)  # every row has its x PyTorch


def test_the_table_file_holds_what_was_printed(tmp_path, capsys):
    out = tmp_path / "t.md"
    rows = bench_sample.run_sample(_smoke(), lengths=["4"], repeats=1, table_out=str(out))
    assert len(rows) >= 3 and out.read_text() == bench_sample.table(rows) + "\n"
    assert out.read_text() in capsys.readouterr().out


def _smoke():
    return config.sibling(str(ROOT / "configs/x.py"), "shakespeare_char.py", "smoke")


def test_pytorch_is_timed_only_when_asked(capsys, monkeypatch):
    def no_torch(*args):
        raise AssertionError("PyTorch timed without --vs torch")

    monkeypatch.setattr(bench_sample, "_torch_generate", no_torch)
    rows = bench_sample.run_sample(_smoke(), lengths=["4"], repeats=2)
    assert [r["method"] for r in rows] == list(bench_sample.METHODS)
    printed = capsys.readouterr().out
    assert "load average (1 min): " in printed and "PyTorch not timed: add --vs torch" in printed


@pytest.mark.parametrize("recompute_s, flagged", [([2.0, 4.0, 2.0], True), ([2.0] * 3, False)])
def test_a_ratio_is_flagged_when_its_samples_spread(recompute_s, flagged, capsys, monkeypatch):
    """Timings given, not measured: the cached methods take 1 s, recompute as given."""
    calls = iter([1.0, 1.0, 1.0] + [t for r in recompute_s for t in (1.0, 1.0, r)])
    monkeypatch.setattr(bench_sample, "timed", lambda run, n: next(calls))
    rows = bench_sample.run_sample(_smoke(), lengths=["4"], repeats=3)
    chunked = [
        line for line in capsys.readouterr().out.splitlines() if "| cached chunked |" in line
    ]
    assert rows[0]["speedup"] == 2.0 and rows[0]["unreliable"] == flagged
    assert ("2.0x (unreliable)" in chunked[0]) == flagged and "2.0x" in chunked[0]
