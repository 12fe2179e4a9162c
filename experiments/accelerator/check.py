"""The accelerator check behind run.sh: each step's JSON in one folder, then the README's table
filled from those files (table.py).

Steps run one after another in this process (on a GPU: one process holds the device). A step
that fails is recorded and the next one runs; a step this machine cannot run (cuDNN without a
GPU) says so by name. --dry runs every step at toy size on any CPU; with --jobs N the step
groups run in N worker processes at once (XLA:CPU compiles on one core). The test suite runs
`run.sh --dry --jobs 2` (tests/accelerator_test.py).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE)]  # the checkout's package and the modules beside this one

import jax  # noqa: E402  (after the path: the checkout's package, not an installed one)
import probes  # noqa: E402
import table  # noqa: E402

from minigpt_jax import cli, config_file, files  # noqa: E402

CHAR, GPT2 = "configs/tpu.py:char", "configs/tpu.py:gpt2_124m"
# --dry: every model 1/2/32, block 32, batch 8 (the 124M preset keeps its 4 micro-steps).
TOY = {"model.n_layer": 1, "model.n_head": 2, "model.n_embd": 32, "model.block_size": 32,
       "train.batch_size": 8}  # fmt: skip
# --dry recipe: 4 steps, evals at 0 and 4, no samples at evals (the sample step times them).
RECIPE_TOY = {"train.max_iters": 4, "train.eval_interval": 4, "train.eval_iters": 2,
              "train.ckpt_interval": 4, "train.log_interval": 1,
              "sample.max_new_tokens": 0}  # fmt: skip
# What --jobs deals out: the benches together (the cudnn one reuses the XLA one's program when
# cuDNN falls back), the longest groups first.
GROUPS = (("env", "attention", "sample"), ("bench_char", "bench_gpt2", "bench_gpt2_cudnn"),
          ("recipe",))  # fmt: skip


def flags(overrides: dict[str, Any]) -> list[str]:
    return [f"--config.{k}={str(v).lower() if isinstance(v, bool) else v}"
            for k, v in overrides.items()]  # fmt: skip


def load(spec: str, overrides: dict[str, Any]) -> Any:
    """A preset as `--config spec` plus `--config.k=v` overrides would give it."""
    c = config_file.load_config_file(str(ROOT / spec))
    for key, value in overrides.items():
        section, field = key.split(".")
        c[section][field] = value
    return c


class Tee(io.TextIOBase):
    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)


def minigpt(*argv: str) -> str:
    """Runs `minigpt ARGV` in this process; a non-zero exit raises with its error line."""
    err = io.StringIO()
    with contextlib.redirect_stderr(Tee(sys.stderr, err)):
        code = cli.main(["minigpt", *argv])
    if code:
        lines = [line for line in err.getvalue().splitlines() if line.strip()]
        raise RuntimeError(f"exit {code}: {lines[-1] if lines else 'no error line'}")
    return "minigpt " + " ".join(argv)


def bench_train(args: argparse.Namespace, out: pathlib.Path, spec: str, extra: dict) -> dict:
    steps = "1" if args.dry else ("50" if spec == CHAR else "20")
    fd, name = tempfile.mkstemp(
        suffix=".json", dir=out
    )  # bench writes it; the step's JSON keeps it
    os.close(fd)
    json_path = pathlib.Path(name)
    try:
        command = minigpt("bench", "train", "--config", spec, "--steps", steps, *flags(extra),
                          "--out", str(json_path))  # fmt: skip
        row = json.loads(json_path.read_text())
    finally:
        json_path.unlink()
    return {"command": command.replace(str(json_path), "FILE.json"), **row}


def gpt2_batch(args: argparse.Namespace) -> dict:
    # The preset's 128 sequences per micro-step are 16 per chip on 8 chips; on fewer, 128 would
    # not fit (XLA attention keeps a T x T fp32 score matrix per head): 16 per device, at most 128.
    return {} if args.dry else {"train.batch_size": min(128, 16 * jax.device_count())}


def recipe(args: argparse.Namespace, out: pathlib.Path) -> dict:
    """nanoGPT's shakespeare_char (configs/tpu.py:char, as docs/tpu.md runs it on one GPU) for
    --recipe_iters steps of its 5000: the first part of its curve, its lr schedule unchanged."""
    data_dir = pathlib.Path(args.data_dir)
    commands = []
    if args.input or not (data_dir / "meta.json").is_file():  # without --input: downloads
        commands.append(minigpt("prepare", *(["--input", args.input] if args.input else []),
                                "--data_dir", str(data_dir)))  # fmt: skip
    overrides = {
        "dist.auto": False,
        "data.dir": str(data_dir),
        "train.max_iters": args.recipe_iters,
    }
    overrides |= {**TOY, **RECIPE_TOY} if args.dry else {}
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="minigpt_accelerator_"))  # ours to delete
    keep = out / "recipe_run"  # the run's files beside its numbers; not its checkpoints
    try:
        run = minigpt("train", "--config", CHAR, "--workdir", str(workdir), *flags(overrides))
        commands.append(run.replace(str(workdir), "WORKDIR"))
        shutil.rmtree(keep, ignore_errors=True)
        keep.mkdir()
        for name in ("summary.json", "metrics.jsonl", "config.json", "loss.png", "samples"):
            src = workdir / name
            if src.is_dir():
                shutil.copytree(src, keep / name)
            elif src.is_file():
                shutil.copy(src, keep / name)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary = json.loads((keep / "summary.json").read_text())
    records = [json.loads(line) for line in (keep / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["step"], r.get("val_loss")) for r in records if r["kind"] == "eval"]
    return {"command": " && ".join(commands), "summary": summary, "val_curve": curve}


def plan(args: argparse.Namespace, out: pathlib.Path) -> dict[str, tuple[str, Callable[[], dict]]]:
    """Step name -> (what it measures, the call that measures it)."""
    toy = TOY if args.dry else {}
    shapes = {"toy": (2, 32, 2, 16)} if args.dry else {
        "char": (8, 256, 6, 64), "gpt2_124m": (8, 1024, 12, 64)}  # fmt: skip
    lengths, repeats = ([40], 1) if args.dry else ([500, 2000], 3)  # 40: past the toy block
    cudnn = {"model.attention": "cudnn"}
    return {
        "env": ("devices and versions", probes.environment),
        "bench_char": ("bench train :char", lambda: bench_train(args, out, CHAR, toy)),
        "bench_gpt2": ("bench train :gpt2_124m", lambda: bench_train(
            args, out, GPT2, {**toy, **gpt2_batch(args)})),
        "bench_gpt2_cudnn": ("bench train :gpt2_124m cudnn", lambda: bench_train(
            args, out, GPT2, {**toy, **gpt2_batch(args), **cudnn})),
        "attention": ("cuDNN vs XLA attention", lambda: probes.attention(
            shapes, load(CHAR, toy))),
        "sample": ("bench sample :char", lambda: probes.sampler(
            load(CHAR, toy), lengths, repeats)),
        "recipe": ("shakespeare_char recipe", lambda: recipe(args, out)),
    }  # fmt: skip


def run_step(name: str, what: str, call: Callable[[], dict], out: pathlib.Path, dry: bool) -> dict:
    """One step, timed, its fallback warnings kept; its JSON written whatever happens."""
    print(f"\n=== {name}: {what} ===", flush=True)
    fallbacks = probes.FallbackLog()
    logging.getLogger().addHandler(fallbacks)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        record = {"status": "ok", "result": call()}
    except probes.CannotRun as e:
        record = {"status": "cannot run here", "reason": str(e)}
    except Exception as e:  # recorded, and the next step runs: one failure costs one row
        traceback.print_exc()
        record = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
    finally:
        logging.getLogger().removeHandler(fallbacks)
    record = {"step": name, "what": what, **record, "seconds": time.perf_counter() - t0,
              "cpu_s": time.process_time() - c0, "fallbacks": sorted(set(fallbacks.messages)),
              "dry": dry}  # fmt: skip
    files.atomic_write_bytes(out / f"{name}.json", json.dumps(record, indent=2).encode())
    print(f"=== {name}: {record['status']} in {record['seconds']:.1f} s", flush=True)
    return record


def in_workers(args: argparse.Namespace, chosen: list[str], out: pathlib.Path) -> None:
    """--jobs N: each group of chosen steps in a worker process (this script, --only), N at a
    time; a worker's output goes to OUT/log_<its first step>.txt."""
    same = ["--out", str(out), "--data_dir", args.data_dir, "--recipe_iters",
            str(args.recipe_iters), *(["--dry"] if args.dry else []),
            *(["--input", args.input] if args.input else [])]  # fmt: skip
    groups = [[s for s in g if s in chosen] for g in GROUPS]

    def work(group: list[str]) -> None:
        log = out / f"log_{group[0]}.txt"
        with log.open("w") as f:
            argv = [sys.executable, __file__, *same, "--only", ",".join(group), "--worker"]
            code = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT).returncode
        print(f"=== worker {','.join(group)}: exit {code}, its output in {log}", flush=True)

    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(work, [g for g in groups if g]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry", action="store_true", help="toy sizes: every step on any CPU")
    p.add_argument("--out", default=str(HERE / "results"), help="folder for the JSON files")
    p.add_argument("--input", help="a text to prepare for the recipe (else --data_dir's data)")
    p.add_argument("--data_dir", default=str(ROOT / "data/shakespeare_char"))
    p.add_argument("--recipe_iters", type=int, default=1000, help="steps of the recipe's 5000")
    p.add_argument("--only", help="comma-separated steps to run (the others' files are kept)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (CPU only: 1 on a GPU)")
    p.add_argument("--render", action="store_true", help="only fill the table from --out's files")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # --jobs' children
    args = p.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = plan(args, out)
    chosen = args.only.split(",") if args.only else list(steps)
    if unknown := sorted(set(chosen) - set(steps)):
        p.error(f"unknown step(s) {unknown}; the steps are {', '.join(steps)}")
    for name in [] if args.render else chosen:  # no stale file may stand for a step run now
        (out / f"{name}.json").unlink(missing_ok=True)
    if args.jobs > 1 and not args.render:
        in_workers(args, chosen, out)
    elif not args.render:
        for name in chosen:
            run_step(name, *steps[name], out, args.dry)
    if args.worker:
        return 0  # the parent reads the step files
    records = {n: json.loads(f.read_text()) for n in chosen if (f := out / f"{n}.json").is_file()}
    # A dry run fills a copy: the checkout's README keeps its empty rows (or real numbers).
    readme = HERE / "README.md"
    rendered = table.render(out)
    (out / "README.md" if args.dry else readme).write_text(table.fill(readme.read_text(), rendered))
    print("\n" + rendered)
    bad = [n for n in chosen if records.get(n, {}).get("status", "failed") == "failed"]
    print(
        f"\nJSON in {out}; " + (f"FAILED or missing: {', '.join(bad)}" if bad else "no step failed")
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
