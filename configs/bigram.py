"""The bigram baseline on Tiny Shakespeare ("Let's build GPT"'s first model).

A 65x65 table of next-character logits: the floor any real model must beat.

  minigpt train --config configs/bigram.py --workdir runs/bigram

Expected (measured on a 2-core CPU): val loss 2.50 nats on the full val split (3.61 bits/char)
after 3000 steps of batch 32, in about 5 s. Variant `:smoke` runs 100 steps for tests.
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
