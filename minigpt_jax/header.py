"""What a run prints before its first step, so a log read later (nohup, CI, a sweep's train.log)
says what ran: the config and its overrides, the devices and mesh, the budget, the model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from minigpt_jax.model_config import ModelConfig


def source_of(argv: list[str]) -> dict[str, Any]:
    """The --config a train command named (file:variant), its --config.* overrides, and the
    command line itself, for config.json and the header."""
    named = [b if a == "--config" else a.removeprefix("--config=")
             for a, b in zip(argv, [*argv[1:], ""])
             if a == "--config" or a.startswith("--config=")]  # fmt: skip
    return {
        "config": named[-1] if named else None,
        "overrides": [a for a in argv if a.startswith("--config.")],
        "command": " ".join(["minigpt", *argv]),
    }


def lines(
    cfg: Any, model_cfg: ModelConfig, mesh: Any, *, source: dict | None, params: tuple[int, int],
    tokens_per_step: int, resume_step: int | None,
) -> list[str]:  # fmt: skip
    import jax  # here: source_of serves the sweep, which never starts jax

    t, m = cfg.train, model_cfg
    out = []
    if source:
        named = source.get("config") or "its config.json"
        extra = " ".join(source.get("overrides") or []) or "no overrides"
        out.append(f"config: {named}, {extra}")
    devices = jax.devices()
    axes = " x ".join(f"{k} {v}" for k, v in mesh.shape.items())
    out.append(
        f"devices: {len(devices)} x {devices[0].device_kind} ({jax.process_count()} "
        f"process{'es' if jax.process_count() > 1 else ''}); mesh {axes}"
    )
    total = t.max_iters * tokens_per_step
    where = f"resuming at step {resume_step}" if resume_step is not None else "from scratch"
    out.append(
        f"budget: {t.max_iters} steps x {tokens_per_step:,} tokens = {total / 1e6:.2f}M tokens, "
        f"{where}; eval every {t.eval_interval} ({t.eval_iters} batches per split + the full "
        f"val split), checkpoint every {t.ckpt_interval}"
    )
    nano, all_ = params
    out.append(
        f"model: {m.n_layer} layers, {m.n_head} heads, {m.n_embd} wide, block {m.block_size}, "
        f"vocab {m.vocab_size}, {m.dtype}"
    )
    out.append(
        f"number of parameters: {nano / 1e6:.2f}M (nanoGPT's count, without wpe); "
        f"{all_ / 1e6:.2f}M in all ({all_:,})"
    )
    return out
