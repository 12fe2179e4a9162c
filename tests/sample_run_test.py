"""`minigpt sample` over a run: the latest checkpoint continues a prompt, to stdout and a file."""

import io

import pytest

from minigpt_jax import sample_run
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
    samples = text.split("\n---------------\n")
    assert len(samples) == 3 and samples[2] == ""  # two samples, each closed by dashes
    assert all(s.startswith("O God") and len(s) == len("O God") + 20 for s in samples[:2])
    again = io.StringIO()
    sample_run.sample_run(workdir, "O God", stdout=again, **kw)
    assert again.getvalue() == text  # the seed fixes the samples


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
