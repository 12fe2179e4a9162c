"""Run by lowering_test.py in a subprocess with 8 fake CPU devices: lowers the accelerator
presets' train steps and sampler programs for 'tpu' and 'cuda' and prints one JSON list.

One process lowers every combination (lowering, not compiling): jax starts once and the
traces that can be shared are.
"""

import json
import sys

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec

from minigpt_jax import lowering, sharding
from minigpt_jax import run as run_lib
from minigpt_jax.config_file import load_config_file

MESHES = {"dp": (8, 1, 1), "fsdp": (1, 8, 1), "fsdp_tensor": (1, 4, 2)}
PLATFORMS = ("tpu", "cuda")
VOCAB = 65  # Tiny Shakespeare's characters
# (preset, dtype override, meshes, also with cuDNN attention). shakespeare_char's default is
# tpu.py:char's model and optimizer in float32 (configs_test), so in bf16 one mesh covers what
# tpu.py:char does not. cuDNN: char's attention dropout keeps it on XLA attention (layers.py).
PRESETS = [
    ("configs/tpu.py:char", None, tuple(MESHES), False),
    ("configs/tpu.py:gpt2_124m", None, tuple(MESHES), True),
    ("configs/shakespeare_char.py", "bfloat16", ("dp",), False),
]


def _kernel(text: str) -> str:
    """Which attention kernel the lowered module calls (by custom-call target: function names
    such as _cudnn_record appear in the module's locations too)."""
    if "custom_call @tpu_custom_call" in text:
        return "pallas"
    return "cudnn" if "custom_call @__cudnn$fmha" in text else "xla"


def _logical_names(run: run_lib.Run) -> list[list]:
    """Each state leaf's logical axis names (model.py's), in the flat order of its arrays."""
    with run.activate():
        boxed = jax.eval_shape(
            lambda r: run_lib._fresh_state(run.model_cfg, run.tx, r), jax.random.key(0)
        )
    specs = nn.get_partition_spec(boxed)
    leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    return [list(s) if isinstance(s, PartitionSpec) else [] for s in leaves]


def _train_records(name, config, mesh_name, mesh) -> tuple[run_lib.Run, list[dict]]:
    run, exported = lowering.export_train_step(config, VOCAB, PLATFORMS, mesh)
    args = lowering.train_args(run)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(args[0])[0]]
    names, n_state = _logical_names(run), len(paths)
    records = []
    for platform, exp in exported.items():
        text = exp.mlir_module()
        state_in = lowering.shard_ways(exp, mesh, "in")[:n_state]
        state_out = lowering.shard_ways(exp, mesh, "out")[:n_state]
        records.append(dict(
            preset=name, mesh=mesh_name, platform=platform, program="train_step", ok=True,
            devices=exp.nr_devices, kernel=_kernel(text), bf16="bf16" in text,
            donated="tf.aliasing_output" in text, attention=config.model.attention,
            mesh_shape=dict(mesh.shape), state=[
                dict(path=p, names=n, shape=list(a.shape), ways_in=i, ways_out=o)
                for p, n, a, i, o in zip(paths, names, jax.tree.leaves(args[0]), state_in,
                                         state_out, strict=True)
            ],
        ))  # fmt: skip
    return run, records


def _sampler_records(name, run, mesh_name, mesh) -> list[dict]:
    n_params = len(jax.tree.leaves(run.abstract_state.params))
    records = []
    for platform, programs in lowering.export_sampler(run, PLATFORMS).items():
        for program, exp in (("prefill", programs.prefill), ("decode", programs.decode)):
            records.append(dict(
                preset=name, mesh=mesh_name, platform=platform, program=program, ok=True,
                devices=exp.nr_devices, params_ways=lowering.shard_ways(exp, mesh)[:n_params],
            ))  # fmt: skip
    return records


def _cudnn_record(name, config, mesh) -> dict:
    """The cuDNN kernel lowered for 'cuda': it needs a GPU to lower (jax asks cuDNN for its
    version), so on a CPU host this records why it is untested."""
    config = config.copy_and_resolve_references()
    config.model.attention = "cudnn"
    record = dict(preset=name, mesh="dp", platform="cuda", program="train_step/cudnn")
    try:
        _, exported = lowering.export_train_step(config, VOCAB, ("cuda",), mesh)
    except Exception as e:  # the reason goes to the test, which names the kernel as untested
        return record | dict(ok=False, error=f"{type(e).__name__}: {str(e).splitlines()[0]}")
    exp = exported["cuda"]
    return record | dict(ok=True, devices=exp.nr_devices, kernel=_kernel(exp.mlir_module()))


def main() -> None:
    records = []
    for name, dtype, meshes, cudnn in PRESETS:
        config = load_config_file(name)
        if dtype:
            config.model.dtype = dtype
        for mesh_name in meshes:
            mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, MESHES[mesh_name])))
            run, train = _train_records(name, config, mesh_name, mesh)
            records += train
            if mesh_name == "fsdp" or len(meshes) == 1:  # the sampler over sharded params
                records += _sampler_records(name, run, mesh_name, mesh)
        if cudnn:
            dp = sharding.make_mesh(dict(zip(sharding.MESH_AXES, MESHES["dp"])))
            records.append(_cudnn_record(name, config, dp))
    json.dump(records, sys.stdout)


if __name__ == "__main__":
    main()
