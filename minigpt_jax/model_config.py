"""ModelConfig: the model's hyperparameters and switches, checked on construction, and the
choices each switch takes. Defaults are nanoGPT's shakespeare_char model."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from minigpt_jax.layers import LINEAR_VJPS

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # nanoGPT: nn.GELU(), exact erf
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "relu2": lambda x: jnp.square(jax.nn.relu(x)),  # ReLU squared (Primer; modded-nanogpt)
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
ARCHS = ("gpt", "bigram")
# 'xla': einsum attention, every backend; 'cudnn': cuDNN flash attention (GPU, bf16/fp16);
# 'pallas': Pallas flash attention (TPU). A kernel that cannot run falls back to 'xla', logged.
ATTENTIONS = ("xla", "cudnn", "pallas")
# 'nanogpt': N(0, 0.02), residual projections (c_proj) N(0, 0.02/sqrt(2*n_layer)), GPT-2's scheme;
# 'normal': N(0, 0.02) everywhere (the lecture's and the early minGPT's _init_weights).
INITS = ("nanogpt", "normal")
WPE_INITS = ("normal", "zeros")  # 'zeros': the early minGPT's nn.Parameter(torch.zeros(...))
BIAS_PLACES = ("qkv", "attn_proj", "mlp", "ln")  # each has a bias_<place> field
# 'learned': nanoGPT's wpe table; 'rotary': no wpe, q and k rotated by position (GPT-NeoX's
# rotate-half convention), so attention sees only relative positions.
POS_EMBS = ("learned", "rotary")
NORMS = ("layernorm", "rmsnorm")  # rmsnorm: a learned scale, no bias, no mean subtraction
# Activation memory against compute: 'none' keeps every activation for the backward pass; 'block'
# keeps only each block's input and recomputes the rest; 'dots' also keeps matmul outputs without
# batch dims (the Linears), recomputing elementwise work and attention.
REMATS = {
    "none": None,
    "block": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Model hyperparameters; defaults are nanoGPT's shakespeare_char model."""

    vocab_size: int = 65
    block_size: int = 256
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0  # on embeddings, residual branches and (attn_dropout None) attention
    attn_dropout: float | None = None  # on attention weights; None: the same as dropout
    bias: bool = False  # nanoGPT's flag: biases in Linears and LayerNorms
    # Per place, None follows `bias`: q/k/v (c_attn), the attention's c_proj, the MLP, LayerNorms.
    bias_qkv: bool | None = None
    bias_attn_proj: bool | None = None
    bias_mlp: bool | None = None
    bias_ln: bool | None = None
    bias_head: bool = False  # lm_head's bias (untied heads only); nanoGPT and minGPT: none
    tie_embeddings: bool = True  # lm_head shares wte (nanoGPT); minGPT unties it
    activation: str = "gelu"  # 'gelu' (exact erf) | 'gelu_tanh' | 'relu'
    ln_eps: float = 1e-5  # torch's default; flax's own default is 1e-6
    dtype: str = "float32"  # compute dtype; params stay fp32, logits are always fp32
    arch: str = "gpt"  # 'gpt' | 'bigram' (an embedding table straight to logits)
    attention: str = "xla"  # 'xla' | 'cudnn' (GPU) | 'pallas' (TPU)
    init: str = "nanogpt"  # 'nanogpt' (scaled residual projections) | 'normal'
    wpe_init: str = "normal"  # 'normal' N(0, 0.02) | 'zeros'
    linear_vjp: str = "auto"  # the Linears' backward pass: 'auto' | 'xla' | 'narrow' (layers.py)
    remat: str = "none"  # recompute in the backward pass, per block: REMATS
    # The switches of the modern recipe (modded-nanogpt); each off by default, so the default
    # model stays nanoGPT's, bit for bit.
    pos_emb: str = "learned"  # 'learned' (wpe) | 'rotary' (no wpe): POS_EMBS
    rope_base: float = 10000.0  # rotary: frequency of pair i is rope_base ** (-2i / head_dim)
    norm: str = "layernorm"  # 'layernorm' | 'rmsnorm' (ln_1, ln_2, ln_f keep their names)
    qk_norm: bool = False  # RMS-normalise q and k per head (over D), no learned scale
    logit_softcap: float = 0.0  # > 0: logits = cap * tanh(logits / cap), in fp32; 0: off
    zero_init_proj: bool = False  # attention and MLP c_proj kernels start at zero

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"ModelConfig.n_embd={self.n_embd} must be divisible by n_head={self.n_head}"
            )
        for name in ("dropout", "attn_dropout"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"ModelConfig.{name} must be in [0, 1), got {value}")
        places = tuple(f"bias_{p}" for p in BIAS_PLACES)
        for name in ("bias", "tie_embeddings", "bias_head", "qk_norm", "zero_init_proj", *places):
            value = getattr(self, name)
            if not isinstance(value, bool) and not (value is None and name in places):
                raise ValueError(f"ModelConfig.{name} must be true or false, got {value!r}")
        if self.bias_head and self.tie_embeddings:
            raise ValueError("ModelConfig.bias_head needs an untied head: set tie_embeddings=False")
        choices = {
            "init": INITS, "wpe_init": WPE_INITS, "activation": ACTIVATIONS, "dtype": DTYPES,
            "attention": ATTENTIONS, "remat": REMATS, "linear_vjp": LINEAR_VJPS, "arch": ARCHS,
            "pos_emb": POS_EMBS, "norm": NORMS,
        }  # fmt: skip
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(
                    f"ModelConfig.{name} must be one of {list(allowed)}, got {value!r}"
                )
        if not self.ln_eps > 0:
            raise ValueError(f"ModelConfig.ln_eps must be positive, got {self.ln_eps}")
        self._check_switches()

    def _check_switches(self) -> None:
        """The modern switches' numbers and the combinations they cannot take."""
        if not 1.0 < self.rope_base < math.inf:
            raise ValueError(f"ModelConfig.rope_base must be > 1 and finite, got {self.rope_base}")
        if not 0.0 <= self.logit_softcap < math.inf:  # nan fails too
            raise ValueError(
                f"ModelConfig.logit_softcap must be >= 0 and finite, got {self.logit_softcap}"
            )
        if self.pos_emb == "rotary" and (self.n_embd // self.n_head) % 2:
            raise ValueError(
                f"ModelConfig.pos_emb='rotary' rotates pairs: the head dim n_embd/n_head = "
                f"{self.n_embd // self.n_head} must be even"
            )
        if self.norm == "rmsnorm" and self.bias_ln:
            raise ValueError("ModelConfig.bias_ln: RMSNorm has no bias; leave bias_ln unset")

    @classmethod
    def from_dict(cls, fields: dict) -> ModelConfig:
        """From a config's model section; unknown keys raise a ValueError naming them."""
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s): {', '.join(unknown)}")
        return cls(**fields)

    @property
    def compute_dtype(self) -> Any:
        return DTYPES[self.dtype]

    def has_bias(self, place: str) -> bool:
        """Whether `place` ('qkv', 'attn_proj', 'mlp', 'ln') has biases; RMSNorm never has."""
        if place == "ln" and self.norm == "rmsnorm":
            return False
        value = getattr(self, f"bias_{place}")
        return self.bias if value is None else value

    @property
    def attn_pdrop(self) -> float:
        return self.dropout if self.attn_dropout is None else self.attn_dropout
