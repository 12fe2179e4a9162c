"""The lecture's GPT at 4 layers, 4 heads, 256 embd, block 128 on a text of your own.

Batch 64, lr 3e-4 (constant, torch AdamW defaults), dropout 0.2, 5000 steps; everything else as
configs/lecture_gpt.py. Built for a few hundred KB of poems or prose (Robert Frost's, say):
pass the text and a data dir of its own, and the first run prepares it (90/10 split).

  minigpt train --config configs/frost.py --workdir runs/frost \
      --config.data.input=frost.txt --config.data.dir=data/frost

A data dir remembers its text: pointing a prepared dir at another input is refused.
On Tiny Shakespeare as a stand-in, on a 2-core CPU, shortened to 300 steps (experiments/frost,
its run files beside it): full val 2.2824 (3.29 bits/char) at step 300, 1.76 s a step, 10.7 min
in all; the full 5000 steps were not run here.

Variants: `:smoke` (tiny, for tests).
"""

from ml_collections import config_dict

from minigpt_jax import config


def get_config(arg: str = "") -> config_dict.ConfigDict:
    c = config.sibling(__file__, "lecture_gpt.py")
    c.data.update(dir="data/frost", input="")
    c.model.update(block_size=128, n_layer=4, n_head=4, n_embd=256, dropout=0.2)
    c.opt.lr = 3e-4
    c.train.update(batch_size=64, max_iters=5000, eval_interval=500, ckpt_interval=500)
    if arg == "smoke":
        config.smoke(c, sample_tokens=40)
        # Shallower and narrower than lecture_gpt's smoke, as the full configs are, and with a
        # longer context than mini_gpt's.
        c.model.update(block_size=64)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use '' or 'smoke'")
    return c
