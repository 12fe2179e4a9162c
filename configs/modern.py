"""The modern recipe on nanoGPT's char-level model: the switches of the nanoGPT speedrun
(KellerJordan/modded-nanogpt) that a small codebase can carry, all on at once.

Rotary positions (no wpe), RMSNorm, QK-norm, ReLU² MLP, logits soft-capped at 15, zero-init
output projections, an untied head, and Muon (lr 0.01) for the blocks' 2-D weights, AdamW
(lr 3e-3) for the rest.
Every other field is nanoGPT's shakespeare_char (configs/shakespeare_char.py).

  minigpt train --config configs/modern.py:cpu --workdir runs/modern_cpu

Variants:
  (none)  nanoGPT's 6/6/384 GPU recipe with the switches on; not run here.
  cpu     nanoGPT README's CPU recipe size and budget (4/4/128, block 64, batch 12, 2000 steps,
          dropout 0), as configs/shakespeare_char.py:cpu. Its lrs (Muon 0.01, AdamW 3e-3) are
          the best of a one-seed pilot (experiments/modern/pilot). Measured over 3 seeds
          (experiments/modern): final full val 1.5896 ± 0.0048 against nanoGPT's recipe's
          1.8990 ± 0.0068, full val 1.90 by step 500-750 against 2000; Muon, rotary and QK-norm
          matter inside the recipe, the untied head and ReLU² show no difference there at n=3,
          the soft-cap, RMSNorm and zero-init projections none alone or inside. On a quiet
          2-core box it reaches full val 1.90 in 40-47 s, 0.40x nanoGPT's whole 110 s run
          (experiments/vs_nanogpt).
  smoke   a few seconds; the tests train it.
"""

from ml_collections import config_dict

from minigpt_jax import config


def get_config(arg: str = "") -> config_dict.ConfigDict:
    c = config.sibling(__file__, "shakespeare_char.py", "cpu" if arg == "cpu" else "")
    c.model.update(pos_emb="rotary", norm="rmsnorm", qk_norm=True, activation="relu2")
    c.model.update(logit_softcap=15.0, zero_init_proj=True, tie_embeddings=False)
    c.opt.update(optimizer="muon", muon_lr=0.01, lr=3e-3)  # the pilot's best (one seed)
    if arg == "smoke":
        config.smoke(c, sample_tokens=40)
    elif arg not in ("", "cpu"):
        raise ValueError(f"unknown variant {arg!r}; use '', 'cpu' or 'smoke'")
    return c
