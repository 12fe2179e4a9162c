"""The run folder: one run per workdir, its run files, and what a resume may change."""

import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import ROOT

from minigpt_jax import checkpoint, workdir
from minigpt_jax.errors import UsageError


def test_one_run_per_workdir(tmp_path, capsys):
    lock = tmp_path / workdir.LOCK_FILE
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    with pytest.raises(UsageError, match="in use by pid"):
        with workdir.WorkdirLock(tmp_path, print):
            pass
    assert lock.exists()  # a refused start leaves the other run's lock alone
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    with workdir.WorkdirLock(tmp_path, print):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert "taking over the stale lock" in capsys.readouterr().out
    assert not lock.exists()


def test_config_changes_fills_fields_a_run_predates_with_their_defaults():
    old = {"model": {"n_layer": 2}, "train": {"max_iters": 10}}
    new = {
        "model": {"n_layer": 2, "bias_head": False, "bias_mlp": None},
        "train": {"max_iters": 20},
    }
    assert workdir.config_changes(old, new) == ([], ["train.max_iters: 10 -> 20"])
    refused, _ = workdir.config_changes(old, {**new, "model": {"n_layer": 2, "bias_mlp": True}})
    assert refused == ["model.bias_mlp: None -> True"]


def test_run_files_round_trip_and_name_what_is_missing(tmp_path):
    config, meta = {"model": {"n_layer": 2, "vocab_size": 3}}, {"itos": ["a", "b", "é"]}
    with pytest.raises(UsageError, match="does not exist"):
        workdir.read_run_files(tmp_path / "nope")
    with pytest.raises(UsageError, match="config.json not found"):
        workdir.read_run_files(tmp_path)
    workdir.write_run_files(tmp_path, config, meta)
    assert workdir.read_run_files(tmp_path) == (config, meta)
    (tmp_path / workdir.CONFIG_FILE).write_text("{cut")
    with pytest.raises(UsageError, match="unreadable run file"):
        workdir.read_run_files(tmp_path)


def test_discard_run_removes_records_and_keeps_the_run_files(tmp_path):
    (tmp_path / checkpoint.CKPT_DIR / "10").mkdir(parents=True)
    (tmp_path / "tb").mkdir()
    for name in ("metrics.jsonl", "loss.png", workdir.CONFIG_FILE):
        (tmp_path / name).write_text("x")
    workdir.discard_run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [workdir.CONFIG_FILE]


def _race_for_the_lock(path, barrier, results, rounds):
    """One racer: each round, tries the stale lock with the others, keeps it until all tried."""
    for _ in range(rounds):
        barrier.wait()  # the stale lock is in place
        lock = workdir.WorkdirLock(path, lambda _: None)
        try:
            lock.__enter__()
            won = True
        except UsageError:
            won = False
        results.put(won)
        barrier.wait()  # every racer has tried
        if won:
            lock.__exit__(None, None, None)
        barrier.wait()  # the winner let go


def test_of_processes_racing_for_a_stale_lock_exactly_one_wins(tmp_path):
    import multiprocessing

    racers, rounds = 3, 200
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()})
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(racers + 1, timeout=120), ctx.Queue()
    procs = [
        ctx.Process(target=_race_for_the_lock, args=(tmp_path, barrier, results, rounds))
        for _ in range(racers)
    ]
    for p in procs:
        p.start()
    winners = []
    try:
        for _ in range(rounds):
            (tmp_path / workdir.LOCK_FILE).write_text(stale)
            barrier.wait()
            barrier.wait()
            winners.append(sum(results.get(timeout=60) for _ in range(racers)))
            barrier.wait()
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert winners == [1] * rounds, f"{sum(w > 1 for w in winners)} rounds had several winners"
    assert not (tmp_path / workdir.LOCK_FILE).exists()


def test_a_lock_held_by_a_live_process_is_refused_and_taken_over_once_it_is_killed(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UsageError, match=f"in use by pid {holder.pid} on"):
            with workdir.WorkdirLock(tmp_path, print):
                pass
    finally:
        holder.kill()  # SIGKILL: its lock file stays behind, its flock does not
        holder.wait()
    logged = []
    with workdir.WorkdirLock(tmp_path, logged.append):
        pass
    assert logged == [f"taking over the stale lock {tmp_path / '.lock'} of dead pid {holder.pid}"]


HOLD = """
import sys, time
from minigpt_jax import workdir
with workdir.WorkdirLock(sys.argv[1], print):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_an_empty_lock_is_taken_over_and_a_lock_that_cannot_be_written_is_removed(
    tmp_path, monkeypatch
):
    lock = tmp_path / workdir.LOCK_FILE
    lock.write_text("")  # its writer died before writing, or the disk was full
    with workdir.WorkdirLock(tmp_path, print):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()

    def no_space(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwrite", no_space)
    with pytest.raises(OSError, match="No space"):
        with workdir.WorkdirLock(tmp_path, print):
            pass
    assert not lock.exists()  # an empty lock left behind would refuse the next run
