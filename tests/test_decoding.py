"""The decode loops against slow obvious references: autoregressive and early exit against re-running the
model on the growing sequence, self-speculative greedy against autoregressive greedy (every E and d,
ragged batches, adaptive drafting), self-speculative sampling against the full model's distribution."""

import functools
import itertools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from scipy import stats

from tests.conftest import TINY, scaled
from lsjax import decoding, hf, model, prompts, tokenizer
from lsjax.decoder import Decoder, Options, encode_prompts
from lsjax.config import LlamaConfig
from lsjax.decoding import Knobs, Sampling, Settings, loop, self_speculative


def right_pad(prompts, width=None):
    width = width or max(len(p) for p in prompts)
    tokens = np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, :len(p)] = p
    return tokens, np.asarray([len(p) for p in prompts], np.int32)


def generate(config, params, prompts, max_new_tokens, key=0, knobs=None, per_layer=True, **settings):
    """per_layer: in the decoding layout (`model.per_layer`, as `Decoder` runs), else stacked."""
    settings = Settings(**{"output_size": max_new_tokens, **settings})
    tokens, lengths = right_pad(prompts)
    params = model.per_layer(params) if per_layer else params
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
    return scaled(model.init(config, jax.random.key(seed)), 4.0)


@pytest.mark.parametrize("per_layer", [True, False], ids=["per_layer", "stacked"])
def test_autoregressive_and_early_exit_equal_rerunning_the_model(tiny_model, per_layer):
    config, params = tiny_model
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, config.vocab_size, n).tolist() for n in (6, 1, 9)]
    full = generate(config, params, prompts, 10, per_layer=per_layer)
    assert rows(full) == [reference_greedy(config, params, p, 10) for p in prompts]
    exit_layer = config.num_layers // 2
    early = generate(config, params, prompts, 10, strategy="early_exit", exit_layer=exit_layer, per_layer=per_layer)
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


@hsettings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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


# On a 5-token vocabulary a draft slot that a row never filled this round (it stopped at the confidence threshold
# or its schedule asked for fewer drafts) still holds a token that often equals the full model's: only the
# row's own count n may be accepted.
SMALL_VOCAB = LlamaConfig(vocab_size=5, hidden_size=32, intermediate_size=48, num_layers=4, num_heads=4, num_kv_heads=2)
SHORT_DRAFTS = [  # (E, d, schedule, confidence): rows draft fewer than d in many rounds
    (1, 4, "heuristic", 0.0), (2, 4, "fixed", 0.6), (1, 6, "heuristic", 0.5), (3, 3, "fixed", 0.45)]


@hsettings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 16), short=st.sampled_from(SHORT_DRAFTS),
       lengths=st.lists(st.integers(1, 8), min_size=4, max_size=4))
def test_rows_that_draft_fewer_than_d_accept_only_their_own_drafts(seed, short, lengths):
    exit_layer, d, schedule, confidence = short
    params = scaled_random_model(SMALL_VOCAB, seed)
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, SMALL_VOCAB.vocab_size, n).tolist() for n in lengths]
    # one padded width, so every example reuses the two compiled loops of its setting
    tokens, prompt_lengths = right_pad(prompts, width=8)
    speculative = Settings(strategy="self_speculative", exit_layer=exit_layer, num_speculations=d, schedule=schedule,
                           output_size=16)
    decode = lambda settings: rows(decoding.generate(
        SMALL_VOCAB, params, settings, tokens, prompt_lengths, 16, jax.random.key(0),
        Knobs.make(confidence=confidence), max_length=decoding.cache_length(speculative, 8)))
    assert decode(speculative) == decode(Settings(output_size=16))


def _rounds(config, params, settings: Settings, prompts, max_new_tokens, knobs):
    """Runs the self-speculative rounds one at a time: per round, the drafts and accepted drafts of every row
    ([rounds, B] each) and which rows took part."""
    tokens, lengths = right_pad(prompts)
    state = loop.start(config, params, settings, tokens, lengths, max_new_tokens, jax.random.key(0), knobs,
                       max_length=decoding.cache_length(settings, tokens.shape[1]), depth=config.num_layers,
                       cache_layers=config.num_layers)
    run_round = jax.jit(functools.partial(self_speculative.run_round, config, params, settings, knobs))
    drafted, accepted, active = [], [], []
    while not np.all(state.done):
        active.append(~np.asarray(state.done))
        new = run_round(state)
        drafted.append(np.asarray(new.drafted - state.drafted))
        accepted.append(np.asarray(new.accepted - state.accepted))
        state = new
    return np.asarray(drafted), np.asarray(accepted), np.asarray(active)


def test_heuristic_schedule_drafts_two_more_after_a_full_acceptance_and_one_fewer_otherwise():
    d = 6
    params = scaled_random_model(SMALL_VOCAB, 0)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, SMALL_VOCAB.vocab_size, n).tolist() for n in (3, 7, 5)]
    settings = Settings(strategy="self_speculative", exit_layer=2, num_speculations=d, schedule="heuristic",
                        output_size=48)
    drafted, accepted, active = _rounds(SMALL_VOCAB, params, settings, prompts, 48, Knobs.make())
    want = np.full(len(prompts), d)  # the first round drafts d
    moves = set()
    for r in range(len(drafted)):
        np.testing.assert_array_equal(drafted[r][active[r]], want[active[r]], err_msg=f"round {r}")
        full = accepted[r] == drafted[r]
        want = np.where(active[r], np.clip(np.where(full, want + 2, want - 1), 1, d), want)
        moves |= {(bool(f), int(w)) for f, w, a in zip(full, drafted[r], active[r]) if a}
    # the schedule was exercised: up from the floor, up into the cap (d - 1 -> d) and at it, down from d and at 1
    assert {(True, 1), (True, d - 1), (True, d), (False, d), (False, 1)} <= moves, moves


def test_fixed_schedule_drafts_d_every_round_and_the_confidence_stop_counts_its_last_draft():
    params = scaled_random_model(SMALL_VOCAB, 4)
    prompts = [[1, 2, 3], [4, 0], [2, 2, 2, 1, 0]]
    settings = Settings(strategy="self_speculative", exit_layer=1, num_speculations=3, output_size=32)
    drafted, _, active = _rounds(SMALL_VOCAB, params, settings, prompts, 32, Knobs.make())
    assert np.all(drafted[active] == 3) and np.all(drafted[~active] == 0)
    # a threshold no draft reaches: each row drafts its one unconfident token, then stops
    drafted, _, active = _rounds(SMALL_VOCAB, params, settings, prompts, 32, Knobs.make(confidence=0.999))
    assert np.all(drafted[active] == 1)


# --- sampling ------------------------------------------------------------------------------------------------

SAMPLING_CONFIG = LlamaConfig(vocab_size=4, hidden_size=32, intermediate_size=48, num_layers=3, num_heads=4,
                              num_kv_heads=2)
PROMPT = [1, 3, 2]
NEW_TOKENS = 5  # the prefill's token, then at least two rounds (a round emits at most d + 1 <= 4)
DRAWS = 8000


@hsettings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 16), draft_vocab=st.sampled_from([1, 4, 20]),
       lengths=st.lists(st.integers(1, 9), min_size=1, max_size=3))
def test_a_reduced_draft_vocabulary_keeps_greedy_output(seed, draft_vocab, lengths):
    """Drafts from K of the 37 tokens (a random subset): fewer accepted, the same output as autoregressive."""
    config = LlamaConfig(vocab_size=37, hidden_size=32, intermediate_size=48, num_layers=3, num_heads=4,
                         num_kv_heads=2, tie_word_embeddings=bool(seed % 2))
    params = scaled_random_model(config, seed)
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, config.vocab_size, n).tolist() for n in lengths]
    subset = np.sort(rng.permutation(config.vocab_size)[:draft_vocab])
    out = generate(config, params, prompts, 12, strategy="self_speculative", exit_layer=1, num_speculations=3,
                   draft_vocab=draft_vocab, knobs=Knobs.make(draft_ids=subset))
    assert rows(out) == rows(generate(config, params, prompts, 12))
    drafted = np.asarray(out.tokens)[np.asarray(out.kinds) == decoding.ACCEPTED_DRAFT]
    assert np.isin(drafted, subset).all()


def test_draft_logits_over_a_subset_are_the_heads_and_minus_infinity_elsewhere():
    config = LlamaConfig(vocab_size=37, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2)
    params = scaled_random_model(config, 3)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, config.hidden_size)), jnp.float32)
    ids = np.asarray([2, 5, 30])
    knobs = Knobs.make(draft_ids=ids)
    rows = self_speculative.draft_rows(config, params, Settings(draft_vocab=3), knobs)
    logits = np.asarray(self_speculative._draft_logits(config, params, knobs, rows, x))
    np.testing.assert_allclose(logits[:, ids], np.asarray(model.unembed(config, params, x))[:, ids], rtol=1e-6)
    assert np.all(np.delete(logits, ids, axis=1) == -np.inf)


def _exact_sequence_probabilities(config, params, knobs, sampling, length):
    """P(the first `length` generated tokens = s) for every s, an array [V] * length: the full model run over
    every continuation of PROMPT, after the same temperature / top-k / top-p."""
    vocab = config.vocab_size
    sequences = np.asarray(list(itertools.product(range(vocab), repeat=length)), np.int32)  # [V^n, n]
    tokens = np.concatenate([np.tile(PROMPT, (len(sequences), 1)), sequences], axis=1)
    logits = model.logits(config, params, jnp.asarray(tokens))[:, len(PROMPT) - 1:-1]  # predicts each new token
    probs = np.asarray(decoding.sampling.distribution(sampling, knobs, logits), np.float64)
    picked = np.take_along_axis(probs, sequences[..., None], axis=-1)[..., 0]
    return np.prod(picked, axis=1).reshape((vocab,) * length)


def _sampled_sequences(config, params, knobs, sampling, **settings):
    out = generate(config, params, [PROMPT] * DRAWS, NEW_TOKENS, key=11, knobs=knobs, sampling=sampling, **settings)
    assert np.all(np.asarray(out.num_tokens) == NEW_TOKENS)
    return np.asarray(out.tokens[:, :NEW_TOKENS]), out


def _chi_square_p_value(samples, probabilities):
    """samples [N] of outcomes 0..K-1 against probabilities [K]."""
    expected = probabilities.reshape(-1) * len(samples)
    counts = np.bincount(samples, minlength=expected.size)
    keep = expected > 0
    assert counts[~keep].sum() == 0, "sampled a token the full model gives probability 0"
    return stats.chisquare(counts[keep], expected[keep] * counts[keep].sum() / expected[keep].sum()).pvalue


def _worst_pair_p_value(sequences, exact):
    """The smallest chi-square p-value over every pair of consecutive tokens (t_k, t_k+1)."""
    vocab, length = exact.shape[0], exact.ndim
    values = []
    for k in range(length - 1):
        others = tuple(i for i in range(length) if i not in (k, k + 1))
        pair = exact.sum(axis=others)
        values.append(_chi_square_p_value(sequences[:, k] * vocab + sequences[:, k + 1], pair))
    return min(values)


@pytest.mark.parametrize("sampling,knobs,speculation", [
    (Sampling(greedy=False), Knobs.make(temperature=1.0), dict(exit_layer=1, num_speculations=2)),
    (Sampling(greedy=False, top_k=3), Knobs.make(temperature=0.7, top_p=0.9, confidence=0.5),
     dict(exit_layer=2, num_speculations=3, schedule="heuristic")),
    (Sampling(greedy=False), Knobs.make(temperature=1.0, draft_ids=[0, 2, 3]),  # q = 0 for token 1
     dict(exit_layer=1, num_speculations=2, draft_vocab=3)),
])
def test_self_speculative_sampling_matches_the_full_model_over_several_rounds(sampling, knobs, speculation):
    """Every pair of consecutive tokens over two or more rounds: accepted drafts, residual draws, bonus tokens
    and the rollback between rounds all have to be right for these to follow the full model."""
    params = scaled_random_model(SAMPLING_CONFIG, 5)
    exact = _exact_sequence_probabilities(SAMPLING_CONFIG, params, knobs, sampling, NEW_TOKENS)
    autoregressive, _ = _sampled_sequences(SAMPLING_CONFIG, params, knobs, sampling)
    speculative, out = _sampled_sequences(SAMPLING_CONFIG, params, knobs, sampling, strategy="self_speculative",
                                          **speculation)
    assert np.all(np.asarray(out.rounds) >= 2)
    assert 0 < int(np.sum(out.accepted)) < int(np.sum(out.drafted))  # both acceptance and rejection happen
    assert _worst_pair_p_value(autoregressive, exact) > 1e-3
    assert _worst_pair_p_value(speculative, exact) > 1e-3


def _accept_every_draft(p, q, drafts, n, key):
    """A wrong rule: keeps every draft and takes the bonus token from the full model."""
    accepted = n
    bonus = p[jnp.arange(p.shape[0]), accepted]
    return accepted, jax.random.categorical(key, jnp.log(bonus), axis=-1).astype(jnp.int32)


def test_the_chi_square_test_catches_a_wrong_acceptance_rule(monkeypatch):
    sampling, knobs = Sampling(greedy=False), Knobs.make(temperature=1.0)
    params = scaled_random_model(SAMPLING_CONFIG, 5)
    exact = _exact_sequence_probabilities(SAMPLING_CONFIG, params, knobs, sampling, NEW_TOKENS)
    monkeypatch.setattr(self_speculative, "_accept_sampled", _accept_every_draft)
    jax.clear_caches()  # the jitted loop must be traced again with the wrong rule
    try:
        wrong, _ = _sampled_sequences(SAMPLING_CONFIG, params, knobs, sampling, strategy="self_speculative",
                                      exit_layer=1, num_speculations=2)
    finally:
        jax.clear_caches()
    assert _worst_pair_p_value(wrong, exact) < 1e-6


ROWS, D, V = 30000, 3, 5


def _fixed_distributions(seed):
    """p [D + 1, V] (the full model at each position of a round) and q [D, V] (the draft), and per row a
    draft count n in 1..D, drafts drawn from q, and stale tokens past n (the slots a row never drafted)."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(V), D + 1)
    q = 0.6 * p[:D] + 0.4 * rng.dirichlet(np.ones(V), D)
    n = rng.integers(1, D + 1, ROWS)
    drafts = np.stack([rng.choice(V, ROWS, p=q[i]) for i in range(D)], axis=1)
    drafts = np.where(np.arange(D)[None] < n[:, None], drafts, rng.integers(0, V, (ROWS, D)))
    return p, q, n, drafts


def _accept(p, q, drafts, n, seed=0):
    broadcast = lambda a: jnp.broadcast_to(jnp.asarray(a, jnp.float32), (ROWS,) + a.shape)
    accepted, token = self_speculative._accept_sampled(broadcast(p), broadcast(q), jnp.asarray(drafts, jnp.int32),
                                                       jnp.asarray(n, jnp.int32), jax.random.key(seed))
    return np.asarray(accepted), np.asarray(token)


def test_sampled_acceptance_takes_the_bonus_from_p_after_the_last_draft():
    """q = p: every draft is kept, and the bonus token of a row with n drafts follows p at position n."""
    p, _, n, drafts = _fixed_distributions(0)
    accepted, token = _accept(p, p[:D], drafts, n)
    np.testing.assert_array_equal(accepted, n)
    for count in range(1, D + 1):
        assert _chi_square_p_value(token[n == count], p[count]) > 1e-3, count


def test_sampled_acceptance_emits_every_position_from_p():
    """The rule on fixed distributions: whatever a row emits at position k of a round (a kept draft, the
    residual draw at the first rejection, or the bonus after its n drafts) follows p_k, and a stale slot past
    n is never kept."""
    p, q, n, drafts = _fixed_distributions(1)
    accepted, token = _accept(p, q, drafts, n)
    assert np.all(accepted <= n)
    for k in range(D + 1):
        reached = (accepted >= k) & (k <= n)
        emitted = np.where(accepted > k, drafts[:, min(k, D - 1)], token)[reached]
        assert reached.sum() > 2000 and _chi_square_p_value(emitted, p[k]) > 1e-3, k


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
    batch = encode_prompts(tok, texts)
    decode = lambda **o: [row.token_ids for row in Decoder(
        config, params, tok, Options(max_new_tokens=40, **o)).generate(batch).outputs]
    want = decode(strategy="autoregressive")
    settings = [(e, 4) for e in range(1, config.num_layers)] + [(2, 1), (2, 2), (2, 8)]
    for exit_layer, d in settings:
        assert decode(strategy="self_speculative", exit_layer=exit_layer, num_speculations=d) == want, (exit_layer, d)
