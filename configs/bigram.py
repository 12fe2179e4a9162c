"""The bigram baseline on Tiny Shakespeare ("Let's build GPT"'s first model).

A 65x65 table of next-character logits: the floor any real model must beat.

  minigpt train --config configs/bigram.py --workdir runs/bigram

Measured on a 2-core CPU (experiments/bigram, its run files beside it): full val 2.5027 nats
(3.611 bits/char) after 3000 steps of batch 32, best val estimate 2.4861 at step 1000; 10.4 s
from command to exit. Variant `:smoke` runs 100 steps for tests.
"""

from ml_collections import config_dict

from minigpt_jax import config


def get_config(arg: str = "") -> config_dict.ConfigDict:
    c = config.sibling(__file__, "shakespeare_char.py", "cpu")
    c.model.update(arch="bigram", block_size=8, dropout=0.0)
    c.opt.update(schedule="constant", lr=1e-2, weight_decay=0.0)
    c.train.update(batch_size=32, max_iters=3000, eval_interval=500, eval_iters=200)
    c.train.update(ckpt_interval=500, log_interval=100)
    if arg == "smoke":
        c.train.update(max_iters=100, eval_interval=50, eval_iters=5, ckpt_interval=50)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use '' or 'smoke'")
    return c
