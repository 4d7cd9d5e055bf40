"""Loading at size: a 7B-shaped bfloat16 checkpoint (2 of its 32 layers, written here with random weights)
streams onto 8 devices tensor by tensor. Host memory beyond what the devices hold (on the CPU backend device
buffers live in host memory too) stays within 1.5 x the largest tensor in float32 + 1 GiB, and each device
holds only its shards."""

import json
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from lsjax import hf
from lsjax.config import LlamaConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIG = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=2, num_heads=32,
                     num_kv_heads=32, param_dtype="bfloat16", dtype="bfloat16")

# Runs in a fresh process: its peak resident memory (VmHWM, reset just before loading) is the measurement.
LOADER = r"""
import json, sys
from lsjax import xla_cpu
xla_cpu.configure(num_devices=8)
import jax
from lsjax import hf, model, sharding

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

shardings = model.param_shardings(hf.load_config(sys.argv[1]), sharding.make_mesh((1, 8, 1)))
jax.device_put(jax.numpy.zeros(8), shardings["final_norm"]["scale"]).block_until_ready()  # start the runtime
before = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # restart the peak count from here
_, params = hf.load(sys.argv[1], shardings=shardings)
jax.block_until_ready(params)
shards_ok = all(shard.data.shape == leaf.sharding.shard_shape(leaf.shape)
                for leaf in jax.tree.leaves(params) for shard in leaf.addressable_shards)
on_devices = sum(shard.data.nbytes for leaf in jax.tree.leaves(params) for shard in leaf.addressable_shards)
same_shardings = jax.tree.all(jax.tree.map(lambda leaf, s: leaf.sharding == s, params, shardings))
print(json.dumps({"peak_growth": status("VmHWM") - before, "on_devices": on_devices, "shards_ok": shards_ok,
                  "same_shardings": bool(same_shardings)}))
"""


def write_checkpoint(directory: Path) -> int:
    """Random bfloat16 weights in the HF layout; returns the largest tensor's size in float32 bytes."""
    rng = np.random.default_rng(0)
    tensors = {name: (0.02 * rng.standard_normal(shape, np.float32)).astype(ml_dtypes.bfloat16)
               for name, shape in hf.tensor_shapes(CONFIG).items()}
    directory.mkdir()
    save_file(tensors, str(directory / hf.WEIGHTS_NAME), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(hf.config_to_hf(CONFIG)))
    return max(int(np.prod(t.shape)) * 4 for t in tensors.values())


def test_a_7b_shaped_checkpoint_streams_into_its_shards(tmp_path):
    largest = write_checkpoint(tmp_path / "ckpt")
    proc = subprocess.run([sys.executable, "-c", LOADER, str(tmp_path / "ckpt")], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["shards_ok"] and got["same_shardings"]
    # bfloat16, each weight once, but for the norm scales that every device keeps whole
    norms = CONFIG.hidden_size * (2 * CONFIG.num_layers + 1)
    assert 2 * CONFIG.num_params() <= got["on_devices"] <= 2 * (CONFIG.num_params() + 7 * norms)
    host = got["peak_growth"] - got["on_devices"]
    assert host <= 1.5 * largest + 2 ** 30, (host / 2 ** 30, largest / 2 ** 30)
