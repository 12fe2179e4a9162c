"""The first answered question: which of nanoGPT's switches matter on its CPU recipe?

The nanoGPT baseline (configs/shakespeare_char.py:cpu) and four one-change-at-a-time arms, each
over 3 seeds; the command and the result are in README.md beside this file.
"""


def get_sweep() -> list[dict]:
    return [
        {"name": "nanogpt"},  # the baseline: GELU, tied head, dropout 0, lr 1e-3
        {"name": "relu", "model.activation": "relu"},
        {"name": "untied", "model.tie_embeddings": False},
        {"name": "dropout=0.1", "model.dropout": 0.1},
        {"name": "lr=0.003", "opt.lr": 3e-3},
    ]
