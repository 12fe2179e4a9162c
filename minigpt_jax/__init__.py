"""minigpt_jax: nanoGPT / minGPT's character-level GPT in JAX/Flax."""

__version__ = "0.1.0"
