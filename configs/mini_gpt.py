"""A minimal GPT: the lecture's model shrunk to 4 layers, 4 heads, 64 embd, block 32.

Batch 16, 5000 iterations, eval every 100 (over 200 batches), constant lr 1e-3, no dropout,
ReLU MLP; everything else as configs/lecture_gpt.py (torch AdamW defaults, untied head with
bias, no q/k/v bias, N(0, 0.02) init without residual scaling). ~0.2M parameters.

  minigpt train --config configs/mini_gpt.py --workdir runs/mini_gpt

Fits a 2-core CPU in a few minutes: see experiments/README.md for the measured result.

Variants: `:smoke` (tiny, for tests).
"""

import importlib.util
import pathlib

from ml_collections import config_dict


def _load(name: str, arg: str) -> config_dict.ConfigDict:
    # Configs import nothing of the package; they share the schema by loading a sibling by path.
    spec = importlib.util.spec_from_file_location(name, pathlib.Path(__file__).with_name(name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def get_config(arg: str = "") -> config_dict.ConfigDict:
    c = _load("lecture_gpt.py", "")
    c.model.update(block_size=32, n_layer=4, n_head=4, n_embd=64, dropout=0.0, activation="relu")
    c.opt.lr = 1e-3
    c.train.update(batch_size=16, max_iters=5000, eval_interval=100, ckpt_interval=500)
    c.train.log_interval = 100
    if arg == "smoke":
        c.model.update(n_layer=2, n_head=2, n_embd=32)
        c.train.update(max_iters=60, eval_interval=30, eval_iters=4, ckpt_interval=30)
        c.train.log_interval = 10
        c.sample.max_new_tokens = 40
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use '' or 'smoke'")
    return c
