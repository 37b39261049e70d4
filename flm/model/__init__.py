"""The DiT backbone and its layers; knows tokens, times and logits, nothing about FLM."""

from flm.model.cache import KVCache
from flm.model.config import DiTConfig
from flm.model.dit import DiT, compile_networks

__all__ = ["DiT", "DiTConfig", "KVCache", "compile_networks"]
