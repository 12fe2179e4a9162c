"""`minigpt sample`: a run's checkpoint (best | latest | N) continues a prompt. The samples are
drawn as one batch; the first streams to the terminal as it is made, and --out gets the same
text. The sampler itself (sample.py) knows nothing of runs."""

from __future__ import annotations

import pathlib
import sys
from typing import TextIO

import jax

from minigpt_jax import checkpoint, data, files, sample
from minigpt_jax import lock as lock_lib
from minigpt_jax import workdir as workdir_lib
from minigpt_jax.errors import UsageError

SEPARATOR = "\n---------------\n"  # after each sample, as nanoGPT's sample.py prints


def header(workdir: str | pathlib.Path, step: int, spec: str, **settings: object) -> str:
    """The line above the samples: which checkpoint and which settings drew them."""
    named = "" if spec == str(step) else f" (--step {spec})"
    listed = ", ".join(f"{k} {v}" for k, v in settings.items())
    return f"# {workdir} step {step}{named}: {listed}\n"


def sample_run(
    workdir: str | pathlib.Path,
    prompt: str,
    *,
    step: str = "latest",
    seed: int = 0,
    max_new_tokens: int = 500,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    num_samples: int = 1,
    window: str = "chunked",
    out: pathlib.Path | None = None,
    stdout: TextIO | None = None,
) -> int:
    """`minigpt sample`: the checkpoint `step` names continues `prompt`; returns its step.

    The num_samples rows are one batched sampler call; row j draws with fold_in(key(seed), j),
    so it equals sample.stream(..., num_samples=1, first_sample=j) alone. Printed: a header
    line, then each sample followed by a line of dashes; the first streams as it is made, the
    others (made alongside it) follow when it ends. `out` gets the same text, written whole.
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
    saved, params = checkpoint.load_params(
        workdir, cfg, step, set_aside=not lock_lib.in_use(workdir),
        log=lambda line: print(line, file=sys.stderr),
    )  # fmt: skip
    # On stderr: past block_size only 'exact' is nanoGPT's crop, token for token.
    other = "exact: nanoGPT's crop" if window == "chunked" else "chunked: faster"
    print(f"window {window} past block_size {cfg.block_size} (--window {other})", file=sys.stderr)
    settings = dict(
        seed=seed, temperature=temperature, top_k=top_k, top_p=top_p,
        max_new_tokens=max_new_tokens, window=window, num_samples=num_samples,
    )  # fmt: skip
    sink = stdout or sys.stdout  # looked up now: tests and callers swap sys.stdout
    written: list[str] = []

    def write(text: str) -> None:
        sink.write(text)
        sink.flush()
        written.append(text)

    write(header(workdir, saved, step, **settings))
    write(prompt)
    rows: list[list[str]] = [[prompt] for _ in range(num_samples)]
    for tokens_NxK in sample.stream(
        params, cfg, ids, jax.random.key(seed), max_new_tokens=max_new_tokens,
        temperature=temperature, top_k=top_k, top_p=top_p, window=window,
        num_samples=num_samples,
    ):  # fmt: skip
        new = [tokenizer.decode(row) for row in tokens_NxK]
        write(new[0])
        for row, text in zip(rows, new, strict=True):
            row.append(text)
    write(SEPARATOR)
    for row in rows[1:]:
        write("".join(row) + SEPARATOR)
    if out is not None:
        try:
            files.atomic_write_bytes(out, "".join(written).encode("utf-8"))
        except OSError as e:
            raise UsageError(f"cannot write --out {out}: {e.strerror}") from None
    return saved
