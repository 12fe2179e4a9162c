"""Parity of training with nanoGPT's loop in PyTorch: the same weights and batches give the same
losses through AdamW, clipping, accumulation and every schedule, and through Muon + AdamW against
torch.optim.Muon; the same gradients per step."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from conftest import TINY

from minigpt_jax import compare, config, convert, data, muon, optimizer, sharding
from minigpt_jax import run as run_lib
from minigpt_jax.model import ModelConfig, abstract_params, make_model

torch = pytest.importorskip("torch")
from minigpt_jax import torch_ref  # noqa: E402  (needs torch)

# Tiny models gain nothing from threads, and on a shared CPU torch's OpenMP threads can wait on
# each other for seconds per step.
torch.set_num_threads(1)


from torch_ref_test import _opt, _params, _perturbed, _torch_model  # noqa: E402

from minigpt_jax import torch_train  # noqa: E402  (needs torch)


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


def _train_both(cfg, opt, *, accum=1, steps=20, torch_opt=None):
    batches = data.Batches(_stream(cfg.vocab_size), batch_size=4, block_size=cfg.block_size, seed=7)
    tokens = 4 * cfg.block_size * accum
    ours = compare.JaxTrainer(_run(cfg, opt, accum))
    params = jax.device_get(ours.params)
    theirs = torch_train.Trainer(cfg, torch_opt or opt, tokens_per_step=tokens,
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
        assert torch_train.lr_at(opt, it, 64) == pytest.approx(float(ours(it)), rel=1e-5, abs=1e-9)


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
    decay, no_decay = torch_train.decay_groups(torch_ref.make_model(cfg), mask)
    assert {n: True for n in decay} | {n: False for n in no_decay} == ours


MUON_MODEL = dataclasses.replace(TINY, bias=True, tie_embeddings=False, bias_head=True)


def _muon_opt(ns_dtype: str, **kw):
    """Muon on the blocks' kernels, nanoGPT's AdamW on the rest (an untied head with a bias:
    both stay with AdamW), most steps clipped, Muon's weight decay on."""
    o = _opt(grad_clip=0.3, **kw)
    o.update(dict(optimizer="muon", muon_lr=0.02, muon_momentum=0.95, muon_nesterov=True,
                  muon_weight_decay=0.1, muon_ns_steps=5, muon_ns_dtype=ns_dtype))  # fmt: skip
    return o


def test_muon_first_20_losses_agree_with_torch_muon():
    """JAX Muon + AdamW against torch.optim.Muon + torch AdamW, same weights and batches, grad
    accumulation 2: within 1e-4 over 20 steps (measured: 3.6e-7).

    One detail is aligned rather than matched: torch's Muon always runs Newton-Schulz in
    bfloat16 (`grad.bfloat16()` in _zeropower_via_newtonschulz); here both run it in float32
    (opt.muon_ns_dtype=float32; torch_train swaps in the same function with that one cast
    changed), so the comparison is fp32 against fp32. The bfloat16 path is the next test's.
    """
    losses = _train_both(MUON_MODEL, _muon_opt("float32"), accum=2)
    assert np.abs(losses[:, 0] - losses[:, 1]).max() < 1e-4
    assert losses[-1, 0] < losses[0, 0] - 0.1


def test_muon_in_bfloat16_against_torch_muon_as_shipped():
    """Unmodified torch.optim.Muon (bfloat16 Newton-Schulz) against ours in bfloat16: within
    2e-3 over 20 steps (measured: 5.4e-4; Muon against AdamW parts by up to 3.9e-2), not 1e-4. Our
    bfloat16 iteration is torch's bit for bit on the same input (next test); what differs is the
    input: XLA's and torch's float32 gradients differ by ~1e-7, which flips the bfloat16
    rounding of a few entries, and each flip moves that entry of the update by up to a bfloat16
    ulp (2**-8 relative), then the next steps carry it on."""
    losses = _train_both(MUON_MODEL, _muon_opt("bfloat16"), accum=2)
    assert np.abs(losses[:, 0] - losses[:, 1]).max() < 2e-3
    assert losses[-1, 0] < losses[0, 0] - 0.1


@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (16, 16), (64, 16)])
def test_newton_schulz_in_bfloat16_is_torchs_bit_for_bit(shape):
    from torch.optim._muon import _zeropower_via_newtonschulz

    g = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    theirs = _zeropower_via_newtonschulz(torch.from_numpy(g), muon.NS_COEFFS, 5, muon.NS_EPS)
    ours = muon.newton_schulz(jax.numpy.asarray(g), steps=5, dtype="bfloat16")
    np.testing.assert_array_equal(np.asarray(ours, np.float32), theirs.float().numpy())


def test_the_loss_comparison_can_tell_muon_from_adamw():
    """Muon here, AdamW there: the losses part, so the parity above needs Muon on both sides."""
    adamw = _opt(grad_clip=0.3)
    losses = _train_both(MUON_MODEL, _muon_opt("float32"), accum=2, steps=6, torch_opt=adamw)
    assert np.abs(losses[:, 0] - losses[:, 1]).max() > 1e-3


@pytest.mark.parametrize(
    "cfg", [TINY, MUON_MODEL, dataclasses.replace(TINY, arch="bigram")],
    ids=["tied", "untied-biases", "bigram"],
)  # fmt: skip
def test_torch_muon_params_agree_with_muon_labels(cfg):
    flat = convert._paths(muon.labels(nn.unbox(abstract_params(cfg))))
    ours = sorted(convert.torch_name(path, cfg.arch) for path, v in flat if v == "muon")
    assert torch_train.muon_names(torch_ref.make_model(cfg)) == ours
    assert len(ours) == (0 if cfg.arch == "bigram" else 4 * cfg.n_layer)
