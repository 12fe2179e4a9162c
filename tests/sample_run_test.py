"""`minigpt sample` over a run: a checkpoint continues a prompt, to stdout and a file."""

import io

import jax
import numpy as np
import pytest

from minigpt_jax import checkpoint, data, sample, sample_run
from minigpt_jax import workdir as workdir_lib
from minigpt_jax.errors import UsageError


@pytest.fixture
def workdir(tiny_run):
    return tiny_run[0]


def test_samples_stream_to_stdout_and_the_file_alike(workdir, tmp_path):
    stdout, out = io.StringIO(), tmp_path / "s.txt"
    kw = dict(seed=3, max_new_tokens=20, top_k=5, num_samples=2)
    sample_run.sample_run(workdir, "O God", out=out, stdout=stdout, **kw)
    text = stdout.getvalue()
    assert out.read_text() == text
    head, body = text.split("\n", 1)
    assert (
        head == f"# {workdir} step 8 (--step latest): seed 3, temperature 1.0, top_k 5, "
        "top_p 1.0, max_new_tokens 20, window chunked, num_samples 2"
    )
    samples = body.split("\n---------------\n")
    assert len(samples) == 3 and samples[2] == ""  # two samples, each closed by dashes
    assert all(s.startswith("O God") and len(s) == len("O God") + 20 for s in samples[:2])
    again = io.StringIO()
    sample_run.sample_run(workdir, "O God", stdout=again, **kw)
    assert again.getvalue() == text  # the seed fixes the samples


@pytest.mark.parametrize("spec", ["4", "best", "latest"])
def test_the_step_flag_picks_the_checkpoint_and_the_batch_equals_one_row_draws(
    workdir, spec, monkeypatch
):
    _, meta, cfg = workdir_lib.read_run(workdir)
    ckpt = checkpoint.Checkpointer(workdir, create=False)
    try:
        expected = checkpoint.resolve_step(ckpt, spec)
    finally:
        ckpt.close()
    calls = []
    stream = sample.stream
    monkeypatch.setattr(sample, "stream", lambda *a, **kw: calls.append(kw) or stream(*a, **kw))
    stdout = io.StringIO()
    kw = dict(max_new_tokens=40, top_k=6)  # 40 > block_size 8: past the window too
    saved = sample_run.sample_run(workdir, "ab", step=spec, seed=5, num_samples=3, stdout=stdout,
                                  **kw)  # fmt: skip
    assert saved == expected and f"step {expected}" in stdout.getvalue().splitlines()[0]
    assert len(calls) == 1 and calls[0]["num_samples"] == 3  # one batched call
    rows = stdout.getvalue().split("\n", 1)[1].split(sample_run.SEPARATOR)[:3]
    # Row j, drawn alone from the same seed and step, is the same text.
    _, params = checkpoint.load_params(workdir, cfg, str(expected))
    tok = data.CharTokenizer.from_json(meta)
    for j, row in enumerate(rows):
        alone = np.concatenate(list(stream(
            params, cfg, tok.encode("ab"), jax.random.key(5), num_samples=1, first_sample=j, **kw
        )), 1)  # fmt: skip
        assert row == "ab" + tok.decode(alone[0])
    assert len(set(rows)) == 3  # the rows draw independently


def test_steps_that_were_not_saved_are_refused_naming_the_saved_ones(workdir):
    with pytest.raises(UsageError, match=r"saved steps \[4, 8\]"):
        sample_run.sample_run(workdir, "O", step="5", stdout=io.StringIO())


@pytest.mark.parametrize(
    "prompt, kw, message",
    [
        ("", {}, "prompt is empty"),
        ("O", {"top_p": 0.0}, "top_p"),
        ("O", {"temperature": -1.0}, "temperature"),
        ("O", {"temperature": float("nan")}, "temperature"),
        ("O", {"temperature": float("inf")}, "temperature"),
        ("O", {"seed": 1180591620717411303424}, r"--seed must be an integer in \[0, 2\*\*32\)"),
        ("O", {"window": "sliding"}, "window"),
        ("Ø", {}, "'Ø'"),
    ],
)
def test_bad_prompts_and_settings_are_usage_errors(workdir, prompt, kw, message):
    with pytest.raises(UsageError, match=message):
        sample_run.sample_run(workdir, prompt, stdout=io.StringIO(), **kw)


def test_a_folder_that_is_not_a_run_says_so(tmp_path):
    with pytest.raises(UsageError, match="config.json not found"):
        sample_run.sample_run(tmp_path, "O", stdout=io.StringIO())
