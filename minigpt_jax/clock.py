"""Where a run's wall time goes: seconds per phase (start-up, compile, train steps, evals,
samples, checkpoints, the end), so every run reports it without a profiler."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from minigpt_jax import startup

PHASES = ("startup", "compile", "train", "eval", "samples", "checkpoint", "end")


class Clock:
    """Sums the seconds spent in named phases; `with clock("eval"): ...` times one."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t

    def end_loop(self, loop: float) -> None:
        """The step loop took `loop` seconds: what it spent outside the phases timed inside it
        (compile, evals, samples, saves) is `train`. Called as the loop ends, before anything
        after it is timed."""
        inside = sum(self.seconds.get(p, 0.0) for p in ("compile", "eval", "samples", "checkpoint"))
        self.seconds["train"] = max(loop - inside, 0.0)

    def breakdown(self) -> dict[str, float]:
        """Each phase's seconds, and the total since the process started."""
        out = {p: self.seconds.get(p, 0.0) for p in PHASES}
        out["total"] = time.perf_counter() - startup.STARTED
        return {k: round(v, 3) for k, v in out.items()}


def describe(wall: dict[str, float]) -> str:
    """'wall 146.9 s: startup 5.1, compile 1.2, train 120.3, ...' for the end-of-run line."""
    parts = ", ".join(f"{p} {wall[p]:.1f}" for p in PHASES if wall.get(p))
    return f"wall {wall['total']:.1f} s: {parts}"
