"""lsjax: LayerSkip (layer dropout, early-exit loss, self-speculative decoding) in JAX and Flax."""

__version__ = "0.1.0"
