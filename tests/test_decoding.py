"""The decode loops against slow obvious references: autoregressive and early exit against re-running the
model on the growing sequence, self-speculative greedy against autoregressive greedy (every E and d,
ragged batches, adaptive drafting), self-speculative sampling against the full model's distribution."""

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from scipy import stats

from tests.conftest import TINY
from lsjax import decoding, generation, hf, model, prompts, tokenizer
from lsjax.config import LlamaConfig
from lsjax.decoding import Knobs, Sampling, Settings, self_speculative


def right_pad(prompts, width=None):
    width = width or max(len(p) for p in prompts)
    tokens = np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, :len(p)] = p
    return tokens, np.asarray([len(p) for p in prompts], np.int32)


def generate(config, params, prompts, max_new_tokens, key=0, knobs=None, **settings):
    settings = Settings(**{"output_size": max_new_tokens, **settings})
    tokens, lengths = right_pad(prompts)
    return decoding.generate(config, params, settings, tokens, lengths, max_new_tokens, jax.random.key(key),
                             knobs or Knobs.make(), max_length=decoding.cache_length(settings, tokens.shape[1]))


def rows(out):
    return [out.tokens[b, :n].tolist() for b, n in enumerate(np.asarray(out.num_tokens))]


@functools.partial(jax.jit, static_argnums=(0, 3))
def _exit_logits(config, params, tokens, depth):
    """Layers [0, depth) and the shared head over a whole (padded) sequence [1, T], without a cache."""
    t = tokens.shape[1]
    x = model.embed(config, params, tokens)
    x = model.run_layers(config, params, x, 0, depth, positions=jnp.arange(t)[None], mask=model.causal_mask(1, t)).x
    return model.unembed(config, params, x)[0]


def reference_greedy(config, params, prompt, steps, depth=None, eos_ids=()):
    """Re-runs layers [0, depth) over the whole sequence for every new token (right padding cannot change
    a causal model's logits, so one compiled width serves every length)."""
    depth = depth or config.num_layers
    tokens = list(prompt)
    for _ in range(steps):
        padded = jnp.asarray([tokens + [0] * (len(prompt) + steps - len(tokens))])
        tokens.append(int(jnp.argmax(_exit_logits(config, params, padded, depth)[len(tokens) - 1])))
        if tokens[-1] in eos_ids:
            break
    return tokens[len(prompt):]


def scaled_random_model(config, seed):
    """Random params with larger matrices, so that layers matter and exits disagree."""
    params = model.init(config, jax.random.key(seed))
    is_norm = lambda path: any(getattr(k, "key", None) == "scale" for k in path)
    return jax.tree_util.tree_map_with_path(lambda path, p: p if is_norm(path) else 4.0 * p, params)


def test_autoregressive_and_early_exit_equal_rerunning_the_model(tiny_model):
    config, params = tiny_model
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, config.vocab_size, n).tolist() for n in (6, 1, 9)]
    full = generate(config, params, prompts, 10)
    assert rows(full) == [reference_greedy(config, params, p, 10) for p in prompts]
    exit_layer = config.num_layers // 2
    early = generate(config, params, prompts, 10, strategy="early_exit", exit_layer=exit_layer)
    assert rows(early) == [reference_greedy(config, params, p, 10, depth=exit_layer) for p in prompts]
    assert rows(early) != rows(full)  # early exit is lossy on a random model


def test_rows_stop_at_their_own_eos_and_budget(tiny_model):
    config, params = tiny_model
    prompts = [[1, 2, 3], [4, 5]]
    free = generate(config, params, prompts, 8)
    eos = int(free.tokens[0, 2])  # make row 0's third token an end-of-sequence id
    for strategy in ("autoregressive", "self_speculative"):
        out = generate(config, params, prompts, 8, eos_ids=(eos,), pad_id=-1, strategy=strategy, exit_layer=1,
                       num_speculations=3)
        n0 = int(out.num_tokens[0])
        assert n0 <= 3 and out.tokens[0, n0 - 1] == eos and (np.asarray(out.tokens[0, n0:]) == -1).all()
        assert rows(out)[1] == reference_greedy(config, params, prompts[1], 8, eos_ids=(eos,))
    budget = generate(config, params, prompts, 8, strategy="self_speculative", exit_layer=1, num_speculations=4,
                      output_size=16)
    assert rows(budget) == [row[:8] for row in rows(generate(config, params, prompts, 16))]


@hsettings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 16), num_layers=st.integers(2, 5), num_speculations=st.sampled_from([1, 2, 4, 8]),
       lengths=st.lists(st.integers(1, 9), min_size=1, max_size=3), schedule=st.sampled_from(["fixed", "heuristic"]),
       confidence=st.sampled_from([0.0, 0.3]), data=st.data())
def test_self_speculative_greedy_equals_autoregressive(seed, num_layers, num_speculations, lengths, schedule,
                                                       confidence, data):
    config = LlamaConfig(vocab_size=37, hidden_size=32, intermediate_size=48, num_layers=num_layers, num_heads=4,
                         num_kv_heads=2, tie_word_embeddings=bool(seed % 2))
    params = scaled_random_model(config, seed)
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, config.vocab_size, n).tolist() for n in lengths]
    exit_layer = data.draw(st.integers(1, num_layers - 1), label="exit_layer")
    want = rows(generate(config, params, prompts, 12))
    out = generate(config, params, prompts, 12, strategy="self_speculative", exit_layer=exit_layer,
                   num_speculations=num_speculations, schedule=schedule, knobs=Knobs.make(confidence=confidence))
    assert rows(out) == want
    kinds = np.asarray(out.kinds)
    np.testing.assert_array_equal((kinds == decoding.ACCEPTED_DRAFT).sum(1), out.accepted)
    assert np.all(np.asarray(out.accepted) <= np.asarray(out.drafted))


def test_self_speculative_at_every_exit_layer_and_draft_count():
    config = TINY  # the hypothesis test above covers other depths and architectures
    params = scaled_random_model(config, 42)
    rng = np.random.default_rng(7)
    prompts = [rng.integers(0, config.vocab_size, n).tolist() for n in (5, 2, 8, 3)]
    want = rows(generate(config, params, prompts, 16))
    for exit_layer in range(1, config.num_layers):
        for d in (1, 2, 4, 8):
            out = generate(config, params, prompts, 16, strategy="self_speculative", exit_layer=exit_layer,
                           num_speculations=d)
            assert rows(out) == want, (exit_layer, d)
            # every round emits its accepted drafts plus one token of the full model (the budget may cut
            # the last round short)
            produced = np.asarray(out.accepted + out.rounds + 1)
            assert np.all(produced - 1 <= np.asarray(out.num_tokens)) and np.all(out.num_tokens <= produced)


# --- sampling ------------------------------------------------------------------------------------------------

SAMPLING_CONFIG = LlamaConfig(vocab_size=6, hidden_size=32, intermediate_size=48, num_layers=3, num_heads=4,
                              num_kv_heads=2)
PROMPT = [1, 4, 2]
DRAWS = 6000


def _exact_pair_probabilities(config, params, knobs, sampling):
    """P(first two generated tokens = (i, j)) under the full model, after the same temperature / top-k / top-p."""
    dist = lambda logits: decoding.sampling.distribution(sampling, knobs, logits)
    first = dist(model.logits(config, params, jnp.asarray([PROMPT]))[0, -1])
    continuations = jnp.asarray([PROMPT + [i] for i in range(config.vocab_size)])
    second = dist(model.logits(config, params, continuations)[:, -1])
    return np.asarray(first[:, None] * second)


def _sampled_pairs(config, params, knobs, sampling, **settings):
    out = generate(config, params, [PROMPT] * DRAWS, 2, key=11, knobs=knobs, sampling=sampling, **settings)
    pairs = np.asarray(out.tokens[:, :2])
    return np.bincount(pairs[:, 0] * config.vocab_size + pairs[:, 1], minlength=config.vocab_size ** 2)


def _chi_square_p_value(counts, probabilities):
    expected = probabilities.reshape(-1) * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "sampled a token the full model gives probability 0"
    return stats.chisquare(counts[keep], expected[keep] * counts[keep].sum() / expected[keep].sum()).pvalue


@pytest.mark.parametrize("sampling,knobs", [
    (Sampling(greedy=False), Knobs.make(temperature=1.0)),
    (Sampling(greedy=False, top_k=4), Knobs.make(temperature=0.7, top_p=0.9)),
])
def test_self_speculative_sampling_matches_the_full_model(sampling, knobs):
    params = scaled_random_model(SAMPLING_CONFIG, 5)
    exact = _exact_pair_probabilities(SAMPLING_CONFIG, params, knobs, sampling)
    autoregressive = _sampled_pairs(SAMPLING_CONFIG, params, knobs, sampling)
    speculative = _sampled_pairs(SAMPLING_CONFIG, params, knobs, sampling, strategy="self_speculative",
                                 exit_layer=1, num_speculations=2)
    assert _chi_square_p_value(autoregressive, exact) > 1e-3
    assert _chi_square_p_value(speculative, exact) > 1e-3


def _accept_every_draft(p, q, drafts, n, key):
    """A wrong rule: keeps every draft and takes the bonus token from the full model."""
    accepted = n
    bonus = p[jnp.arange(p.shape[0]), accepted]
    return accepted, jax.random.categorical(key, jnp.log(bonus), axis=-1).astype(jnp.int32)


def test_the_chi_square_test_catches_a_wrong_acceptance_rule(monkeypatch):
    sampling, knobs = Sampling(greedy=False), Knobs.make(temperature=1.0)
    params = scaled_random_model(SAMPLING_CONFIG, 5)
    exact = _exact_pair_probabilities(SAMPLING_CONFIG, params, knobs, sampling)
    monkeypatch.setattr(self_speculative, "_accept_sampled", _accept_every_draft)
    jax.clear_caches()  # the jitted loop must be traced again with the wrong rule
    try:
        wrong = _sampled_pairs(SAMPLING_CONFIG, params, knobs, sampling, strategy="self_speculative",
                               exit_layer=1, num_speculations=2)
    finally:
        jax.clear_caches()
    assert _chi_square_p_value(wrong, exact) < 1e-6


def test_sampling_filters():
    logits = jnp.log(jnp.asarray([[0.5, 0.25, 0.15, 0.1]]))
    top2 = decoding.sampling.distribution(Sampling(greedy=False, top_k=2), Knobs.make(), logits)
    np.testing.assert_allclose(top2, [[2 / 3, 1 / 3, 0, 0]], atol=1e-6)
    nucleus = decoding.sampling.distribution(Sampling(greedy=False), Knobs.make(top_p=0.7), logits)
    np.testing.assert_allclose(nucleus, [[2 / 3, 1 / 3, 0, 0]], atol=1e-6)  # 0.5 < 0.7, 0.75 >= 0.7
    hot = decoding.sampling.distribution(Sampling(greedy=False), Knobs.make(temperature=0.5), logits)
    np.testing.assert_allclose(hot, jax.nn.softmax(2 * logits), atol=1e-6)


# --- against transformers --------------------------------------------------------------------------------------

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
    assert rows(generate(config, params, [prompt], 20)) == [theirs]
    speculative = generate(config, params, [prompt], 20, strategy="self_speculative", exit_layer=2, num_speculations=3)
    assert rows(speculative) == [theirs]


# --- the embedded model ------------------------------------------------------------------------------------------

EMBEDDED = Path(__file__).resolve().parents[1] / "models" / "embedded"


def test_self_speculative_equals_autoregressive_on_the_embedded_model():
    config, params = hf.load(EMBEDDED)
    tok = tokenizer.load(EMBEDDED)
    texts = prompts.humaneval(["0", "2", "12"])  # ragged lengths, decoded as one batch
    batch = generation.encode_prompts(tok, texts)
    decode = lambda **o: [row["token_ids"] for row in generation.Decoder(
        config, params, tok, generation.Options(max_new_tokens=40, **o)).generate(batch)["outputs"]]
    want = decode(strategy="autoregressive")
    settings = [(e, 4) for e in range(1, config.num_layers)] + [(2, 1), (2, 2), (2, 8)]
    for exit_layer, d in settings:
        assert decode(strategy="self_speculative", exit_layer=exit_layer, num_speculations=d) == want, (exit_layer, d)
