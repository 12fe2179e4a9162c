"""One run per workdir: the flock, its atomic takeover from a dead run, the probe."""

import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import ROOT

from minigpt_jax import lock as lock_lib
from minigpt_jax.errors import UsageError


def test_one_run_per_workdir(tmp_path, capsys):
    lock = tmp_path / lock_lib.LOCK_FILE
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    with pytest.raises(UsageError, match="in use by pid"):
        with lock_lib.WorkdirLock(tmp_path, print):
            pass
    assert lock.exists()  # a refused start leaves the other run's lock alone
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    with lock_lib.WorkdirLock(tmp_path, print):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert "taking over the stale lock" in capsys.readouterr().out
    assert not lock.exists()


def _race_for_the_lock(path, barrier, results, rounds):
    """One racer: each round, tries the stale lock with the others, keeps it until all tried."""
    for _ in range(rounds):
        barrier.wait()  # the stale lock is in place
        lock = lock_lib.WorkdirLock(path, lambda _: None)
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
            (tmp_path / lock_lib.LOCK_FILE).write_text(stale)
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
    assert not (tmp_path / lock_lib.LOCK_FILE).exists()


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
            with lock_lib.WorkdirLock(tmp_path, print):
                pass
    finally:
        holder.kill()  # SIGKILL: its lock file stays behind, its flock does not
        holder.wait()
    logged = []
    with lock_lib.WorkdirLock(tmp_path, logged.append):
        pass
    assert logged == [f"taking over the stale lock {tmp_path / '.lock'} of dead pid {holder.pid}"]


HOLD = """
import sys, time
from minigpt_jax import lock
with lock.WorkdirLock(sys.argv[1], print):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_an_empty_lock_is_taken_over_and_a_lock_that_cannot_be_written_is_removed(
    tmp_path, monkeypatch
):
    lock = tmp_path / lock_lib.LOCK_FILE
    lock.write_text("")  # its writer died before writing, or the disk was full
    with lock_lib.WorkdirLock(tmp_path, print):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()

    def no_space(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwrite", no_space)
    with pytest.raises(OSError, match="No space"):
        with lock_lib.WorkdirLock(tmp_path, print):
            pass
    assert not lock.exists()  # an empty lock left behind would refuse the next run


def test_in_use_sees_a_held_lock_and_nothing_else(tmp_path):
    assert not lock_lib.in_use(tmp_path)  # no lock file
    with lock_lib.WorkdirLock(tmp_path, print):
        assert lock_lib.in_use(tmp_path)
    (tmp_path / lock_lib.LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "host": "x"}))
    assert not lock_lib.in_use(tmp_path)  # a file nobody flocks: a dead run's
