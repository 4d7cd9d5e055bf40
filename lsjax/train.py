"""The training loop: state, jitted step, held-out exit evaluation, orbax checkpoints, metrics and export.

Everything a resumed run needs is in the checkpoint (params, optimizer state, step, data iterator
position); random draws derive from (seed, step, sample index), so a run killed at any point and
resumed ends bit-identical to an uninterrupted one on the same machine.
"""

from __future__ import annotations

import functools
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from lsjax import checkpoints, data, hf, model, objective, plots, sharding, tokenizer as tokenizer_lib
from lsjax.config import LlamaConfig
from lsjax.train_config import validate_train_config

METRICS_FILE = "metrics.jsonl"


# --- optimiser ---------------------------------------------------------------------------------------------

def lr_schedule(train_cfg) -> optax.Schedule:
    """Linear warmup to the peak, then cosine decay to end_lr_ratio x peak at the last step."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=train_cfg.learning_rate, warmup_steps=train_cfg.warmup_steps,
        decay_steps=max(train_cfg.steps, train_cfg.warmup_steps + 1),
        end_value=train_cfg.learning_rate * train_cfg.end_lr_ratio)


def make_optimizer(train_cfg) -> optax.GradientTransformation:
    """AdamW on the schedule with global-norm clipping; no weight decay on norm scales."""
    decay_mask = lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: not any(getattr(k, "key", None) == "scale" for k in path), params)
    return optax.chain(
        optax.clip_by_global_norm(train_cfg.grad_clip),
        optax.adamw(lr_schedule(train_cfg), b1=train_cfg.b1, b2=train_cfg.b2, weight_decay=train_cfg.weight_decay,
                    mask=decay_mask))


# --- the step ---------------------------------------------------------------------------------------------

def train_step(config: LlamaConfig, recipe: objective.Recipe, optimizer, grad_accum: int, state, batch):
    """One optimiser update over a global batch split into `grad_accum` micro-batches (summed in a scan).

    Micro-batch i holds rows i, i + grad_accum, i + 2 grad_accum, ...: every device keeps working on its own
    rows in every micro-batch (contiguous blocks would each live on a few devices)."""
    step = state["step"]
    micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape((x.shape[0] // grad_accum, grad_accum) + x.shape[1:]),
                                                0, 1), batch)
    grad_fn = jax.value_and_grad(functools.partial(objective.layerskip_loss, config, recipe), has_aux=True)

    def accumulate(grads, micro_batch):
        (loss, (out, layers)), g = grad_fn(state["params"], micro_batch, step)
        stats = {"loss": loss, "layer_loss": out.layer_loss, "layer_accuracy": out.layer_accuracy,
                 "layers": layers}
        return jax.tree.map(jnp.add, grads, g), stats

    zeros = jax.tree.map(jnp.zeros_like, state["params"])
    grads, stats = jax.lax.scan(accumulate, zeros, micro)
    grads = jax.tree.map(lambda g: g / grad_accum, grads)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    layers = stats.pop("layers")[0]
    stats = jax.tree.map(lambda x: jnp.mean(x, axis=0), stats)
    per_layer = lambda v: jnp.full((config.num_layers,), jnp.nan).at[layers].set(v)
    metrics = {"loss": stats["loss"], "grad_norm": optax.global_norm(grads),
               "layer_loss": per_layer(stats["layer_loss"]), "layer_accuracy": per_layer(stats["layer_accuracy"])}
    return {"step": step + 1, "params": params, "opt_state": opt_state}, metrics


def _traced_under(mesh, fn):
    """fn, traced with `mesh` as the abstract mesh, so that `sharding.constrain` pins activations."""
    def traced(*args):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args)
    return traced


def sharded_step(config: LlamaConfig, recipe: objective.Recipe, optimizer, grad_accum: int, state_shardings,
                 batch_shardings):
    """`train_step` jitted over the mesh with explicit in/out shardings; the state is donated (updated in place).
    It is traced under the mesh, so that the model's activation constraints apply."""
    mesh = state_shardings["step"].mesh
    step = _traced_under(mesh, functools.partial(train_step, config, recipe, optimizer, grad_accum))
    return jax.jit(step, in_shardings=(state_shardings, batch_shardings),
                   out_shardings=(state_shardings, NamedSharding(mesh, PartitionSpec())), donate_argnums=0)


def sharded_eval(config: LlamaConfig, chunk_size: int, param_shardings, batch_shardings):
    """`objective.evaluate_exits` jitted over the mesh (traced under it, like `sharded_step`)."""
    mesh = jax.tree.leaves(param_shardings)[0].mesh
    evaluate_batch = _traced_under(mesh, functools.partial(objective.evaluate_exits, config, chunk_size=chunk_size))
    return jax.jit(evaluate_batch, in_shardings=(param_shardings, {key: batch_shardings[key] for key in data.FIELDS}),
                   out_shardings=NamedSharding(mesh, PartitionSpec()))


def batch_shardings(mesh, batch_size: int, seq_len: int) -> Dict[str, NamedSharding]:
    """Shardings of a training batch's fields: rows over the mesh's batch axes."""
    rows = {key: sharding.batch_sharding(mesh, (batch_size, seq_len)) for key in data.FIELDS}
    rows["sample_index"] = sharding.batch_sharding(mesh, (batch_size,))
    return rows


def evaluate(eval_fn, params, batches) -> Dict[str, list]:
    """Per-layer held-out loss, perplexity, top-1 accuracy and agreement with the last layer."""
    totals, count = None, 0.0
    for batch in batches:
        sums, n = eval_fn(params, batch)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        count += float(n)
    loss, accuracy, agreement = (np.asarray(t) / max(count, 1.0) for t in totals)
    return {"layer_loss": loss.tolist(), "layer_perplexity": np.exp(loss).tolist(),
            "layer_accuracy": accuracy.tolist(), "layer_agreement": agreement.tolist(), "tokens": int(count)}


# --- setup ------------------------------------------------------------------------------------------------

def _tokenizer(cfg, workdir: Path):
    """The configured tokenizer, the init checkpoint's, or a BPE trained on the corpus (kept in workdir)."""
    if cfg.tokenizer.path:
        return tokenizer_lib.load(cfg.tokenizer.path)
    if cfg.init_from:
        return checkpoints.load_tokenizer(cfg.init_from)
    saved = workdir / checkpoints.WORKDIR_TOKENIZER
    if (saved / "tokenizer.json").exists():
        return tokenizer_lib.load(saved)
    files = data.training_files(cfg.data)
    print(f"training a {cfg.tokenizer.vocab_size}-token byte-level BPE on {len(files)} files", file=sys.stderr)
    tok = tokenizer_lib.train_bpe(files, cfg.tokenizer.vocab_size)
    tok.save(saved)
    return tok


def _initial_state(cfg, config: LlamaConfig, optimizer, shardings):
    params = None
    if cfg.init_from:  # streamed tensor by tensor into the params' shardings
        params = checkpoints.load_params(cfg.init_from, config, shardings["params"])
    return init_state(config, optimizer, shardings, params, seed=cfg.train.seed)


def init_state(config: LlamaConfig, optimizer, shardings, params=None, seed: int = 0):
    """The step-0 train state, created directly in its shardings: a random init (params=None) runs sharded,
    so no device ever holds all params; given params (host arrays, or already in their shardings, as
    `hf.load(shardings=...)` gives them) go to each device as its shards only."""
    if params is None:
        params = jax.jit(model.init, static_argnums=0, out_shardings=shardings["params"])(config, jax.random.key(seed))
    else:
        params = jax.device_put(params, shardings["params"])
    init = jax.jit(functools.partial(_fresh_state, config, optimizer), out_shardings=shardings, donate_argnums=0)
    return init(params)


def _with_shardings(abstract, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


class StopRequest:
    """Ctrl-C (SIGINT) asks the loop to stop after the current step and save it; a second Ctrl-C aborts.

    A flag rather than an exception in the middle of a step: the state may be donated to a running step or
    half written by an asynchronous save at the moment the signal lands.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step (Ctrl-C again to abort without saving)", file=sys.stderr)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class MetricsLog:
    """Appends one JSON object per event to workdir/metrics.jsonl (flushed, so a killed run loses nothing)."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, event: str, step: int, **values) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"event": event, "step": step, **values}) + "\n")


def _with_sample_index(batch, step: int, batch_size: int, process_index: int = 0, process_count: int = 1):
    """Adds this process's rows' global sample indices (what layer-dropout draws derive from)."""
    batch = dict(batch)
    rows = batch_size // process_count
    first = step * batch_size + process_index * rows
    batch["sample_index"] = np.arange(first, first + rows, dtype=np.int64) % (2 ** 31)
    return batch


def run(cfg, workdir) -> Dict[str, Any]:
    """Trains (or resumes) per `cfg` in `workdir`; returns the last held-out evaluation."""
    validate_train_config(cfg)
    if cfg.mesh.distributed:  # multi-host: JAX's own runtime finds the coordinator (TPU pods, SLURM, ...)
        jax.distributed.initialize()
    mesh = sharding.make_mesh(sharding.mesh_shape(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor))
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(cfg.to_json(indent=2))
    t = cfg.train
    train_source, eval_source = data.sources(cfg.data)
    tok = _tokenizer(cfg, workdir)
    config = checkpoints.model_config(cfg, tok)
    processes = dict(process_index=jax.process_index(), process_count=jax.process_count())
    batches = data.make_batches(train_source, tok, seq_len=cfg.data.seq_len, global_batch_size=t.batch_size,
                                seed=t.seed, shuffle_window=cfg.data.shuffle_window, **processes)
    optimizer = make_optimizer(t)
    recipe = objective.Recipe.from_config(t)
    schedule = lr_schedule(t)

    manager = ocp.CheckpointManager(
        (workdir / checkpoints.WORKDIR_CHECKPOINTS).absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=t.keep_checkpoints, save_interval_steps=t.checkpoint_every,
                                             enable_async_checkpointing=True))
    abstract = abstract_state(config, optimizer)
    shardings = sharding.train_state_shardings(mesh, model.param_logical_axes(config), optimizer, abstract)
    latest = manager.latest_step()
    if latest is None:
        state = _initial_state(cfg, config, optimizer, shardings)
    else:  # onto this run's mesh, whatever mesh saved it
        restored = manager.restore(latest, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_with_shardings(abstract, shardings)), data=ocp.args.JsonRestore()))
        state = restored.state
        batches.set_state(restored.data)
        print(f"resumed from step {latest} in {workdir}", file=sys.stderr)

    rows = batch_shardings(mesh, t.batch_size, cfg.data.seq_len)
    step_fn = sharded_step(config, recipe, optimizer, t.grad_accum, shardings, rows)
    eval_fn = sharded_eval(config, t.loss_chunk_size, shardings["params"], rows)
    global_batch = lambda batch: {key: jax.make_array_from_process_local_data(rows[key], value)
                                  for key, value in batch.items()}
    eval_batches = lambda: map(global_batch, data.eval_batches(
        eval_source, tok, seq_len=cfg.data.seq_len, global_batch_size=t.batch_size, num_batches=t.eval_batches,
        **processes))
    log = MetricsLog(workdir / METRICS_FILE)
    step = int(state["step"])
    tokens_per_step = t.batch_size * cfg.data.seq_len
    last_eval = None
    save = lambda force: manager.save(step, force=force, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(batches.get_state())))
    bar = tqdm(total=t.steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
    try:
        with StopRequest() as stop:
            window_start, window_steps = time.perf_counter(), 0
            while step < t.steps:
                batch = global_batch(_with_sample_index(next(batches), step, t.batch_size, **processes))
                state, metrics = step_fn(state, batch)
                step += 1
                window_steps += 1
                if step % t.log_every == 0 or step == t.steps:
                    metrics = jax.tree.map(lambda x: np.asarray(x).tolist(), metrics)
                    elapsed = time.perf_counter() - window_start
                    tps = window_steps * tokens_per_step / elapsed
                    log.write("train", step, tokens_per_second=tps, learning_rate=float(schedule(step - 1)), **metrics)
                    bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{tps:,.0f}")
                    window_start, window_steps = time.perf_counter(), 0
                if step % t.eval_every == 0 or step == t.steps:
                    last_eval = evaluate(eval_fn, state["params"], eval_batches())
                    log.write("eval", step, **last_eval)
                    plots.training_curves(workdir / METRICS_FILE, workdir / "plots")
                save(step == t.steps)
                bar.update(1)
                if stop.requested:
                    manager.wait_until_finished()
                    if step not in manager.all_steps():
                        save(True)
                    manager.wait_until_finished()
                    print(f"\ninterrupted: saved step {step} to {workdir}; run the same command to resume",
                          file=sys.stderr)
                    raise KeyboardInterrupt
    finally:
        bar.close()
    manager.wait_until_finished()
    export_dir = Path(cfg.export_dir) if cfg.export_dir else workdir / "hf"
    params = multihost_utils.process_allgather(state["params"], tiled=True)  # host arrays on every process
    if jax.process_index() == 0:
        exported = config.replace(param_dtype=cfg.export_dtype or config.param_dtype)
        hf.save(export_dir, exported, jax.tree.map(lambda p: np.asarray(p, exported.jnp_param_dtype), params),
                tokenizer=tok)
    return {"step": step, "eval": last_eval, "export_dir": str(export_dir)}


def abstract_state(config, optimizer):
    """Shapes and dtypes of a train state, what orbax restores into (no array is allocated)."""
    return jax.eval_shape(lambda: _fresh_state(config, optimizer, model.init(config, jax.random.key(0))))


def _fresh_state(config, optimizer, params):
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optimizer.init(params)}
