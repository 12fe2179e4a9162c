"""Multi-host sweeps: every host runs the same `minigpt sweep` command, and each run is one
multi-host job over all the hosts' devices, the runs one after another.

Process 0 leads: it writes the manifest, each run's config.json and the report, as a sweep on one
host does. The other hosts follow: they wait for what it writes and start their own process of
each run (its output in W/train.p<i>.log) with the same --config.dist.* settings. Every host
decides alone, in the manifest's order, which runs to start: a run is finished by its
summary.json, which only the whole job writes, so the hosts agree; if they ever start different
runs, the runs' own check (sharding.check_same_run) stops both and the sweeps end, to be
started again on every host. The root must be a folder every host sees (a shared filesystem),
as a multi-host run's --workdir must.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from ml_collections import config_dict

from minigpt_jax import config as config_lib
from minigpt_jax import startup, sweep
from minigpt_jax.errors import OutOfStep, RunStopped, UsageError, one_line
from minigpt_jax.sweep_slots import Slot
from minigpt_jax.workdir import CONFIG_FILE

WAIT_S = 600  # how long a follower waits for a file the leader writes
PROBE_TIMEOUT_S = 600  # jax.distributed.initialize's own default wait is 300 s


@dataclasses.dataclass(frozen=True)
class Hosts:
    """This host's place in a multi-host sweep."""

    index: int  # its process index in every run
    count: int
    flags: tuple[str, ...]  # the --config.dist.* flags its process of each run gets

    @property
    def log_name(self) -> str:
        return sweep.LOG_FILE if self.index == 0 else f"train.p{self.index}.log"


def of(config: config_dict.ConfigDict, parallel: int) -> Hosts | None:
    """The hosts a sweep of config runs on; None on one host. dist.coordinator names them by
    hand; dist.auto (or a cluster's environment) lets jax find them, asked by a probe process
    that joins the cluster once (this process never starts jax)."""
    dist = config.dist
    if dist.coordinator:
        config_lib.check_dist(dist)
        flags = tuple(
            f"--config.dist.{k}={dist[k]}" for k in ("coordinator", "num_processes", "process_id")
        )
        hosts = Hosts(dist.process_id, dist.num_processes, flags)
    elif dist.auto or startup.in_cluster():
        index, count = _probe()
        hosts = Hosts(index, count, ("--config.dist.auto=true",) if dist.auto else ())
    else:
        return None
    if hosts.count > 1 and parallel > 1:
        raise UsageError(
            f"--parallel {parallel}: a multi-host sweep runs one run at a time over every "
            "host's devices; use --parallel 1"
        )
    return hosts if hosts.count > 1 else None


def without_dist(config: config_dict.ConfigDict) -> config_dict.ConfigDict:
    """The sweep's base config without its host settings, which differ from host to host: the
    manifest and the runs' config.json name none, and each host's runs get its own flags."""
    out = copy.deepcopy(config)
    out.dist.update(coordinator="", num_processes=1, process_id=0, auto=False)
    return out


def _probe() -> tuple[int, int]:
    """(process index, process count) of this host, from jax.distributed in a child process."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "minigpt_jax.sweep_hosts"], capture_output=True, text=True,
            timeout=PROBE_TIMEOUT_S, env={**os.environ, "JAX_PLATFORMS": "cpu"},
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise UsageError(
            f"dist.auto: the other hosts did not join within {PROBE_TIMEOUT_S} s; start the "
            "same `minigpt sweep` command on every host"
        ) from None
    words = done.stdout.split()
    if done.returncode != 0 or len(words) != 2:
        lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
        said = lines[-1] if lines else f"exit {done.returncode}"
        raise UsageError(f"dist.auto: finding this host's place failed: {said}")
    return int(words[0]), int(words[1])


def wait_for(path: pathlib.Path, ready: Callable[[], Any], what: str) -> Any:
    """ready()'s first true value, polled until WAIT_S: what process 0 writes, seen here."""
    waited = time.monotonic()
    while not (value := ready()):
        if time.monotonic() - waited > WAIT_S:
            raise UsageError(
                f"{path}: process 0 has not written {what} within {WAIT_S} s; every host must "
                "run the same command on a --root they all see (a shared filesystem)"
            )
        time.sleep(0.5)
    return value


def follow(
    root: pathlib.Path, planned: dict[str, Any], hosts: Hosts, cpu_devices: str | None,
    retry_failed: bool, log: Callable[[str], None] = print,
) -> str:  # fmt: skip
    """A follower's sweep: its process of each unfinished run, in the leader's order. Returns
    its last line (runs per outcome here); raises RunStopped if the hosts fell out of step."""

    def manifest_with_every_run() -> dict | None:
        manifest = sweep.read_manifest(root)
        return manifest if manifest and planned["runs"].keys() <= manifest["runs"].keys() else None

    order = list(wait_for(root / sweep.MANIFEST, manifest_with_every_run, "it")["runs"])
    signals: list[int] = []
    proc: subprocess.Popen | None = None

    def on_signal(signum: int, frame: Any) -> None:  # as the leader: one SIGTERM, then SIGINT
        signals.append(signum)
        if proc is not None:
            proc.send_signal(signal.SIGTERM if len(signals) == 1 else signal.SIGINT)

    counts: dict[str, int] = {}
    handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for rid in order:
            workdir = root / rid
            record = sweep.read_manifest(root)["runs"][rid]
            if signals:
                outcome = "not started"
            elif sweep.finished(workdir):
                outcome = "done"
            elif record["state"] == "failed" and not retry_failed:
                outcome = "failed"
            else:
                wait_for(workdir / CONFIG_FILE, (workdir / CONFIG_FILE).is_file, "its config")
                log(f"{rid}: process {hosts.index} of {hosts.count} (log {hosts.log_name})")
                with open(workdir / hosts.log_name, "ab") as out:
                    proc = subprocess.Popen(
                        sweep.child_command(workdir, cpu_devices, hosts.flags), stdout=out,
                        stderr=subprocess.STDOUT, env=Slot().env(), start_new_session=True,
                    )  # fmt: skip
                code = proc.wait()
                if code == OutOfStep.exit_code:
                    said = sweep.last_line(workdir / hosts.log_name)
                    raise RunStopped(f"{said}; start the sweep again on every host")
                outcome = "ran" if code == 0 else f"exit {code}"
            counts[outcome] = counts.get(outcome, 0) + 1
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    line = ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))
    line = f"sweep {root}, process {hosts.index} of {hosts.count}: {line}; process 0 reports"
    if any(what.startswith("exit") for what in counts):  # as the leader: 1 when a run failed
        raise RunStopped(line)
    return line


if __name__ == "__main__":  # the probe: this host's place among the cluster's processes
    import jax

    from minigpt_jax import sharding

    dist = config_lib.base_config().dist
    dist.auto = True
    try:
        sharding.initialize_distributed(dist)
    except Exception as e:
        print(one_line(e), file=sys.stderr)
        sys.exit(2)
    print(jax.process_index(), jax.process_count())
    jax.distributed.shutdown()
