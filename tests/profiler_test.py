"""train.profile_steps: a jax.profiler trace of the asked steps lands in WORKDIR/profile."""

import gzip
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import pytest
from conftest import tiny_config

from minigpt_jax import profiler, train
from minigpt_jax.errors import UsageError


def test_a_run_writes_a_trace_of_the_asked_steps(tiny_data, tmp_path, capsys):
    c = tiny_config(max_iters=4, eval_interval=4, ckpt_interval=4, eval_iters=2)
    c.data.dir = str(tiny_data)
    c.sample.max_new_tokens = 0
    c.train.profile_steps = "2,2"
    train.train_and_evaluate(c, tmp_path / "run")
    out = capsys.readouterr().out
    assert "profiling from step 2" in out and "wrote a trace of steps 2-3" in out
    traces = list((tmp_path / "run/profile").rglob("perfetto_trace.json.gz"))
    assert len(traces) == 1 and list(traces[0].parent.glob("*.xplane.pb"))  # TensorBoard's file
    assert b"jit_train_step" in gzip.decompress(traces[0].read_bytes())  # the step's program


def test_the_trace_spans_its_window_and_closes_when_the_loop_ends_inside_it(tmp_path, monkeypatch):
    events = []
    monkeypatch.setattr(jax.profiler, "start_trace", lambda d, **kw: events.append(("start", d)))
    monkeypatch.setattr(jax.profiler, "stop_trace", lambda: events.append(("stop",)))

    def step(state, batch):
        events.append(("step", int(state.step) + 1))
        return SimpleNamespace(step=state.step + 1), {}

    for window, last in (("3,2", 6), ("5,9", 6)):
        events.clear()
        with profiler.StepTrace(window, tmp_path, log=lambda _: None) as trace:
            traced, state = trace.wrap(step), SimpleNamespace(step=jnp.int32(1))  # a resume at 1
            while int(state.step) < last:
                state, _ = traced(state, None)
        first, n = map(int, window.split(","))
        started, stopped = (
            events.index(("start", str(tmp_path / "profile"))),
            events.index(("stop",)),
        )
        assert events[started + 1] == ("step", first)
        assert events[stopped - 1] == ("step", min(first + n - 1, last))


@pytest.mark.parametrize("spec", ["10", "0,5", "3,0", "a,b", "1,2,3"])
def test_a_bad_window_is_one_usage_error(spec):
    with pytest.raises(UsageError, match="train.profile_steps must be 'START,N'"):
        profiler.parse_steps(spec)
    assert profiler.parse_steps("") is None and profiler.parse_steps("7,2") == (7, 2)
