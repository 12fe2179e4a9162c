"""The modern recipe on nanoGPT's CPU recipe, one switch at a time (issue 17's experiment).

Base: configs/shakespeare_char.py:cpu. Arms: the nanoGPT baseline, the baseline at lr 3e-3
(the better lr of experiments/sweep_basics), each switch of configs/modern.py added alone, and
the whole recipe (configs/modern.py:cpu), and the recipe with each switch removed alone
(appended after the first 33 runs: a sweep root may only grow).
"""

RECIPE = {
    "model.pos_emb": "rotary",
    "model.norm": "rmsnorm",
    "model.qk_norm": True,
    "model.activation": "relu2",
    "model.logit_softcap": 15.0,
    "model.zero_init_proj": True,
    "model.tie_embeddings": False,
    "opt.optimizer": "muon",
    "opt.muon_lr": 0.01,
    "opt.lr": 3e-3,
}
MUON = ("opt.optimizer", "opt.muon_lr")  # one switch: Muon at its lr


def get_sweep() -> list[dict]:
    alone = [
        {"name": "rotary", "model.pos_emb": "rotary"},
        {"name": "rmsnorm", "model.norm": "rmsnorm"},
        {"name": "qk_norm", "model.qk_norm": True},
        {"name": "relu2", "model.activation": "relu2"},
        {"name": "softcap", "model.logit_softcap": 15.0},
        {"name": "zero_init_proj", "model.zero_init_proj": True},
        {"name": "untied", "model.tie_embeddings": False},
        {"name": "muon", **{k: RECIPE[k] for k in MUON}},
    ]
    without = [
        {"name": f"modern_no_{arm['name']}", **{k: v for k, v in RECIPE.items() if k not in arm}}
        for arm in alone
    ]
    return [
        {"name": "nanogpt"},
        {"name": "nanogpt_lr3e-3", "opt.lr": 3e-3},
        *alone,
        {"name": "modern", **RECIPE},
        *without,
    ]
