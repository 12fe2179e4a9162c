"""Stopping a run cleanly: SIGTERM / SIGINT on one host, JAX's preemption service on several."""

from __future__ import annotations

import signal

import jax

from minigpt_jax.errors import Terminated


class StopRequest:
    """SIGTERM / SIGINT ask the loop to stop after the current step, with a checkpoint.

    A second Ctrl-C stops at once. With several processes, JAX's preemption service catches
    SIGTERM and every process stops at the same step (reached_preemption_sync_point).
    Unarmed (armed=False: before a run has anything to save or clean up), SIGTERM raises
    Terminated and SIGINT KeyboardInterrupt at once. A StopRequest made while another is
    installed starts with the stop that one was asked for, and closing it hands signals back.
    """

    def __init__(self, *, armed: bool = True):
        self.signum: int | None = None
        self.armed = armed
        self._previous = {}
        self.multihost = jax.process_count() > 1
        # Several processes: SIGTERM belongs to the preemption service, which agrees on a step.
        for sig in (signal.SIGINT,) if self.multihost else (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay as they were
                pass
        outer = getattr(self._previous.get(signal.SIGINT), "__self__", None)
        if isinstance(outer, StopRequest):
            self.signum = outer.signum

    def arm(self) -> None:
        """From now on a signal asks for a stop instead of raising (the run can save)."""
        self.armed = True

    def _handle(self, signum, frame) -> None:
        if not self.armed:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise Terminated(
                f"stopped by {signal.Signals(signum).name} before the run started; nothing was "
                "written, run the same command again"
            )
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def asked(self) -> bool:
        """Whether a stop was asked for, read outside the step loop: on one process only (several
        agree on a stop step through the preemption service, in should_stop)."""
        return not self.multihost and self.signum is not None

    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "preemption"

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
        self._previous = {}  # closing twice restores once


def sync(name: str) -> None:
    """Waits for every process to reach this point (a no-op on one host)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
