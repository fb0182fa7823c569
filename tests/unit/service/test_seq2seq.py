"""Translation decoding shared by the server and training's evaluation (service.inference.seq2seq)."""

from __future__ import annotations

import numpy as np
import pytest

from service.contract import read_manifest
from service.core.types import TranslateRequest
from service.inference.decoding import BeamSearch, GreedySearch, Hypothesis
from service.inference.seq2seq import restore_unknown, translate_ids
from service.inference.sessions import load_session

SENTENCES = ["a b c", "d", "e f g h i j", "b a", "c c c c", "j i h"]


def test_stops_at_eos_keeps_order_and_caps_the_length():
    def encoder(feed):
        B, S = feed["src"].shape
        # the "state" remembers each sentence's length; the decoder emits 10 + length, length times
        return {"memory": np.zeros((B, S, 1), np.float32), "memory_keys": np.zeros((B, S, 1), np.float32),
                "state_h": np.stack([feed["src_len"].astype(np.float32), np.zeros(B, np.float32)], axis=1)[None]}

    def decoder(feed):
        length, emitted = feed["state_h"][0, :, 0], feed["state_h"][0, :, 1]
        assert feed["src_mask"].sum(1).tolist() == length.tolist()  # each row sees only its own source
        tok = np.where(emitted < length, 10 + length, 3).astype(np.int64)
        logp = np.full((len(tok), 20), -10.0, np.float32)
        logp[np.arange(len(tok)), tok] = 0.0
        state = feed["state_h"].copy()
        state[0, :, 1] += 1
        return {"log_probs": logp, "state_h_out": state, "attention": feed["src_mask"]}

    sources = [[5] * n for n in (3, 1, 4, 2, 1)]
    kw = dict(pad=0, bos=2, eos=3, state_names=["state_h"])
    out = translate_ids(encoder, decoder, sources, batch_size=2, **kw)
    assert [h.tokens for h in out] == [[13] * 3, [11], [14] * 4, [12] * 2, [11]]
    assert all(h.ended for h in out)
    capped = translate_ids(encoder, decoder, sources, max_target_tokens=2, **kw)
    assert [len(h.tokens) for h in capped] == [2, 1, 2, 2, 1]
    beam = translate_ids(encoder, decoder, sources, beam=3, **kw)  # one certain path: beam finds it too
    assert [h.tokens for h in beam] == [h.tokens for h in out]


@pytest.mark.parametrize("beam", [1, 3])
async def test_evaluation_decodes_exactly_what_the_server_answers(built, repo, make_engine, beam):
    """Training's evaluation calls translate_ids on the bundle's graphs; the engine answers through its
    batcher and step scheduler with many sentences sharing each step. Same tokens, same scores."""
    engine = await make_engine(repo)
    served = await engine.translate(TranslateRequest(texts=SENTENCES, beam_size=beam))
    bundle = built["tiny-translate"]
    m = read_manifest(bundle)
    sessions = {role: load_session(bundle / file) for role, file in m.graphs.items()}

    def graph(role):
        sess = sessions[role]
        names = [o.name for o in sess.get_outputs()]
        return lambda feeds: dict(zip(names, sess.run(None, feeds)))

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bundle / m.tokenizers["source"]))
    sources = [tok.encode(t, add_special_tokens=False).ids for t in SENTENCES]
    best = translate_ids(graph("encoder"), graph("decoder_step"), sources, pad=m.special_tokens["pad"],
                         bos=m.special_tokens["bos"], eos=m.special_tokens["eos"],
                         state_names=[f"state_{s}" for s in m.state_names], beam=beam,
                         max_target_tokens=m.limits.get("max_target_tokens", 256), batch_size=4)
    target = Tokenizer.from_file(str(bundle / m.tokenizers["target"]))
    assert [t.tokens for t in served.translations] == [[target.id_to_token(i) for i in h.tokens] for h in best]
    assert [t.score for t in served.translations] == pytest.approx([h.score(0.6) for h in best], abs=1e-5)


def _peaked(rows: int, width: int, peaks: list[int]) -> np.ndarray:
    att = np.full((rows, width), 0.01, np.float32)
    att[np.arange(rows), peaks] = 0.9
    return att


def test_searches_record_where_each_token_attended():
    greedy = GreedySearch(eos=3, max_length=5, alpha=0.0)
    for tok, peak in ((7, 2), (8, 0)):
        lp = np.full((1, 10), -9.0, np.float32)
        lp[0, tok] = 0.0
        greedy.step(lp, _peaked(1, 4, [peak]))
    assert greedy.best().tokens == [7, 8] and greedy.best().aligned == [2, 0]

    beam = BeamSearch(2, eos=3, max_length=2, alpha=0.0)
    lp = np.full((1, 10), -9.0, np.float32)
    lp[0, 5], lp[0, 6] = -0.1, -0.2
    beam.step(lp, _peaked(1, 3, [1]))
    lp = np.full((2, 10), -9.0, np.float32)
    lp[1, 7] = 0.0  # the second hypothesis (token 6) continues best, attending to position 2
    lp[0, 4] = -5.0
    beam.step(lp, _peaked(2, 3, [0, 2]))
    best = beam.best()
    assert best.tokens == [6, 7] and best.aligned == [1, 2]  # each token keeps its own parent's alignment


def test_unknown_words_are_copied_only_from_unknown_source_words():
    unk = 1
    piece = {5: "▁A", 6: "▁man", 7: "."}.get
    hyp = Hypothesis(tokens=[5, 6, unk, unk, 7], logp=0.0, aligned=[0, 1, 3, 2, 4])
    source_ids = [10, 11, 12, unk, 13]  # "Ein Mann namens Gerhard ."
    words = ["Ein", "Mann", "namens", "Gerhard", "."]
    pieces, copied = restore_unknown(hyp, unk, source_ids, words, piece, "▁")
    # the unknown token aligned to "Gerhard" (unknown to the model) is copied as a word; the one
    # aligned to "namens" (known: a rare target word) is left out
    assert pieces == ["▁A", "▁man", "▁Gerhard", None, "."] and copied == 1
    punct = Hypothesis(tokens=[unk], logp=0.0, aligned=[0])
    assert restore_unknown(punct, unk, [unk], ["»"], piece, "▁") == (["»"], 1)  # no word mark on punctuation
    chars = Hypothesis(tokens=[unk], logp=0.0, aligned=[0])
    assert restore_unknown(chars, unk, [unk], ["娜"], piece, "") == (["娜"], 1)
    stuck = Hypothesis(tokens=[5, unk, unk, unk, 7], logp=0.0, aligned=[0, 3, 3, 3, 4])  # repeats the token on one word
    assert restore_unknown(stuck, unk, source_ids, words, piece, "▁") == (["▁A", "▁Gerhard", None, None, "."], 1)
    unaligned = Hypothesis(tokens=[5, unk], logp=0.0, aligned=[0])  # no attention recorded for the unknown
    assert restore_unknown(unaligned, unk, [unk], ["x"], piece, "▁") == (["▁A", None], 0)
