"""Accelerator presets: nanoGPT's shakespeare_char on one TPU host, and a GPT-2-small-size model
for pod slices. Compute in bfloat16; params, logits, softmax and the loss stay float32.

  minigpt prepare --data_dir data/shakespeare_char          # on every worker, see docs/tpu.md
  minigpt train --config configs/tpu.py:char --workdir runs/tpu_char
  minigpt train --config configs/tpu.py:gpt2_124m --workdir /shared/runs/gpt2_124m \\
      --config.data.dir=data/corpus
  minigpt train --config configs/tpu.py:smoke --workdir runs/tpu_smoke

Variants (after the colon):
  char       (the default) nanoGPT's train_shakespeare_char, model and optimizer unchanged
             (6/6/384, block 256, batch 64, dropout 0.2, lr 1e-3, 5000 iters, 10.65M params),
             data parallel over every chip of a v5e-8 (v5litepod-8: 8 chips, 8 JAX devices)
             or a v4-8 (4 chips of 2 TensorCores: 4 JAX devices). nanoGPT reports val loss
             1.4697 after ~3 minutes on one A100. That loss is the target here; it is not yet
             measured, and neither is the runtime: no TPU run of this preset exists yet.
  gpt2_124m  GPT-2 small's shape (12/12/768, block 1024, no bias, no dropout) with nanoGPT's
             train_gpt2 optimizer (lr 6e-4 -> 6e-5, warmup 2000, decay over 600k iters, betas
             0.9/0.95, wd 0.1, clip 1.0) and ~0.5M tokens per update, FSDP over every chip of a
             pod slice. This codebase's data is character-level: point data.dir at any corpus
             prepared with `minigpt prepare --input BIG.txt --data_dir data/corpus --block_size
             1024`. nanoGPT's GPT-2 numbers (val ~2.85 on OpenWebText, ~4 days on 8 A100s) are
             for BPE tokens and do not transfer; nothing about this variant is measured yet.
  smoke      `char` made tiny and float32 so it runs on a CPU in seconds; tests run it.
"""

from ml_collections import config_dict

from minigpt_jax import config


def get_config(arg: str = "char") -> config_dict.ConfigDict:
    arg = arg or "char"  # `tpu.py` and `tpu.py:` mean the default too
    if arg not in ("char", "gpt2_124m", "smoke"):
        raise ValueError(f"unknown variant {arg!r}; use one of 'char', 'gpt2_124m', 'smoke'")
    c = config.base_config()
    c.model.dtype = "bfloat16"  # MXU-native; the model keeps params and logits in float32
    c.mesh.update(data=-1, fsdp=1, tensor=1)  # pure data parallel: 10.65M params fit anywhere
    # A pod slice's workers find each other through JAX's own detection (the metadata server).
    c.dist.auto = True
    # Global batch 64, nanoGPT's: its lr, schedule and the 1.4697 target were tuned for 64 x 256
    # tokens per step, so a bigger batch would be another recipe. That is 8 sequences (2048
    # tokens) per chip on a v5e-8 and 16 per JAX device on a v4-8; 64 divides both evenly.
    c.train.batch_size = 64

    if arg == "gpt2_124m":
        c.data.dir = "data/corpus"  # any prepared corpus; Tiny Shakespeare is far too small
        c.model.update(block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0)
        c.model.bias = False
        c.opt.update(lr=6e-4, min_lr=6e-5, warmup_iters=2000, lr_decay_iters=600_000)
        c.opt.update(b1=0.9, b2=0.95, weight_decay=0.1, grad_clip=1.0)
        # 128 sequences x 4 micro-steps x 1024 = 524,288 tokens per update, nanoGPT's ~0.5M
        # (its 12 x 40 x 1024 = 491,520). Powers of two divide every slice's chip count up to
        # 128; a micro-step holds 128 / chips sequences per chip (8 on 16 chips). Both fields are
        # fixed once a run starts: on more chips, or short of memory, keep their product.
        c.train.update(batch_size=128, grad_accum=4, max_iters=600_000)
        # eval_iters=20: 20 x 128 sequences ~ nanoGPT's 200 x 12 per estimate.
        c.train.update(eval_interval=1000, eval_iters=20, ckpt_interval=1000, log_interval=10)
        # FSDP shards params and Adam moments over every chip; the batch still splits over all.
        c.mesh.update(data=1, fsdp=-1, tensor=1)
        c.model.attention = "pallas"  # flash attention on TPU; block 1024 divides by 128
    elif arg == "smoke":
        config.smoke(c, steps=30, warmup=5)
        c.model.dtype = "float32"  # the CPU path, as in every other CPU test
        c.dist.auto = False  # one plain CPU host: no cluster to find
    return c
