"""`minigpt eval --per_token OUT.html`: the val text coloured by each character's loss, the way
researchers look at what a model has and has not learned (Levanter shows its LMs' text so).

Pure rendering: text and losses in, one HTML page out; the losses come from evaluate.py.
"""

from __future__ import annotations

import html
import math

import numpy as np

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
#text {{ font-family: monospace; white-space: pre-wrap; line-height: 1.5; }}
#text span[title] {{ cursor: default; }}
.key {{ display: inline-block; width: 2.5em; text-align: center; font-family: monospace; }}
</style></head>
<body>
<h3>{title}</h3>
<p>{summary}. Each character's background is its loss (the model's surprise at it, given the
characters before it in its window): white 0 nats, full red {scale:.2f} nats (ln vocab, a
uniform guess) or more. Hover a character for its loss and probability.</p>
<p>{legend}</p>
<div id="text">{spans}</div>
</body></html>
"""


def colour(loss: float, scale: float) -> str:
    """White at loss 0, red at `scale` and beyond: the share of red says how surprised."""
    x = min(max(loss / scale, 0.0), 1.0)
    fade = round(255 * (1 - x))
    return f"rgb(255,{fade},{fade})"


def span(char: str, loss: float | None, scale: float) -> str:
    """One character's span; loss None: the first character, which nothing predicts."""
    text = html.escape(char)
    if loss is None:
        return f'<span title="no prediction: the first character">{text}</span>'
    title = f"loss {loss:.3f} nats, p {math.exp(-loss):.3f}"
    return f'<span style="background:{colour(loss, scale)}" title="{title}">{text}</span>'


def render(text: str, losses: np.ndarray, *, title: str, vocab_size: int) -> str:
    """The page: text[0] unscored, then text[i] coloured by losses[i - 1] (its prediction)."""
    if len(losses) != len(text) - 1:
        raise ValueError(f"{len(text)} characters need {len(text) - 1} losses, got {len(losses)}")
    scale = math.log(vocab_size)
    spans = [span(text[0], None, scale)]
    spans += [span(c, float(loss), scale) for c, loss in zip(text[1:], losses, strict=True)]
    mean = float(np.mean(losses)) if len(losses) else float("nan")
    bits = mean / math.log(2)
    summary = f"{len(losses):,} predictions, mean loss {mean:.4f} nats ({bits:.4f} bits/char)"
    legend = "".join(
        f'<span class="key" style="background:{colour(v, scale)}">{v:.1f}</span>'
        for v in np.linspace(0, scale, 6)
    )
    return PAGE.format(
        title=html.escape(title), summary=summary, scale=scale, legend=legend,
        spans="".join(spans),
    )  # fmt: skip
