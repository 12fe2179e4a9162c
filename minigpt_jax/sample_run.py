"""`minigpt sample`: a run's latest checkpoint continues a prompt, streamed as it is made to
the terminal and, with --out, a file. The sampler itself (sample.py) knows nothing of runs."""

from __future__ import annotations

import contextlib
import pathlib
import sys
from typing import TextIO

import jax

from minigpt_jax import checkpoint, data, sample
from minigpt_jax import lock as lock_lib
from minigpt_jax import workdir as workdir_lib
from minigpt_jax.errors import UsageError


def sample_run(
    workdir: str | pathlib.Path,
    prompt: str,
    *,
    seed: int = 0,
    max_new_tokens: int = 500,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    num_samples: int = 1,
    window: str = "chunked",
    out: pathlib.Path | None = None,
    stdout: TextIO | None = None,
) -> None:
    """`minigpt sample`: the run's latest checkpoint continues `prompt`, streamed as it is made.

    Samples are drawn one after another (each equals its row of a batched generate), each
    followed by a line of dashes; `out` gets the same text.
    """
    if not prompt:
        raise UsageError("the prompt is empty; pass at least one character with --prompt")
    try:
        sample.check_settings(
            temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens,
            num_samples=num_samples, window=window,
        )  # fmt: skip
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        sample.check_seed(seed)
    except ValueError as e:
        raise UsageError(f"--seed {e}") from None
    _, meta, cfg = workdir_lib.read_run(workdir)
    tokenizer = data.CharTokenizer.from_json(meta)
    ids = tokenizer.encode(prompt)  # names any character outside the vocabulary
    step, params = checkpoint.load_params(
        workdir, cfg, "latest", set_aside=not lock_lib.in_use(workdir),
        log=lambda line: print(line, file=sys.stderr),
    )  # fmt: skip
    # On stderr, so the samples on stdout stay pure text: past block_size only 'exact' is
    # nanoGPT's crop, token for token.
    other = "exact: nanoGPT's crop" if window == "chunked" else "chunked: faster"
    print(f"sampling step {step} of {workdir}; window {window} past block_size {cfg.block_size} "
          f"(--window {other})", file=sys.stderr)  # fmt: skip
    sinks = [stdout or sys.stdout]  # looked up now: tests and callers swap sys.stdout
    with contextlib.ExitStack() as stack:
        if out is not None:
            try:
                sinks.append(stack.enter_context(open(out, "w", encoding="utf-8")))
            except OSError as e:
                raise UsageError(f"cannot write --out {out}: {e.strerror}") from None

        def write(text: str) -> None:
            for sink in sinks:
                sink.write(text)
                sink.flush()

        for j in range(num_samples):
            write(prompt)
            for tokens_1xK in sample.stream(
                params, cfg, ids, jax.random.key(seed), max_new_tokens=max_new_tokens,
                temperature=temperature, top_k=top_k, top_p=top_p, window=window,
                first_sample=j,
            ):  # fmt: skip
                write(tokenizer.decode(tokens_1xK[0]))
            write("\n---------------\n")
