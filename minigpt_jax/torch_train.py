"""nanoGPT's training loop in PyTorch, for the parity tests and `minigpt compare`.

The trainer follows nanoGPT's train.py: its AdamW parameter groups (the decay mask of our
opt.decay_mask, decided here from the torch modules, independently of optimizer.py), the lr set
on every group before each step from a plain-Python schedule (lr_at, tested against
optimizer.make_schedule), loss / grad_accum per micro-step, clip_grad_norm_, then step.
clip_grad_norm_ divides by norm + 1e-6 where optax divides by the norm: a relative difference of
1e-6 / norm in clipped steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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


def lr_at(opt: Any, it: int, tokens_per_step: int) -> float:
    """The lr of optimizer step `it`, in plain Python: nanoGPT's get_lr and its relatives."""
    if opt.schedule == "constant":
        return opt.lr
    if opt.schedule in ("nanogpt", "warmup_cosine"):
        if it < opt.warmup_iters:  # nanoGPT's warmup starts at lr/(W+1); the other at 0
            nano = opt.schedule == "nanogpt"
            return opt.lr * (it + nano) / (opt.warmup_iters + nano)
        if it > opt.lr_decay_iters:
            return opt.min_lr
        ratio = (it - opt.warmup_iters) / max(opt.lr_decay_iters - opt.warmup_iters, 1)
        return opt.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (opt.lr - opt.min_lr)
    if opt.schedule == "mingpt":
        tokens = (it + 1) * tokens_per_step  # minGPT counts the current batch
        if tokens < opt.warmup_tokens:
            return opt.lr * tokens / max(1, opt.warmup_tokens)
        progress = (tokens - opt.warmup_tokens) / max(1, opt.final_tokens - opt.warmup_tokens)
        return opt.lr * max(0.1, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown opt.schedule {opt.schedule!r}")


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
