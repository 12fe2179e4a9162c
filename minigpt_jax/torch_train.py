"""nanoGPT's training loop in PyTorch, for the parity tests and `minigpt compare`.

The trainer follows nanoGPT's train.py: its AdamW parameter groups (the decay mask of our
opt.decay_mask, decided here from the torch modules, independently of optimizer.py), the lr set
on every group before each step from a plain-Python schedule (lr_at, tested against
optimizer.make_schedule), loss / grad_accum per micro-step, clip_grad_norm_, then step.
clip_grad_norm_ divides by norm + 1e-6 where optax divides by the norm: a relative difference of
1e-6 / norm in clipped steps.

opt.optimizer=muon: torch.optim.Muon for the 2-D weights inside transformer.h (attention and
MLP), at opt.muon_lr on opt.schedule's shape (min_lr scaled alike), and the AdamW groups above
for the rest. torch's Muon iterates Newton-Schulz in bfloat16, always; opt.muon_ns_dtype=float32
swaps in the same function with float32 for the duration of a step (fp32 parity tests).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minigpt_jax.model_config import ModelConfig
from minigpt_jax.torch_ref import int_tensor, make_model, tensors


def decay_groups(model: nn.Module, mask: str) -> tuple[list[str], list[str]]:
    """(decayed, not decayed) parameter names, each tensor once (a tied head under wte's name).

    'ndim': every tensor with dim >= 2, embeddings included (nanoGPT's configure_optimizers).
    'linear': the weights of nn.Linear modules that are not also an embedding (minGPT).
    'all': every parameter (torch.optim.AdamW(model.parameters())).
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    linears = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    rules = {
        "ndim": lambda p: p.dim() >= 2,
        "linear": lambda p: id(p) in linears and id(p) not in embeddings,
        "all": lambda p: True,
    }
    if mask not in rules:
        raise ValueError(f"opt.decay_mask must be one of {sorted(rules)}, got {mask!r}")
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # named_parameters yields a shared tensor once
        (decay if rules[mask](p) else no_decay).append(name)
    return decay, no_decay


def muon_names(model: nn.Module) -> list[str]:
    """Muon's parameters: the 2-D weights of the transformer blocks (c_attn, c_proj, c_fc)."""
    return [
        n for n, p in model.named_parameters() if n.startswith("transformer.h.") and p.dim() == 2
    ]


def lr_at(opt: Any, it: int, tokens_per_step: int, *, muon: bool = False) -> float:
    """The lr of optimizer step `it`, in plain Python: nanoGPT's get_lr and its relatives;
    muon=True: the same shape at peak opt.muon_lr, min_lr scaled by muon_lr / lr."""
    lr, min_lr = opt.lr, opt.min_lr
    if muon:
        lr, min_lr = opt.muon_lr, opt.min_lr * opt.muon_lr / opt.lr
    if opt.schedule == "constant":
        return lr
    if opt.schedule in ("nanogpt", "warmup_cosine"):
        if it < opt.warmup_iters:  # nanoGPT's warmup starts at lr/(W+1); the other at 0
            nano = opt.schedule == "nanogpt"
            return lr * (it + nano) / (opt.warmup_iters + nano)
        if it > opt.lr_decay_iters:
            return min_lr
        ratio = (it - opt.warmup_iters) / max(opt.lr_decay_iters - opt.warmup_iters, 1)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)
    if opt.schedule == "mingpt":
        tokens = (it + 1) * tokens_per_step  # minGPT counts the current batch
        if tokens < opt.warmup_tokens:
            return lr * tokens / max(1, opt.warmup_tokens)
        progress = (tokens - opt.warmup_tokens) / max(1, opt.final_tokens - opt.warmup_tokens)
        return lr * max(0.1, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown opt.schedule {opt.schedule!r}")


def _ns_float32(grad, ns_coefficients, ns_steps, eps):
    """torch.optim._muon._zeropower_via_newtonschulz with its bfloat16 cast made float32."""
    a, b, c = ns_coefficients
    ortho_grad = grad.float()
    if grad.size(0) > grad.size(1):
        ortho_grad = ortho_grad.T
    ortho_grad = ortho_grad / ortho_grad.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram_matrix = ortho_grad @ ortho_grad.T
        gram_update = torch.addmm(gram_matrix, gram_matrix, gram_matrix, beta=b, alpha=c)
        ortho_grad = torch.addmm(ortho_grad, gram_update, ortho_grad, beta=a)
    if grad.size(0) > grad.size(1):
        ortho_grad = ortho_grad.T
    return ortho_grad


@contextlib.contextmanager
def _muon_ns(dtype: str) -> Iterator[None]:
    """torch's Muon as it is ('bfloat16'), or with the float32 iteration while inside."""
    if dtype == "bfloat16":
        yield
        return
    module = torch.optim._muon
    original, module._zeropower_via_newtonschulz = module._zeropower_via_newtonschulz, _ns_float32
    try:
        yield
    finally:
        module._zeropower_via_newtonschulz = original


class Trainer:
    """nanoGPT's training loop, one optimizer step per train_step call.

    micro_batches: grad_accum (x_BxT, y_BxT) numpy pairs, the same our train_step stacks.
    """

    def __init__(self, cfg: ModelConfig, opt: Any, *, tokens_per_step: int, state_dict=None):
        self.cfg, self.opt, self.tokens_per_step = cfg, opt, tokens_per_step
        self.model = make_model(cfg)
        if state_dict is not None:  # numpy arrays (convert.to_state_dict) or tensors
            self.model.load_state_dict(tensors(state_dict))
        decay, no_decay = decay_groups(self.model, opt.decay_mask)
        named = dict(self.model.named_parameters())
        self.muon = None
        hidden = muon_names(self.model)  # none in a bigram: then AdamW alone, as optimizer.py
        if opt.get("optimizer", "adamw") == "muon" and hidden:  # opt may predate the field
            decay = [n for n in decay if n not in hidden]
            self.muon = torch.optim.Muon(
                [named[n] for n in hidden],
                lr=lr_at(opt, 0, tokens_per_step, muon=True),
                weight_decay=opt.muon_weight_decay,
                momentum=opt.muon_momentum,
                nesterov=opt.muon_nesterov,
                ns_steps=opt.muon_ns_steps,
            )
        groups = [
            {"params": [named[n] for n in decay], "weight_decay": opt.weight_decay},
            {"params": [named[n] for n in no_decay], "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(
            [g for g in groups if g["params"]],
            lr=lr_at(opt, 0, tokens_per_step),
            betas=(opt.b1, opt.b2),
            eps=opt.eps,
            fused=False,
        )
        self.step = 0
        self.autocast = cfg.dtype != "float32"

    def _logits(self, x_BxT: np.ndarray) -> torch.Tensor:
        dtype = getattr(torch, self.cfg.dtype)
        with torch.autocast("cpu", dtype=dtype, enabled=self.autocast):
            return self.model(int_tensor(x_BxT)).float()

    def train_step(self, micro_batches: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
        """One update; returns the mean loss over the micro-batches."""
        self.model.train()
        lr = lr_at(self.opt, self.step, self.tokens_per_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.muon is not None:
            for group in self.muon.param_groups:
                group["lr"] = lr_at(self.opt, self.step, self.tokens_per_step, muon=True)
        total = 0.0
        for x_BxT, y_BxT in micro_batches:
            logits_BxTxV = self._logits(x_BxT)
            loss = F.cross_entropy(logits_BxTxV.flatten(0, 1), int_tensor(y_BxT).flatten())
            (loss / len(micro_batches)).backward()  # nanoGPT: scale for accumulation
            total += loss.item() / len(micro_batches)
        if self.opt.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.opt.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.muon is not None:
            with _muon_ns(self.opt.muon_ns_dtype):
                self.muon.step()
            self.muon.zero_grad(set_to_none=True)
        self.step += 1
        return total

    @torch.no_grad()
    def loss_sums(self, x_NxBxT: np.ndarray, y_NxBxT: np.ndarray, w_NxBxT: np.ndarray):
        """(weighted loss sum, weight sum) over N batches, as evaluate.make_eval_step."""
        self.model.eval()
        loss_sum = weight = 0.0
        for x_BxT, y_BxT, w_BxT in zip(x_NxBxT, y_NxBxT, w_NxBxT):
            logits_BxTxV = self._logits(x_BxT)
            losses = F.cross_entropy(
                logits_BxTxV.flatten(0, 1), int_tensor(y_BxT).flatten(), reduction="none"
            )
            w = torch.from_numpy(np.asarray(w_BxT, np.float32)).flatten()
            loss_sum += float((losses * w).sum())
            weight += float(w.sum())
        return loss_sum, weight
