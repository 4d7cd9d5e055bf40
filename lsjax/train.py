"""The training loop: state, jitted step, held-out exit evaluation, orbax checkpoints, metrics and export.

Everything a resumed run needs is in the checkpoint (params, optimizer state, step, data iterator
position); random draws derive from (seed, step, sample index), so a run killed at any point and
resumed ends bit-identical to an uninterrupted one on the same machine.

Nothing is lost (docs/robustness.md): one run at a time holds the workdir (`lsjax.workdir.locked`); a
resume may not change what the checkpoints mean (`train_config.resume_changes`); every finished step is
sealed by a checksum manifest and a resume starts from the newest intact step (`checkpoints.restore_newest`),
setting newer damaged ones aside; a non-finite loss or gradient norm stops the run before anything is saved
(`run_guards.DivergedError`), unless train.skip_nonfinite_steps drops such updates inside the compiled step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from lsjax import checkpoints, data, hf, model, objective, plots, sharding, tokenizer as tokenizer_lib
from lsjax import train_config, workdir as workdir_lib
from lsjax.run_guards import METRICS_FILE, DivergenceGuard, MetricsLog, StopRequest
from lsjax.config import ConfigError, LlamaConfig
from lsjax.train_config import OptimizerSettings, TrainSettings

DAMAGED_CHECKPOINTS = "checkpoints-damaged"  # where a resume moves steps newer than the one it restored


# --- optimiser ---------------------------------------------------------------------------------------------

def lr_schedule(settings: OptimizerSettings) -> optax.Schedule:
    """Linear warmup to the peak, then cosine decay to end_lr_ratio x peak at the last step."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=settings.learning_rate, warmup_steps=settings.warmup_steps,
        decay_steps=max(settings.steps, settings.warmup_steps + 1),
        end_value=settings.learning_rate * settings.end_lr_ratio)


def make_optimizer(settings: OptimizerSettings) -> optax.GradientTransformation:
    """AdamW on the schedule with global-norm clipping; no weight decay on norm scales."""
    return optax.chain(
        optax.clip_by_global_norm(settings.grad_clip),
        optax.adamw(lr_schedule(settings), b1=settings.b1, b2=settings.b2, weight_decay=settings.weight_decay,
                    mask=_decay_mask))


def _decay_mask(params):
    """Which params weight decay applies to: all but the norms' scales."""
    return jax.tree_util.tree_map_with_path(lambda path, _: not any(getattr(k, "key", None) == "scale" for k in path),
                                            params)


# --- the step ---------------------------------------------------------------------------------------------

def train_step(config: LlamaConfig, recipe: objective.Recipe, optimizer, grad_accum: int, state, batch, *,
               skip_nonfinite: bool = False):
    """One optimiser update over a global batch split into `grad_accum` micro-batches (summed in a scan).

    Micro-batch i holds rows i, i + grad_accum, i + 2 grad_accum, ...: every device keeps working on its own
    rows in every micro-batch (contiguous blocks would each live on a few devices). metrics["nonfinite"] is 1
    when the loss or the gradient norm is not finite; with skip_nonfinite the update is then dropped here, by
    a select inside the compiled step (params and optimizer state stay as they were, the step still counts)."""
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
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(stats["loss"]) & jnp.isfinite(grad_norm)
    if skip_nonfinite:
        params, opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), (params, opt_state),
                                         (state["params"], state["opt_state"]))
    per_layer = lambda v: jnp.full((config.num_layers,), jnp.nan).at[layers].set(v)
    metrics = {"loss": stats["loss"], "grad_norm": grad_norm, "nonfinite": jnp.logical_not(finite).astype(jnp.int32),
               "layer_loss": per_layer(stats["layer_loss"]), "layer_accuracy": per_layer(stats["layer_accuracy"])}
    return {"step": step + 1, "params": params, "opt_state": opt_state}, metrics


def _traced_under(mesh, fn):
    """fn, traced with `mesh` as the abstract mesh, so that `sharding.constrain` pins activations."""
    def traced(*args):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args)
    return traced


def sharded_step(config: LlamaConfig, recipe: objective.Recipe, optimizer, grad_accum: int, state_shardings,
                 batch_shardings, *, skip_nonfinite: bool = False):
    """`train_step` jitted over the mesh with explicit in/out shardings; the state is donated (updated in place).
    It is traced under the mesh, so that the model's activation constraints apply."""
    mesh = state_shardings["step"].mesh
    step = _traced_under(mesh, functools.partial(train_step, config, recipe, optimizer, grad_accum,
                                                 skip_nonfinite=skip_nonfinite))
    return jax.jit(step, in_shardings=(state_shardings, batch_shardings),
                   out_shardings=(state_shardings, NamedSharding(mesh, PartitionSpec())), donate_argnums=0)


def sharded_eval(config: LlamaConfig, chunk_size: int, param_shardings, batch_shardings):
    """`objective.evaluate_exits` jitted over the mesh (traced under it, like `sharded_step`)."""
    mesh = jax.tree.leaves(param_shardings)[0].mesh
    evaluate_batch = _traced_under(mesh, functools.partial(objective.evaluate_exits, config, chunk_size=chunk_size))
    return jax.jit(evaluate_batch, in_shardings=(param_shardings, {key: batch_shardings[key] for key in data.FIELDS}),
                   out_shardings=NamedSharding(mesh, PartitionSpec()))


def batch_shardings(mesh, batch_size: int, seq_len: int) -> dict[str, NamedSharding]:
    """Shardings of a training batch's fields: rows over the mesh's batch axes."""
    rows = {key: sharding.batch_sharding(mesh, (batch_size, seq_len)) for key in data.FIELDS}
    rows["sample_index"] = sharding.batch_sharding(mesh, (batch_size,))
    return rows


def evaluate(eval_fn, params, batches) -> dict[str, list]:
    """Per-layer held-out loss, perplexity, top-1 accuracy and agreement with the last layer."""
    totals, count = None, 0.0
    for batch in batches:
        sums, n = eval_fn(params, batch)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        count += float(n)
    loss, accuracy, agreement = (np.asarray(t) / max(count, 1.0) for t in totals)
    return {"layer_loss": loss.tolist(), "layer_perplexity": np.exp(loss).tolist(),
            "layer_accuracy": accuracy.tolist(), "layer_agreement": agreement.tolist(), "tokens": int(count)}


# --- the train state ----------------------------------------------------------------------------------------

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


def abstract_state(config, optimizer):
    """Shapes and dtypes of a train state, what orbax restores into (no array is allocated)."""
    return jax.eval_shape(lambda: _fresh_state(config, optimizer, model.init(config, jax.random.key(0))))


def _fresh_state(config, optimizer, params):
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optimizer.init(params)}


def _with_shardings(abstract, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def _with_sample_index(batch, step: int, batch_size: int, process_index: int = 0, process_count: int = 1):
    """Adds this process's rows' global sample indices (what layer-dropout draws derive from)."""
    batch = dict(batch)
    rows = batch_size // process_count
    first = step * batch_size + process_index * rows
    batch["sample_index"] = np.arange(first, first + rows, dtype=np.int64) % (2 ** 31)
    return batch


# --- a run: set up, restore or init, loop, export -----------------------------------------------------------

def run(cfg, workdir) -> dict[str, Any]:
    """Trains (or resumes) per `cfg` in `workdir`; returns the last held-out evaluation.

    Bad configs, workdirs and checkpoints raise one-line `InputError`s before anything but the lock file is
    written; a non-finite loss or gradient norm raises `DivergedError` (see `DivergenceGuard`)."""
    settings = TrainSettings.from_config(cfg)
    if settings.mesh.distributed:  # multi-host: JAX's own runtime finds the coordinator (TPU pods, SLURM, ...)
        jax.distributed.initialize()
    held = (workdir_lib.locked(workdir) if jax.process_index() == 0 else  # one lock for all processes
            contextlib.nullcontext(workdir_lib.prepare(workdir)))
    with held as path:
        return _train(cfg, settings, path)


def _train(cfg, settings: TrainSettings, workdir: Path) -> dict[str, Any]:
    """`run` once the workdir is held. `cfg`, the ConfigDict, is only what config.json records and what a
    resume is compared against; everything else reads `settings`."""
    mesh = sharding.make_mesh(sharding.mesh_shape(*settings.mesh.shape))
    changes = _resume_changes(cfg, workdir)
    setup = _set_up(settings, mesh, workdir)
    manager = ocp.CheckpointManager(
        (workdir / checkpoints.WORKDIR_CHECKPOINTS).absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=settings.run.keep_checkpoints,
                                             save_interval_steps=settings.run.checkpoint_every,
                                             enable_async_checkpointing=True))
    try:  # closed on every path: an exception must not leave orbax's threads holding the process
        state = _restore_or_init(setup, manager, cfg, changes)
        state, last_eval = _loop(setup, manager, state)
    finally:
        manager.close()
        _seal(workdir)
    export_dir = _export(setup, state["params"])
    return {"step": int(state["step"]), "eval": last_eval, "export_dir": str(export_dir)}


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a run builds before its first step (`_set_up`); restoring, the loop and the export read it."""

    settings: TrainSettings
    workdir: Path
    tokenizer: tokenizer_lib.Tokenizer
    config: LlamaConfig
    optimizer: optax.GradientTransformation
    shardings: dict  # the train state's
    target: dict  # the train state's shapes and dtypes in those shardings: what a checkpoint restores into
    rows: dict[str, NamedSharding]  # a global batch's fields' shardings
    step_fn: Callable  # (state, global batch) -> (state, metrics); the state is donated
    eval_fn: Callable  # (params, global batch) -> per-exit sums and a token count
    batches: grain.DatasetIterator  # this process's training batches; a checkpoint saves its position
    eval_source: data.TextSource


def _set_up(settings: TrainSettings, mesh, workdir: Path) -> Setup:
    """The data, tokenizer, model config, optimizer, shardings and compiled functions of a run on `mesh`; no
    train state is allocated yet."""
    run, seq_len = settings.run, settings.data.seq_len
    train_source, eval_source = data.sources(settings.data)
    tok = _tokenizer(settings, workdir)
    config = checkpoints.model_config(settings.model, tok)
    if settings.model.init_from:  # (a model from the config's own keys was checked by validate_train_config)
        train_config.check_layer_keys(settings.recipe.free_exit_layer, settings.recipe.exits, config)
        train_config.check_train_memory(config)
    batches = data.make_batches(train_source, tok, seq_len=seq_len, global_batch_size=run.batch_size, seed=run.seed,
                                shuffle_window=settings.data.shuffle_window, **_processes())
    optimizer = make_optimizer(settings.optimizer)
    abstract = abstract_state(config, optimizer)
    shardings = sharding.train_state_shardings(mesh, model.param_logical_axes(config), optimizer, abstract)
    rows = batch_shardings(mesh, run.batch_size, seq_len)
    return Setup(settings=settings, workdir=workdir, tokenizer=tok, config=config, optimizer=optimizer,
                 shardings=shardings, target=_with_shardings(abstract, shardings), rows=rows,
                 step_fn=sharded_step(config, settings.recipe, optimizer, run.grad_accum, shardings, rows,
                                      skip_nonfinite=run.skip_nonfinite_steps),
                 eval_fn=sharded_eval(config, run.loss_chunk_size, shardings["params"], rows),
                 batches=batches, eval_source=eval_source)


def _processes() -> dict[str, int]:
    """This process's place among the run's processes, as the data pipeline takes it."""
    return {"process_index": jax.process_index(), "process_count": jax.process_count()}


def _tokenizer(settings: TrainSettings, workdir: Path) -> tokenizer_lib.Tokenizer:
    """The run's tokenizer (`checkpoints.run_tokenizer`), or a BPE trained on the corpus and kept in workdir."""
    tok = checkpoints.run_tokenizer(settings.tokenizer.path, settings.model.init_from, workdir)
    if tok is not None:
        return tok
    files = data.training_files(settings.data)
    vocab_size = settings.tokenizer.vocab_size
    print(f"training a {vocab_size}-token byte-level BPE on {len(files)} files", file=sys.stderr)
    tok = tokenizer_lib.train_bpe(files, vocab_size)
    tok.save(workdir / checkpoints.WORKDIR_TOKENIZER)
    return tok


def _restore_or_init(setup: Setup, manager, cfg, changes: dict[str, list]):
    """The newest intact checkpoint's train state (onto this run's mesh, whatever mesh saved it), or the step-0
    state of a new run; config.json is written either way."""
    if checkpoints.step_dirs(setup.workdir):
        return _resume(setup, manager, cfg, changes)
    model_settings = setup.settings.model
    params = None
    if model_settings.init_from:  # streamed tensor by tensor into the params' shardings
        params = checkpoints.load_params(model_settings.init_from, setup.config, setup.shardings["params"])
    state = init_state(setup.config, setup.optimizer, setup.shardings, params, seed=setup.settings.run.seed)
    _write_config(cfg, setup.workdir)
    return state


def _resume_changes(cfg, workdir: Path) -> dict[str, list]:
    """What this run changes in the config its workdir's checkpoints were trained with, {key: [old, new]};
    a one-line ConfigError, before anything is written, when a change would make the checkpoints mean
    something else (`train_config.RESUME_FROZEN`: the model's shape, the tokenizer, the data stream)."""
    if not (workdir / "config.json").exists() or not checkpoints.step_dirs(workdir):
        return {}
    refused, allowed = train_config.resume_changes(checkpoints.read_train_config(workdir), cfg)
    if refused:
        raise ConfigError(f"{workdir}: a resume cannot change " + ", ".join(
            f"{key} ({old!r} -> {new!r})" for key, (old, new) in refused.items()) + " (its checkpoints were "
            "trained with the values in config.json); train in a new workdir to change them")
    return {key: [old, new] for key, (old, new) in allowed.items()}


def _write_config(cfg, workdir: Path) -> None:
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(cfg.to_json(indent=2))


def _resume(setup: Setup, manager, cfg, changes: dict[str, list]):
    """The train state of the newest intact checkpoint, with the data iterator set to its position. Newer
    steps, which could not be used, are moved aside: left in place, orbax would neither save those steps
    again nor count them right when deleting old ones. Then config.json and the resume (its step and the
    config's changes) are recorded."""
    workdir = setup.workdir
    step, state = checkpoints.restore_newest(workdir, functools.partial(_restore_step, setup, manager))
    if jax.process_index() == 0:
        _set_aside(workdir, [newer for newer in checkpoints.step_dirs(workdir) if newer > step])
        _write_config(cfg, workdir)
        MetricsLog(workdir / METRICS_FILE).write("resume", step, changed=changes)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("lsjax: damaged steps set aside")
    manager.reload()
    print(f"resumed from step {step} in {workdir}", file=sys.stderr)
    return state


def _restore_step(setup: Setup, manager, step: int):
    """The train state saved at `step`, with the data iterator set to where it was then."""
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(setup.target),
                                                             data=ocp.args.JsonRestore()))
    setup.batches.set_state(restored.data)
    return restored.state


def _set_aside(workdir: Path, steps: list[int]) -> None:
    """Moves these step directories to WORKDIR/checkpoints-damaged (kept for inspection, never deleted)."""
    if not steps:
        return
    target = workdir / DAMAGED_CHECKPOINTS
    target.mkdir(exist_ok=True)
    for step in steps:
        destination, copy = target / str(step), 0
        while destination.exists():
            copy += 1
            destination = target / f"{step}.{copy}"
        shutil.move(checkpoints.step_dirs(workdir)[step], destination)
    print(f"warning: moved the unusable steps {steps} to {target}; this run saves them anew", file=sys.stderr)


def _seal(workdir: Path) -> None:
    """Manifests for the finished steps (see `checkpoints.seal`); one process writes them."""
    if jax.process_index() == 0:
        checkpoints.seal(workdir)


def _save(manager, workdir: Path, step: int, state, batches) -> None:
    """Starts the asynchronous save of `step`, once the previous save has finished and is sealed (the save
    would wait for it anyway, and sealing needs orbax idle: it finalises and deletes steps on its threads)."""
    manager.wait_until_finished()
    _seal(workdir)
    manager.save(step, force=True, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                            data=ocp.args.JsonSave(batches.get_state())))


def _loop(setup: Setup, manager, state):
    """Trains from the state's step to train.steps: logs, evaluates, saves and seals, stops on Ctrl-C (after
    saving) or divergence (before saving). Returns (state, the last evaluation)."""
    run, workdir = setup.settings.run, setup.workdir
    log = MetricsLog(workdir / METRICS_FILE)
    schedule = lr_schedule(setup.settings.optimizer)
    guard = DivergenceGuard(run.skip_nonfinite_steps)
    step = int(state["step"])
    tokens_per_step = run.batch_size * setup.settings.data.seq_len
    last_eval, sealed = None, True
    bar = tqdm(total=run.steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
    try:
        with StopRequest() as stop:
            window_start, window_steps, in_flight = time.perf_counter(), 0, None
            while step < run.steps:
                state, metrics = setup.step_fn(state, _next_batch(setup, step))
                # The host stays one step ahead of the device: enough to keep it busy, and Ctrl-C (read
                # below, on the host) then stops within a step instead of after every step dispatched ahead.
                jax.block_until_ready(in_flight)
                in_flight = metrics.pop("nonfinite")
                step += 1
                window_steps += 1
                guard.add(step, in_flight)
                stopping, final = stop.requested, step == run.steps
                log_due, eval_due = step % run.log_every == 0 or final, step % run.eval_every == 0 or final
                save_due = final or stopping or manager.should_save(step)
                if log_due or eval_due or save_due:
                    guard.check(manager.latest_step())
                if log_due:
                    metrics = jax.tree.map(lambda x: np.asarray(x).tolist(), metrics)
                    tps = window_steps * tokens_per_step / (time.perf_counter() - window_start)
                    log.write("train", step, tokens_per_second=tps, learning_rate=float(schedule(step - 1)),
                              skipped_steps=guard.take_skipped(), **metrics)
                    bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{tps:,.0f}")
                    window_start, window_steps = time.perf_counter(), 0
                if eval_due:
                    last_eval = _evaluate(setup, state["params"])
                    log.write("eval", step, **last_eval)
                    plots.training_curves(workdir / METRICS_FILE, workdir / "plots")
                if save_due:
                    _save(manager, workdir, step, state, setup.batches)
                    sealed = False
                elif not sealed and not manager.is_saving_in_progress():  # seal as soon as orbax is done
                    _seal(workdir)
                    sealed = True
                bar.update(1)
                if stopping:
                    manager.wait_until_finished()
                    print(f"\ninterrupted: saved step {step} to {workdir}; run the same command to resume",
                          file=sys.stderr)
                    raise KeyboardInterrupt
    finally:
        bar.close()
    return state, last_eval


def _next_batch(setup: Setup, step: int) -> dict[str, jax.Array]:
    """The global batch of `step`: this process's rows, with their sample indices, as global arrays."""
    rows = _with_sample_index(next(setup.batches), step, setup.settings.run.batch_size, **_processes())
    return _global_batch(setup.rows, rows)


def _global_batch(shardings: dict[str, NamedSharding], batch) -> dict[str, jax.Array]:
    """Global arrays from each process's rows of a batch."""
    return {key: jax.make_array_from_process_local_data(shardings[key], value) for key, value in batch.items()}


def _evaluate(setup: Setup, params) -> dict[str, list]:
    """`evaluate` on the first train.eval_batches batches of the held-out split (the same ones every time)."""
    run = setup.settings.run
    batches = data.eval_batches(setup.eval_source, setup.tokenizer, seq_len=setup.settings.data.seq_len,
                                global_batch_size=run.batch_size, num_batches=run.eval_batches, **_processes())
    return evaluate(setup.eval_fn, params, (_global_batch(setup.rows, batch) for batch in batches))


def _export(setup: Setup, params) -> Path:
    """Writes the trained model in Hugging Face format (export_dir, default WORKDIR/hf; in export_dtype, default
    the param dtype) from the first process; returns its directory."""
    export, config = setup.settings.export, setup.config
    export_dir = Path(export.export_dir) if export.export_dir else setup.workdir / "hf"
    params = multihost_utils.process_allgather(params, tiled=True)  # host arrays on every process
    if jax.process_index() == 0:
        exported = config.replace(param_dtype=export.export_dtype or config.param_dtype)
        hf.save(export_dir, exported, jax.tree.map(lambda p: np.asarray(p, exported.jnp_param_dtype), params),
                tokenizer=setup.tokenizer)
    return export_dir
