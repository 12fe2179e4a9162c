"""`train.profile_steps=START,N`: a jax.profiler trace of N train steps into WORKDIR/profile.

The trace is what TensorBoard's profile plugin reads (`*.xplane.pb`) and, beside it, a
`perfetto_trace.json.gz` that ui.perfetto.dev opens: no one takes a trace by hand again.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import jax

from minigpt_jax.errors import UsageError

PROFILE_DIR = "profile"


def parse_steps(spec: str) -> tuple[int, int] | None:
    """train.profile_steps 'START,N' -> (START, N); '' -> None (no trace)."""
    if not spec:
        return None
    try:
        first, n = (int(v) for v in str(spec).split(","))
        if first < 1 or n < 1:
            raise ValueError
    except ValueError:
        raise UsageError(
            "train.profile_steps must be 'START,N' (the first step traced, >= 1, and how many), "
            f"e.g. --config.train.profile_steps=10,5; got {spec!r}"
        ) from None
    return first, n


class StepTrace:
    """Wraps a train step: the trace starts before step `first` is dispatched and stops once
    step `first + n - 1` has finished (its outputs waited for, so the trace holds whole steps).

    Step s is the call that makes state.step == s, as the loop counts. A context manager: a run
    that ends or stops inside the window still closes its trace.
    """

    def __init__(self, steps: str, workdir: str | pathlib.Path, log: Callable[[str], None]) -> None:
        self.window = parse_steps(steps)  # train.profile_steps
        self.directory = pathlib.Path(workdir) / PROFILE_DIR
        self.log = log
        self.tracing = False
        self.next_step: int | None = None  # the step the next call makes

    def wrap(self, train_step: Callable) -> Callable:
        """train_step itself when no window is asked for, else the tracing wrapper."""
        if self.window is None:
            return train_step

        def traced(state: Any, *args: Any) -> Any:
            if self.next_step is None:  # read once: later steps are counted, not synced
                self.next_step = int(state.step) + 1
            step, self.next_step = self.next_step, self.next_step + 1
            first, n = self.window
            if step == first:
                self._start(step)
            out = train_step(state, *args)
            if self.tracing and step == first + n - 1:
                jax.block_until_ready(out)
                self._stop(step)
            return out

        return traced

    def _start(self, step: int) -> None:
        self.first = step
        self.log(f"profiling from step {step} into {self.directory}")
        jax.profiler.start_trace(str(self.directory), create_perfetto_trace=True)
        self.tracing = True

    def _stop(self, step: int) -> None:
        jax.profiler.stop_trace()
        self.tracing = False
        self.log(
            f"wrote a trace of steps {self.first}-{step} to {self.directory}: tensorboard "
            f"--logdir {self.directory} (profile plugin), or open its perfetto_trace.json.gz "
            "at ui.perfetto.dev"
        )

    def __enter__(self) -> StepTrace:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.tracing:  # the loop ended inside the window: keep what was traced
            self._stop(self.next_step - 1)
