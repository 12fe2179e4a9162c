"""The modern recipe on nanoGPT's char-level model: the switches of the nanoGPT speedrun
(KellerJordan/modded-nanogpt) that a small codebase can carry, all on at once.

Rotary positions (no wpe), RMSNorm, QK-norm, ReLU² MLP, logits soft-capped at 15, zero-init
output projections, an untied head, and Muon for the blocks' 2-D weights (AdamW for the rest).
Every other field is nanoGPT's shakespeare_char (configs/shakespeare_char.py).

  minigpt train --config configs/modern.py:cpu --workdir runs/modern_cpu

Variants:
  (none)  nanoGPT's 6/6/384 GPU recipe with the switches on; not run here.
  cpu     nanoGPT README's CPU recipe size and budget (4/4/128, block 64, batch 12, 2000 steps,
          dropout 0), as configs/shakespeare_char.py:cpu. Its lrs come from a one-seed pilot
          (experiments/modern/pilot); whether it beats the baseline is measured over seeds
          in experiments/modern.
  smoke   a few seconds; the tests train it.
"""

from ml_collections import config_dict

from minigpt_jax import config


def get_config(arg: str = "") -> config_dict.ConfigDict:
    c = config.sibling(__file__, "shakespeare_char.py", "cpu" if arg == "cpu" else "")
    c.model.update(pos_emb="rotary", norm="rmsnorm", qk_norm=True, activation="relu2")
    c.model.update(logit_softcap=15.0, zero_init_proj=True, tie_embeddings=False)
    c.opt.update(optimizer="muon", muon_lr=0.02)
    if arg == "smoke":
        config.smoke(c, sample_tokens=40)
    elif arg not in ("", "cpu"):
        raise ValueError(f"unknown variant {arg!r}; use '', 'cpu' or 'smoke'")
    return c
