"""A small tied-embedding GPT with a warmup-from-zero cosine schedule ("day 20" of a build log).

4 layers, 4 heads, 128 embd, block 64, batch 32, 3000 steps; lr max_lr * step / 100 from zero
for 100 steps, then cosine to max_lr / 10 at step 3000 (max_lr 3e-4); AdamW betas (0.9, 0.95),
weight decay 0.1 on every parameter, clip 1.0, dropout 0.1, tied head, no bias in attention or
head, biases in the MLP (and the LayerNorms, torch's default), exact GELU; eval every 300 steps
over 50 batches; samples at temperature 1.0 top_k 40 and at 0.5 top_k 10 at every eval.

  minigpt train --config configs/day20.py --workdir runs/day20

Measured on a 2-core CPU (experiments/day20, its run files beside it): val 1.9341, full val
1.9386 (2.797 bits/char) at step 3000, 9.0 min from command to exit.

Variants: `:smoke` (tiny, for tests).
"""

from ml_collections import config_dict

from minigpt_jax import config


def get_config(arg: str = "") -> config_dict.ConfigDict:
    c = config.base_config()
    c.model.update(block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.1)
    c.model.update(bias=False, bias_mlp=True, bias_ln=True, tie_embeddings=True)
    c.opt.update(schedule="warmup_cosine", lr=3e-4, min_lr=3e-5, warmup_iters=100)
    c.opt.update(lr_decay_iters=3000, b1=0.9, b2=0.95, weight_decay=0.1, decay_mask="all")
    c.opt.grad_clip = 1.0
    c.train.update(batch_size=32, max_iters=3000, eval_interval=300, eval_iters=50)
    c.train.update(ckpt_interval=300, log_interval=50)
    c.sample.settings = "temperature=1.0 top_k=40; temperature=0.5 top_k=10"
    if arg == "smoke":
        config.smoke(c, sample_tokens=40)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use '' or 'smoke'")
    return c
