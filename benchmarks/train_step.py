"""Benchmark: the LayerSkip train step against a plain one, and the chunked early-exit loss's peak memory.

    python benchmarks/train_step.py [--config configs/embedded.py] [--repeats 15] [--out benchmarks/results]

1. Step time: the same model, batch and jitted step with the config's LayerSkip recipe, and with the recipe
   off (p_max = 0, e_scale = 0: plain next-token loss on the last layer). Steps alternate between the two so
   that machine noise hits both alike; medians and their ratio are printed.
2. Peak memory: XLA's compiled temporary memory for loss + gradient of 8 selected exits on a 128k vocabulary,
   cross-entropy chunked (256 tokens) against unchunked (one chunk holding every logit).
Writes train_step.json and train_step.png under --out.
"""

import argparse
import functools
import json
import statistics
import time
from pathlib import Path

import sys

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lsjax
from lsjax import data, early_exit_loss, model, train, train_config  # noqa: E402
from lsjax.config import LlamaConfig  # noqa: E402


def step_times(settings, config, repeats):
    batch = data.synthetic_batch(config.vocab_size, settings.run.batch_size, settings.data.seq_len)
    optimizer = train.make_optimizer(settings.optimizer)
    layerskip = settings.recipe
    plain = layerskip._replace(p_max=0.0, e_scale=0.0, self_distill_beta=0.0)
    steps, states = {}, {}
    for name, recipe in (("layerskip", layerskip), ("plain", plain)):
        step = functools.partial(train.train_step, config, recipe, optimizer, settings.run.grad_accum)
        steps[name] = jax.jit(step, donate_argnums=0)
        params = model.init(config, jax.random.key(0))
        states[name] = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optimizer.init(params)}
        states[name], _ = jax.block_until_ready(steps[name](states[name], batch))  # compile
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name in steps:
            start = time.perf_counter()
            states[name], metrics = jax.block_until_ready(steps[name](states[name], batch))
            times[name].append(time.perf_counter() - start)
    return times


def loss_peak_memory(chunk_size, vocab=128256, hidden=256, layers=8, tokens=2048):
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_layers=layers,
                         num_heads=4, tie_word_embeddings=False)
    params = jax.eval_shape(functools.partial(model.init, config), jax.random.key(0))
    hidden_states = jax.ShapeDtypeStruct((layers, 1, tokens, hidden), jnp.float32)
    targets = jax.ShapeDtypeStruct((1, tokens), jnp.int32)
    selection = early_exit_loss.Selection(jnp.arange(layers, dtype=jnp.int32), jnp.full((layers,), 1.0 / layers))

    def loss(p, h, y):
        return early_exit_loss.early_exit_loss(config, p, h, y, selection, chunk_size=chunk_size).loss

    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(params, hidden_states, targets).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/embedded.py")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    cfg = train_config.from_file(args.config)
    settings = train_config.TrainSettings.from_config(cfg)
    config = train_config.model_config_from(cfg)  # the model section's shape, also in a config with init_from
    times = step_times(settings, config, args.repeats)
    medians = {name: statistics.median(t) for name, t in times.items()}
    ratio = medians["layerskip"] / medians["plain"]
    memory = {"chunked_256": loss_peak_memory(256), "unchunked": loss_peak_memory(1 << 30)}
    result = {"config": args.config, "device": jax.devices()[0].device_kind, "batch_size": settings.run.batch_size,
              "seq_len": settings.data.seq_len, "num_layers": config.num_layers, "repeats": args.repeats,
              "median_step_seconds": medians, "layerskip_over_plain": ratio, "step_seconds": times,
              "early_exit_loss_temp_bytes_128k_vocab_8_exits_2048_tokens": memory}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_step.json").write_text(json.dumps(result, indent=2))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.boxplot([times["plain"], times["layerskip"]], tick_labels=["plain", "LayerSkip"])
    ax1.set(ylabel="seconds per train step", title=f"Train step, ratio of medians {ratio:.3f}")
    ax2.bar(["chunked (256)", "unchunked"], [memory["chunked_256"] / 2 ** 30, memory["unchunked"] / 2 ** 30])
    ax2.set(ylabel="GiB", title="Early-exit loss + grad temp memory\n(8 exits, 128k vocab, 2048 tokens)")
    fig.tight_layout()
    fig.savefig(args.out / "train_step.png", dpi=110)
    print(f"median step: LayerSkip {medians['layerskip'] * 1e3:.1f} ms, plain {medians['plain'] * 1e3:.1f} ms, "
          f"ratio {ratio:.3f} ({args.repeats} alternating repeats)")
    print(f"early-exit loss temp memory (8 exits, 128k vocab): chunked {memory['chunked_256'] / 2 ** 30:.2f} GiB, "
          f"unchunked {memory['unchunked'] / 2 ** 30:.2f} GiB")


if __name__ == "__main__":
    main()
