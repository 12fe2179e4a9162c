"""The `minigpt` command: prepare | train | eval | sample | bench | report | convert | compare.

Thin: parsing, then one library call.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pathlib
import sys

from absl import flags

from minigpt_jax import cli_flags

USAGE = """usage: minigpt COMMAND [--flags]

commands:
  prepare  [--input FILE] --data_dir DIR     text -> train.bin, val.bin, meta.json
  train    --config FILE[:variant] --workdir DIR [--config.a.b=v ...] [--overwrite]
           [--cpu_devices N]
  eval     --workdir DIR [--step best|latest|N] [--data_dir DIR]
  sample   --workdir DIR [--prompt TEXT | --prompt_file FILE] [--num_samples N] [--out FILE]
           [--max_new_tokens N] [--temperature T (0: greedy)] [--top_k K] [--top_p P]
           [--seed S] [--window chunked|exact]
  bench    sample [--config FILE[:variant]] [--lengths 500,2000] [--repeats R] [--out FILE]
  bench    train --config FILE[:variant] [--steps N] [--out FILE.json] [--cpu_devices N]
           [--vs torch] [--torch_threads N]
  report   RUN_DIR [RUN_DIR ...] [--out DIR]    summaries side by side + val curves
  convert  --from nanogpt|mingpt CKPT.pt --meta meta.pkl|meta.json --workdir DIR [--overwrite]
           [--n_head H] [--activation A] [--data_dir DIR]      import into a run workdir
  convert  --to nanogpt --workdir DIR --out ckpt.pt [--step latest|best|N]   export a run
  compare  --config FILE[:variant] --steps N --out_dir DIR [--sample_tokens N] [--torch_threads N]
           train JAX and the PyTorch reference side by side (needs the [torch] extra)

`minigpt COMMAND --helpfull` lists every flag."""


def _split_cpu(n: int) -> None:
    """--cpu_devices: XLA reads its flags when the backend starts, so this must come first."""
    from minigpt_jax.errors import UsageError

    if n < 1:
        raise UsageError("--cpu_devices must be at least 1")
    if "jax" in sys.modules:  # a caller already has jax (an in-process call): too late to split
        import jax

        if jax.default_backend() == "cpu" and jax.device_count() != n:
            raise UsageError(
                f"--cpu_devices {n}: jax already started with {jax.device_count()} CPU "
                "device(s) in this process; pass the flag to a fresh `minigpt` process"
            )
        return
    # Only a process about to start jax changes its XLA_FLAGS (they outlive this call).
    flag = f"--xla_force_host_platform_device_count={n}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()


def _enable_compilation_cache() -> None:
    # A second process then compiles the train step in ~0.1 s instead of seconds.
    import jax

    if not jax.config.jax_compilation_cache_dir:
        default = pathlib.Path.home() / ".cache" / "minigpt_jax" / "xla"
        jax.config.update(
            "jax_compilation_cache_dir", os.environ.get("MINIGPT_CACHE", str(default))
        )
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _prepare(FLAGS: flags.FlagValues) -> None:
    from minigpt_jax import data

    data_dir = pathlib.Path(FLAGS.data_dir)
    if FLAGS.input:
        text = data.read_text(FLAGS.input)
    else:
        text = data.read_text(data.download_shakespeare(data_dir / "input.txt"))
    meta = data.prepare(
        text, data_dir, val_fraction=FLAGS.val_fraction, block_size=FLAGS.block_size
    )
    print(
        f"wrote {data_dir}: vocab {meta['vocab_size']}, "
        f"train {meta['train_tokens']:,} tokens, val {meta['val_tokens']:,} tokens"
    )


def _train(FLAGS: flags.FlagValues, argv: list[str]) -> None:
    from minigpt_jax import train
    from minigpt_jax.errors import UsageError

    config = _load_config(FLAGS)
    if not FLAGS.workdir:
        raise UsageError("--workdir is required, e.g. --workdir runs/cpu")
    _enable_compilation_cache()
    results = train.train_and_evaluate(config, FLAGS.workdir, overwrite=FLAGS.overwrite)
    if results["stopped_by"]:
        again = " ".join(a for a in argv if a != "--overwrite")
        print(
            f"stopped by {results['stopped_by']} at step {results['step']} with a checkpoint; "
            f"resume with: minigpt {again}"
        )
        return
    from minigpt_jax.metrics import describe_eval

    print(f"done: {describe_eval(results)}; run in {FLAGS.workdir}")


def _eval(FLAGS: flags.FlagValues) -> None:
    from minigpt_jax import evaluate
    from minigpt_jax.errors import UsageError

    if not FLAGS.workdir:
        raise UsageError("--workdir is required: the directory of a `minigpt train` run")
    _enable_compilation_cache()
    data_dir = FLAGS.data_dir if FLAGS["data_dir"].present else None
    from minigpt_jax.metrics import describe_eval

    step, r = evaluate.evaluate_checkpoint(FLAGS.workdir, FLAGS.step, data_dir)
    print(f"step {step}: {describe_eval(r)}")


def _load_config(FLAGS: flags.FlagValues):
    from minigpt_jax.errors import UsageError

    example = "e.g. --config configs/shakespeare_char.py:cpu"
    try:
        config = FLAGS.config
        if config is None:
            raise UsageError(f"--config is required, {example}")
        config.keys()  # a config file that failed to load raises here
    except OSError as e:
        missing = [line.strip() for line in str(e).splitlines() if "No such file" in line]
        reason = missing[0] if missing else _one_line(e)
        raise UsageError(f"cannot load --config: {reason}; {example}") from None
    return config


def _sample(FLAGS: flags.FlagValues) -> None:
    from minigpt_jax import data, sample
    from minigpt_jax.errors import UsageError

    if not FLAGS.workdir:
        raise UsageError("--workdir is required: the directory of a `minigpt train` run")
    prompt = FLAGS.prompt
    if FLAGS.prompt_file:
        prompt = data.read_text(FLAGS.prompt_file)
    if not prompt:
        raise UsageError("the prompt is empty; pass at least one character with --prompt")
    if FLAGS.max_new_tokens < 0 or FLAGS.num_samples < 1 or FLAGS.temperature < 0:
        raise UsageError("max_new_tokens >= 0, num_samples >= 1 and temperature >= 0 are required")
    if not 0.0 < FLAGS.top_p <= 1.0 or (FLAGS.top_k is not None and FLAGS.top_k < 1):
        raise UsageError("top_p must be in (0, 1] and top_k at least 1")
    out = _out_path(FLAGS.out)
    _enable_compilation_cache()
    sample.sample_run(
        FLAGS.workdir,
        prompt,
        seed=FLAGS.seed,
        max_new_tokens=FLAGS.max_new_tokens,
        temperature=FLAGS.temperature,
        top_k=FLAGS.top_k,
        top_p=FLAGS.top_p,
        num_samples=FLAGS.num_samples,
        window=FLAGS.window,
        out=out,
    )


def _bench(FLAGS: flags.FlagValues, what: str) -> None:
    from minigpt_jax import bench
    from minigpt_jax.errors import UsageError

    if what == "train":
        return _bench_train(FLAGS)
    config = _load_config(FLAGS) if FLAGS["config"].present else None
    try:
        lengths = [int(n) for n in FLAGS.lengths]
    except ValueError:
        lengths = []
    if not lengths or min(lengths) < 1 or FLAGS.repeats < 1 or FLAGS.num_samples < 1:
        raise UsageError("--lengths takes positive integers (500,2000); --repeats at least 1")
    try:
        cfg = bench.model_config(config)
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"bad model section in --config: {e}") from None
    out = _out_path(FLAGS.out)
    _enable_compilation_cache()
    if FLAGS.torch_threads and importlib.util.find_spec("torch"):
        import torch

        torch.set_num_threads(FLAGS.torch_threads)
    rows = bench.run_sample(
        cfg, lengths=lengths, repeats=FLAGS.repeats, num_samples=FLAGS.num_samples
    )
    if out:
        out.write_text(bench.table(rows) + "\n")


def _bench_train(FLAGS: flags.FlagValues) -> None:
    import json

    from minigpt_jax import bench
    from minigpt_jax.errors import UsageError

    if not FLAGS["config"].present:
        raise UsageError("bench train needs --config, e.g. configs/shakespeare_char.py:cpu")
    config = _load_config(FLAGS)
    steps = 20 if FLAGS.steps is None else FLAGS.steps
    if steps < 1:
        raise UsageError("--steps must be at least 1")
    out = _out_path(FLAGS.out)
    try:
        bench.model_config(config)
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"bad model section in --config: {e}") from None
    _enable_compilation_cache()
    if FLAGS.vs == "torch":
        from minigpt_jax import convert

        convert.require_torch()  # before compiling anything: the line that says how to get it
    row = bench.run_train(
        config, steps=steps, vs_torch=FLAGS.vs == "torch", torch_threads=FLAGS.torch_threads
    )
    if out:
        from minigpt_jax.data import atomic_write_bytes

        atomic_write_bytes(out, json.dumps(row, indent=2).encode())


def _convert(FLAGS: flags.FlagValues, positional: list[str]) -> None:
    from minigpt_jax import convert
    from minigpt_jax.errors import UsageError

    convert.require_torch()  # before anything else: the one line that says how to get it
    source, target = FLAGS["from"].value, FLAGS["to"].value
    if (source is None) == (target is None):
        raise UsageError("pass --from nanogpt|mingpt CKPT.pt to import, or --to nanogpt to export")
    if not FLAGS.workdir:
        raise UsageError("--workdir is required: the run to write (import) or read (export)")
    if target:
        if positional or not FLAGS.out:
            raise UsageError("export takes no CKPT argument; pass --out ckpt.pt")
        step = convert.export_nanogpt(FLAGS.workdir, FLAGS.out, FLAGS.step)
        print(f"wrote {FLAGS.out}: step {step} of {FLAGS.workdir}, nanoGPT's checkpoint format")
        return
    if len(positional) != 1 or not FLAGS.meta:
        raise UsageError(
            f"usage: minigpt convert --from {source} CKPT.pt --meta META --workdir DIR"
        )
    overrides = {"n_head": FLAGS.n_head, "activation": FLAGS.activation}
    if FLAGS["block_size"].present:
        overrides["block_size"] = FLAGS.block_size
    data_dir = FLAGS.data_dir if FLAGS["data_dir"].present else None
    cfg, step = convert.import_checkpoint(
        positional[0], FLAGS.meta, FLAGS.workdir, source=source, overrides=overrides,
        data_dir=data_dir, overwrite=FLAGS.overwrite,
    )  # fmt: skip
    print(
        f"imported {positional[0]} (step {step}, {cfg.n_layer} layers, {cfg.n_embd} wide, vocab "
        f"{cfg.vocab_size}) into {FLAGS.workdir}; try: minigpt sample --workdir {FLAGS.workdir}"
    )


def _compare(FLAGS: flags.FlagValues) -> None:
    from minigpt_jax import compare, convert
    from minigpt_jax.errors import UsageError

    convert.require_torch()  # before loading anything else
    config = _load_config(FLAGS)
    if not FLAGS.out_dir:
        raise UsageError("--out_dir is required, e.g. --out_dir experiments/compare_torch")
    steps = 200 if FLAGS.steps is None else FLAGS.steps
    if steps < 2 or FLAGS.sample_tokens < 1 or FLAGS.repeats < 1 or FLAGS.torch_threads < 0:
        raise UsageError(
            "--steps must be at least 2, --sample_tokens and --repeats at least 1, "
            "--torch_threads at least 0"
        )
    _enable_compilation_cache()
    compare.run(
        config, FLAGS.out_dir, steps=steps, sample_tokens=FLAGS.sample_tokens,
        repeats=FLAGS.repeats, torch_threads=FLAGS.torch_threads,
    )  # fmt: skip


def _out_path(out: str | None) -> pathlib.Path | None:
    """--out checked before any work: its folder must exist and it must not be a folder."""
    from minigpt_jax.errors import UsageError

    if out is None:
        return None
    path = pathlib.Path(out)
    if path.is_dir() or not path.parent.is_dir():
        what = "is a directory" if path.is_dir() else f"needs the folder {path.parent} to exist"
        raise UsageError(f"--out {out} {what}; pass a file path in an existing folder")
    return path


def _report(FLAGS: flags.FlagValues, runs: list[str]) -> None:
    from minigpt_jax import report

    out = FLAGS.out or "report"
    print(report.report(runs, out), end="")
    print(f"(written to {out}/report.md and {out}/val_curves.png)")


BENCHMARKS = ("sample", "train")  # `minigpt bench WHAT`


COMMANDS = {
    "prepare": _prepare,
    "train": _train,
    "eval": _eval,
    "sample": _sample,
    "bench": _bench,
    "report": _report,
    "convert": _convert,
    "compare": _compare,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if len(argv) >= 2 else 2
    command = argv[1]
    if command not in COMMANDS:
        print(
            f"minigpt: unknown command {command!r}; use one of {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    from minigpt_jax.errors import RunStopped, UsageError

    run, rest = COMMANDS[command], argv[2:]
    if command == "train":  # the resume hint repeats this very command line
        run = functools.partial(_train, argv=argv[1:])
    if command == "bench":  # `minigpt bench WHAT [--flags]`
        what = rest[0] if rest else None
        if what not in BENCHMARKS:
            print(
                f"minigpt bench: error: name what to time: {', '.join(BENCHMARKS)}", file=sys.stderr
            )
            return 2
        run, rest = functools.partial(_bench, what=what), rest[1:]
    args = [f"minigpt {command}", *rest]
    FLAGS = cli_flags.define_flags(args)
    try:
        extra = FLAGS(args)[1:]
        if command == "report":  # the runs are positional
            run, extra = functools.partial(_report, runs=extra), []
        elif command == "convert":  # `minigpt convert --from nanogpt CKPT.pt ...`
            run, extra = functools.partial(_convert, positional=extra[:1]), extra[1:]
        if extra:
            raise flags.Error(f"unexpected argument {extra[0]!r}; flags take the form --name value")
    except flags.Error as e:
        print(f"minigpt {command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except (AttributeError, KeyError) as e:  # a --config.x.y override naming no field
        inner = e.args[0] if e.args else e
        inner = inner.args[0] if isinstance(inner, KeyError) and inner.args else inner
        print(f"minigpt {command}: error: no such config field {_one_line(inner)}", file=sys.stderr)
        return 2
    try:
        if FLAGS.cpu_devices is not None:
            _split_cpu(FLAGS.cpu_devices)
        run(FLAGS)
    except UsageError as e:
        print(f"minigpt {command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except RunStopped as e:
        print(f"minigpt {command}: stopped: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"minigpt {command}: interrupted", file=sys.stderr)
        return 130
    return 0


def _one_line(e: BaseException) -> str:
    """The message on one line; of an embedded traceback, only its final line."""
    text = str(e)
    if "Traceback (most recent call last)" in text:
        head = text.split(":", 1)[0] if text.startswith("flag ") else ""
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = f"{head}: {last.strip()}" if head else last
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
