"""A minimal GPT: the lecture's model shrunk to 4 layers, 4 heads, 64 embd, block 32.

Batch 16, 5000 iterations, eval every 100 (over 200 batches), constant lr 1e-3, no dropout,
ReLU MLP; everything else as configs/lecture_gpt.py (torch AdamW defaults, untied head with
bias, no q/k/v bias, N(0, 0.02) init without residual scaling). ~0.2M parameters.

  minigpt train --config configs/mini_gpt.py --workdir runs/mini_gpt

Measured on a 2-core CPU (experiments/mini_gpt, its run files beside it): best val 1.8082 at
step 4900, final full val 1.8095 (2.611 bits/char), 162 s from command to exit.

Variants: `:smoke` (tiny, for tests).
"""

from ml_collections import config_dict

from minigpt_jax import config


def get_config(arg: str = "") -> config_dict.ConfigDict:
    c = config.sibling(__file__, "lecture_gpt.py")
    c.model.update(block_size=32, n_layer=4, n_head=4, n_embd=64, dropout=0.0, activation="relu")
    c.opt.lr = 1e-3
    c.train.update(batch_size=16, max_iters=5000, eval_interval=100, ckpt_interval=500)
    c.train.log_interval = 100
    if arg == "smoke":
        config.smoke(c, sample_tokens=40)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use '' or 'smoke'")
    return c
