import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SWITCHES, TINY, init_params, one_line_error

from minigpt_jax import sample

W = TINY.block_size
VARIANTS = {
    "tiny": TINY,
    "bias_untied": dataclasses.replace(TINY, bias=True, tie_embeddings=False),
    "bigram": dataclasses.replace(TINY, arch="bigram"),
}
# The modern switches (conftest.py), each alone and all together.
SWITCHES = {**SWITCHES, "modern": {k: v for c in SWITCHES.values() for k, v in c.items()}}
VARIANTS |= {name: dataclasses.replace(TINY, **change) for name, change in SWITCHES.items()}


def _reference(model, params, prompt, new_tokens, window):
    """Uncached logits for every new token, from the context nanoGPT (or chunked) would use.

    exact: the last block_size tokens. chunked: when the window is full, keep the last
    block_size // 2 tokens (the new one included) and grow again. Each context is padded to
    block_size and all go through one forward: the model is causal, so a context's last logits
    do not see the padding (one compile, not one per context length and op).
    """
    ctx, rows, last = list(prompt[-W:]), [], []
    for tok in new_tokens:
        rows.append(ctx + [0] * (W - len(ctx)))
        last.append(len(ctx) - 1)
        if len(ctx) == W:
            ctx = ctx[1:] if window == "exact" else ctx[len(ctx) - W // 2 + 1 :]
        ctx.append(int(tok))
    logits_NxWxV = jax.jit(model.apply)({"params": params}, jnp.asarray(rows, jnp.int32))
    return np.asarray(logits_NxWxV)[np.arange(len(rows)), last]


@pytest.mark.parametrize(
    "window, variant, prompt_len",
    [
        ("exact", "tiny", 3),
        ("exact", "tiny", W + 3),  # a prompt longer than the window is cropped first
        ("chunked", "tiny", 3),
        ("chunked", "tiny", W + 3),
        ("chunked", "bias_untied", 1),
        ("exact", "bigram", 2),
        # chunked from a short prompt runs every path: prefill, cached steps, refills
        *(("chunked", name, 3) for name in SWITCHES),
        ("exact", "modern", 3),
        ("chunked", "modern", W + 3),
    ],
)
def test_cached_sampling_equals_uncached_reference(window, variant, prompt_len):
    """Every step's logits equal an uncached forward over the same context; tokens follow."""
    cfg = VARIANTS[variant]
    model, params = init_params(cfg)
    if variant in SWITCHES:  # sharper attention than init's, so a wrong position shows
        params = jax.tree.map(lambda p: 4 * p, params)
    prompt = np.arange(prompt_len) % cfg.vocab_size
    n_new, rng = 3 * W + 1, jax.random.key(0)
    out, logits = sample.generate(
        params, cfg, prompt, rng, max_new_tokens=n_new, window=window, return_logits=True
    )
    assert out.shape == (1, prompt_len + n_new) and logits.shape == (1, n_new, cfg.vocab_size)
    np.testing.assert_array_equal(out[0, :prompt_len], prompt)
    new = out[0, prompt_len:]
    ref = _reference(model, params, prompt, new, window)
    np.testing.assert_allclose(logits[0], ref, atol=1e-5, rtol=0)
    # Each token is the draw its documented key makes from the reference logits.
    keys = [jax.random.fold_in(jax.random.fold_in(rng, 0), i) for i in range(n_new)]
    drawn = [int(jax.random.categorical(k, jnp.asarray(lg))) for k, lg in zip(keys, ref)]
    np.testing.assert_array_equal(new, drawn)


def test_exact_window_differs_from_chunked_past_block_size(tiny):
    cfg, _, params = tiny
    kw = dict(max_new_tokens=3 * W + 1, return_logits=True)  # the programs of the test above
    _, exact = sample.generate(params, cfg, [1, 2], jax.random.key(0), window="exact", **kw)
    _, chunked = sample.generate(params, cfg, [1, 2], jax.random.key(0), window="chunked", **kw)
    first_past = W - 1  # new token W - 1 is the first whose context would exceed W tokens
    np.testing.assert_array_equal(exact[:, :first_past], chunked[:, :first_past])
    assert not np.allclose(exact[:, first_past], chunked[:, first_past])


@pytest.mark.parametrize("window", ["chunked", "exact"])
def test_a_batch_of_prompts_samples_as_each_prompt_alone(tiny, window):
    cfg, _, params = tiny
    prompts = [np.array([5]), np.array([1, 2, 3, 4, 5]), np.arange(W + 3) % cfg.vocab_size]
    kw = dict(max_new_tokens=2 * W, num_samples=2, top_k=6, window=window, return_logits=True)
    batch, batch_logits = sample.generate(params, cfg, prompts, jax.random.key(3), **kw)
    for i, p in enumerate(prompts):
        alone, alone_logits = sample.generate(params, cfg, p, jax.random.key(3), **kw)
        np.testing.assert_array_equal(batch[i], alone)
        np.testing.assert_allclose(batch_logits[2 * i : 2 * i + 2], alone_logits, atol=1e-5)
    assert not np.array_equal(batch[0][0], batch[0][1])  # the two samples draw independently


def test_sampling_is_seeded_and_streams_like_one_call(tiny):
    cfg, _, params = tiny
    prompt = np.array([3], np.int32)
    kw = dict(max_new_tokens=20, temperature=1.0, num_samples=3, top_p=0.9)
    a = sample.generate(params, cfg, prompt, jax.random.key(1), **kw)
    b = sample.generate(params, cfg, prompt, jax.random.key(1), **kw)
    c = sample.generate(params, cfg, prompt, jax.random.key(2), **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len({tuple(row) for row in a}) > 1  # rows draw independently
    chunks = list(sample.stream(params, cfg, prompt, jax.random.key(1), chunk=6, **kw))
    assert [ch.shape for ch in chunks] == [(3, 6)] * 3 + [(3, 2)]
    np.testing.assert_array_equal(np.concatenate(chunks, 1), a[:, 1:])
    one = dict(kw, num_samples=1)
    second = sample.stream(params, cfg, prompt, jax.random.key(1), first_sample=1, **one)
    np.testing.assert_array_equal(np.concatenate(list(second), 1)[0], a[1, 1:])


def test_new_prompt_lengths_and_lengths_do_not_recompile():
    cfg = dataclasses.replace(TINY, vocab_size=13, block_size=64)  # this test's own programs
    _, params = init_params(cfg)
    events = []

    def listen(event, duration, **kw):
        if event.startswith("/jax/core/compile/"):
            events.append((event, kw.get("fun_name")))

    def run(prompt_len, n_new, **kw):
        prompt = np.arange(prompt_len) % cfg.vocab_size
        out = sample.generate(params, cfg, prompt, jax.random.key(0), max_new_tokens=n_new, **kw)
        assert out.shape == (1, prompt_len + n_new)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        run(3, 10)  # compiles the 16-token prompt bucket and the 16-step scan
        assert {name for _, name in events} >= {"prefill", "decode"}
        events.clear()
        for prompt_len, n_new in [(1, 16), (7, 5), (16, 1), (12, 9)]:
            run(prompt_len, n_new)
        run(5, 12, temperature=0.5, top_k=3, top_p=0.8)
        run(9, 3, temperature=0.0)
        assert events == []
        run(40, 10)  # a new prompt bucket: the prefill compiles, the scan does not
        assert {name for _, name in events} == {"prefill", "jit(prefill)"}
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def test_bad_arguments_raise_value_errors(tiny):
    cfg, _, params = tiny
    rng = jax.random.key(0)
    for prompt, kw, match in [
        ([], {}, "non-empty"),
        ([1, cfg.vocab_size], {}, "token ids"),
        ([1], {"window": "sliding"}, "window"),
        ([1], {"top_p": 0.0}, "top_p"),
        ([1], {"top_k": 0}, "top_k"),
        ([1], {"temperature": -1.0}, "temperature"),
        ([1], {"temperature": float("nan")}, "temperature must be a finite number"),
        ([1], {"temperature": float("inf")}, "temperature must be a finite number"),
        ([1], {"top_p": float("nan")}, "top_p"),
    ]:
        with pytest.raises(ValueError, match=match):
            sample.generate(params, cfg, prompt, rng, max_new_tokens=3, **kw)
    out = sample.generate(params, cfg, [4, 2], rng, max_new_tokens=0)
    np.testing.assert_array_equal(out, [[4, 2]])


def test_a_seed_is_what_a_jax_key_holds_without_aliasing():
    """jax.random.key keeps a seed's low 32 bits (x64 off): 2**32 would draw what 0 draws."""
    for seed in (0, 2**32 - 1):
        sample.check_seed(seed)
    for seed in (-1, 2**32, 1180591620717411303424, 1.5, True):
        with pytest.raises(ValueError, match=r"an integer in \[0, 2\*\*32\)"):
            sample.check_seed(seed)


@pytest.mark.parametrize(
    "args, message",
    [
        (["sample", "--workdir", "w", "--window", "sliding"], "chunked|exact"),
        (["sample", "--workdir", "w", "--out", "nodir/x.txt"], "nodir"),
        (["sample", "--workdir", "w", "--out", "."], "is a directory"),
    ],
)
def test_bad_sample_flags_give_one_line_and_exit_2(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert message in one_line_error(args, capsys)
