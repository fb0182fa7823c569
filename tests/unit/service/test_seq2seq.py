"""Translation decoding shared by the server and training's evaluation (service.inference.seq2seq)."""

from __future__ import annotations

import numpy as np
import pytest

from service.contract import read_manifest
from service.core.types import TranslateRequest
from service.inference.seq2seq import translate_ids
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
