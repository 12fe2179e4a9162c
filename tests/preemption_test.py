"""minigpt_jax.preemption: SIGTERM / SIGINT become a clean stop request; sync on one host."""

import os
import signal
import threading

import jax
import pytest
from jax.experimental import multihost_utils

from minigpt_jax import preemption


@pytest.fixture
def handlers():
    """Puts SIGTERM and SIGINT back as they were, whatever the test did."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _kill(sig):
    os.kill(os.getpid(), sig)  # CPython runs the Python handler before os.kill returns


def test_no_signal_means_no_stop(handlers):
    stop = preemption.StopRequest()
    try:
        assert not stop.should_stop(0) and stop.signum is None
    finally:
        stop.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_becomes_a_stop_request_and_does_not_kill(handlers, sig):
    stop = preemption.StopRequest()
    try:
        _kill(sig)  # without the handler, SIGTERM ends this process, SIGINT raises here
        assert stop.signum == sig
        assert stop.should_stop(7)
    finally:
        stop.close()


def test_a_second_ctrl_c_stops_at_once(handlers):
    stop = preemption.StopRequest()
    try:
        _kill(signal.SIGINT)
        assert stop.should_stop(1)
        with pytest.raises(KeyboardInterrupt):
            _kill(signal.SIGINT)
    finally:
        stop.close()


def test_close_restores_the_previous_handlers(handlers):
    def previous_term(signum, frame):
        pass

    signal.signal(signal.SIGTERM, previous_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = preemption.StopRequest()
    assert signal.getsignal(signal.SIGTERM) == stop._handle  # installed while it lives
    assert signal.getsignal(signal.SIGINT) == stop._handle
    stop.close()
    assert signal.getsignal(signal.SIGTERM) is previous_term
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_off_the_main_thread_signals_stay_as_they_were(handlers):
    """signal.signal only works on the main thread; elsewhere StopRequest must not fail."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    errors, stops = [], []

    def make():
        try:
            stops.append(preemption.StopRequest())
        except Exception as e:  # reported by the assert below, not lost in the thread
            errors.append(e)

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    assert errors == [] and len(stops) == 1
    assert {sig: signal.getsignal(sig) for sig in before} == before
    assert not stops[0].should_stop(0)
    stops[0].close()


def test_with_several_processes_sigterm_is_left_to_jaxs_preemption_service(handlers, monkeypatch):
    """Only SIGINT is taken; should_stop asks the service whether every process stops here."""
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    asked = []

    def reached(step):
        asked.append(step)
        return step == 5

    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", reached)
    term = signal.getsignal(signal.SIGTERM)
    stop = preemption.StopRequest()
    try:
        assert signal.getsignal(signal.SIGTERM) is term
        assert signal.getsignal(signal.SIGINT) == stop._handle
        assert not stop.should_stop(4) and stop.signum is None
        assert stop.should_stop(5) and stop.signum == signal.SIGTERM
        assert asked == [4, 5]
    finally:
        stop.close()


def test_sync_is_a_no_op_on_one_process(monkeypatch):
    called = []
    monkeypatch.setattr(multihost_utils, "sync_global_devices", called.append)
    preemption.sync("checkpoint")
    assert called == []
    monkeypatch.setattr(jax, "process_count", lambda: 2)  # and with several, it does wait
    preemption.sync("checkpoint")
    assert called == ["checkpoint"]


def test_unarmed_a_signal_raises_at_once_and_armed_it_asks_for_a_stop(handlers):
    stop = preemption.StopRequest(armed=False)
    try:
        with pytest.raises(preemption.Terminated, match="before the run started"):
            _kill(signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):
            _kill(signal.SIGINT)
        assert not stop.asked()
        stop.arm()
        _kill(signal.SIGTERM)
        assert stop.asked() and stop.name() == "SIGTERM"
    finally:
        stop.close()


def test_a_nested_request_carries_the_outer_stop_and_hands_signals_back(handlers):
    outer = preemption.StopRequest()
    try:
        calm = preemption.StopRequest()
        assert not calm.asked()
        calm.close()
        _kill(signal.SIGTERM)  # e.g. while the first step compiles, before the loop's own
        inner = preemption.StopRequest()
        assert inner.asked() and inner.should_stop(0)
        inner.close()
        assert signal.getsignal(signal.SIGTERM) == outer._handle
    finally:
        outer.close()
    outer.close()  # closing twice is harmless


def test_asked_is_for_one_process_only(handlers, monkeypatch):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    stop = preemption.StopRequest()
    try:
        _kill(signal.SIGINT)  # one host's Ctrl-C: the others would not stop with it
        assert stop.signum == signal.SIGINT and not stop.asked()
    finally:
        stop.close()
