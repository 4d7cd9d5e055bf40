"""Greedy cached decoding against re-running the full model on the growing sequence, and transformers."""

import jax.numpy as jnp
import numpy as np
import pytest

from lsjax import hf, model
from lsjax.decoding import autoregressive


def _reference_greedy(config, params, prompt, steps, eos_ids=()):
    tokens = list(prompt)
    for _ in range(steps):
        nxt = int(jnp.argmax(model.logits(config, params, jnp.asarray([tokens]))[0, -1]))
        tokens.append(nxt)
        if nxt in eos_ids:
            break
    return tokens[len(prompt):]


def _right_pad(prompts):
    t = max(len(p) for p in prompts)
    tokens = np.zeros((len(prompts), t), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, :len(p)] = p
    return jnp.asarray(tokens), jnp.asarray([len(p) for p in prompts])


def test_greedy_equals_uncached_reference_for_ragged_batch(tiny_model):
    config, params = tiny_model
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, config.vocab_size, n).tolist() for n in (6, 1, 9)]
    tokens, lengths = _right_pad(prompts)
    out = autoregressive.greedy(config, params, tokens, lengths, 10, max_length=32, output_size=12)
    np.testing.assert_array_equal(out.num_tokens, [10, 10, 10])
    for b, prompt in enumerate(prompts):
        assert out.tokens[b, :10].tolist() == _reference_greedy(config, params, prompt, 10)
        assert out.tokens[b, 10:].tolist() == [0, 0]


def test_rows_stop_at_their_own_eos(tiny_model):
    config, params = tiny_model
    prompts = [[1, 2, 3], [4, 5]]
    tokens, lengths = _right_pad(prompts)
    free = autoregressive.greedy(config, params, tokens, lengths, 8, max_length=16, output_size=8)
    eos = int(free.tokens[0, 2])  # make row 0's third token an end-of-sequence id
    out = autoregressive.greedy(config, params, tokens, lengths, 8, max_length=16, output_size=8,
                                eos_ids=(eos,), pad_id=-1)
    n0 = int(out.num_tokens[0])
    assert n0 <= 3 and out.tokens[0, n0 - 1] == eos and (np.asarray(out.tokens[0, n0:]) == -1).all()
    assert out.tokens[1, :out.num_tokens[1]].tolist() == _reference_greedy(config, params, prompts[1], 8, (eos,))


def test_greedy_equals_transformers_generate(hf_checkpoints, tmp_path):
    torch = pytest.importorskip("torch", reason="needs the CPU build of torch")
    transformers = pytest.importorskip("transformers", reason="needs transformers")
    directory, _ = hf_checkpoints["llama3.2"]
    config, params = hf.load(directory)
    hf.save(tmp_path, config, params)  # generate from the exported weights
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    prompt = [5, 17, 3, 44, 9]
    with torch.no_grad():
        theirs = hf_model.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False,
                                   eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    tokens, lengths = _right_pad([prompt])
    ours = autoregressive.greedy(config, params, tokens, lengths, 20, max_length=32, output_size=20)
    assert ours.tokens[0].tolist() == theirs
