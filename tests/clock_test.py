"""minigpt_jax.clock: seconds per phase and the end-of-run line."""

import time

import pytest

from minigpt_jax import clock


def test_phases_add_up_and_train_is_the_loop_minus_the_rest():
    c = clock.Clock()
    with c("eval"):
        time.sleep(0.02)
    with c("eval"):
        time.sleep(0.02)
    with pytest.raises(RuntimeError), c("checkpoint"):  # a failing phase is timed too
        raise RuntimeError
    c.end_loop(1.0)
    with c("checkpoint"):  # after the loop (the last save's wait): not taken from train
        time.sleep(0.02)
    wall = c.breakdown()
    assert wall["eval"] >= 0.04 and wall["checkpoint"] >= 0.02
    assert wall["train"] == pytest.approx(1.0 - wall["eval"], abs=1e-3)
    assert wall["samples"] == 0 and wall["total"] > 0


def test_the_end_of_run_line_names_the_phases_that_took_time():
    wall = {p: 0.0 for p in clock.PHASES} | {"startup": 5.12, "train": 120.3, "total": 130.0}
    assert clock.describe(wall) == "wall 130.0 s: startup 5.1, train 120.3"
