"""One place where a run is built: config (+ the data's vocab) -> Run, the model, optimizer and
schedule, mesh and shardings, initial state, the jitted train and eval steps and the batches.

train, bench, compare, convert and the tests all build their runs here; none rebuilds a piece.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from minigpt_jax import config as config_lib
from minigpt_jax import data, optimizer, sharding
from minigpt_jax.errors import UsageError
from minigpt_jax.evaluate import make_eval_step, token_losses
from minigpt_jax.model import init_params, make_model
from minigpt_jax.model_config import ModelConfig

# Separate random streams derived from the one config seed (fold_in), so each is reproducible.
INIT_STREAM, DROPOUT_STREAM = 0, 1
TRAIN_BATCH_STREAM = 0


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def layer_norms(tree: Any, name: str) -> dict[str, jax.Array]:
    """{'name/LAYER': L2 norm} over each top-level entry of a params-shaped tree (h_0, wte,
    ln_f, ...): one fused reduction per leaf inside the step, a few scalars out of it."""
    squares: dict[str, jax.Array] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        layer = f"{name}/{getattr(path[0], 'key', path[0])}"
        total = jnp.sum(jnp.square(leaf.astype(jnp.float32)))
        squares[layer] = squares[layer] + total if layer in squares else total
    return {k: jnp.sqrt(v) for k, v in squares.items()}


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    skip_nonfinite: bool = False,
    log_norms: bool = False,
) -> Callable:
    """train_step(state, batch, rng) -> (state, metrics); batch is (x_AxBxT, y_AxBxT).

    A micro-batches are scanned and their gradients summed (token-weighted), then clipped and
    applied once, so grad_accum=A equals one A-times-larger batch. Dropout keys are
    fold_in(rng, step, micro), so they depend on nothing but the seed and the step. With
    skip_nonfinite, an update whose loss or gradient norm is not finite is dropped. With
    log_norms, the metrics add each layer's gradient, parameter (after the update) and update
    norms ('grad_norm/h_0', 'param_norm/h_0', 'update_norm/h_0', ...).
    """

    def train_step(state: TrainState, batch: tuple, rng: jax.Array):
        x_AxBxT, y_AxBxT = batch
        step_rng = jax.random.fold_in(rng, state.step)

        def loss_sum(params, x_BxT, y_BxT, micro):
            rngs = {"dropout": jax.random.fold_in(step_rng, micro)}
            losses_BxT = token_losses(model, params, x_BxT, y_BxT, deterministic=False, rngs=rngs)
            return losses_BxT.sum()

        def micro_step(grads_sum, inputs):
            x_BxT, y_BxT, micro = inputs
            loss, grads = jax.value_and_grad(loss_sum)(state.params, x_BxT, y_BxT, micro)
            return jax.tree.map(jnp.add, grads_sum, grads), loss

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        micro_ids = jnp.arange(x_AxBxT.shape[0])
        grads_sum, losses_A = jax.lax.scan(micro_step, zeros, (x_AxBxT, y_AxBxT, micro_ids))
        tokens = x_AxBxT.size
        grads = jax.tree.map(lambda g: g / tokens, grads_sum)
        loss, grad_norm = losses_A.sum() / tokens, optax.tree.norm(grads)  # norm before clipping
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if skip_nonfinite:
            keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
            params = jax.tree.map(keep, params, state.params)
            opt_state = jax.tree.map(keep, opt_state, state.opt_state)
        step_metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "lr": schedule(state.step),
            "nonfinite": (~finite).astype(jnp.int32),
        }
        if log_norms:
            for tree, name in (
                (grads, "grad_norm"),
                (params, "param_norm"),
                (updates, "update_norm"),
            ):
                step_metrics.update(layer_norms(tree, name))
        return TrainState(state.step + 1, params, opt_state), step_metrics

    return train_step


def _fresh_state(
    model_cfg: ModelConfig, tx: optax.GradientTransformation, rng: jax.Array
) -> TrainState:
    params = init_params(model_cfg, rng)  # boxed with logical names
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))


@dataclasses.dataclass(frozen=True)
class Run:
    """Everything a command needs to train or evaluate a config on a mesh."""

    config: Any
    model_cfg: ModelConfig
    model: nn.Module
    schedule: optax.Schedule  # AdamW's lr (all params with opt.optimizer=adamw); Muon's is in tx
    tx: optax.GradientTransformation
    mesh: Mesh
    shardings: TrainState  # a NamedSharding per leaf of the state
    abstract_state: TrainState  # shapes with their shardings: a restore target
    batch_sharding: NamedSharding  # (A, B, T) micro-batches: B over data x fsdp
    train_step: Callable  # jitted: state donated
    eval_step: Callable  # jitted: (params, x_NxBxT, y_NxBxT, w_NxBxT) -> (loss sum, weight)
    tokens_per_step: int

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """The mesh and logical axis rules that tracing the model's programs needs."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
            yield

    def init_state(self) -> TrainState:
        """Fresh params and optimizer state (init stream of the seed), made in their shardings
        with no host copy."""
        rng = jax.random.fold_in(jax.random.key(self.config.train.seed), INIT_STREAM)
        init = jax.jit(
            lambda r: nn.unbox(_fresh_state(self.model_cfg, self.tx, r)),
            out_shardings=self.shardings,
        )
        with self.activate():
            return init(rng)

    @property
    def dropout_rng(self) -> jax.Array:
        return jax.random.fold_in(jax.random.key(self.config.train.seed), DROPOUT_STREAM)

    def train_batches(self, tokens: np.ndarray) -> data.Batches:
        """The config's stream of train batches over `tokens`: this process's rows."""
        t = self.config.train
        return data.Batches(
            tokens,
            batch_size=t.batch_size,
            block_size=self.model_cfg.block_size,
            seed=(t.seed, TRAIN_BATCH_STREAM),
            sampling=self.config.data.sampling,
            **sharding.process_slice(),
        )

    def put(self, arrays: Any) -> Any:
        """Host arrays (this process's rows) -> global arrays laid out as batches."""
        return sharding.put_batch(arrays, self.batch_sharding)

    def host_batch(self, batches: data.Batches, step: int) -> tuple:
        """Update `step`'s micro-batches (x_AxBxT, y_AxBxT) as global arrays."""
        A = self.config.train.grad_accum
        micro = [batches.batch(step * A + m) for m in range(A)]
        return self.put(tuple(np.stack(a) for a in zip(*micro)))


def build(config: Any, vocab_size: int, *, mesh: Mesh | None = None) -> Run:
    """The Run of `config` with the data's vocab_size, on `mesh` (default: config.mesh over all
    devices). Checks the config first; compiles nothing (the steps compile on first call)."""
    config_lib.validate(config)
    model_cfg = config_lib.model_config(config, vocab_size)
    t = config.train
    tokens_per_step = t.batch_size * model_cfg.block_size * t.grad_accum
    schedule = optimizer.make_schedule(config.opt, tokens_per_step)
    muon_schedule = None
    if config.opt.optimizer == "muon":
        muon_schedule = optimizer.muon_schedule(config.opt, tokens_per_step)
    tx = optimizer.make_optimizer(config.opt, schedule, muon_schedule)
    model = make_model(model_cfg)
    mesh = mesh or sharding.make_mesh(config.mesh)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if t.batch_size % shards:
        raise UsageError(
            f"train.batch_size={t.batch_size} must be divisible by mesh data x fsdp = {shards}"
        )

    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        init = lambda r: _fresh_state(model_cfg, tx, r)  # noqa: E731
        abstract = jax.eval_shape(init, jax.random.key(0))
        shardings = sharding.logical_shardings(abstract, mesh)
        abstract_state = sharding.sharded_abstract(abstract, mesh)
    batch = sharding.batch_sharding(mesh, leading_dims=1)
    repl = sharding.replicated(mesh)
    train_step = jax.jit(
        make_train_step(
            model, tx, schedule, skip_nonfinite=t.skip_nonfinite, log_norms=t.log_norms
        ),
        in_shardings=(shardings, (batch, batch), repl),
        out_shardings=(shardings, repl),
        donate_argnums=0,
    )
    eval_step = jax.jit(
        make_eval_step(model),
        in_shardings=(shardings.params, batch, batch, batch),
        out_shardings=repl,
    )
    return Run(
        config=config, model_cfg=model_cfg, model=model, schedule=schedule, tx=tx, mesh=mesh,
        shardings=shardings, abstract_state=abstract_state, batch_sharding=batch,
        train_step=train_step, eval_step=eval_step, tokens_per_step=tokens_per_step,
    )  # fmt: skip
