"""Each `minigpt` command's own flags, defined afresh per call, and the usage text (cli.py
parses and dispatches)."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

from absl import flags
from ml_collections import config_flags

from minigpt_jax import config_file
from minigpt_jax import plan as plan_lib
from minigpt_jax.errors import UsageError

USAGE = """usage: minigpt COMMAND [--flags]      (minigpt COMMAND --help lists the command's flags)

commands:
  prepare  [--input FILE] --data_dir DIR     text -> train.bin, val.bin, meta.json
  train    --config FILE[:variant] --workdir DIR [--config.a.b=v ...] [--overwrite]
  train    --workdir DIR [--config.a.b=v ...]   resumes (or starts) the run its config.json holds
  eval     --workdir DIR [--step best|latest|N] [--data_dir DIR] [--per_token OUT.html]
  sample   --workdir DIR [--step best|latest|N] [--prompt TEXT] [--num_samples N] [--out FILE]
  bench    sample [--config FILE[:variant]] [--lengths 500,2000] [--out FILE] [--vs torch]
  bench    train --config FILE[:variant] [--steps N] [--out FILE.json] [--vs torch]
  report   RUN_DIR [RUN_DIR ...] --out DIR [--x_axis steps|tokens|time]   side by side
  convert  --from nanogpt|mingpt CKPT.pt --meta meta.pkl|meta.json --workdir DIR   import
  convert  --to nanogpt --workdir DIR --out ckpt.pt [--step latest|best|N]         export
  compare  --config FILE[:variant] --steps N --out_dir DIR   JAX and PyTorch side by side
  sweep    --config FILE[:variant] --root DIR --grid a.b=v1,v2 [--grid ...] | --sweep FILE
           [--seeds 3] [--parallel K]     arms x seeds as runs; again: resumes; --root alone too
  sweep    report ROOT [--baseline ARM] [--metric KEY]   statistics over seeds, verdicts, plots
  plan     --config FILE[:variant] --device v5e|h100|... --chips N   memory, fit, FLOPs, time"""


def _config(f: flags.FlagValues, argv: list[str]) -> None:
    # config_flags reads --config.x.y overrides from argv itself (sys.argv unless told).
    config_flags.DEFINE_config_file("config", None, config_file.CONFIG_HELP, f, sys_argv=argv)
    f["config"].parser = config_file.ConfigFileParser()


def train_argv(args: list[str]) -> list[str]:
    """`train --workdir W` with no --config trains W's own config.json, and --config.a.b=v
    overrides change it (what a resume may change; a sweep run's host settings)."""
    if any(a == "--config" or a.startswith("--config=") for a in args):
        return args
    named = [b for a, b in zip(args, [*args[1:], ""]) if a == "--workdir"]
    named += [a.removeprefix("--workdir=") for a in args if a.startswith("--workdir=")]
    saved = pathlib.Path(named[-1]) / "config.json" if named and named[-1] else None
    if saved is not None and saved.is_file():
        return [args[0], f"--config={saved}", *args[1:]]
    if any(a.startswith("--config.") for a in args):
        raise UsageError(
            "--config.* overrides need a --config, or a --workdir whose config.json they change"
        )
    return args


def _cpu_devices(f: flags.FlagValues, default: str | None = None) -> None:
    flags.DEFINE_string(
        "cpu_devices", default, "Split the host CPU into N XLA devices, so a data-parallel mesh "
        "runs one step on all cores (jax's CPU backend otherwise keeps small steps on about one). "
        "'auto': one device per core this process may use when train.batch_size divides by it, "
        "else 1.", flag_values=f,
    )  # fmt: skip
    flags.register_validator(
        "cpu_devices", lambda v: v is None or v == "auto" or (v.isdigit() and int(v) >= 1),
        "--cpu_devices must be auto or a whole number >= 1", flag_values=f,
    )  # fmt: skip


def _vs_torch(f: flags.FlagValues) -> None:
    flags.DEFINE_enum("vs", None, ["torch"], "Also time PyTorch, in turn.", flag_values=f)
    _torch_threads(f)


def _torch_threads(f: flags.FlagValues) -> None:
    flags.DEFINE_integer(
        "torch_threads", 0, "torch.set_num_threads; 0 keeps torch's default.", lower_bound=0,
        flag_values=f,
    )  # fmt: skip


def prepare(f: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_string(
        "input", None, "A UTF-8 text (default: download Tiny Shakespeare).", flag_values=f
    )
    flags.DEFINE_string("data_dir", "data/shakespeare_char", "Output directory.", flag_values=f)
    flags.DEFINE_float("val_fraction", 0.1, "Held-out fraction (0: no val split).", flag_values=f)
    flags.DEFINE_integer(
        "block_size", 256, "Each split must hold block_size + 1 characters.", flag_values=f
    )


def train(f: flags.FlagValues, argv: list[str]) -> None:
    _config(f, argv)
    flags.DEFINE_string(
        "workdir", None, "Run directory: checkpoints, metrics, config.", flag_values=f
    )
    flags.DEFINE_bool(
        "overwrite", False, "With init_from=scratch, discard the run's checkpoints.", flag_values=f
    )
    _cpu_devices(f, "auto")


def eval_(f: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_string("workdir", None, "The directory of a `minigpt train` run.", flag_values=f)
    flags.DEFINE_string("step", "latest", "best, latest or a saved step number.", flag_values=f)
    flags.DEFINE_string("data_dir", None, "Data to use instead of the run's.", flag_values=f)
    flags.DEFINE_string("per_token", None, "Also write an HTML page: the val text coloured by "
                        "each character's loss.", flag_values=f)  # fmt: skip


def sample(f: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_string("workdir", None, "The directory of a `minigpt train` run.", flag_values=f)
    flags.DEFINE_string("step", "latest", "best, latest or a saved step number.", flag_values=f)
    flags.DEFINE_string("prompt", "\n", "The text to continue.", flag_values=f)
    flags.DEFINE_string("prompt_file", None, "Read the prompt from a file.", flag_values=f)
    flags.DEFINE_integer("max_new_tokens", 500, "Characters to generate.", flag_values=f)
    flags.DEFINE_float("temperature", 1.0, "Softmax temperature; 0 is greedy.", flag_values=f)
    flags.DEFINE_integer("top_k", None, "Keep the k most likely tokens.", flag_values=f)
    flags.DEFINE_float("top_p", 1.0, "Nucleus mass; 1 keeps every token.", flag_values=f)
    flags.DEFINE_integer("seed", 0, "Random seed.", flag_values=f)
    flags.DEFINE_integer("num_samples", 1, "Samples to draw, as one batch.", flag_values=f)
    flags.DEFINE_enum(
        "window", "chunked", ["chunked", "exact"],
        "Past block_size, 'exact' crops like nanoGPT (a full forward per token); 'chunked' keeps "
        "the last block_size/2 tokens and goes on cached (fast).", flag_values=f,
    )  # fmt: skip
    flags.DEFINE_string("out", None, "Also write the samples to this file.", flag_values=f)


def bench_sample(f: flags.FlagValues, argv: list[str]) -> None:
    _config(f, argv)
    flags.DEFINE_list("lengths", ["500", "2000"], "New-token counts to time.", flag_values=f)
    flags.DEFINE_integer("repeats", 3, "Timed repeats (median).", lower_bound=1, flag_values=f)
    flags.DEFINE_integer("num_samples", 1, "Rows per call.", lower_bound=1, flag_values=f)
    flags.DEFINE_string("out", None, "Also write the table to this file.", flag_values=f)
    _cpu_devices(f)
    _vs_torch(f)


def bench_train(f: flags.FlagValues, argv: list[str]) -> None:
    _config(f, argv)
    flags.DEFINE_integer(
        "steps", 20, "Timed steps after 3 warm-up steps.", lower_bound=1, flag_values=f
    )
    flags.DEFINE_string("out", None, "Also write the row as JSON to this file.", flag_values=f)
    _cpu_devices(f)
    _vs_torch(f)


def report(f: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_string(
        "out", None, "Folder for report.md and the curves (required; a sweep root: the root).",
        flag_values=f,
    )  # fmt: skip
    flags.DEFINE_enum(
        "x_axis", "steps", ["steps", "tokens", "time"],
        "The curves' x: steps, tokens seen, or the wall time of the run's processes.",
        flag_values=f,
    )  # fmt: skip


def convert(f: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_enum(
        "from", None, ["nanogpt", "mingpt"], "Import CKPT.pt of this kind.", flag_values=f
    )
    flags.DEFINE_enum("to", None, ["nanogpt"], "Export --workdir as this.", flag_values=f)
    flags.DEFINE_string(
        "workdir", None, "The run to write (import) or read (export).", flag_values=f
    )
    flags.DEFINE_string("meta", None, "Import: nanoGPT's meta.pkl or a meta.json.", flag_values=f)
    flags.DEFINE_string("out", None, "Export: the ckpt.pt to write.", flag_values=f)
    flags.DEFINE_string(
        "meta_out",
        None,
        "Export: where nanoGPT's meta.pkl goes (default: beside --out).",
        flag_values=f,
    )
    flags.DEFINE_string("step", "latest", "Export: best, latest or a step number.", flag_values=f)
    flags.DEFINE_integer(
        "n_head", None, "Import: heads, if the checkpoint lacks them.", flag_values=f
    )
    flags.DEFINE_enum(
        "activation", None, ["gelu", "gelu_tanh", "relu"],
        "Import: the MLP's activation (default gelu; mingpt: gelu_tanh).", flag_values=f,
    )  # fmt: skip
    flags.DEFINE_integer(
        "block_size", None, "Import: the context, if the checkpoint lacks it.", flag_values=f
    )
    flags.DEFINE_string("data_dir", None, "Import: the run's data dir.", flag_values=f)
    flags.DEFINE_bool(
        "overwrite", False, "Replace a non-empty --workdir (import), or an existing ckpt.pt or "
        "meta.pkl (export).", flag_values=f,
    )  # fmt: skip


def compare(f: flags.FlagValues, argv: list[str]) -> None:
    _config(f, argv)
    flags.DEFINE_string("out_dir", None, "Where the report goes.", flag_values=f)
    flags.DEFINE_integer("steps", 200, "Training steps of each side.", lower_bound=2, flag_values=f)
    flags.DEFINE_integer(
        "sample_tokens", 500, "Tokens each side samples.", lower_bound=1, flag_values=f
    )
    flags.DEFINE_integer("repeats", 3, "Timed sampling repeats.", lower_bound=1, flag_values=f)
    _torch_threads(f)


def sweep(f: flags.FlagValues, argv: list[str]) -> None:
    _config(f, argv)
    flags.DEFINE_string(
        "root",
        None,
        "The sweep's folder: sweep.json and a workdir per arm and seed.",
        flag_values=f,
    )
    flags.DEFINE_multi_string(
        "grid", [], "section.field=v1,v2 (repeat for a product of fields).", flag_values=f
    )
    flags.DEFINE_string(
        "sweep", None, "A Python file whose get_sweep() lists the arms (dicts of overrides).",
        flag_values=f,
    )  # fmt: skip
    flags.DEFINE_string("seeds", "3", "A count N (seeds 0..N-1) or a list 0,5,7.", flag_values=f)
    flags.DEFINE_integer(
        "parallel", 1, "Runs at once, each on its share of the CPU cores (or GPUs).",
        lower_bound=1, flag_values=f,
    )  # fmt: skip
    flags.DEFINE_string(
        "baseline", None, "The arm others are compared with (default: the first).", flag_values=f
    )
    flags.DEFINE_bool("retry_failed", False, "Run failed runs again.", flag_values=f)
    _cpu_devices(f)


def sweep_report(f: flags.FlagValues, argv: list[str]) -> None:
    flags.DEFINE_string("out", None, "Folder for the report (default: the root).", flag_values=f)
    flags.DEFINE_string(
        "baseline", None, "The arm others are compared with (default: the sweep's).", flag_values=f
    )
    flags.DEFINE_string(
        "metric", "final_val_loss_full", "summary.json key to sort and test by.", flag_values=f
    )


def plan(f: flags.FlagValues, argv: list[str]) -> None:
    _config(f, argv)
    flags.DEFINE_enum("device", "v5e", list(plan_lib.DEVICES), "The accelerator.", flag_values=f)
    flags.DEFINE_integer(
        "chips", 8, "Devices of the mesh (faked here).", lower_bound=1, flag_values=f
    )
    flags.DEFINE_float("mfu", 0.4, "Assumed model FLOPs utilization.", flag_values=f)
    flags.DEFINE_integer("vocab_size", 65, "The data's vocabulary.", lower_bound=1, flag_values=f)
    flags.DEFINE_bool("measure", True, "Compile the step here to read its memory.", flag_values=f)


DEFINE: dict[str, Callable[[flags.FlagValues, list[str]], None]] = {
    "prepare": prepare,
    "train": train,
    "eval": eval_,
    "sample": sample,
    "bench sample": bench_sample,
    "bench train": bench_train,
    "report": report,
    "convert": convert,
    "compare": compare,
    "sweep": sweep,
    "sweep report": sweep_report,
    "plan": plan,
}


def define(command: str, argv: list[str]) -> flags.FlagValues:
    """A fresh set of `command`'s flags: main() keeps no state between calls."""
    f = flags.FlagValues()
    DEFINE[command](f, argv)
    return f
