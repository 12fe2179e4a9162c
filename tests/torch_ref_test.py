"""Parity with the PyTorch reference: same weights -> same logits and gradients; same weights and
batches -> the same training losses through AdamW, clipping, accumulation and every schedule."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from conftest import TINY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ml_collections import config_dict

from minigpt_jax import compare, config, convert, data, optimizer, sharding
from minigpt_jax import run as run_lib
from minigpt_jax.model import ModelConfig, abstract_params, init_params, make_model

torch = pytest.importorskip("torch")
from minigpt_jax import torch_ref  # noqa: E402  (needs torch)

# Tiny models gain nothing from threads, and on a shared CPU torch's OpenMP threads can wait on
# each other for seconds per step.
torch.set_num_threads(1)


def _opt(**kw):
    c = dict(schedule="nanogpt", lr=1e-2, min_lr=1e-3, warmup_iters=5, lr_decay_iters=20,
             warmup_tokens=0, final_tokens=0, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.1,
             decay_mask="ndim", grad_clip=1.0)  # fmt: skip
    return config_dict.ConfigDict({**c, **kw})


def _perturbed(params, seed=0):
    """Random values everywhere (biases and LayerNorm scales too), so no name can hide."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda p: np.asarray(p + 0.1 * rng.standard_normal(p.shape), np.float32), params
    )


def _torch_model(cfg, params):
    model = torch_ref.make_model(cfg)
    model.load_state_dict(torch_ref.tensors(convert.to_state_dict(params, cfg)))
    return model


@st.composite
def model_configs(draw):
    bias = st.sampled_from([None, True, False])
    tie = draw(st.booleans())
    head = draw(st.integers(1, 2))
    return ModelConfig(
        vocab_size=draw(st.integers(3, 17)), block_size=draw(st.integers(2, 9)),
        n_layer=draw(st.integers(1, 2)), n_head=head, n_embd=head * draw(st.sampled_from([4, 8])),
        bias=draw(st.booleans()), bias_qkv=draw(bias), bias_attn_proj=draw(bias),
        bias_mlp=draw(bias), bias_ln=draw(bias), tie_embeddings=tie,
        bias_head=False if tie else draw(st.booleans()),
        activation=draw(st.sampled_from(["gelu", "gelu_tanh", "relu"])),
        ln_eps=draw(st.sampled_from([1e-5, 1e-3])),
        arch=draw(st.sampled_from(["gpt"] * 4 + ["bigram"])),
    )  # fmt: skip


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=model_configs(), seed=st.integers(0, 2**16))
def test_same_weights_same_logits_and_round_trip(cfg, seed):
    # Random params from the tree's shapes alone: no init to compile, one jit of the forward.
    rng = np.random.default_rng(seed)
    params = jax.tree.map(
        lambda a: (0.3 * rng.standard_normal(a.shape)).astype(np.float32),
        convert.abstract_params(cfg),
    )
    x_BxT = rng.integers(0, cfg.vocab_size, (3, cfg.block_size))
    model = make_model(cfg)
    ours = np.asarray(jax.jit(model.apply)({"params": params}, x_BxT))
    with torch.no_grad():
        theirs = _torch_model(cfg, params)(torch.from_numpy(x_BxT)).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    back = convert.from_state_dict(convert.to_state_dict(params, cfg), cfg)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
        np.testing.assert_array_equal(a, b)


def _stream(vocab: int, n: int = 4000) -> np.ndarray:
    """A learnable token stream: a fixed pattern with 10% noise, so the loss falls fast."""
    rng = np.random.default_rng(1)
    pattern = rng.integers(0, vocab, 37)
    tokens = pattern[np.arange(n) % 37]
    noise = rng.random(n) < 0.1
    tokens[noise] = rng.integers(0, vocab, noise.sum())
    return tokens.astype(np.uint16)


def _run(cfg: ModelConfig, opt, accum: int) -> run_lib.Run:
    """The run builder's Run for a model and an opt section, batch 4, on one device."""
    c = config.base_config()
    c.model.update({k: v for k, v in dataclasses.asdict(cfg).items() if k != "vocab_size"})
    c.opt.update(opt)
    c.train.update(batch_size=4, grad_accum=accum, seed=3)
    return run_lib.build(c, cfg.vocab_size, mesh=sharding.one_device_mesh())


def _params(cfg: ModelConfig, seed: int):
    return jax.device_get(nn.unbox(init_params(cfg, jax.random.key(seed))))


def _train_both(cfg, opt, *, accum=1, steps=20, torch_opt=None):
    batches = data.Batches(_stream(cfg.vocab_size), batch_size=4, block_size=cfg.block_size, seed=7)
    tokens = 4 * cfg.block_size * accum
    ours = compare.JaxTrainer(_run(cfg, opt, accum))
    params = jax.device_get(ours.params)
    theirs = torch_ref.Trainer(cfg, torch_opt or opt, tokens_per_step=tokens,
                               state_dict=convert.to_state_dict(params, cfg))  # fmt: skip
    losses = []
    for step in range(steps):
        micro = [batches.batch(step * accum + m) for m in range(accum)]
        losses.append((ours.train_step(micro), theirs.train_step(micro)))
    return np.array(losses)


CASES = {
    "nanogpt": (TINY, _opt(grad_clip=0.3), 1),  # a low clip: most steps are clipped
    "mingpt": (
        dataclasses.replace(TINY, bias=True, tie_embeddings=False, activation="gelu_tanh"),
        _opt(schedule="mingpt", decay_mask="linear", warmup_tokens=256, final_tokens=2048),
        2,
    ),
    "lecture": (
        dataclasses.replace(
            TINY,
            bias_ln=False,
            bias_qkv=True,
            tie_embeddings=False,
            bias_head=True,
            activation="relu",
            init="normal",
            wpe_init="zeros",
        ),
        _opt(schedule="warmup_cosine", decay_mask="all", grad_clip=0.0, weight_decay=0.5),
        1,
    ),  # fmt: skip
    "bigram": (dataclasses.replace(TINY, arch="bigram"), _opt(schedule="constant", lr=0.1), 1),
}


@pytest.mark.parametrize("case", CASES)
def test_first_20_training_losses_agree(case):
    cfg, opt, accum = CASES[case]
    losses = _train_both(cfg, opt, accum=accum)
    assert np.abs(losses[:, 0] - losses[:, 1]).max() < 1e-4
    assert losses[-1, 0] < losses[0, 0] - 0.1  # it learns, so the optimizer matters


def test_the_loss_comparison_can_tell_a_wrong_schedule():
    cfg, opt, _ = CASES["nanogpt"]
    wrong = _opt(grad_clip=0.3, schedule="warmup_cosine")  # lr*it/W: step 0 at lr 0
    losses = _train_both(cfg, opt, steps=4, torch_opt=wrong)
    assert np.abs(losses[:, 0] - losses[:, 1]).max() > 1e-4


@pytest.mark.parametrize("case", ["nanogpt", "lecture"])
def test_one_step_gradients_agree(case):
    cfg = CASES[case][0]
    model, params = make_model(cfg), _perturbed(_params(cfg, 5), 5)
    x_BxT, y_BxT = data.Batches(_stream(cfg.vocab_size), batch_size=4,
                                block_size=cfg.block_size, seed=0).batch(0)  # fmt: skip

    def loss(p):
        logits = model.apply({"params": p}, x_BxT)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y_BxT).mean()

    ours = jax.jit(jax.grad(loss))(params)
    tm = _torch_model(cfg, params)
    logits = tm(torch.from_numpy(x_BxT.astype(np.int64)))
    torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), torch.from_numpy(y_BxT.astype(np.int64)).flatten()
    ).backward()
    grads = {n: p.grad.numpy() for n, p in tm.named_parameters()}
    if cfg.tie_embeddings:  # one tensor, one gradient: under wte's name
        grads["lm_head.weight"] = grads["transformer.wte.weight"]
    expected = convert.to_state_dict(ours, cfg)
    assert expected.keys() == grads.keys()
    for name, g in expected.items():
        np.testing.assert_allclose(grads[name], g, atol=1e-6, rtol=1e-4, err_msg=name)


@pytest.mark.parametrize("schedule", optimizer.SCHEDULES)
def test_torch_lr_formula_agrees_with_optimizer_py(schedule):
    opt = _opt(schedule=schedule, warmup_iters=10, lr_decay_iters=50, warmup_tokens=640,
               final_tokens=3200)  # fmt: skip
    ours = optimizer.make_schedule(opt, tokens_per_step=64)
    for it in [0, 1, 5, 9, 10, 11, 30, 49, 50, 51, 80]:
        assert torch_ref.lr_at(opt, it, 64) == pytest.approx(float(ours(it)), rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("mask", optimizer.DECAY_MASKS)
@pytest.mark.parametrize(
    "cfg",
    [TINY, dataclasses.replace(TINY, bias=True, tie_embeddings=False, bias_head=True),
     dataclasses.replace(TINY, arch="bigram")],
    ids=["tied", "untied-biases", "bigram"],
)  # fmt: skip
def test_torch_decay_groups_agree_with_optimizer_masks(cfg, mask):
    params = nn.unbox(abstract_params(cfg))
    flags = optimizer.decay_mask(mask)(params)
    ours = {convert.torch_name(path, cfg.arch): bool(f) for path, f in convert._paths(flags)}
    decay, no_decay = torch_ref.decay_groups(torch_ref.make_model(cfg), mask)
    assert {n: True for n in decay} | {n: False for n in no_decay} == ours


def test_torch_init_follows_the_init_switches():
    big = ModelConfig(vocab_size=50, block_size=64, n_layer=8, n_head=4, n_embd=128)
    sd = torch_ref.make_model(big).state_dict()
    assert sd["transformer.h.0.mlp.c_fc.weight"].std().item() == pytest.approx(0.02, rel=0.05)
    assert sd["transformer.h.0.mlp.c_proj.weight"].std().item() == pytest.approx(0.02 / 4, rel=0.05)
    sd = torch_ref.make_model(
        dataclasses.replace(big, init="normal", wpe_init="zeros")
    ).state_dict()
    assert sd["transformer.h.0.attn.c_proj.weight"].std().item() == pytest.approx(0.02, rel=0.05)
    assert not sd["transformer.wpe.weight"].any()
    assert sd["lm_head.weight"].data_ptr() == sd["transformer.wte.weight"].data_ptr()  # tied


def test_generate_is_nanogpts_loop():
    cfg = TINY
    model = _torch_model(cfg, _perturbed(_params(cfg, 0)))
    idx = torch.zeros((2, 1), dtype=torch.long)
    out = torch_ref.generate(model, idx, 20, top_k=3, generator=torch.Generator().manual_seed(0))
    again = torch_ref.generate(model, idx, 20, top_k=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 21) and torch.equal(out, again)  # past block_size 8: cropped
    greedy = torch_ref.generate(model, idx[:1], 3, top_k=1)
    with torch.no_grad():
        first = model(idx[:1])[0, -1].argmax().item()
    assert greedy[0, 1].item() == first
