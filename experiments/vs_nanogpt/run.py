"""nanoGPT's CPU recipe and ours, whole runs from command to exit, alternating over rounds.

    python experiments/vs_nanogpt/run.py --nanogpt /path/to/nanoGPT \
        --input data/tinyshakespeare/input.txt --out runs/vs_nanogpt --rounds 3

Each round runs every arm once, in turn (the order reversed every other round, so a drift in the
machine's speed does not favour one arm); the wall time is the process's, from start to exit.
nanoGPT runs its README's CPU command in its own checkout (the data prepared by its own
prepare.py); ours run `minigpt train` on the same text with the same recipe. Written to OUT:
results.json, report.md, and per round and arm the run's output (and ours' run files). Run it on
a quiet machine: its numbers are the machine's as much as the code's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGET = 1.90  # full val loss of nanoGPT's own CPU-recipe model under our evaluator: 1.898


def nanogpt_command(out_dir: pathlib.Path, iters: int, warmup: int) -> list[str]:
    """nanoGPT's README CPU recipe (README, 'I only have a macbook'), its out_dir moved."""
    return [
        sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu",
        "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
        "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", f"--max_iters={iters}",
        f"--lr_decay_iters={iters}", "--dropout=0.0", f"--out_dir={out_dir}",
        f"--warmup_iters={warmup}",
    ]  # fmt: skip


def minigpt_command(
    config: str, workdir: pathlib.Path, data: pathlib.Path, iters: int, warmup: int
) -> list[str]:
    return [
        sys.executable, "-m", "minigpt_jax.cli", "train", "--config", config,
        "--workdir", str(workdir), f"--config.data.dir={data}",
        f"--config.train.max_iters={iters}", f"--config.opt.lr_decay_iters={iters}",
        f"--config.opt.warmup_iters={warmup}",
        f"--config.train.target_val_loss={TARGET}", "--config.train.stop_at_target=false",
    ]  # fmt: skip


OURS = {"minigpt": "configs/shakespeare_char.py:cpu", "modern": "configs/modern.py:cpu"}


def prepare(nanogpt: pathlib.Path, text: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """nanoGPT's data by its prepare.py (the text copied into its checkout), ours by ours."""
    here = nanogpt / "data" / "shakespeare_char"
    if not (here / "prepare.py").is_file():
        sys.exit(
            f"error: {nanogpt} is not a nanoGPT checkout (no data/shakespeare_char/prepare.py)"
        )
    copy = here / "input.txt"
    if copy.exists() and copy.read_bytes() != text.read_bytes():
        sys.exit(f"error: {copy} holds another text than {text}; move it away first")
    shutil.copyfile(text, copy)
    # prepare.py imports requests for its download, which the copied text makes unneeded; where
    # requests is not installed, a stand-in that refuses to download takes its place.
    env = {**os.environ}
    if importlib.util.find_spec("requests") is None:
        shim = out / "shim"
        shim.mkdir()
        stand_in = "def get(url):\n    raise SystemExit('offline: ' + url)\n"
        (shim / "requests.py").write_text(stand_in)
        env["PYTHONPATH"] = os.pathsep.join([str(shim), env.get("PYTHONPATH", "")])
    subprocess.run([sys.executable, "prepare.py"], cwd=here, check=True, capture_output=True,
                   env=env)  # fmt: skip
    data = out / "data"
    subprocess.run(
        [sys.executable, "-m", "minigpt_jax.cli", "prepare", "--input", str(text),
         "--data_dir", str(data)],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    return data


def run_arm(arm: str, args: argparse.Namespace, run_dir: pathlib.Path, data: pathlib.Path) -> dict:
    """One whole run: its wall seconds, the load before it, and what it reported."""
    if arm == "nanogpt":
        command, cwd = nanogpt_command(run_dir, args.max_iters, args.warmup_iters), args.nanogpt
    else:
        command = minigpt_command(OURS[arm], run_dir, data, args.max_iters, args.warmup_iters)
        command, cwd = command + args.ours, ROOT
    run_dir.mkdir(parents=True)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    with open(run_dir / "stdout.log", "w") as log:
        code = subprocess.run(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - started
    if code:
        sys.exit(f"error: {arm} exited with {code}; see {run_dir / 'stdout.log'}")
    out = {"arm": arm, "wall_s": wall, "load_before": load, "command": command}
    if arm == "nanogpt":
        out.update(nanogpt_result((run_dir / "stdout.log").read_text()))
        (run_dir / "ckpt.pt").unlink(missing_ok=True)  # 10 MB; nothing here reads it
    else:
        s = json.loads((run_dir / "summary.json").read_text())
        out.update(
            val_loss=s["final_val_loss"], val_loss_full=s["final_val_loss_full"],
            ms_per_step=s["median_ms_per_iter"], wall=s["wall"], target_s=s["target_s"],
            target_step=s["target_step"],
        )  # fmt: skip
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return out


def nanogpt_result(log: str) -> dict:
    """The last eval's losses and the median step time of nanoGPT's own log lines."""
    evals = re.findall(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)", log)
    times = [float(t) for t in re.findall(r"iter \d+: loss [\d.]+, time ([\d.]+)ms", log)]
    if not evals:
        return {}
    return {
        "val_loss": float(evals[-1][2]),
        "ms_per_step": statistics.median(times[len(times) // 2 :]) if times else None,
    }


def summarise(runs: list[dict], arms: list[str]) -> dict:
    """Per arm: mean and spread of wall; per round: each of ours over nanoGPT's (paired)."""
    out: dict = {}
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        walls = [r["wall_s"] for r in mine]
        out[arm] = {
            "n": len(walls), "wall_s": walls, "wall_mean": statistics.mean(walls),
            "wall_std": statistics.stdev(walls) if len(walls) > 1 else 0.0,
            "val_loss": [r.get("val_loss") for r in mine],
            "ms_per_step": [r.get("ms_per_step") for r in mine],
        }  # fmt: skip
        if arm != "nanogpt" and "nanogpt" in arms:
            base = {r["round"]: r["wall_s"] for r in runs if r["arm"] == "nanogpt"}
            ratios = [r["wall_s"] / base[r["round"]] for r in mine]
            out[arm].update(
                ratio=ratios, ratio_mean=statistics.mean(ratios),
                ratio_min=min(ratios), ratio_max=max(ratios),
            )  # fmt: skip
        if arm != "nanogpt":
            phases = mine[0]["wall"].keys()
            out[arm]["breakdown_mean"] = {
                p: statistics.mean(r["wall"][p] for r in mine) for p in phases
            }
            out[arm]["val_loss_full"] = [r["val_loss_full"] for r in mine]
            out[arm]["target_s"] = [r["target_s"] for r in mine]
    return out


def report(results: dict) -> str:
    s, lines = results["summary"], []
    lines += ["| arm | rounds | wall s (mean ± std) | vs nanoGPT (mean, min-max) | ms/step "
              "| val loss |", "|---|---|---|---|---|---|"]  # fmt: skip
    for arm, a in s.items():
        ratio = (f"{a['ratio_mean']:.2f}x ({a['ratio_min']:.2f}-{a['ratio_max']:.2f})"
                 if "ratio" in a else "1")  # fmt: skip
        val = ", ".join(f"{v:.4f}" for v in a["val_loss"] if v is not None)
        ms = ", ".join(f"{v:.1f}" for v in a["ms_per_step"] if v is not None)
        lines.append(f"| {arm} | {a['n']} | {a['wall_mean']:.1f} ± {a['wall_std']:.1f} | "
                     f"{ratio} | {ms} | {val} |")  # fmt: skip
    for arm, a in s.items():
        if "breakdown_mean" in a:
            parts = ", ".join(f"{k} {v:.1f}" for k, v in a["breakdown_mean"].items())
            lines.append(f"\n{arm}: wall seconds by phase (mean): {parts}; "
                         f"seconds to full val {TARGET}: {a['target_s']}")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nanogpt", type=pathlib.Path, required=True, help="a nanoGPT checkout")
    p.add_argument("--input", type=pathlib.Path, default=ROOT / "data/tinyshakespeare/input.txt")
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "runs/vs_nanogpt")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--arms", default="nanogpt,minigpt", help="of nanogpt, minigpt, modern")
    p.add_argument("--max_iters", type=int, default=2000, help="both recipes' steps")
    p.add_argument("--warmup_iters", type=int, default=100, help="both recipes' warmup")
    p.add_argument("--ours", action="append", default=[], help="a --config.* flag for our runs")
    args = p.parse_args()
    arms = args.arms.split(",")
    if not set(arms) <= {"nanogpt", *OURS} or not args.input.is_file() or args.out.exists():
        sys.exit(f"error: arms must be of nanogpt,{','.join(OURS)}; --input must exist; "
                 "--out must not")  # fmt: skip
    args.nanogpt = args.nanogpt.resolve()
    args.out.mkdir(parents=True)
    data = prepare(args.nanogpt, args.input, args.out.resolve())
    runs = []
    for r in range(args.rounds):
        for arm in arms if r % 2 == 0 else arms[::-1]:
            run = run_arm(arm, args, args.out.resolve() / f"round_{r}" / arm, data)
            runs.append({"round": r, **run})
            print(f"round {r} {arm}: {run['wall_s']:.1f} s (load {run['load_before']:.2f})")
    results = {"runs": runs, "summary": summarise(runs, arms), "max_iters": args.max_iters}
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "report.md").write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    main()
