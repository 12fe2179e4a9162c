"""The `minigpt` command: prepare | train | eval | sample | bench | report | convert | compare |
sweep | plan.

Thin: each command parses its own flags and makes one library call; the library raises typed
errors (errors.py) and main() maps them to exit codes: 2 bad input, 1 a stopped run, 130 Ctrl-C,
143 a SIGTERM before the run started, 3 a multi-host run whose processes name different runs.
"""

from __future__ import annotations

import pathlib
import sys

from absl import flags

from minigpt_jax import cli_flags, config_file, startup
from minigpt_jax.errors import OutOfStep, RunStopped, Terminated, UsageError, one_line


def _need(FLAGS: flags.FlagValues, name: str, example: str) -> str:
    if not FLAGS[name].value:
        raise UsageError(f"--{name} is required, {example}")
    return FLAGS[name].value


def _config(FLAGS: flags.FlagValues):
    config = FLAGS.config
    if config is None:
        raise UsageError(f"--config is required, {config_file.CONFIG_EXAMPLE}")
    if isinstance(config, config_file.UnloadableConfig):  # a config file that failed to load
        raise config.error
    return config


def _prepare(FLAGS: flags.FlagValues, argv: list[str]) -> None:
    from minigpt_jax import data, files

    data_dir = pathlib.Path(FLAGS.data_dir)
    source = FLAGS.input or data.download_shakespeare(data_dir / "input.txt")
    meta = data.prepare(
        files.read_text(source), data_dir, val_fraction=FLAGS.val_fraction,
        block_size=FLAGS.block_size,
    )  # fmt: skip
    print(
        f"wrote {data_dir}: vocab {meta['vocab_size']}, "
        f"train {meta['train_tokens']:,} tokens, val {meta['val_tokens']:,} tokens"
    )


def _train(FLAGS: flags.FlagValues, argv: list[str]) -> None:
    from minigpt_jax import clock, header, invocation, metrics, train

    program, argv = argv[0], argv[1:]  # argv[0]: how the user started us, for the resume hint
    run_dir = _need(FLAGS, "workdir", "e.g. --workdir runs/cpu")
    config = _config(FLAGS)  # --config, or the run's own config.json (cli_flags.train_argv)
    results = train.train_and_evaluate(
        config, run_dir, overwrite=FLAGS.overwrite, source=header.source_of(argv)
    )
    if results.get("wall"):
        print(clock.describe(results["wall"]))
    if results["stopped_by"] == "target":
        print(f"done at the target, step {results['step']}: {metrics.describe_eval(results)}")
    elif results["stopped_by"]:
        saved = "with a checkpoint" if results["step"] else "before training, nothing to save"
        print(
            f"stopped by {results['stopped_by']} at step {results['step']} {saved}; "
            f"resume with: {invocation.resume_command(program, argv)}"
        )
    else:
        print(f"done: {metrics.describe_eval(results)}; run in {run_dir}")


def _eval(FLAGS: flags.FlagValues, argv: list[str]) -> None:
    from minigpt_jax import eval_run, files, metrics

    workdir = _need(FLAGS, "workdir", "the directory of a `minigpt train` run")
    html = files.out_path(FLAGS.per_token, "--per_token")  # checked before any work
    step, r = eval_run.evaluate_checkpoint(workdir, FLAGS.step, FLAGS.data_dir, html)
    print(f"step {step}: {metrics.describe_eval(r)}")
    if html:
        print(f"wrote {html}: the val text coloured by each character's loss")


def _sample(FLAGS: flags.FlagValues, argv: list[str]) -> None:
    from minigpt_jax import files, sample_run

    workdir = _need(FLAGS, "workdir", "the directory of a `minigpt train` run")
    prompt = files.read_text(FLAGS.prompt_file) if FLAGS.prompt_file else FLAGS.prompt
    out = files.out_path(FLAGS.out)
    sample_run.sample_run(
        workdir, prompt, step=FLAGS.step, seed=FLAGS.seed, max_new_tokens=FLAGS.max_new_tokens,
        temperature=FLAGS.temperature, top_k=FLAGS.top_k, top_p=FLAGS.top_p,
        num_samples=FLAGS.num_samples, window=FLAGS.window, out=out,
    )  # fmt: skip


def _bench_sample(FLAGS: flags.FlagValues, argv: list[str]) -> None:
    from minigpt_jax import bench_sample

    config = _config(FLAGS) if FLAGS["config"].present else None
    bench_sample.run_sample(
        config, lengths=FLAGS.lengths, repeats=FLAGS.repeats, num_samples=FLAGS.num_samples,
        vs_torch=FLAGS.vs == "torch", torch_threads=FLAGS.torch_threads, table_out=FLAGS.out,
    )  # fmt: skip


def _bench_train(FLAGS: flags.FlagValues, argv: list[str]) -> None:
    from minigpt_jax import bench

    bench.run_train(
        _config(FLAGS), steps=FLAGS.steps, vs_torch=FLAGS.vs == "torch",
        torch_threads=FLAGS.torch_threads, json_out=FLAGS.out,
    )  # fmt: skip


def _report(FLAGS: flags.FlagValues, argv: list[str]) -> None:
    from minigpt_jax import report, sweep, sweep_report

    if len(argv) == 1 and (pathlib.Path(argv[0]) / sweep.MANIFEST).is_file():  # a sweep root
        print(sweep_report.report(argv[0], FLAGS.out if FLAGS["out"].present else None), end="")
        return
    print(report.report(argv, FLAGS.out, FLAGS.x_axis), end="")
    print(f"(written to {FLAGS.out}/: report.md, val_curves.png, train_curves.png)")


def _convert(FLAGS: flags.FlagValues, argv: list[str]) -> None:
    from minigpt_jax import nanogpt

    overrides = {k: FLAGS[k].value for k in ("n_head", "activation", "block_size")}
    print(nanogpt.convert(
        source=FLAGS["from"].value, target=FLAGS["to"].value, ckpt=argv, workdir=FLAGS.workdir,
        meta=FLAGS.meta, out=FLAGS.out, step=FLAGS.step, overrides=overrides,
        data_dir=FLAGS.data_dir, overwrite=FLAGS.overwrite, meta_out=FLAGS.meta_out,
    ))  # fmt: skip


def _compare(FLAGS: flags.FlagValues, argv: list[str]) -> None:
    from minigpt_jax import compare, errors

    errors.require_torch()  # before loading anything else
    config = _config(FLAGS)
    out_dir = _need(FLAGS, "out_dir", "e.g. --out_dir experiments/compare_torch")
    compare.run(
        config, out_dir, steps=FLAGS.steps, sample_tokens=FLAGS.sample_tokens,
        repeats=FLAGS.repeats, torch_threads=FLAGS.torch_threads,
    )  # fmt: skip


def _sweep(FLAGS: flags.FlagValues, argv: list[str]) -> None:
    from minigpt_jax import sweep, sweep_hosts, sweep_report, sweep_spec

    argv = argv[1:]  # not the program's name
    root = pathlib.Path(_need(FLAGS, "root", "e.g. --root runs/act"))
    old = sweep.read_manifest(root)
    config = _config(FLAGS) if FLAGS.config is not None or old is None else None
    seeds = FLAGS.seeds if FLAGS["seeds"].present else None
    base, arms, seeds = sweep_spec.resolve(config, old, FLAGS.grid, FLAGS.sweep, seeds)
    hosts = sweep_hosts.of(base, FLAGS.parallel)  # None: one host
    base = sweep_hosts.without_dist(base)
    manifest = sweep.plan(root, base, arms, seeds, sweep_spec.source(argv), FLAGS.baseline)
    if hosts and hosts.index > 0:  # process 0 writes the manifest and the report
        print(sweep_hosts.follow(root, manifest, hosts, FLAGS.cpu_devices, FLAGS.retry_failed))
        return
    counts = sweep.sweep(
        root, manifest, parallel=FLAGS.parallel, cpu_devices=FLAGS.cpu_devices,
        retry_failed=FLAGS.retry_failed, child_flags=hosts.flags if hosts else (),
    )  # fmt: skip
    if counts.get("done"):
        print(sweep_report.report(root), end="")
    print(sweep.describe(root, counts))
    if counts.get("failed"):
        raise RunStopped(f"{counts['failed']} run(s) failed; their errors are in {root}/report.md")


def _sweep_report(FLAGS: flags.FlagValues, argv: list[str]) -> None:
    from minigpt_jax import sweep_report

    if not argv:
        raise UsageError("name the sweep: minigpt sweep report ROOT [--baseline ARM]")
    root = argv[0]
    print(sweep_report.report(root, FLAGS.out, baseline=FLAGS.baseline, sort_by=FLAGS.metric))


def _plan(FLAGS: flags.FlagValues, argv: list[str]) -> None:
    from minigpt_jax import plan

    config = _config(FLAGS)
    plan.check(FLAGS.device, FLAGS.mfu)
    startup.split_cpu(FLAGS.chips)  # the mesh's devices, faked on this CPU, before jax starts
    startup.compilation_cache()
    print(plan.describe(plan.make_plan(
        config, FLAGS["config"].config_filename, FLAGS.device, FLAGS.chips, mfu=FLAGS.mfu,
        vocab_size=FLAGS.vocab_size, measure=FLAGS.measure,
    )))  # fmt: skip


# Each command's handler and how many positional arguments it takes (None: any number).
COMMANDS = {
    "prepare": (_prepare, 0),
    "train": (_train, 0),
    "eval": (_eval, 0),
    "sample": (_sample, 0),
    "bench sample": (_bench_sample, 0),
    "bench train": (_bench_train, 0),
    "report": (_report, None),
    "convert": (_convert, 1),
    "compare": (_compare, 0),
    "sweep": (_sweep, 0),
    "sweep report": (_sweep_report, 1),
    "plan": (_plan, 0),
}
JAX_FREE = (
    "prepare",
    "report",
    "sweep",
    "sweep report",
    "plan",  # starts jax itself, on as many fake devices as it plans for
)  # sweep: its runs start jax  # the rest compile: they use the persistent cache
BENCHMARKS = ("sample", "train")  # `minigpt bench WHAT`


def _error(command: str, e: BaseException, code: int = 2) -> int:
    print(f"minigpt {command}: error: {one_line(e)}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    startup.join_sweep()  # a run started by `minigpt sweep`: its cores, and a stop if it dies
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(cli_flags.USAGE)
        return 0 if len(argv) >= 2 else 2
    command, rest = argv[1], argv[2:]
    if command == "bench":
        what = rest[0] if rest else None
        if what not in BENCHMARKS:
            print(f"minigpt bench: error: name what to time: {', '.join(BENCHMARKS)}",
                  file=sys.stderr)  # fmt: skip
            return 2
        command, rest = f"bench {what}", rest[1:]
    elif command == "sweep" and rest[:1] == ["report"]:
        command, rest = "sweep report", rest[1:]
    if command not in COMMANDS:
        print(f"minigpt: unknown command {command!r}; use one of {', '.join(cli_flags.DEFINE)}",
              file=sys.stderr)  # fmt: skip
        return 2
    run, positional = COMMANDS[command]
    args = [f"minigpt {command}", *rest]
    try:
        args = cli_flags.train_argv(args) if command == "train" else args
    except UsageError as e:
        return _error(command, e)
    FLAGS = cli_flags.define(command, args)
    if "--help" in rest or "-h" in rest:
        listing = FLAGS.get_help(include_special_flags=False).splitlines()
        listing = [line for line in listing if line.startswith(" ")]  # not the module's name
        print(f"usage: minigpt {command} [--flags]\n", *listing, sep="\n")
        return 0
    try:
        extra = FLAGS(args)[1:]
        if positional is not None and len(extra) > positional:
            raise flags.Error(
                f"unexpected argument {extra[positional]!r}; flags take the form --name value"
            )
    except (flags.Error, UsageError) as e:  # UsageError: an override of an unloadable --config
        return _error(command, e)
    except (AttributeError, KeyError) as e:  # a --config.x.y override naming no field
        inner = e.args[0] if e.args else e
        inner = inner.args[0] if isinstance(inner, KeyError) and inner.args else inner
        print(f"minigpt {command}: error: no such config field {one_line(inner)}", file=sys.stderr)
        return 2
    try:
        spec = FLAGS.cpu_devices if "cpu_devices" in FLAGS else None
        if spec == "auto":
            spec = startup.auto_cpu_devices(FLAGS.config, FLAGS.workdir)
        if spec is not None:
            startup.split_cpu(int(spec))
        if command not in JAX_FREE:
            startup.compilation_cache()
        run(FLAGS, argv if command in ("train", "sweep") else extra)
    except UsageError as e:
        return _error(command, e)
    except RunStopped as e:
        print(f"minigpt {command}: stopped: {one_line(e)}", file=sys.stderr)
        return 1
    except OutOfStep as e:
        return _error(command, e, OutOfStep.exit_code)
    except KeyboardInterrupt:
        print(f"minigpt {command}: interrupted", file=sys.stderr)
        return 130
    except Terminated as e:
        print(f"minigpt {command}: {one_line(e)}", file=sys.stderr)
        return 143
    return 0


if __name__ == "__main__":
    sys.exit(main())
