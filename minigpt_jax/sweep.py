"""`minigpt sweep`: arms x seeds as ordinary run workdirs under one root, a manifest, and a
launcher that resumes, survives failures and stops cleanly.

  root/sweep.json             the manifest: base config, arms, seeds, each run's state
  root/<arm>/seed_<s>/        a `minigpt train` workdir (config.json written before its start)
  root/<arm>/seed_<s>/train.log   the run's own output

Each run is a child `minigpt train --workdir W` process: a failure ends that run only, and
--parallel K runs K at once on disjoint CPU cores (or GPUs). Running the same command again skips
finished runs, resumes the stopped ones from their checkpoints and starts the rest.
"""

from __future__ import annotations

import json
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from ml_collections import config_dict

from minigpt_jax import config as config_lib
from minigpt_jax import lock as lock_lib
from minigpt_jax import sweep_spec
from minigpt_jax import workdir as workdir_lib
from minigpt_jax.errors import OutOfStep, RunStopped, UsageError
from minigpt_jax.files import atomic_write_bytes, make_dir
from minigpt_jax.summary import SUMMARY_FILE
from minigpt_jax.sweep_slots import Slot, slots

MANIFEST = "sweep.json"
LOG_FILE = "train.log"
LOCK_WAIT_S = 300  # how long a run's lock, held by an orphan of a killed sweep, is waited for


def run_id(arm: str, seed: int) -> str:
    return f"{arm}/seed_{seed}"


def read_manifest(root: str | pathlib.Path) -> dict[str, Any] | None:
    path = pathlib.Path(root) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        manifest["arms"], manifest["runs"]  # noqa: B018 - the keys every reader needs
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(
            f"{path} is damaged; restore it, or start the sweep in a new --root"
        ) from None
    return manifest


def plan(
    root: pathlib.Path,
    base: config_dict.ConfigDict,
    arms: list[sweep_spec.Arm],
    seeds: list[int],
    source: dict[str, Any],
    baseline: str | None,
) -> dict[str, Any]:
    """The manifest for these arms and seeds: a new one, or the root's own grown by new arms or
    seeds. Any other change (the base config, an arm's overrides, a dropped arm) is refused."""
    sweep_spec.check_arms(base, arms, seeds)
    if baseline is not None and baseline not in (a["name"] for a in arms):
        names = ", ".join(a["name"] for a in arms)
        raise UsageError(f"--baseline {baseline}: no such arm; the arms are {names}")
    base_dict = base.to_dict()
    old = read_manifest(root)
    if old is not None:
        _check_growth(root, old, base_dict, arms, seeds)
        seeds = old["seeds"] + [s for s in seeds if s not in old["seeds"]]
        known = {a["name"] for a in old["arms"]}
        arms = old["arms"] + [a for a in arms if a["name"] not in known]
        baseline = baseline or old.get("baseline")
    runs = dict(old["runs"]) if old else {}
    for seed in seeds:  # seed-major: every arm's first seed comes before any arm's second
        for arm in arms:
            rid = run_id(arm["name"], seed)
            runs.setdefault(rid, {"arm": arm["name"], "seed": seed, "state": "pending"})
    return {
        "source": old["source"] if old else source,
        "base_config": base_dict,
        "arms": arms,
        "seeds": seeds,
        "baseline": baseline or arms[0]["name"],
        "runs": runs,
    }


def _check_growth(root: pathlib.Path, old: dict, base: dict, arms: list, seeds: list) -> None:
    refused = workdir_lib.config_changes(old["base_config"], base)
    changed = refused[0] + refused[1]
    if changed:
        raise UsageError(
            f"{root} holds a sweep of another base config ({'; '.join(changed[:3])}); rerun it "
            "with its own config, or use a new --root"
        )
    new = {a["name"]: a["overrides"] for a in arms}
    for arm in old["arms"]:
        if arm["name"] in new and new[arm["name"]] != arm["overrides"]:
            raise UsageError(f"{root}: arm {arm['name']} had other overrides; use a new --root")
    dropped = [a["name"] for a in old["arms"] if a["name"] not in new]
    if dropped or not set(old["seeds"]) <= set(seeds):
        what = f"arm(s) {', '.join(dropped)}" if dropped else f"seeds {old['seeds']}"
        raise UsageError(
            f"{root} already runs {what}, which this command leaves out: a sweep may only grow; "
            f"repeat its arms and seeds, or run `minigpt sweep --root {root}` to continue it"
        )


def write_manifest(root: pathlib.Path, manifest: dict[str, Any]) -> None:
    atomic_write_bytes(root / MANIFEST, json.dumps(manifest, indent=2).encode())


def finished(workdir: pathlib.Path) -> dict[str, Any] | None:
    """A run's summary if it ran to its end (max_iters, or its target); None otherwise."""
    try:
        summary = json.loads((workdir / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None
    return summary if summary.get("finished") else None


class Launcher:
    """Runs a manifest's unfinished runs as child processes, K at a time, and keeps the manifest
    true after every change of state. SIGINT/SIGTERM: each child gets one SIGTERM (it saves a
    checkpoint and exits); a second signal is passed on as SIGINT (the children stop at once)."""

    def __init__(
        self, root: pathlib.Path, manifest: dict, log: Callable[[str], None],
        child_flags: tuple[str, ...] = (),
    ):  # fmt: skip
        self.root, self.manifest, self.log = root, manifest, log
        self.child_flags = child_flags  # a multi-host sweep's --config.dist.* flags
        self.active: dict[str, tuple[subprocess.Popen, Slot]] = {}
        self.signals: list[int] = []
        self.out_of_step: str | None = None  # a multi-host run's hosts started different runs

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals.append(signum)
        forward = signal.SIGTERM if len(self.signals) == 1 else signal.SIGINT
        for proc, _ in self.active.values():
            proc.send_signal(forward)

    def run(self, free: list[Slot], cpu_devices: str | None, retry_failed: bool) -> dict[str, int]:
        runs = self.manifest["runs"]
        todo = []
        for rid, record in runs.items():
            workdir = self.root / rid
            if finished(workdir):
                record["state"] = "done"
            elif record["state"] == "failed" and not retry_failed:
                continue
            else:
                todo.append(rid)
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while (todo and not self.signals and not self.out_of_step) or self.active:
                while todo and free and not self.signals and not self.out_of_step:
                    self._start(todo.pop(0), free.pop(0), cpu_devices)
                for rid, (proc, slot) in list(self.active.items()):
                    if proc.poll() is not None:
                        del self.active[rid]
                        free.append(slot)
                        self._finish(rid, proc.returncode)
                time.sleep(0.1)
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
        counts: dict[str, int] = {}
        for record in runs.values():
            counts[record["state"]] = counts.get(record["state"], 0) + 1
        return counts

    def _start(self, rid: str, slot: Slot, cpu_devices: str | None) -> None:
        record = self.manifest["runs"][rid]
        workdir = self.root / rid
        make_dir(workdir, "--root")
        if not (workdir / workdir_lib.CONFIG_FILE).exists():  # the run's config, before it runs
            arm = next(a for a in self.manifest["arms"] if a["name"] == record["arm"])
            base = config_lib.from_saved(self.manifest["base_config"])
            cfg = sweep_spec.run_config(base, arm, record["seed"]).to_dict()
            named = self.manifest.get("source") or {}
            cfg["source"] = {  # what a train command of this run alone would have named
                "config": named.get("config"),
                "overrides": [*named.get("overrides", []), *sweep_spec.as_flags(arm),
                              f"--config.{sweep_spec.SEED_FIELD}={record['seed']}"],
                "command": f"minigpt sweep --root {self.root} (arm {arm['name']})",
            }  # fmt: skip
            atomic_write_bytes(
                workdir / workdir_lib.CONFIG_FILE, json.dumps(cfg, indent=2).encode()
            )
        waited = time.monotonic()
        while lock_lib.in_use(workdir) and time.monotonic() - waited < LOCK_WAIT_S:
            time.sleep(0.5)  # a run orphaned by a killed sweep, saving its checkpoint
        command = child_command(workdir, cpu_devices, self.child_flags)
        with open(workdir / LOG_FILE, "ab") as out:
            proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=slot.env(),
                start_new_session=True,  # a terminal's Ctrl-C reaches the sweep only, once
            )  # fmt: skip
        self.active[rid] = (proc, slot)
        if self.signals:  # a stop asked for while it was starting: it missed the forward
            proc.send_signal(signal.SIGTERM)
        record.update(state="running", started=time.time(), pid=proc.pid)
        record["attempts"] = record.get("attempts", 0) + 1
        write_manifest(self.root, self.manifest)
        done = sum(r["state"] == "done" for r in self.manifest["runs"].values())
        self.log(f"[{done}/{len(self.manifest['runs'])} done] {rid}: started (log {LOG_FILE})")

    def _finish(self, rid: str, returncode: int) -> None:
        record = self.manifest["runs"][rid]
        workdir = self.root / rid
        summary = finished(workdir)
        record.update(returncode=returncode, ended=time.time())
        record.pop("pid", None)
        if returncode == 0 and summary:
            full = summary.get("final_val_loss_full")
            record.update(state="done", message=f"full val {full:.4f}" if full else "done")
        elif returncode == OutOfStep.exit_code:  # not the run's fault: it runs again next time
            self.out_of_step = last_line(workdir / LOG_FILE)
            record.update(state="stopped", message=self.out_of_step)
        elif self.signals:  # its own last line says where it stopped, if it got to say it
            said = last_line(workdir / LOG_FILE) if returncode == 0 else f"exit {returncode}"
            record.update(state="stopped", message=said)
        else:
            record.update(state="failed", message=last_line(workdir / LOG_FILE))
        write_manifest(self.root, self.manifest)
        self.log(f"{rid}: {record['state']}: {record['message']}")


def child_command(
    workdir: pathlib.Path, cpu_devices: str | None, child_flags: tuple[str, ...] = ()
) -> list[str]:
    """A run's `minigpt train --workdir W` (its config is W/config.json), plus a multi-host
    sweep's --config.dist.* flags, which apply to that config."""
    command = [sys.executable, "-m", "minigpt_jax.cli", "train", "--workdir", str(workdir)]
    if cpu_devices:
        command += ["--cpu_devices", str(cpu_devices)]
    return [*command, *child_flags]


def last_line(path: pathlib.Path) -> str:
    """The child's one-line error: the last non-empty line of its log."""
    try:
        lines = path.read_bytes().decode("utf-8", "replace").splitlines()
    except OSError:
        return "failed (no log)"
    return next((ln.strip() for ln in reversed(lines) if ln.strip()), "failed (empty log)")


def describe(root: pathlib.Path, counts: dict[str, int]) -> str:
    """The sweep's last line: how many runs are in each state, and what to run next."""
    line = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    if set(counts) <= {"done"}:
        return f"sweep {root}: {line}; report in {root}/report.md"
    return f"sweep {root}: {line}; continue with: minigpt sweep --root {root}"


def sweep(
    root: str | pathlib.Path,
    manifest: dict[str, Any],
    *,
    parallel: int = 1,
    cpu_devices: str | None = None,
    retry_failed: bool = False,
    log: Callable[[str], None] = print,
    child_flags: tuple[str, ...] = (),
) -> dict[str, int]:
    """Runs the manifest's runs under root (locked against a second sweep); returns the count
    of runs per state. RunStopped if a multi-host run's hosts fell out of step."""
    root = pathlib.Path(root)
    free = slots(parallel)  # checked before anything is written
    make_dir(root, "--root")
    with lock_lib.WorkdirLock(root, log):
        for record in manifest["runs"].values():
            if record["state"] == "running":  # its sweep was killed: it resumes
                record["state"] = "stopped"
        write_manifest(root, manifest)
        launcher = Launcher(root, manifest, log, child_flags)
        counts = launcher.run(free, cpu_devices, retry_failed)
    if launcher.out_of_step:  # the manifest says stopped: the next start runs it again
        raise RunStopped(f"{launcher.out_of_step}; start the sweep again on every host")
    return counts
