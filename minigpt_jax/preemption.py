"""Stopping a run cleanly: SIGTERM / SIGINT on one host, JAX's preemption service on several."""

from __future__ import annotations

import signal

import jax


class StopRequest:
    """SIGTERM / SIGINT ask the loop to stop after the current step, with a checkpoint.

    A second Ctrl-C stops at once. With several processes, JAX's preemption service catches
    SIGTERM and every process stops at the same step (reached_preemption_sync_point).
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}
        self.multihost = jax.process_count() > 1
        # Several processes: SIGTERM belongs to the preemption service, which agrees on a step.
        for sig in (signal.SIGINT,) if self.multihost else (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay as they were
                pass

    def _handle(self, signum, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def should_stop(self, step: int) -> bool:
        if self.multihost:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(step):
                self.signum = signal.SIGTERM
                return True
            return False
        return self.signum is not None

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def sync(name: str) -> None:
    """Waits for every process to reach this point (a no-op on one host)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
