"""The accelerator presets' real programs lowered for TPU and GPU on 8 fake CPU devices.

One subprocess (tests/lowering_probe.py) lowers, without compiling, the train step as run.build
makes it and the sampler's prefill and decode, for 'tpu' and 'cuda', on data-parallel, FSDP and
FSDP x tensor meshes, and reports JSON; these tests read it. A kernel that cannot lower on this
host is named in the warnings summary as untested.
"""

import json
import os
import subprocess
import sys
import warnings

import pytest
from conftest import ROOT, xla_flags

from minigpt_jax import sharding

PROBE = ROOT / "tests/lowering_probe.py"
RULES = dict(sharding.LOGICAL_RULES)
GPT2, CHAR, SHAKESPEARE = (
    "configs/tpu.py:gpt2_124m",
    "configs/tpu.py:char",
    "configs/shakespeare_char.py",
)


@pytest.fixture(scope="module")
def records() -> list[dict]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "XLA_FLAGS": xla_flags(8),
        "JAX_PLATFORMS": "cpu",
    }
    out = subprocess.run(
        [sys.executable, str(PROBE)], env=env, capture_output=True, text=True, timeout=600,
        cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def _expected_ways(names: list, mesh_shape: dict) -> int:
    """How many pieces the mesh rules cut a leaf with these logical axis names into."""
    ways = 1
    for name in names:
        axes = RULES.get(name) if name else None
        for axis in (axes,) if isinstance(axes, str) else axes or ():
            ways *= mesh_shape[axis]
    return ways


def _train(records, **match) -> list[dict]:
    rows = [r for r in records if r["program"] == "train_step"]
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def test_every_preset_lowers_for_tpu_and_cuda_on_8_devices_in_bf16_with_the_state_donated(
    records,
):
    combos = {(r["preset"], r["mesh"], r["platform"]) for r in _train(records)}
    for preset in (CHAR, GPT2):
        for mesh in ("dp", "fsdp", "fsdp_tensor"):
            assert {(preset, mesh, "tpu"), (preset, mesh, "cuda")} <= combos
    assert {(SHAKESPEARE, "dp", "tpu"), (SHAKESPEARE, "dp", "cuda")} <= combos
    for r in _train(records):
        assert r["ok"] and r["devices"] == 8, r["preset"]
        assert r["bf16"] and r["donated"], (r["preset"], r["platform"])


def test_params_and_adam_moments_are_sharded_as_the_mesh_rules_say(records):
    for r in _train(records):
        for leaf in r["state"]:
            expected = _expected_ways(leaf["names"], r["mesh_shape"])
            assert leaf["ways_in"] == leaf["ways_out"] == expected, (r["preset"], r["mesh"], leaf)
        weights = [s for s in r["state"] if len(s["shape"]) == 2]
        moments = [s for s in weights if ".mu" in s["path"] or ".nu" in s["path"]]
        assert moments and len(moments) == 2 * len([s for s in weights if ".params" in s["path"]])
        ways = {s["ways_in"] for s in weights}
        if r["mesh"] == "dp":  # every matrix whole on every device
            assert ways == {1}
        elif r["mesh"] == "fsdp":  # every matrix and its Adam moments split 8 ways
            assert ways == {8}
        else:  # 4 fsdp x 2 tensor: the blocks' matrices 8 ways, the embeddings 4
            assert ways == {4, 8}
            assert all(s["ways_in"] == 4 for s in weights if "wte" in s["path"])


def test_the_tpu_program_calls_pallas_and_the_gpu_one_falls_back_to_xla(records):
    for r in _train(records):
        wants_pallas = r["attention"] == "pallas" and r["platform"] == "tpu"
        assert r["kernel"] == ("pallas" if wants_pallas else "xla"), (r["preset"], r["platform"])
    assert _train(records, preset=GPT2, platform="tpu")  # the kernel case was lowered at all


def test_the_sampler_lowers_over_the_runs_sharded_params(records):
    sampler = [r for r in records if r["program"] in ("prefill", "decode")]
    assert {(r["preset"], r["program"], r["platform"]) for r in sampler} >= {
        (p, prog, plat)
        for p in (CHAR, GPT2, SHAKESPEARE)
        for prog in ("prefill", "decode")
        for plat in ("tpu", "cuda")
    }
    for r in sampler:
        assert r["ok"] and r["devices"] == 8
        train = _train(records, preset=r["preset"], mesh=r["mesh"], platform=r["platform"])[0]
        params = [s["ways_in"] for s in train["state"] if s["path"].startswith(".params")]
        assert r["params_ways"] == params
    assert any(w == 8 for r in sampler for w in r["params_ways"])  # over FSDP-sharded params


def test_cudnn_attention_lowers_or_is_named_untested(records):
    cudnn = [r for r in records if r["program"] == "train_step/cudnn"]
    assert {r["preset"] for r in cudnn} == {GPT2}  # char: attention dropout, XLA attention
    for r in cudnn:
        if r["ok"]:  # a host with a GPU lowers it
            assert r["devices"] == 8 and r["kernel"] == "cudnn"
            continue
        # The one known reason: jax asks the cuDNN library for its version while lowering.
        assert "cuDNN" in r["error"], r["error"]
        warnings.warn(
            f"UNTESTED: attention=cudnn for {r['preset']} on 'cuda' did not lower on this host "
            f"({r['error']}); the GPU script (experiments/accelerator) runs it",
            stacklevel=1,
        )
        print(f"untested: cudnn attention, {r['preset']}, cuda: {r['error']}")
