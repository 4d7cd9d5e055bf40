"""Early-exit decoding (lossy; docs/algorithms.md, early-exit inference): each token from layers [0, E) and the shared
head, the deep layers never run; the round is autoregressive's `one_token` through the first E layers."""

from __future__ import annotations

from lsjax.config import LlamaConfig
from lsjax.decoding import sampling
from lsjax.decoding.autoregressive import one_token
from lsjax.decoding.loop import DecodeState, Settings


def run_round(config: LlamaConfig, params, settings: Settings, knobs: sampling.Knobs,
              state: DecodeState) -> DecodeState:
    """One token per row through layers [0, E)."""
    return one_token(config, params, settings, knobs, state, depth=settings.exit_layer)
