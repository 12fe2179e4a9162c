"""Where a profiled step's time goes: the ops of a `train.profile_steps` trace, summed by thread
kind and op name, per profiled step.

    python experiments/perf/trace_table.py RUN/profile STEPS [--out table.json]

RUN/profile is the folder `minigpt train ... --config.train.profile_steps=START,STEPS` writes;
its newest *.trace.json.gz is read. Thread kinds: the Python thread that dispatches, XLA's
worker threads (tf_XLAEigen: what each CPU device runs) and the PjRt client's threads.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import re


def table(trace: pathlib.Path, steps: int, top: int = 12) -> dict[str, dict]:
    """{thread kind: {"total_ms_per_step", "ops": [(name, ms per step, calls per step)]}}."""
    events = json.loads(gzip.open(trace).read())["traceEvents"]
    threads = {
        (e["pid"], e.get("tid")): e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "thread_name"
    }
    ms = collections.defaultdict(collections.Counter)
    calls = collections.defaultdict(collections.Counter)
    for e in events:
        if e.get("ph") != "X":
            continue
        kind = threads.get((e["pid"], e["tid"]), "?").split("/")[0]
        name = re.sub(r"\.\d+$", "", e["name"])  # fusion.12 and fusion.13 are one kind of op
        ms[kind][name] += e["dur"] / 1000
        calls[kind][name] += 1
    out = {}
    for kind, ops in ms.items():
        rows = [
            (n, round(v / steps, 2), round(calls[kind][n] / steps, 1))
            for n, v in ops.most_common(top)
        ]
        out[kind] = {"total_ms_per_step": round(sum(ops.values()) / steps, 1), "ops": rows}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=pathlib.Path)
    parser.add_argument("steps", type=int)
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args()
    trace = max(args.profile.rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    result = {"trace": str(trace), "steps": args.steps, "threads": table(trace, args.steps)}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    for kind, t in result["threads"].items():
        print(f"\n{kind}: {t['total_ms_per_step']} ms of events per step (nested events overlap)")
        for name, ms, n in t["ops"]:
            print(f"  {ms:8.2f} ms  x{n:6.1f}  {name[:80]}")


if __name__ == "__main__":
    main()
