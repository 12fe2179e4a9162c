"""The config schema: every field a run reads, its default (nanoGPT's train_shakespeare_char),
the smoke helper the presets share, and the checks of types and choices in one place.

Presets in configs/ import this module only: `c = config.base_config()`, then their changes.
"""

from __future__ import annotations

import importlib.util
import pathlib
from typing import TYPE_CHECKING, Any

from ml_collections import config_dict

from minigpt_jax.errors import UsageError

if TYPE_CHECKING:
    from minigpt_jax.model_config import ModelConfig

# Preset files import this module while the CLI parses --config, before `--cpu_devices` has
# split the CPU, and XLA reads its flags when jax starts: so jax (and the modules that import
# it: model_config, optimizer, sample) are imported inside the functions that check a config.

SAMPLINGS = ("random", "epoch")
INIT_FROM = ("resume", "scratch")
SAMPLE_KEYS = ("temperature", "top_k", "top_p")


def base_config() -> config_dict.ConfigDict:
    """nanoGPT's config/train_shakespeare_char.py: a 6/6/384 character-level GPT."""
    c = config_dict.ConfigDict()

    c.data = config_dict.ConfigDict()
    c.data.dir = "data/shakespeare_char"  # written by `minigpt prepare`
    c.data.input = ""  # a UTF-8 text: if data.dir is not prepared yet, train prepares it first
    c.data.val_fraction = 0.1  # used when train prepares data.input
    c.data.sampling = "random"  # 'random' windows (nanoGPT) | 'epoch' without replacement (minGPT)

    c.model = config_dict.ConfigDict()
    c.model.vocab_size = config_dict.placeholder(int)  # taken from the data's meta.json
    c.model.block_size = 256  # context length
    c.model.n_layer = 6
    c.model.n_head = 6
    c.model.n_embd = 384
    c.model.dropout = 0.2  # embeddings, residual branches and attention weights
    c.model.attn_dropout = config_dict.placeholder(float)  # unset: the same as dropout
    c.model.bias = False  # no biases in Linears and LayerNorms: a bit better and faster
    # Per place, unset follows model.bias: q/k/v, attention output, MLP, LayerNorms.
    c.model.bias_qkv = config_dict.placeholder(bool)
    c.model.bias_attn_proj = config_dict.placeholder(bool)
    c.model.bias_mlp = config_dict.placeholder(bool)
    c.model.bias_ln = config_dict.placeholder(bool)
    c.model.bias_head = False  # lm_head bias; untied heads only
    c.model.tie_embeddings = True  # lm_head shares wte, as in GPT-2
    c.model.activation = "gelu"  # exact erf GELU: torch.nn.GELU() | 'gelu_tanh' | 'relu' | 'relu2'
    c.model.ln_eps = 1e-5
    c.model.dtype = "float32"  # compute dtype: float32 on CPU, bfloat16 on GPU/TPU
    c.model.arch = "gpt"  # 'gpt' | 'bigram'
    c.model.attention = "xla"  # 'xla' | 'cudnn' (GPU, bf16) | 'pallas' (TPU); falls back to xla
    c.model.init = "nanogpt"  # N(0, 0.02), c_proj 0.02/sqrt(2*n_layer) | 'normal': no scaling
    c.model.wpe_init = "normal"  # 'normal' N(0, 0.02) | 'zeros' (early minGPT)
    # Linears' backward: 'auto' (= 'narrow' on CPU: transposes the narrower operand of the weight
    # gradient, ~1.4x faster steps there; 'xla' elsewhere) | 'xla' | 'narrow'. Same math.
    c.model.linear_vjp = "auto"
    c.model.remat = "none"  # 'none' | 'block' | 'dots': activation memory for recompute
    # The modern recipe's switches (modded-nanogpt), off by default: nanoGPT's model, bit for bit.
    c.model.pos_emb = "learned"  # 'learned' wpe table | 'rotary' (no wpe; q, k rotated per head)
    c.model.rope_base = 10000.0  # rotary: pair i turns at rope_base ** (-2i / head_dim)
    c.model.norm = "layernorm"  # 'layernorm' | 'rmsnorm' (learned scale, no bias, eps ln_eps)
    c.model.qk_norm = False  # RMS-normalise q and k per head before the dot product, no scale
    c.model.logit_softcap = 0.0  # > 0: logits = cap * tanh(logits / cap), in fp32; 0: off
    c.model.zero_init_proj = False  # attention and MLP output projections (c_proj) start at 0

    c.opt = config_dict.ConfigDict()
    # 'nanogpt' (warmup + cosine) | 'warmup_cosine' (warmup from lr 0) | 'constant' | 'mingpt'
    c.opt.schedule = "nanogpt"
    c.opt.lr = 1e-3  # with a baby network it can afford to go a bit higher
    c.opt.min_lr = 1e-4  # ~ lr / 10, per Chinchilla
    c.opt.warmup_iters = 100
    c.opt.lr_decay_iters = 5000  # ~ max_iters
    c.opt.warmup_tokens = 0  # 'mingpt' schedule only
    c.opt.final_tokens = 0  # 'mingpt' schedule only
    c.opt.b1 = 0.9
    c.opt.b2 = 0.99  # a bit larger than GPT-2's 0.95: few tokens per iteration
    c.opt.eps = 1e-8
    c.opt.weight_decay = 0.1
    # 'ndim': every tensor with ndim >= 2 (nanoGPT) | 'linear': Linear kernels (minGPT) | 'all'
    c.opt.decay_mask = "ndim"
    c.opt.grad_clip = 1.0  # global norm; 0 disables
    # 'adamw' (nanoGPT) | 'muon': torch.optim.Muon for the blocks' 2-D kernels (attention and MLP),
    # the AdamW above for the rest (embeddings, head, norms, biases). Muon's lr follows
    # opt.schedule with peak muon_lr and min_lr scaled by muon_lr / lr.
    c.opt.optimizer = "adamw"
    c.opt.muon_lr = 0.02  # Keller Jordan's Muon default (torch's lr factor sqrt(max(1, out/in)))
    c.opt.muon_momentum = 0.95
    c.opt.muon_nesterov = True
    c.opt.muon_weight_decay = 0.0  # decoupled: param *= 1 - lr * wd (torch's default is 0.1)
    c.opt.muon_ns_steps = 5  # Newton-Schulz iterations
    c.opt.muon_ns_dtype = "bfloat16"  # the iteration's dtype: 'bfloat16' (torch) | 'float32'

    c.train = config_dict.ConfigDict()
    c.train.seed = 1337
    c.train.batch_size = 64  # global batch (sequences per micro-step)
    c.train.grad_accum = 1  # micro-steps per update
    c.train.max_iters = 5000
    c.train.eval_interval = 250
    c.train.eval_iters = 200
    c.train.ckpt_interval = 250
    c.train.log_interval = 10
    c.train.init_from = "resume"  # 'resume' the workdir's newest checkpoint | 'scratch'
    c.train.skip_nonfinite = False  # False: stop at a non-finite loss; True: skip that update
    # With skip_nonfinite: a run that skipped more than this fraction of its updates ends with
    # exit 1 (its checkpoints kept): it trained on what was left, which is not the recipe.
    c.train.skip_nonfinite_limit = 0.01
    # A race: the first eval whose full-val loss is at or below this is recorded in summary.json
    # (step, tokens, seconds), and with stop_at_target the run ends there. 0: no target.
    c.train.target_val_loss = 0.0
    c.train.stop_at_target = True
    c.train.log_norms = False  # each layer's grad, param and update norms in the train metrics
    c.train.profile_steps = ""  # 'START,N': a jax.profiler trace of N steps into WORKDIR/profile
    # Weights & Biases (the wandb extra): process 0 mirrors the scalars and this config to a wandb
    # run kept in WORKDIR/wandb; a resume continues it. '': off.
    c.train.wandb_project = ""
    c.train.wandb_run_name = ""  # '': wandb's own
    c.train.wandb_mode = ""  # 'online' | 'offline' | 'disabled'; '': WANDB_MODE, else online

    c.sample = config_dict.ConfigDict()  # written to <workdir>/samples/ at every eval
    c.sample.prompt = "\n"  # nanoGPT's sample.py starts from a newline
    c.sample.max_new_tokens = 200  # 0: no samples at evals
    c.sample.num_samples = 1
    c.sample.settings = "temperature=0.8 top_k=200"  # nanoGPT's sample.py; ';' between several

    c.mesh = config_dict.ConfigDict()
    c.mesh.data = -1  # -1: all remaining devices
    c.mesh.fsdp = 1
    c.mesh.tensor = 1

    c.dist = config_dict.ConfigDict()  # multi-host: every process runs the same command
    c.dist.coordinator = ""  # 'host:port' of process 0; empty: one host, or a detected cluster
    c.dist.num_processes = 1
    c.dist.process_id = 0  # set per process: --config.dist.process_id=N
    c.dist.auto = False  # True: jax.distributed.initialize() finds the cluster (Cloud TPU pods)
    return c


def smoke(
    c: config_dict.ConfigDict, *, steps: int = 60, warmup: int = 10, eval_iters: int = 4,
    sample_tokens: int | None = None,
) -> None:  # fmt: skip
    """Shrinks a preset in place to a CPU run of seconds that keeps its recipe (schedule shape,
    switches): a 2/2/32 model, block 32, no dropout, batch 16, evals and checkpoints every
    steps/2; sample_tokens, when given, shortens the samples drawn at evals."""
    c.model.update(block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    c.opt.lr = 1e-2
    if c.opt.schedule in ("nanogpt", "warmup_cosine"):
        c.opt.update(min_lr=1e-3, warmup_iters=warmup, lr_decay_iters=steps)
    elif c.opt.schedule == "mingpt":
        tokens = 16 * 32  # per step
        c.opt.update(warmup_tokens=tokens * warmup // 2, final_tokens=tokens * steps)
    c.train.update(batch_size=16, max_iters=steps, eval_interval=steps // 2, eval_iters=eval_iters)
    c.train.update(ckpt_interval=steps // 2, log_interval=max(1, steps // 6))
    if sample_tokens is not None:
        c.sample.max_new_tokens = sample_tokens


def sibling(here: str, name: str, arg: str = "") -> config_dict.ConfigDict:
    """Another preset's config, by file name beside `here` (a preset's __file__): configs are
    files, not a package, so a preset that builds on another loads it by path."""
    path = pathlib.Path(here).with_name(name)
    spec = importlib.util.spec_from_file_location(f"minigpt_preset_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def missing_fields(c: config_dict.ConfigDict) -> list[str]:
    """The schema's sections and fields that c lacks: every command reads them all."""
    missing = []
    for section, fields in base_config().items():
        got = c.get(section)
        if not isinstance(got, config_dict.ConfigDict):
            missing.append(section)
        else:
            missing += [f"{section}.{name}" for name in fields if name not in got]
    return missing


def from_saved(saved: dict) -> config_dict.ConfigDict:
    """A run's config.json as a config; fields added since it was written get their defaults."""
    c = base_config()
    try:
        for section, fields in saved.items():
            if section in c and isinstance(fields, dict):
                c[section].update({k: v for k, v in fields.items() if k in c[section]})
    except (TypeError, ValueError) as e:
        raise UsageError(f"a run's config.json has a field of the wrong type: {e}") from None
    return c


def model_config(c: Any, vocab_size: int | None = None) -> ModelConfig:
    """ModelConfig from the model section; vocab_size, when given, is the data's."""
    from minigpt_jax.model_config import ModelConfig

    fields = dict(c.model)
    if vocab_size is not None:
        fields["vocab_size"] = vocab_size
    try:
        return ModelConfig.from_dict(fields)
    except (TypeError, ValueError) as e:
        raise UsageError(f"bad model config: {e}") from None


def _choice(c: Any, field: str, choices: tuple[str, ...]) -> None:
    section, name = field.split(".")
    if c[section][name] not in choices:
        raise UsageError(f"{field} must be one of {list(choices)}, got {c[section][name]!r}")


def validate(c: Any) -> None:
    """Every check that needs no data and no devices: one UsageError line naming the field."""
    from minigpt_jax import optimizer, profiler, sample, wandb_sink

    t, o = c.train, c.opt
    for name in ("batch_size", "max_iters", "eval_interval", "eval_iters", "log_interval"):
        if t[name] <= 0:
            raise UsageError(f"train.{name} must be positive, got {t[name]}")
    if t.grad_accum <= 0 or t.ckpt_interval <= 0:
        raise UsageError("train.grad_accum and train.ckpt_interval must be positive")
    if not 0.0 <= t.skip_nonfinite_limit <= 1.0:
        raise UsageError(
            f"train.skip_nonfinite_limit must be in [0, 1], got {t.skip_nonfinite_limit}"
        )
    if not t.target_val_loss >= 0:
        raise UsageError(f"train.target_val_loss must be >= 0 (0: none), got {t.target_val_loss}")
    profiler.parse_steps(t.profile_steps)
    wandb_sink.check(t)
    _choice(c, "train.init_from", INIT_FROM)
    _choice(c, "data.sampling", SAMPLINGS)
    _choice(c, "opt.schedule", optimizer.SCHEDULES)
    _choice(c, "opt.decay_mask", optimizer.DECAY_MASKS)
    _choice(c, "opt.optimizer", optimizer.OPTIMIZERS)
    _choice(c, "opt.muon_ns_dtype", optimizer.muon.NS_DTYPES)
    if o.schedule in ("nanogpt", "warmup_cosine") and o.lr_decay_iters < o.warmup_iters:
        raise UsageError(
            f"opt.lr_decay_iters={o.lr_decay_iters} is below opt.warmup_iters={o.warmup_iters}; "
            "make the decay end after the warmup"
        )
    if o.schedule == "mingpt" and not o.final_tokens > o.warmup_tokens >= 0:
        raise UsageError(
            f"opt.schedule=mingpt needs 0 <= opt.warmup_tokens < opt.final_tokens, got "
            f"{o.warmup_tokens} and {o.final_tokens}"
        )
    try:
        sample.check_seed(t.seed)
    except ValueError as e:
        raise UsageError(f"train.seed {e}") from None
    optimizer.check_config(o)
    model_config(c, c.model.vocab_size or 1)
    sample_settings(c.sample.settings)
    check_dist(c.dist)


def check_dist(d: Any) -> None:
    """A cluster named by hand: this process's id must be one of its processes."""
    if d.coordinator and not 0 <= d.process_id < d.num_processes:
        raise UsageError(
            f"dist.process_id={d.process_id} must be in [0, dist.num_processes={d.num_processes})"
        )


def sample_settings(settings: str) -> list[tuple[str, dict[str, Any]]]:
    """sample.settings ('temperature=0.8 top_k=200; top_p=0.9') -> [(part, sampler kwargs)]."""
    from minigpt_jax import sample

    out = []
    for part in filter(None, (p.strip() for p in settings.split(";"))):
        try:
            kw = {k: float(v) for k, v in (item.split("=") for item in part.split())}
            kw = {"temperature": 1.0, "top_k": None, "top_p": 1.0, **kw}
            if set(kw) != set(SAMPLE_KEYS):
                raise ValueError
            if kw["top_k"] is not None:
                if kw["top_k"] != int(kw["top_k"]):
                    raise ValueError
                kw["top_k"] = int(kw["top_k"])
            sample.check_settings(**kw)
        except ValueError:
            raise UsageError(
                f"sample.settings: cannot read {part!r}; write e.g. 'temperature=0.8 top_k=200; "
                "temperature=1.0 top_p=0.9' (temperature >= 0, top_k >= 1, 0 < top_p <= 1)"
            ) from None
        out.append((part, kw))
    return out
