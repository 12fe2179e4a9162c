"""The PyTorch reference: nanoGPT's GPT (and the lecture's bigram) and its uncached generate,
written against our ModelConfig; torch_train.py holds nanoGPT's training loop.

Only bench, bench_sample, compare and nanogpt import these modules, inside functions, through
errors.require_torch, so torch stays an optional extra: `pip install -e '.[torch]'`
(torch==2.13.0, the CPU wheel).

state_dict names are nanoGPT's (and minGPT's): transformer.wte.weight, transformer.wpe.weight,
transformer.h.{i}.{ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj}.{weight, bias},
transformer.ln_f.{weight, bias}, lm_head.weight (torch Linear weights are (out, in)). A tied head
is nanoGPT's: one tensor under both transformer.wte.weight and lm_head.weight. The bigram model
is Karpathy's lecture bigram: one table, token_embedding_table.weight (V x V).

The modern switches (ModelConfig.pos_emb, norm, qk_norm, activation='relu2', logit_softcap,
zero_init_proj) are written here from torch's own ops (F.rms_norm, a rotate-half rotary), not
ported from blocks.py, so the parity test checks one against the other.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minigpt_jax.model_config import BIAS_PLACES, ModelConfig

TORCH_ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),  # exact erf, nanoGPT's nn.GELU()
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # minGPT's NewGELU
    "relu": F.relu,
    "relu2": lambda x: F.relu(x).square(),
}


def biases(cfg: ModelConfig) -> dict[str, bool]:
    """Which parameter groups carry a bias (ModelConfig.has_bias, plus the head's)."""
    places = {p: cfg.has_bias(p) for p in BIAS_PLACES}
    return {**places, "head": cfg.bias_head}


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (torch's own has no bias=False before 2.1; nanoGPT's)."""

    def __init__(self, n: int, bias: bool, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n)) if bias else None
        self.eps = eps

    def forward(self, x_BxTxC: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x_BxTxC, self.weight.shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """RMSNorm with a learned scale (weight) and no bias: norm='rmsnorm'."""

    def __init__(self, n: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x_BxTxC: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x_BxTxC, self.weight.shape, self.weight, self.eps)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.n_embd, cfg.ln_eps)
    return LayerNorm(cfg.n_embd, biases(cfg)["ln"], cfg.ln_eps)


def rotate_half(x_BxHxTxD: torch.Tensor) -> torch.Tensor:
    x1, x2 = x_BxHxTxD.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotary(x_BxHxTxD: torch.Tensor, base: float) -> torch.Tensor:
    """GPT-NeoX's rotary embedding (rotate half), positions 0..T-1, in fp32."""
    T, D = x_BxHxTxD.shape[-2:]
    inv_freq_D2 = base ** (-torch.arange(0, D, 2, dtype=torch.float32) / D)
    angle_TxD2 = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq_D2
    angle_TxD = torch.cat((angle_TxD2, angle_TxD2), dim=-1)
    x = x_BxHxTxD.float()
    return (x * angle_TxD.cos() + rotate_half(x) * angle_TxD.sin()).to(x_BxHxTxD.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        b, C = biases(cfg), cfg.n_embd
        self.c_attn = nn.Linear(C, 3 * C, bias=b["qkv"])
        self.c_proj = nn.Linear(C, C, bias=b["attn_proj"])
        self.attn_p = cfg.attn_pdrop
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.n_head = cfg.n_head

    def forward(self, x_BxTxC: torch.Tensor) -> torch.Tensor:
        B, T, C = x_BxTxC.shape
        H = self.n_head
        q, k, v = self.c_attn(x_BxTxC).split(C, dim=2)
        q_BxHxTxD, k_BxHxTxD, v_BxHxTxD = (
            a.view(B, T, H, C // H).transpose(1, 2) for a in (q, k, v)
        )
        cfg = self.cfg
        if cfg.qk_norm:  # parameter-free, over D, before the rotation
            q_BxHxTxD = F.rms_norm(q_BxHxTxD, (C // H,), eps=cfg.ln_eps)
            k_BxHxTxD = F.rms_norm(k_BxHxTxD, (C // H,), eps=cfg.ln_eps)
        if cfg.pos_emb == "rotary":
            q_BxHxTxD = rotary(q_BxHxTxD, cfg.rope_base)
            k_BxHxTxD = rotary(k_BxHxTxD, cfg.rope_base)
        # nanoGPT's flash path: torch's fused causal attention, dropout on the attention weights.
        y_BxHxTxD = F.scaled_dot_product_attention(
            q_BxHxTxD,
            k_BxHxTxD,
            v_BxHxTxD,
            dropout_p=self.attn_p if self.training else 0.0,
            is_causal=True,
        )
        y_BxTxC = y_BxHxTxD.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y_BxTxC))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        bias, C = biases(cfg)["mlp"], cfg.n_embd
        self.c_fc = nn.Linear(C, 4 * C, bias=bias)
        self.c_proj = nn.Linear(4 * C, C, bias=bias)
        self.act = TORCH_ACTIVATIONS[cfg.activation]
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x_BxTxC: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x_BxTxC))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x_BxTxC: torch.Tensor) -> torch.Tensor:
        x_BxTxC = x_BxTxC + self.attn(self.ln_1(x_BxTxC))
        return x_BxTxC + self.mlp(self.ln_2(x_BxTxC))


class GPT(nn.Module):
    """nanoGPT's GPT: idx_BxT -> logits_BxTxV, every position (our model's output)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        b = biases(cfg)
        modules = dict(wte=nn.Embedding(cfg.vocab_size, cfg.n_embd))
        if cfg.pos_emb == "learned":  # rotary: positions enter in attention, no wpe
            modules["wpe"] = nn.Embedding(cfg.block_size, cfg.n_embd)
        modules |= dict(
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
            ln_f=make_norm(cfg),
        )
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=b["head"])
        if cfg.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight  # nanoGPT's weight tying
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """nanoGPT's init: N(0, 0.02), zero biases, residual projections 0.02 / sqrt(2 n_layer);
        init='normal' leaves the projections at 0.02, wpe_init='zeros' zeroes wpe,
        zero_init_proj zeroes the projections."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, 0.0, 0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        if self.cfg.init == "nanogpt":
            std = 0.02 / math.sqrt(2 * self.cfg.n_layer)
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    nn.init.normal_(p, 0.0, std)
        for name, p in self.named_parameters():
            if self.cfg.zero_init_proj and name.endswith("c_proj.weight"):
                nn.init.zeros_(p)
        if self.cfg.wpe_init == "zeros" and "wpe" in self.transformer:
            nn.init.zeros_(self.transformer.wpe.weight)

    def forward(self, idx_BxT: torch.Tensor) -> torch.Tensor:
        T = idx_BxT.shape[1]
        if T > self.cfg.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.cfg.block_size}")
        x_BxTxC = self.transformer.wte(idx_BxT)
        if "wpe" in self.transformer:
            x_BxTxC = x_BxTxC + self.transformer.wpe(torch.arange(T, device=idx_BxT.device))
        x_BxTxC = self.transformer.drop(x_BxTxC)
        for block in self.transformer.h:
            x_BxTxC = block(x_BxTxC)
        logits_BxTxV = self.lm_head(self.transformer.ln_f(x_BxTxC)).float()
        if self.cfg.logit_softcap:
            cap = self.cfg.logit_softcap
            logits_BxTxV = cap * torch.tanh(logits_BxTxV / cap)
        return logits_BxTxV


class Bigram(nn.Module):
    """Karpathy's bigram: row idx of a V x V table is the next token's logits."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.token_embedding_table = nn.Embedding(cfg.vocab_size, cfg.vocab_size)
        nn.init.normal_(self.token_embedding_table.weight, 0.0, 0.02)  # as our Bigram

    def forward(self, idx_BxT: torch.Tensor) -> torch.Tensor:
        return self.token_embedding_table(idx_BxT)


def make_model(cfg: ModelConfig) -> nn.Module:
    return Bigram(cfg) if cfg.arch == "bigram" else GPT(cfg)


def int_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))


def tensors(sd: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """numpy state_dict (convert.to_state_dict) -> fp32 tensors that own their memory."""
    return {k: torch.tensor(np.asarray(v, np.float32)) for k, v in sd.items()}


@torch.no_grad()
def generate(
    model: nn.Module,
    idx_BxT: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """nanoGPT's generate: no cache, each token from a forward over the last block_size tokens."""
    model.eval()
    block_size = model.cfg.block_size
    for _ in range(max_new_tokens):
        logits_BxV = model(idx_BxT[:, -block_size:])[:, -1, :] / temperature
        if top_k is not None:
            kth_Bx1 = torch.topk(logits_BxV, min(top_k, logits_BxV.shape[-1])).values[:, [-1]]
            logits_BxV[logits_BxV < kth_Bx1] = -float("inf")
        probs_BxV = F.softmax(logits_BxV, dim=-1)
        next_Bx1 = torch.multinomial(probs_BxV, num_samples=1, generator=generator)
        idx_BxT = torch.cat((idx_BxT, next_Bx1), dim=1)
    return idx_BxT
