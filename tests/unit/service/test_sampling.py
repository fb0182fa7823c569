"""Sampling, stop strings, incremental detokenisation, greedy and beam search (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from service.core.tokenizing import StreamDecoder, TextCodec
from service.inference.decoding import (
    BeamSearch,
    GreedySearch,
    Sampler,
    StopChecker,
    sample_rows,
    softmax,
    top_k_mask,
    top_p_mask,
)


def test_top_k_keeps_the_k_largest():
    logits = np.array([0.1, 3.0, -1.0, 2.5, 0.0, 2.9])
    assert set(np.flatnonzero(top_k_mask(logits, 3))) == {1, 3, 5}
    assert top_k_mask(logits, 0).all() and top_k_mask(logits, 10).all()


def test_top_p_keeps_the_smallest_nucleus():
    probs = np.array([0.05, 0.5, 0.1, 0.3, 0.05])
    assert set(np.flatnonzero(top_p_mask(probs, 0.5))) == {1}
    assert set(np.flatnonzero(top_p_mask(probs, 0.51))) == {1, 3}
    assert set(np.flatnonzero(top_p_mask(probs, 0.85))) == {1, 3, 2}
    assert set(np.flatnonzero(top_p_mask(probs, 0.01))) == {1}  # never empty


def test_temperature_zero_is_argmax_and_ignores_the_rng():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=50)
    sampler = Sampler(temperature=0.0, rng=np.random.default_rng(1))
    assert all(sampler.sample(logits) == int(np.argmax(logits)) for _ in range(20))


def test_sampler_draws_only_from_the_filtered_set_and_follows_the_distribution():
    logits = np.log(np.array([0.4, 0.3, 0.2, 0.1]))
    top_k = Sampler(1.0, top_k=2, rng=np.random.default_rng(0))
    draws = np.array([top_k.sample(logits) for _ in range(4000)])
    assert set(draws) == {0, 1}
    assert abs((draws == 0).mean() - 0.4 / 0.7) < 0.03
    top_p = Sampler(1.0, top_p=0.75, rng=np.random.default_rng(0))
    assert set(top_p.sample(logits) for _ in range(2000)) == {0, 1, 2}
    hot = Sampler(0.5, rng=np.random.default_rng(0)).probabilities(logits)
    np.testing.assert_allclose(hot, softmax(logits / 0.5))


def test_same_seed_same_tokens():
    logits = np.random.default_rng(3).normal(size=(30, 40))
    a = Sampler(0.8, top_k=10, top_p=0.9, rng=np.random.default_rng(7))
    b = Sampler(0.8, top_k=10, top_p=0.9, rng=np.random.default_rng(7))
    assert [a.sample(x) for x in logits] == [b.sample(x) for x in logits]


def test_stop_checker_finds_earliest_and_holds_back_prefixes():
    stops = StopChecker(["\n\n", "END", "xyz"])
    assert stops.find("abc END and \n\n") == 4
    assert stops.find("nothing here") == -1
    assert stops.holdback("hello E") == 1
    assert stops.holdback("hello EN") == 2
    assert stops.holdback("hello\n") == 1
    assert stops.holdback("hello") == 0
    assert StopChecker([]).holdback("abc") == 0


def _char_codec(text: str) -> TextCodec:
    vocab = {ch: i for i, ch in enumerate(sorted(set(text)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=text[0]))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return TextCodec(tok)


def test_stream_decoder_never_emits_the_start_of_a_stop_string():
    text = "ab STOP cd"
    codec = _char_codec("abSTOPcd ")
    ids, _ = codec.encode(text)
    dec = StreamDecoder(codec, StopChecker(["STOP"]))
    chunks = []
    for i in ids:
        chunks.append(dec.push(i))
        assert "S" not in "".join(chunks)  # "S" may start "STOP": held back
        if dec.stopped:
            break
    assert dec.stopped and dec.text == "ab " and "".join(chunks) == "ab "


def test_stream_decoder_releases_a_false_alarm():
    codec = _char_codec("abSTcd ")
    ids, _ = codec.encode("ab ST")
    dec = StreamDecoder(codec, StopChecker(["STOP"]))
    chunks = [dec.push(i) for i in ids]
    assert "".join(chunks) == "ab "
    assert dec.finish() == "ST" and not dec.stopped


def test_stream_decoder_holds_partial_utf8_pieces():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["plain ascii text"], trainer=trainer)
    codec = TextCodec(tok)
    text = "naïve 日本"
    ids, _ = codec.encode(text)  # multi-byte characters are several byte tokens
    assert len(ids) > len(text)
    dec = StreamDecoder(codec, StopChecker([]))
    chunks = [dec.push(i) for i in ids]
    assert all("\ufffd" not in c for c in chunks)
    assert "".join(chunks) + dec.finish() == text


def _random_log_probs(rng: np.random.Generator, steps: int, rows: int, vocab: int) -> np.ndarray:
    logits = rng.normal(size=(steps, rows, vocab)) * 2.0
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


@pytest.mark.parametrize("seed", range(5))
def test_beam_search_with_beam_one_equals_greedy(seed):
    rng = np.random.default_rng(seed)
    eos, vocab = 0, 6
    table = _random_log_probs(rng, 40, 1, vocab)
    greedy = GreedySearch(eos, max_length=30, alpha=0.6)
    beam = BeamSearch(1, eos, max_length=30, alpha=0.6)
    step = 0
    while not greedy.done:
        greedy.step(table[step])
        step += 1
    step = 0
    while not beam.done:
        assert beam.rows == 1
        beam.step(table[step])
        step += 1
    assert beam.best().tokens == greedy.best().tokens
    assert beam.best().score(0.6) == pytest.approx(greedy.best().score(0.6))


def test_beam_search_finds_the_better_sequence_greedy_misses():
    # Step 1: token 1 (p .6) beats token 2 (p .4); after 1 everything is flat, after 2 EOS is certain.
    eos = 0
    first = np.log(np.array([[1e-9, 0.6, 0.4, 1e-9]]))
    after = {1: np.log(np.array([0.25, 0.25, 0.25, 0.25])), 2: np.log(np.array([0.97, 0.01, 0.01, 0.01]))}

    def run(search):
        search.step(first)
        while not search.done:
            rows = [after.get(t, after[1]) for t in search.prev_tokens(bos=3)]
            search.step(np.stack(rows))
        return search.best()

    assert run(GreedySearch(eos, 10, alpha=0.0)).tokens[0] == 1
    best = run(BeamSearch(2, eos, 10, alpha=0.0))
    assert best.tokens == [2] and best.ended
    assert best.logp == pytest.approx(np.log(0.4) + np.log(0.97))


def test_beam_search_reorders_parents_and_respects_max_length():
    rng = np.random.default_rng(0)
    beam = BeamSearch(3, eos=0, max_length=5, alpha=0.6)
    steps = 0
    while not beam.done:
        lp = _random_log_probs(rng, 1, beam.rows, 8)[0]
        lp[:, 0] = -50.0  # EOS never wins
        parents = beam.step(lp)
        assert len(parents) == beam.rows and all(0 <= p < lp.shape[0] for p in parents)
        steps += 1
    assert steps == 5 and len(beam.best().tokens) == 5


@pytest.mark.parametrize("seed", range(40))
def test_top_indices_equals_a_full_sort_with_ties_to_the_lower_index(seed):
    from service.inference.decoding import top_indices

    rng = np.random.default_rng(seed)
    size, n = int(rng.integers(1, 40_000)), int(rng.integers(1, 17))
    values = rng.standard_normal(size) * 3 - 10
    if seed % 2:
        values = np.round(values)  # many ties, also around the n-th value
    values[rng.integers(0, size, 3)] = 5.0  # a few far ahead, as in a confident decoder
    expected = np.lexsort((np.arange(size), -values))[:n]
    assert top_indices(values, n).tolist() == expected.tolist()


@pytest.mark.parametrize("seed", range(60))
def test_beam_candidates_ranked_in_float32_first_are_those_of_float64(seed):
    """best_candidates' float32 pass must give exactly the float64 ranking and values, near-ties included."""
    from service.inference.decoding import best_candidates

    rng = np.random.default_rng(seed)
    rows, vocab, n = int(rng.integers(1, 6)), int(rng.integers(2, 7000)), int(rng.integers(1, 13))
    logits = rng.standard_normal((rows, vocab)) * rng.choice([0.01, 1.0, 5.0])
    log_probs = (logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))).astype(np.float32)
    scores = -np.abs(rng.standard_normal(rows)) * rng.choice([0.1, 10.0, 300.0])
    if seed % 3 == 1:  # equal sums in float64 from different parents, and float32 neighbours of them
        log_probs[:, :40] = np.float32(-2.0)
        scores[:] = scores[0]
        log_probs[0, 40:45] = np.nextafter(np.float32(-2.0), np.float32(0.0))
    if seed % 3 == 2:  # masked tokens
        log_probs[:, rng.integers(0, vocab, vocab // 3)] = -np.inf
    reference = (scores[:, None] + log_probs.astype(np.float64)).reshape(-1)
    expected = np.lexsort((np.arange(reference.size), -reference))[:n]
    top, values = best_candidates(scores, log_probs, n)
    assert top.tolist() == expected.tolist()
    assert values.dtype == np.float64 and np.array_equal(values, reference[expected])


def _metaspace_codec() -> TextCodec:
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "▁the": 1, "▁man": 2, ",": 3, "▁runs": 4, ".": 5, "s": 6, "▁": 7}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    return TextCodec(tok)


def _byte_bpe_codec() -> TextCodec:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["naïve plain text 日本語", "ascii only"], trainer=trainer)
    return TextCodec(tok)


@pytest.mark.parametrize("kind", ["char", "metaspace", "byte-bpe"])
@pytest.mark.parametrize("seed", range(8))
def test_incremental_stream_decoding_equals_decoding_everything(kind, seed):
    """Random completions (byte-level ones cut mid-character too): what streams out, plus the
    rest at the end, is exactly the decode of all ids."""
    codec = {"char": lambda: _char_codec("ab, .\nxyz"), "metaspace": _metaspace_codec, "byte-bpe": _byte_bpe_codec}[kind]()
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, codec.vocab_size, size=300).tolist()
    dec = StreamDecoder(codec, StopChecker([]))
    streamed = "".join(dec.push(i) for i in ids)
    assert streamed + dec.finish() == codec.decode(ids)
    assert dec.text == codec.decode(ids)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
def test_plain_temperature_sampling_draws_from_probabilities(temperature):
    """The fast path (no top-k / top-p) picks exactly the token the inverse CDF of
    probabilities() gives for the same uniform draw."""
    rng = np.random.default_rng(7)
    for seed in range(200):
        logits = (rng.standard_normal(65) * 3).astype(np.float32)
        sampler = Sampler(temperature, 0, 1.0, np.random.default_rng(seed))
        reference = np.random.default_rng(seed)
        for _ in range(3):
            cum = np.cumsum(sampler.probabilities(logits))
            expected = min(int(np.searchsorted(cum, reference.random() * cum[-1], side="right")), 64)
            assert sampler.sample(logits) == expected


@pytest.mark.parametrize("vocab", [69, 5000])
def test_sampling_a_whole_step_gives_each_row_what_it_gets_alone(vocab):
    """sample_rows (one vectorised pass over a step's rows, each with its own sampler and RNG) draws
    exactly the token each sampler draws alone, for any mix of temperature, top-k and top-p."""
    rng = np.random.default_rng(11)
    for trial in range(60):
        rows = int(rng.integers(1, 33))
        logits = (rng.standard_normal((rows, vocab)) * 3).astype(np.float32)
        params = [(float(rng.choice([0.0, 0.5, 1.0, 1.7])), int(rng.choice([0, 5, 20, vocab + 1])),
                   float(rng.choice([1.0, 0.9, 0.5]))) for _ in range(rows)]
        batched = [Sampler(t, k, p, np.random.default_rng(trial * 100 + i)) for i, (t, k, p) in enumerate(params)]
        single = [Sampler(t, k, p, np.random.default_rng(trial * 100 + i)) for i, (t, k, p) in enumerate(params)]
        for _ in range(3):  # the RNGs advance alike too
            assert sample_rows(logits, batched).tolist() == [s.sample(row) for s, row in zip(single, logits)]


@pytest.mark.parametrize("temperature", [0.0, 0.5, 1.0, 1.7])
def test_one_stream_draws_what_a_batch_row_draws(temperature):
    """A lone stream's step takes a shorter path (no top-k/top-p): the same token, draw after draw, as
    the same sampler's row inside a batch."""
    rng = np.random.default_rng(5)
    alone, in_batch = (Sampler(temperature, 0, 1.0, np.random.default_rng(9)) for _ in range(2))
    other = Sampler(1.0, 3, 0.9, np.random.default_rng(10))
    for _ in range(300):
        logits = (rng.standard_normal((2, 69)) * 4).astype(np.float32)
        assert sample_rows(logits[:1], [alone]).tolist() == sample_rows(logits, [in_batch, other]).tolist()[:1]


def test_top_k_keeps_ties_at_the_kth_value():
    assert set(np.flatnonzero(top_k_mask(np.array([1.0, 3.0, 2.0, 2.0, 0.5]), 2))) == {1, 2, 3}
