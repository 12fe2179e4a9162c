"""Device mesh ('data', 'fsdp', 'tensor'), logical axis rules, and the shardings built from them.

One code path: data parallel, FSDP and tensor parallel are mesh shapes; one device is 1x1x1.
"""

from __future__ import annotations

import hashlib
import pathlib
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from minigpt_jax import startup
from minigpt_jax.errors import OutOfStep, UsageError

MESH_AXES = ("data", "fsdp", "tensor")

# Logical names used by model.py -> mesh axes. FSDP shards the embedding dim of every weight
# (and so the Adam moments); tensor parallelism splits heads and the MLP hidden dim.
LOGICAL_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("qkv", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", None),
    ("vocab_out", None),
    ("pos", None),
    ("norm", None),
)


def mesh_shape(mesh_cfg: Any, num_devices: int) -> tuple[int, int, int]:
    """Sizes for ('data', 'fsdp', 'tensor'); at most one -1, meaning all remaining devices."""
    sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise UsageError(f"mesh sizes {sizes} must be positive, with at most one -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if num_devices % known:
            raise UsageError(f"mesh {sizes} does not divide the {num_devices} devices")
        sizes[sizes.index(-1)] = num_devices // known
    if int(np.prod(sizes)) != num_devices:
        raise UsageError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
            f"but {num_devices} are available; set --config.mesh.data=-1 to use them all"
        )
    return tuple(sizes)


def make_mesh(mesh_cfg: Any, devices: list | None = None) -> Mesh:
    devices = devices if devices is not None else jax.devices()
    shape = mesh_shape(mesh_cfg, len(devices))
    # Auto axes: jax.make_mesh defaults to Explicit, which linen layers do not support.
    return jax.make_mesh(
        shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
    )


def one_device_mesh() -> Mesh:
    """The 1x1x1 mesh on the first device: what a single-device restore or run uses."""
    return make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])


def _is_boxed(x: Any) -> bool:
    return isinstance(x, nn.LogicallyPartitioned)


def logical_shardings(abstract_tree: Any, mesh: Mesh) -> Any:
    """NamedShardings for a tree whose leaves may carry logical names (nn.LogicallyPartitioned)."""
    # A box around no array (optax.partition's MaskedNode where another group owns the param,
    # as Muon + AdamW's states have) holds nothing to shard: unwrap it so it stays a leafless
    # node, not a sharding where the state has none.
    abstract_tree = jax.tree.map(
        lambda x: x.value if _is_boxed(x) and not jax.tree.leaves(x.value) else x,
        abstract_tree,
        is_leaf=_is_boxed,
    )
    specs = nn.get_partition_spec(abstract_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_RULES)


def batch_sharding(mesh: Mesh, leading_dims: int = 0) -> NamedSharding:
    """Shards a (..., B, T) batch's B over data and fsdp; leading dims (micro-steps) replicated."""
    return NamedSharding(mesh, PartitionSpec(*([None] * leading_dims), ("data", "fsdp"), None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def put_batch(arrays: Any, sharding: NamedSharding) -> Any:
    """Host numpy arrays (this process's rows) -> global device arrays laid out by `sharding`."""
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, a), arrays)


def process_slice() -> dict[str, int]:
    """This process's place among the hosts: each loads only its rows of every global batch."""
    return {"process_index": jax.process_index(), "process_count": jax.process_count()}


def sharded_abstract(abstract_tree: Any, mesh: Mesh) -> Any:
    """ShapeDtypeStructs carrying their NamedShardings: a restore target for orbax."""
    shardings = logical_shardings(abstract_tree, mesh)
    # unbox without the sharding constraint: these are shapes, not traced values.
    values = jax.tree.map(
        lambda x: x.unbox(apply_constraint=False) if _is_boxed(x) else x,
        abstract_tree,
        is_leaf=_is_boxed,
    )
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), values, shardings
    )


def initialize_distributed(dist_cfg: Any) -> None:
    """Joins the processes of a multi-host run; a no-op on one host.

    dist.coordinator ('host:port'), dist.num_processes and dist.process_id name the cluster
    explicitly (GPU clusters); dist.auto lets JAX find it (Cloud TPU's metadata server, SLURM,
    ...); otherwise a known cluster environment variable turns the same detection on.
    """
    if jax.distributed.is_initialized():
        return
    if dist_cfg.coordinator:  # its process_id checked by config.validate
        jax.distributed.initialize(
            dist_cfg.coordinator, dist_cfg.num_processes, dist_cfg.process_id
        )
    elif dist_cfg.auto or startup.in_cluster():
        try:
            jax.distributed.initialize()
        except ValueError as e:  # JAX found no cluster ("coordinator_address should be defined")
            if startup.in_cluster():
                raise
            # configs/tpu.py sets dist.auto for TPU slices; a lone GPU machine must turn it off.
            raise UsageError(
                f"dist.auto is on but JAX found no cluster to join ({e}); on one machine pass "
                "--config.dist.auto=false"
            ) from None


def check_same_run(workdir: str | pathlib.Path) -> None:
    """Every process of a multi-host run must name the same workdir: processes started on
    different runs (a host that skipped a sweep's run another host started) would otherwise
    train one job from two configs, silently. One small all-gather at the start."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    digest = hashlib.sha256(str(workdir).encode()).digest()[:4]
    mine = np.frombuffer(digest, np.int32)
    everyone = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1)
    if (everyone != everyone[0]).any():
        raise OutOfStep(
            f"the {jax.process_count()} processes of this run name different workdirs (this is "
            f"process {jax.process_index()}, on {workdir}); every host must run the same command"
        )
