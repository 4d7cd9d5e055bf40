"""Shared fixtures: tiny lsjax configs and tiny Hugging Face Llama checkpoints made locally by transformers.

The suite runs with 8 host CPU devices (set before JAX starts, with the scheduler setting that keeps their
collectives from deadlocking; see lsjax/xla_cpu.py), inherited by the commands tests spawn, so that sharded
training and decoding are tested on real meshes.
"""

from lsjax import xla_cpu

xla_cpu.configure(num_devices=8)

import hypothesis  # noqa: E402
import jax  # noqa: E402
import pytest  # noqa: E402

from lsjax import model  # noqa: E402
from lsjax.config import LlamaConfig, RopeScaling  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

# `python -m tests.mutants` only asks whether a test fails: skip shrinking the failing example (minutes of
# recompiles) and the example database.
hypothesis.settings.register_profile("mutants", database=None, phases=[hypothesis.Phase.explicit,
                                                                       hypothesis.Phase.generate])

# Three tiny architectures, one per Llama generation the library claims to cover.
HF_TINY_CONFIGS = {
    "llama2": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                   num_key_value_heads=4, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False),
    "llama3": dict(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
                   num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
                   rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    "llama3.2": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=8,
                     num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5, rope_theta=500000.0,
                     tie_word_embeddings=True,
                     rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
}
HF_VOCAB = 97


def make_hf_checkpoint(directory, name: str, seed: int = 0):
    """Saves a randomly initialised transformers Llama (weights of O(1) effect, norms away from 1)."""
    torch = pytest.importorskip("torch", reason="parity tests need the CPU build of torch")
    transformers = pytest.importorskip("transformers", reason="parity tests need transformers")
    torch.manual_seed(seed)
    hf_config = transformers.LlamaConfig(vocab_size=HF_VOCAB, max_position_embeddings=256,
                                         **HF_TINY_CONFIGS[name])
    hf_model = transformers.LlamaForCausalLM(hf_config)
    with torch.no_grad():
        for param_name, param in hf_model.named_parameters():
            if "norm" in param_name:
                param.copy_(1.0 + 0.3 * torch.randn_like(param))
            else:
                param.copy_(0.15 * torch.randn_like(param))
    hf_model.save_pretrained(directory)
    return hf_model


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory):
    """{name: (directory, torch model)} for the three tiny architectures."""
    out = {}
    for i, name in enumerate(HF_TINY_CONFIGS):
        directory = tmp_path_factory.mktemp(f"hf-{name}")
        out[name] = (directory, make_hf_checkpoint(directory, name, seed=i))
    return out


TINY = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_layers=4, num_heads=4,
                   num_kv_heads=2, rope_theta=10000.0)
TINY_LLAMA3 = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=5, num_heads=4,
                          num_kv_heads=1, rope_theta=500000.0, tie_word_embeddings=True,
                          rope_scaling=RopeScaling(original_max_position_embeddings=16))


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """An lsjax export of `tests.random_model` (context 128) that the decode.py tests read (never edit)."""
    from lsjax import hf
    from tests.random_model import random_model
    config, params, tok = random_model()
    directory = tmp_path_factory.mktemp("ckpt")
    hf.save(directory, config.replace(max_position_embeddings=128), params, tokenizer=tok)
    return directory


@pytest.fixture(scope="session", params=["tiny", "tiny_llama3"])
def tiny_model(request):
    """(config, params) of a small random lsjax model, with a larger init so layers matter."""
    config = {"tiny": TINY, "tiny_llama3": TINY_LLAMA3}[request.param]
    return config, scaled(model.init(config, jax.random.key(42)), 4.0)


def scaled(params, factor: float):
    """Params with every matrix multiplied by `factor` (norm scales kept): model.init's 0.02 gives near-zero
    logits and layers that barely matter, so exits agree and distributions are almost uniform."""
    is_norm = lambda path: any(getattr(k, "key", None) == "scale" for k in path)
    return jax.tree_util.tree_map_with_path(lambda path, p: p if is_norm(path) else factor * p, params)


def load_benchmark(name: str):
    """benchmarks/NAME.py as a module (the scripts are not a package), for the tests that run them end to end."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
