"""minGPT's char-level Shakespeare notebook (play_char.ipynb; the early GPTConfig/TrainerConfig).

8 layers, 8 heads, 512 embd, block 128: 25,352,192 parameters. Trained on every window of the whole
text (no val split) for 2 epochs of batch 512, AdamW (0.9, 0.95) with weight decay 0.1 on Linear
weights only, clip 1.0, minGPT's token-based schedule (linear warmup over 512*20 tokens, cosine
to a floor of 0.1x lr at 2 * len(data) * block_size tokens). Untied head without bias, biases
elsewhere, exact GELU, dropout 0.1 everywhere, position embedding initialised to zeros.

  minigpt train --config configs/mingpt_char.py --workdir runs/mingpt_char
  minigpt sample --workdir runs/mingpt_char --prompt "O God, O God!" --max_new_tokens 2000 \
      --temperature 1.0 --top_k 10

Needs a GPU: a step is ~10 TFLOP (6 x 25M params x 65,536 tokens), minutes on a 2-core CPU. The
notebook's schedule is 2 epochs: 4357 steps here (its DataLoader takes ~2179 batches an epoch,
the last one short; ours are all full and roll into the next epoch's permutation). The
notebook reports no loss number; it shows its 2000-character sample from "O God, O God!".
The first run's data dir is prepared from data.input with no val split, so evals report the
train estimate only.

Deviation: minGPT projects q, k and v with three Linears; here they are one fused c_attn. With
N(0, 0.02) init, zero biases and elementwise AdamW both are the same function and the same
updates (weights drawn in another order).

Variants: `:smoke` (tiny, for tests: prepares its own no-val data dir from data.input).
"""

from ml_collections import config_dict

from minigpt_jax import config

TEXT_CHARS, BLOCK = 1_115_394, 128  # len(tinyshakespeare), block_size


def get_config(arg: str = "") -> config_dict.ConfigDict:
    c = config.base_config()
    c.data.update(dir="data/shakespeare_char_all", input="data/tinyshakespeare/input.txt")
    c.data.update(val_fraction=0.0, sampling="epoch")
    c.model.update(block_size=BLOCK, n_layer=8, n_head=8, n_embd=512, dropout=0.1, bias=True)
    c.model.update(tie_embeddings=False, bias_head=False, init="normal", wpe_init="zeros")
    c.opt.update(schedule="mingpt", lr=6e-4, b1=0.9, b2=0.95, weight_decay=0.1)
    c.opt.update(decay_mask="linear", grad_clip=1.0, warmup_tokens=512 * 20)
    c.opt.final_tokens = 2 * TEXT_CHARS * BLOCK
    windows = TEXT_CHARS - BLOCK
    c.train.update(batch_size=512, max_iters=-(-2 * windows // 512), eval_interval=500)
    c.train.update(eval_iters=20, ckpt_interval=500, log_interval=10)
    c.sample.update(prompt="O God, O God!", max_new_tokens=2000)
    c.sample.settings = "temperature=1.0 top_k=10"
    if arg == "smoke":
        config.smoke(c, sample_tokens=40)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use '' or 'smoke'")
    return c
