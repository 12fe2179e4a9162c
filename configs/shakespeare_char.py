"""nanoGPT's train_shakespeare_char: a 6/6/384 character-level GPT on Tiny Shakespeare.

Reproduces karpathy/nanoGPT config/train_shakespeare_char.py (and its README's CPU recipe).

  minigpt prepare --data_dir data/shakespeare_char
  minigpt train --config configs/shakespeare_char.py --workdir runs/shakespeare_char
  minigpt train --config configs/shakespeare_char.py:cpu --workdir runs/cpu
  minigpt sample --workdir runs/cpu --prompt "O God, O God!"

Variants (after the colon):
  (none)  nanoGPT's GPU recipe: 10.65M params, 5000 iters. nanoGPT reports val loss 1.4697
          after ~3 minutes on an A100; on a 2-core CPU it takes most of a day.
  cpu     nanoGPT README's CPU recipe: 4/4/128, block 64, batch 12, 2000 iters, dropout 0.
          Measured on a 2-core CPU (experiments/shakespeare_char): val 1.9280, full val
          1.9056 (2.749 bits/char), 103-109 s from command to exit; nanoGPT's own code there:
          val 1.8857 in 110 s. Over 3 seeds: full val 1.8990 +- 0.0068 (experiments/modern).
  smoke   a few seconds; tests and CI run it. Val loss ends well below the unigram entropy.
"""

from ml_collections import config_dict

from minigpt_jax import config


def get_config(arg: str = "") -> config_dict.ConfigDict:
    c = config.base_config()  # the schema's defaults are this recipe
    if arg == "cpu":
        c.model.update(block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0)
        c.opt.lr_decay_iters = 2000
        c.train.update(batch_size=12, max_iters=2000, eval_iters=20, log_interval=50)
    elif arg == "smoke":
        config.smoke(c, steps=150, eval_iters=5)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use one of '', 'cpu', 'smoke'")
    return c
