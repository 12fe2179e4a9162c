"""The generated test corpus: Tiny Shakespeare's vocabulary, deterministic, any length."""

import pytest
from corpus import PROLOGUE, VOCAB, make_text

from minigpt_jax import data


def test_text_has_exactly_tiny_shakespeares_65_characters():
    assert len(VOCAB) == 65
    for n in (len(PROLOGUE), 5_000, 200_000):
        text = make_text(n)
        assert len(text) == n and "".join(sorted(set(text))) == VOCAB
    tok = data.CharTokenizer.from_text(make_text(5_000))
    assert tok.decode(tok.encode("O God, O God!")) == "O God, O God!"
    with pytest.raises(ValueError, match="at least"):
        make_text(len(PROLOGUE) - 1)


def test_same_seed_same_text_and_the_rare_characters_recur():
    text = make_text(200_000, seed=0)
    assert make_text(200_000, seed=0) == text != make_text(200_000, seed=1)
    assert make_text(50_000, seed=0) == text[:50_000]  # longer texts extend shorter ones
    body = text[len(PROLOGUE) :]  # not only in the opening that guarantees them
    assert all(body.count(ch) >= 10 for ch in "$&3QXZqxzj")
