"""Scan over layers, measured and not built: the train step's trace, compile and step time with
the blocks unrolled (model.GPT) against one Block under nn.scan (params stacked on a layer axis).

    python experiments/perf/scan_probe.py unrolled
    python experiments/perf/scan_probe.py scan

Plain value_and_grad + optax.adamw on one device, no persistent cache; median of 5 steps.
The scanned model is built here only: stacking the layers would rename nanoGPT's h_{i} params.
"""

import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from minigpt_jax.layers import matmul, normal_init
from minigpt_jax.model import GPT, Block, ModelConfig, _layer_norm

CASES = (
    ("6/6/384 block 256 b8", ModelConfig(dropout=0.2), 8),
    ("12/12/768 block 128 b1", ModelConfig(n_layer=12, n_head=12, n_embd=768, block_size=128), 1),
)


class _Body(nn.Module):
    cfg: ModelConfig
    deterministic: bool

    @nn.compact
    def __call__(self, x_BxTxC: jax.Array, _: None) -> tuple[jax.Array, None]:
        return Block(self.cfg, name="block")(x_BxTxC, self.deterministic)[0], None


class ScanGPT(nn.Module):
    """model.GPT (tied head, no bias) with its blocks as one nn.scan."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, idx_BxT: jax.Array, deterministic: bool = True) -> jax.Array:
        cfg = self.cfg
        V, C, T = cfg.vocab_size, cfg.n_embd, idx_BxT.shape[1]
        wte_VxC = self.param("wte", normal_init(0.02, ("vocab", "embed")), (V, C))
        wpe_TxC = self.param("wpe", normal_init(0.02, ("pos", "embed")), (cfg.block_size, C))
        x_BxTxC = jnp.take(wte_VxC, idx_BxT, axis=0) + wpe_TxC[:T]
        x_BxTxC = nn.Dropout(cfg.dropout)(x_BxTxC, deterministic)
        stack = nn.scan(
            _Body,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            length=cfg.n_layer,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x_BxTxC, _ = stack(cfg, deterministic, name="h")(x_BxTxC, None)
        x_BxTxC = _layer_norm(cfg, "ln_f")(x_BxTxC)
        return matmul(x_BxTxC, wte_VxC.T, jnp.float32, cfg.linear_vjp)


def measure(model: nn.Module, cfg: ModelConfig, B: int) -> tuple[float, float, float]:
    """(trace + lower s, compile s, median step ms)."""
    x_BxT = jnp.zeros((B, cfg.block_size), jnp.int32)
    params = nn.unbox(model.init(jax.random.key(0), x_BxT[:1]))["params"]
    tx = optax.adamw(1e-3)

    def step(params, opt_state, x_BxT, rng):
        def loss(p):
            logits = model.apply({"params": p}, x_BxT, False, rngs={"dropout": rng})
            return optax.softmax_cross_entropy_with_integer_labels(logits, x_BxT).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    t0 = time.perf_counter()
    lowered = jax.jit(step, donate_argnums=(0, 1)).lower(
        params, tx.init(params), x_BxT, jax.random.key(1)
    )
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    state = (params, tx.init(params))
    times = []
    for _ in range(6):
        t = time.perf_counter()
        *state, value = compiled(*state, x_BxT, jax.random.key(1))
        jax.block_until_ready(value)
        times.append(time.perf_counter() - t)
    return t1 - t0, t2 - t1, sorted(times[1:])[2] * 1e3


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "unrolled"
    for name, cfg, B in CASES:
        model = ScanGPT(cfg) if which == "scan" else GPT(cfg)
        trace_s, compile_s, step_ms = measure(model, cfg, B)
        print(f"{which} {name}: trace+lower {trace_s:.2f} s, compile {compile_s:.2f} s, "
              f"step {step_ms:.0f} ms", flush=True)  # fmt: skip
