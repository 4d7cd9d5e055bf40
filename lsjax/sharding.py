"""One sharding vocabulary: logical axis names on every param and activation, mapped to mesh axes.

The model annotates its params with logical names ('vocab', 'embed', 'heads', ...); this table decides
which mesh axis ('data', 'fsdp', 'tensor') each name is split over. Changing the parallelism strategy
means changing this table, never the model.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec

from lsjax import model
from lsjax.config import LlamaConfig

MESH_AXES = ("data", "fsdp", "tensor")

# (logical name, mesh axis or axes or None); batch spans data and fsdp, weights are split over fsdp
# (their 'embed' dimension) and tensor (heads, kv heads, MLP width, vocabulary).
LOGICAL_RULES: Tuple[Tuple[str, object], ...] = (
    ("batch", ("data", "fsdp")),
    ("seq", None),
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
)
LOGICAL_NAMES = tuple(name for name, _ in LOGICAL_RULES)


def to_mesh_spec(logical: PartitionSpec, rules: Sequence = LOGICAL_RULES) -> PartitionSpec:
    """A PartitionSpec of logical names -> one of mesh axis names, by the rules table."""
    unknown = [name for name in logical if name is not None and name not in dict(rules)]
    if unknown:
        raise ValueError(f"logical axis {unknown[0]!r} has no rule; known axes: {[n for n, _ in rules]}")
    return nn.logical_to_mesh_axes(tuple(logical), rules)


def param_specs(config: LlamaConfig, rules: Sequence = LOGICAL_RULES):
    """Mesh PartitionSpecs for every param, in the params' tree structure."""
    return jax.tree.map(lambda spec: to_mesh_spec(spec, rules), model.param_logical_axes(config),
                        is_leaf=lambda x: isinstance(x, PartitionSpec))
