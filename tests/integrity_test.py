"""Fingerprints of saved steps: any changed byte is caught, wherever the arrays live, and a
damaged step is set aside in train, eval and sample alike."""

import io
import os
import pathlib
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, xla_flags

from minigpt_jax import checkpoint, eval_run, integrity, metrics, sample_run, train, workdir
from minigpt_jax.errors import UsageError


def test_every_single_byte_change_changes_the_fingerprint():
    tree = {"w": jnp.arange(24, dtype=jnp.float32).reshape(4, 6), "n": jnp.int32(7)}
    base = integrity.fingerprint(tree)
    assert integrity.fingerprint(tree) == base
    w = np.asarray(tree["w"])
    for i in range(w.nbytes):
        for flip in (0x01, 0x80, 0xFF):
            bad = w.copy()
            bad.view(np.uint8).reshape(-1)[i] ^= flip
            assert integrity.fingerprint({**tree, "w": jnp.asarray(bad)}) != base, (i, flip)
    swapped = {**tree, "w": jnp.asarray(w.reshape(-1)[::-1].reshape(4, 6))}  # same bits, moved
    assert integrity.fingerprint(swapped) != base
    assert integrity.fingerprint({**tree, "w": tree["w"].reshape(6, 4)}) != base  # shape counts


def test_the_fingerprint_does_not_depend_on_the_sharding():
    code = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from minigpt_jax import integrity
mesh = jax.make_mesh((2, 2), ("a", "b"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 6)), jnp.float32)
layouts = [P(), P("a"), P(None, "b"), P(("a", "b")), P("b", "a")]
prints = {integrity.fingerprint({"x": jax.device_put(x, NamedSharding(mesh, s))}) for s in layouts}
print(len(prints), jax.device_count())
"""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "XLA_FLAGS": xla_flags(4),
    }
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "4"]


def test_a_sealed_meta_catches_its_own_changes():
    tree = {"w": jnp.ones(3)}
    meta = integrity.seal({"step": 5, "val_loss": 1.25}, params=tree)
    assert integrity.check(meta, params=tree) is True
    assert integrity.check({"step": 5}) is False  # saved before fingerprints: unverified
    with pytest.raises(integrity.DamagedStep, match="metadata"):
        integrity.check({**meta, "val_loss": 1.5})
    with pytest.raises(integrity.DamagedStep, match="params"):
        integrity.check(meta, params={"w": jnp.ones(3).at[1].set(2.0)})


@pytest.fixture
def run_dir(tiny_run):
    return tiny_run


def _flip(path: pathlib.Path, at: int) -> None:
    payload = bytearray(path.read_bytes())
    payload[at] ^= 0xFF
    path.write_bytes(bytes(payload))


@pytest.fixture(scope="module")
def silent_flip(tiny_run, tmp_path_factory) -> tuple[str, int]:
    """(file under checkpoints/8, offset) of a byte whose flip tensorstore reads without error.

    The arrays are zstd-compressed and orbax lays out its files differently from run to run,
    so a fixed offset sometimes breaks the frame (an honest read error, a different path, caught
    by the truncation test below). Offsets are tried from the middle of the largest params file
    until the step reads and only its fingerprint says it changed."""
    work = tmp_path_factory.mktemp("flip") / "run"
    shutil.copytree(tiny_run[0], work)
    step_dir = work / "checkpoints/8"
    victim = max((p for p in (step_dir / "params").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)  # fmt: skip
    size = victim.stat().st_size
    for at in range(size // 2, size, 37):
        _flip(victim, at)
        said: list[str] = []
        with pytest.raises(UsageError):  # a numbered step that does not read: never set aside
            checkpoint.load_params(
                work, workdir.read_run(work)[2], "8", set_aside=False, log=said.append
            )
        if "do not match their fingerprint" in said[0]:
            return str(victim.relative_to(step_dir)), at
        _flip(victim, at)  # undo: that byte broke the compressed frame
    raise AssertionError("no byte of the params file flips silently")


def _copy(run_dir, tmp_path, silent_flip) -> pathlib.Path:
    work = tmp_path / "run"
    shutil.copytree(run_dir, work)
    _flip(work / "checkpoints/8" / silent_flip[0], silent_flip[1])
    return work


def _aside(work: pathlib.Path) -> list[str]:
    return [p.name for p in (work / "checkpoints").iterdir() if ".unreadable-" in p.name]


def test_eval_sets_a_flipped_step_aside_and_uses_the_one_before(
    run_dir, tmp_path, capsys, silent_flip
):
    work = _copy(run_dir[0], tmp_path, silent_flip)
    step, results = eval_run.evaluate_checkpoint(work, "latest")
    assert step == 4 and all(np.isfinite(v) for v in results.values())
    assert "do not match their fingerprint" in capsys.readouterr().err
    assert len(_aside(work)) == 1 and _aside(work)[0].startswith("8.unreadable-")


def test_sample_falls_back_too(run_dir, tmp_path, capsys, silent_flip):
    work = _copy(run_dir[0], tmp_path, silent_flip)
    ref = io.StringIO()
    sample_run.sample_run(run_dir[0], "The", seed=1, max_new_tokens=10, stdout=ref)
    out = io.StringIO()
    sample_run.sample_run(work, "The", seed=1, max_new_tokens=10, stdout=out)
    assert _aside(work) and "fingerprint" in capsys.readouterr().err
    assert out.getvalue().startswith(f"# {work} step 4 (--step latest)")  # the step before
    body, ref_body = (s.getvalue().split("\n", 1)[1] for s in (out, ref))
    assert body.startswith("The") and len(body) == len(ref_body)


def test_train_resumes_from_the_step_before_a_flipped_one(run_dir, tmp_path, capsys, silent_flip):
    work = _copy(run_dir[0], tmp_path, silent_flip)
    config = run_dir[1].copy_and_resolve_references()
    config.train.max_iters = 8
    results = train.train_and_evaluate(config, work)
    assert "resuming from" in capsys.readouterr().out and _aside(work)
    ref = [r for r in metrics.read_metrics(run_dir[0]) if r["kind"] == "eval"][-1]
    assert results["val_loss_full"] == pytest.approx(ref["val_loss_full"], rel=1e-6)


def test_a_live_run_deleting_a_step_meanwhile_is_passed_over(run_dir, tmp_path, monkeypatch):
    """eval beside a running train: the step it picked is deleted under it, it takes the next."""
    work = tmp_path / "run"
    shutil.copytree(run_dir[0], work)
    restore = checkpoint.Checkpointer.restore_params

    def deleted_under_us(self, step, target):
        if step == 8:
            shutil.rmtree(self.step_dir(step))
            raise FileNotFoundError(f"{self.step_dir(step)}/params/_sharding")
        return restore(self, step, target)

    monkeypatch.setattr(checkpoint.Checkpointer, "restore_params", deleted_under_us)
    step, _ = eval_run.evaluate_checkpoint(work, "latest")
    assert step == 4 and not _aside(work)


def test_with_every_step_damaged_eval_says_so_in_one_line_and_no_tracebacks(run_dir, tmp_path):
    work = tmp_path / "run"
    shutil.copytree(run_dir[0], work)
    for step in (4, 8):  # truncated arrays: tensorstore fails mid-read, orbax leaves reads behind
        victim = max((p for p in (work / f"checkpoints/{step}/params").rglob("*") if p.is_file()),
                     key=lambda p: p.stat().st_size)  # fmt: skip
        victim.write_bytes(victim.read_bytes()[:10])
    out = subprocess.run(
        [sys.executable, "-m", "minigpt_jax.cli", "eval", "--workdir", str(work)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr, out.stderr[
        :3000
    ]
    assert len(lines) == 3 and all("unreadable or damaged" in line for line in lines[:2]), (
        out.stderr
    )
    assert lines[2].startswith("minigpt eval: error:") and "no checkpoint that reads" in lines[2]
