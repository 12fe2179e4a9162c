"""The flags of every `minigpt` command, defined afresh per call (cli.py parses and dispatches)."""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags


def define_flags(argv: list[str]) -> flags.FlagValues:
    """A fresh set of flags per call: main() keeps no state between calls."""
    f = flags.FlagValues()
    # config_flags reads --config.x.y overrides from argv itself (sys.argv unless told).
    config_flags.DEFINE_config_file(
        "config", None, "Experiment config: FILE[:variant].", f, sys_argv=argv
    )
    flags.DEFINE_string(
        "workdir", None, "Run directory: checkpoints, metrics, config.", flag_values=f
    )
    flags.DEFINE_bool(
        "overwrite",
        False,
        "train: with init_from=scratch, discard the run's checkpoints; convert: replace --workdir.",
        flag_values=f,
    )
    flags.DEFINE_string(
        "step", "latest", "eval, convert --to: best, latest or a step number.", flag_values=f
    )
    flags.DEFINE_string(
        "data_dir",
        "data/shakespeare_char",
        "prepare: output data directory; eval: data to use instead of the run's.",
        flag_values=f,
    )
    flags.DEFINE_string(
        "input", None, "prepare: UTF-8 text (default: download Tiny Shakespeare).", flag_values=f
    )
    flags.DEFINE_float("val_fraction", 0.1, "prepare: held-out fraction.", flag_values=f)
    flags.DEFINE_integer(
        "block_size", 256, "prepare: each split must hold block_size + 1 chars.", flag_values=f
    )
    flags.DEFINE_string("prompt", "\n", "sample: the text to continue.", flag_values=f)
    flags.DEFINE_string("prompt_file", None, "sample: read the prompt from a file.", flag_values=f)
    flags.DEFINE_integer("max_new_tokens", 500, "sample: characters to generate.", flag_values=f)
    flags.DEFINE_float(
        "temperature", 1.0, "sample: softmax temperature; 0 is greedy.", flag_values=f
    )
    flags.DEFINE_integer("top_k", None, "sample: keep the k most likely tokens.", flag_values=f)
    flags.DEFINE_float("top_p", 1.0, "sample: nucleus mass; 1 keeps every token.", flag_values=f)
    flags.DEFINE_integer("seed", 0, "sample: random seed.", flag_values=f)
    flags.DEFINE_integer("num_samples", 1, "sample: independent samples to draw.", flag_values=f)
    flags.DEFINE_enum(
        "window",
        "chunked",
        ["chunked", "exact"],
        "sample: past block_size, 'exact' crops like nanoGPT (a full forward per token); "
        "'chunked' keeps the last block_size/2 tokens and goes on cached (fast).",
        flag_values=f,
    )
    flags.DEFINE_string(
        "out",
        None,
        "sample: also write the samples to FILE; bench: the table (train: JSON); convert: the "
        "ckpt.pt; report: the folder for report.md and val_curves.png (default: report).",
        flag_values=f,
    )
    flags.DEFINE_list(
        "lengths", ["500", "2000"], "bench sample: new-token counts to time.", flag_values=f
    )
    flags.DEFINE_integer("repeats", 3, "bench, compare: timed repeats (median).", flag_values=f)
    flags.DEFINE_integer(
        "cpu_devices",
        None,
        "train, bench: split the host CPU into N XLA devices, so a data-parallel mesh runs "
        "one step on all cores (jax's CPU backend otherwise keeps small steps on about one).",
        flag_values=f,
    )
    flags.DEFINE_integer(
        "steps",
        None,
        "bench train: timed steps after 3 warm-up steps (default 20); compare: training steps "
        "of each side (default 200).",
        flag_values=f,
    )
    flags.DEFINE_enum(
        "from", None, ["nanogpt", "mingpt"], "convert: import CKPT.pt of this kind.", flag_values=f
    )
    flags.DEFINE_enum("to", None, ["nanogpt"], "convert: export --workdir as this.", flag_values=f)
    flags.DEFINE_string("meta", None, "convert: nanoGPT's meta.pkl or a meta.json.", flag_values=f)
    flags.DEFINE_integer(
        "n_head", None, "convert: heads, if the checkpoint lacks them.", flag_values=f
    )
    flags.DEFINE_enum(
        "activation", None, ["gelu", "gelu_tanh", "relu"],
        "convert: the MLP's activation (default gelu; mingpt: gelu_tanh).", flag_values=f,
    )  # fmt: skip
    flags.DEFINE_string("out_dir", None, "compare: where the report goes.", flag_values=f)
    flags.DEFINE_integer("sample_tokens", 500, "compare: tokens each side samples.", flag_values=f)
    flags.DEFINE_integer(
        "torch_threads",
        0,
        "compare, bench: torch.set_num_threads; 0 keeps torch's default.",
        flag_values=f,
    )
    flags.DEFINE_enum(
        "vs", None, ["torch"], "bench train: also time the PyTorch reference, in turn.",
        flag_values=f,
    )  # fmt: skip
    return f
