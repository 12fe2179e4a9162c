"""`minigpt plan`: what a config needs per device on N accelerators, before any is rented.

Memory per device (params, gradients, optimizer state, activations) comes from the sharded
train step itself, built on N fake CPU devices: estimated from its shapes (plan_memory.py) and,
where the host's program is the target's (XLA attention), measured by compiling it here. Then:
whether it fits, the largest micro-batch per device with and without remat, FLOPs per step
(nanoGPT's estimate) and the step time at an assumed MFU.

The device table is plain data, and this module imports jax only inside make_plan: cli_flags
reads DEVICES before the CPU is split into fake devices (startup.split_cpu).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from minigpt_jax.errors import UsageError

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class DeviceKind:
    name: str
    platform: str  # jax.export's: 'tpu' | 'cuda'
    hbm: int  # bytes per chip (one JAX device)
    peak_flops: float  # dense bf16 FLOP/s per chip
    usable: float  # the fraction of HBM a JAX process may take by default


# Vendor figures per chip (Cloud TPU system architecture pages; NVIDIA data sheets, dense bf16,
# SXM parts). On GPUs JAX preallocates 75% of the memory (XLA_PYTHON_CLIENT_MEM_FRACTION).
DEVICES = {
    "v4": DeviceKind("TPU v4", "tpu", 32 * GiB, 275e12, 1.0),
    "v5e": DeviceKind("TPU v5e", "tpu", 16 * GiB, 197e12, 1.0),
    "v5p": DeviceKind("TPU v5p", "tpu", 95 * GiB, 459e12, 1.0),
    "v6e": DeviceKind("TPU v6e", "tpu", 32 * GiB, 918e12, 1.0),
    "a100-40gb": DeviceKind("A100 40GB", "cuda", 40 * GiB, 312e12, 0.75),
    "a100-80gb": DeviceKind("A100 80GB", "cuda", 80 * GiB, 312e12, 0.75),
    "h100": DeviceKind("H100 80GB", "cuda", 80 * GiB, 989e12, 0.75),
    "h200": DeviceKind("H200 141GB", "cuda", 140 * GiB, 989e12, 0.75),
}


@dataclasses.dataclass(frozen=True)
class Plan:
    config_name: str
    kind: DeviceKind
    chips: int
    mesh: dict[str, int]
    batch: int  # sequences per device per micro-step
    params: int  # bytes per device, from here on
    opt_state: int
    grads: int
    activations: int  # the backward pass's residuals at `batch` (and remat as configured)
    inputs: int  # the micro-batches (x, y)
    measured: Any  # plan_memory.Measured, or None
    measured_why_not: str  # why there is no measured total (or "")
    max_batch: dict[str, int]  # remat -> the largest `batch` that fits
    flops_per_step: float  # the whole step, all devices
    mfu: float

    @property
    def estimated_total(self) -> int:
        return self.params + self.opt_state + self.grads + self.activations + self.inputs

    @property
    def total(self) -> int:
        """The measured total where there is one, else the estimate."""
        return self.measured.total if self.measured else self.estimated_total

    @property
    def usable(self) -> int:
        return int(self.kind.hbm * self.kind.usable)

    @property
    def step_seconds(self) -> float:
        return self.flops_per_step / (self.chips * self.kind.peak_flops * self.mfu)


def nanogpt_flops_per_token(n_params: int, n_layer: int, n_head: int, head_dim: int, T: int):
    """nanoGPT's estimate_mfu (PaLM appendix B): 6N + 12 L H Q T, N without wpe."""
    return 6 * n_params + 12 * n_layer * n_head * head_dim * T


def check(kind: str, mfu: float) -> None:
    """UsageError for an unknown device kind or an MFU outside (0, 1]."""
    if kind not in DEVICES:
        raise UsageError(f"unknown device {kind!r}; use one of {', '.join(DEVICES)}")
    if not 0 < mfu <= 1:
        raise UsageError(f"--mfu must be in (0, 1], got {mfu}")


def _largest_batch(free: int, per_sequence: int) -> int:
    return max(0, free // per_sequence) if per_sequence > 0 else 0


def make_plan(
    config: Any, config_name: str, kind: str, chips: int, *, mfu: float, vocab_size: int,
    measure: bool = True,
) -> Plan:  # fmt: skip
    """The plan of `config` on `chips` devices of `kind`; jax must see >= chips CPU devices."""
    check(kind, mfu)
    import jax  # here, not at the top: see the module docstring

    from minigpt_jax import plan_memory, sharding
    from minigpt_jax import run as run_lib
    from minigpt_jax.model import count_params

    devices = jax.devices("cpu")
    if len(devices) < chips:
        raise UsageError(f"{chips} devices to plan for, but jax sees {len(devices)} CPU devices")
    mesh = sharding.make_mesh(config.mesh, devices[:chips])
    run = run_lib.build(config, vocab_size, mesh=mesh)
    device, cfg, t = DEVICES[kind], run.model_cfg, config.train
    B, A, T = plan_memory.local_batch(run), t.grad_accum, cfg.block_size
    params = plan_memory.sharded_bytes(run.abstract_state.params)
    opt_state = plan_memory.sharded_bytes(run.abstract_state.opt_state)
    # Gradients are float32 like the params and sharded like them; with accumulation the
    # running sum and one micro-step's gradients live together.
    grads = params * (2 if A > 1 else 1)
    inputs = 2 * A * B * T * 4  # x and y, int32
    res = {r: plan_memory.residuals(run, r, device.platform) for r in ("none", "block")}
    fixed, usable = params + opt_state + grads, int(device.hbm * device.usable)
    max_batch = {  # a sequence costs its residuals and its tokens in every micro-batch
        r: _largest_batch(usable - fixed - v.fixed, v.per_sequence + inputs // B)
        for r, v in res.items()
    }
    measured, why_not = None, ""
    if (cfg.attention, device.platform) in (("pallas", "tpu"), ("cudnn", "cuda")):
        # The host compiles XLA attention, whose B x H x T x T scores the kernel never holds.
        why_not = f"this host's program uses XLA attention, the {device.name}'s {cfg.attention}"
    elif not measure:
        why_not = "not asked for (--nomeasure)"
    else:
        measured = plan_memory.measure(run)
    n_params, _ = count_params(run.abstract_state.params)
    H = cfg.n_head
    per_token = nanogpt_flops_per_token(n_params, cfg.n_layer, H, cfg.n_embd // H, T)
    return Plan(
        config_name=config_name, kind=device, chips=chips, mesh=dict(mesh.shape), batch=B,
        params=params, opt_state=opt_state, grads=grads, inputs=inputs,
        activations=res[cfg.remat if cfg.remat in res else "none"].at(B),
        measured=measured, measured_why_not=why_not, max_batch=max_batch,
        flops_per_step=per_token * run.tokens_per_step, mfu=mfu,
    )  # fmt: skip


def _gib(n: float) -> str:
    return f"{n / GiB:8.2f} GiB"


def describe(p: Plan) -> str:
    """The plan as lines of text."""
    mesh = " x ".join(f"{k} {v}" for k, v in p.mesh.items())
    m = p.measured
    here = lambda n, note="": f"  {_gib(n)}{note}" if m else ""  # noqa: E731
    rows = [
        f"{p.config_name} on {p.chips} x {p.kind.name} ({p.kind.hbm / GiB:.0f} GiB HBM each), "
        f"mesh {mesh}; {p.batch} sequences per device per micro-step",
        f"per device                 estimated    measured here (CPU program, {p.chips} devices)",
        f"  params                  {_gib(p.params)}",
        f"  optimizer state         {_gib(p.opt_state)}",
        f"  params + opt + batch    {_gib(p.params + p.opt_state + p.inputs)}"
        + here(m and m.arguments),
        f"  gradients               {_gib(p.grads)}",
        f"  activations             {_gib(p.activations)}",
        f"  grads + activations     {_gib(p.grads + p.activations)}"
        + here(m and m.temp, " (temp)"),
        f"  total                   {_gib(p.estimated_total)}" + here(m and m.total),
    ]
    if not m:
        rows.append(f"  (not measured: {p.measured_why_not})")
    fits = "fits" if p.total <= p.usable else "does NOT fit"
    which = "measured" if m else "estimated"
    share = f"{p.kind.usable:.0%} of HBM, JAX's default on GPUs" if p.kind.usable < 1 else "all HBM"
    rows += [
        f"{fits}: {which} {p.total / GiB:.2f} GiB of {p.usable / GiB:.2f} GiB usable ({share})",
        f"largest micro-batch per device that fits: {p.max_batch['none']} sequences without remat, "
        f"{p.max_batch['block']} with remat=block",
        f"FLOPs per step: {p.flops_per_step:.3e} (nanoGPT's 6N + 12LHQT per token)"
        + (f"; compiled here: {m.flops * p.chips:.3e}" if m and m.flops else ""),
        f"step time at {p.mfu:.0%} MFU of {p.kind.peak_flops / 1e12:.0f} TFLOP/s bf16: "
        f"{p.step_seconds * 1e3:.1f} ms",
    ]
    return "\n".join(rows)
