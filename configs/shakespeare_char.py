"""nanoGPT's train_shakespeare_char: a 6/6/384 character-level GPT on Tiny Shakespeare.

Reproduces karpathy/nanoGPT config/train_shakespeare_char.py (and its README's CPU recipe).

  minigpt prepare --data_dir data/shakespeare_char
  minigpt train --config configs/shakespeare_char.py --workdir runs/shakespeare_char
  minigpt train --config configs/shakespeare_char.py:cpu --workdir runs/cpu
  minigpt sample --workdir runs/cpu --prompt "O God, O God!"

Variants (after the colon):
  (none)  nanoGPT's GPU recipe: 10.65M params, 5000 iters. nanoGPT reports val loss 1.4697
          after ~3 minutes on an A100; on a 2-core CPU it takes most of a day.
  cpu     nanoGPT README's CPU recipe: 4/4/128, block 64, batch 12, 2000 iters, dropout 0.
          nanoGPT's PyTorch code reaches val ~1.88 here in ~2 minutes on a 2-core CPU.
  smoke   a few seconds; tests and CI run it. Val loss ends well below the unigram entropy.
"""

from ml_collections import config_dict


def get_config(arg: str = "") -> config_dict.ConfigDict:
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
    c.model.activation = "gelu"  # exact erf GELU: torch.nn.GELU()
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

    if arg == "cpu":
        c.model.update(block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0)
        c.opt.lr_decay_iters = 2000
        c.train.update(batch_size=12, max_iters=2000, eval_iters=20, log_interval=50)
    elif arg == "smoke":
        c.model.update(block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
        c.opt.update(lr=1e-2, min_lr=1e-3, warmup_iters=10, lr_decay_iters=150)
        c.train.update(batch_size=16, max_iters=150, eval_interval=75, eval_iters=5)
        c.train.update(ckpt_interval=75, log_interval=25)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use one of '', 'cpu', 'smoke'")
    return c
