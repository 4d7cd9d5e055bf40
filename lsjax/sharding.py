"""One sharding vocabulary: logical axis names on every param and activation, mapped to mesh axes.

The model annotates its params with logical names ('vocab', 'embed', 'heads', ...); this table decides
which mesh axis ('data', 'fsdp', 'tensor') each name is split over. Changing the parallelism strategy
means changing this table, never the model. A dimension that a mesh axis does not divide (4 KV heads on
8 tensor devices) stays whole rather than failing: the table says where to split when splitting is possible.

    mesh = sharding.make_mesh(sharding.mesh_shape(2, 4, 1))       # data 2 x fsdp 4 over 8 devices
    param_shardings = sharding.param_shardings(mesh, model.param_logical_axes(config), abstract_params)

A leaf module: the logical axes of params come from their callers (the model), so the model can in turn pin
its activations with `constrain`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import flax.linen as nn
import jax
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from lsjax.config import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

# (logical name, mesh axis or axes or None); batch spans data and fsdp, weights are split over fsdp
# (their 'embed' dimension) and tensor (heads, kv heads, MLP width, vocabulary).
LOGICAL_RULES: tuple[tuple[str, object], ...] = (
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


def _is_spec(x) -> bool:
    return isinstance(x, PartitionSpec)


def param_specs(logical_axes, rules: Sequence = LOGICAL_RULES):
    """Mesh PartitionSpecs for a tree of logical ones (`model.param_logical_axes`), in the same structure."""
    return jax.tree.map(lambda spec: to_mesh_spec(spec, rules), logical_axes, is_leaf=_is_spec)


# The KV cache [L, B, S, KV, hd] and token batches [B, ...]: rows over the batch axes, KV heads over tensor.
CACHE_AXES = PartitionSpec("layers", "batch", "seq", "kv_heads", "head_dim")
LAYER_CACHE_AXES = PartitionSpec(*CACHE_AXES[1:])  # one layer's buffer in the per-layer layout
BATCH_AXES = PartitionSpec("batch")
# The residual stream [B, T, D]: rows over the batch axes and nothing else. Left unpinned, XLA lets it follow
# the weights' FSDP split of 'embed', and every device then computes on the whole batch.
ACTIVATION_AXES = PartitionSpec("batch", "seq", None)


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int | None = None) -> tuple[int, int, int]:
    """(data, fsdp, tensor) with at most one -1 resolved to "the rest"; the product must not exceed the
    device count (a smaller mesh takes the first devices, with a warning)."""
    num_devices = jax.device_count() if num_devices is None else num_devices
    shape = [data, fsdp, tensor]
    text = f"mesh (data, fsdp, tensor) = ({data}, {fsdp}, {tensor})"
    if shape.count(-1) > 1 or any(n == 0 or n < -1 for n in shape):
        raise ConfigError(f"{text}: expected positive sizes and at most one -1 (the rest of the devices)")
    known = math.prod(n for n in shape if n != -1)
    if -1 in shape:
        if num_devices % known:
            raise ConfigError(f"{text}: {known} does not divide the {num_devices} devices")
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) > num_devices:
        raise ConfigError(f"{text}: needs {math.prod(shape)} devices but {num_devices} are present")
    if math.prod(shape) < num_devices:
        print(f"warning: {text} uses {math.prod(shape)} of the {num_devices} devices", file=sys.stderr)
    return tuple(shape)


def mesh_from_flag(text: str | None) -> Mesh | None:
    """The mesh of a --mesh "D,F,T" flag (-1: the rest of the devices), or without the flag all devices on
    data (None on a single device)."""
    if text is None:
        return None if jax.device_count() == 1 else make_mesh(mesh_shape(-1, 1, 1))
    try:
        data, fsdp, tensor = (int(n) for n in text.split(","))
    except ValueError:
        raise ConfigError(f"--mesh={text!r}: expected three comma-separated integers data,fsdp,tensor") from None
    return make_mesh(mesh_shape(data, fsdp, tensor))


def make_mesh(shape: Sequence[int]) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh over the first prod(shape) devices; Auto axes, so XLA propagates
    shardings between the ones we set."""
    devices = jax.devices()[:math.prod(shape)]
    return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def fitted_spec(mesh: Mesh, spec: PartitionSpec, shape: Sequence[int]) -> PartitionSpec:
    """The mesh spec with every split dropped whose mesh size does not divide the dimension."""
    def size(axes):
        axes = axes if isinstance(axes, tuple) else (axes,)
        return math.prod(mesh.shape[a] for a in axes)
    entries = list(spec) + [None] * (len(shape) - len(spec))
    return PartitionSpec(*(axes if axes is not None and dim % size(axes) == 0 else None
                           for axes, dim in zip(entries, shape)))


def logical_sharding(mesh: Mesh, logical: PartitionSpec, shape: Sequence[int]) -> NamedSharding:
    return NamedSharding(mesh, fitted_spec(mesh, to_mesh_spec(logical), shape))


def param_shardings(mesh: Mesh, logical_axes, params):
    """NamedShardings for params (or their abstract shapes) with these logical axes, by the rules table."""
    return jax.tree.map(lambda spec, p: logical_sharding(mesh, spec, p.shape), logical_axes, params,
                        is_leaf=_is_spec)


def train_state_shardings(mesh: Mesh, logical_axes, optimizer: optax.GradientTransformation, state):
    """Shardings for {"step", "params", "opt_state"}: params by their logical axes, optimizer moments follow
    their params (optax maps the params-shaped parts of its state), everything else is replicated."""
    params = param_shardings(mesh, logical_axes, state["params"])
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_state = optax.tree_map_params(optimizer, lambda _, sharding: sharding, state["opt_state"], params,
                                      transform_non_params=lambda _: replicated)
    return {"step": replicated, "params": params, "opt_state": opt_state}


def without_leading_axis(stacked: NamedSharding) -> NamedSharding:
    """The sharding of one slice of a stacked array (a layer of the stacked params or cache)."""
    return NamedSharding(stacked.mesh, PartitionSpec(*stacked.spec[1:]))


def batch_sharding(mesh: Mesh, shape: Sequence[int]) -> NamedSharding:
    """Rows over the batch axes (data and fsdp), when they divide the batch."""
    return logical_sharding(mesh, BATCH_AXES, shape)


def constrain(x: jax.Array, logical: PartitionSpec) -> jax.Array:
    """Pins an intermediate's sharding under the mesh set by `jax.set_mesh`; a no-op without one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or set(MESH_AXES) - set(mesh.axis_names):
        return x
    spec = fitted_spec(mesh, to_mesh_spec(logical), x.shape)
    return jax.lax.with_sharding_constraint(x, spec)
