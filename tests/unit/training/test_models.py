"""Seq2Seq, Forecaster and LanguageModel: every cell, padding invariance, scale invariance, state carry, configs."""

from __future__ import annotations

import pytest
import torch

from service.contract import CELLS
from training.models import (
    ForecastConfig,
    Forecaster,
    LanguageModel,
    LMConfig,
    Seq2Seq,
    TranslationConfig,
    build_model,
    config_from_dict,
    config_to_dict,
)

V_SRC, V_TGT = 23, 19


def tiny_translation(cell: str, **kw) -> Seq2Seq:
    cfg = dict(embed_size=8, hidden_size=12, attention_size=6, num_layers=2, dropout=0.0) | kw
    return Seq2Seq(TranslationConfig(V_SRC, V_TGT, cell=cell, **cfg))


def tiny_forecaster(cell: str = "lstm", **kw) -> Forecaster:
    cfg = dict(channels=2, window=16, min_history=4, horizon=5, hidden_size=8, quantiles=(0.1, 0.25, 0.5, 0.9)) | kw
    return Forecaster(ForecastConfig(cell=cell, **cfg))


def tiny_lm(cell: str, **kw) -> LanguageModel:
    cfg = dict(embed_size=8, hidden_size=12, num_layers=2, dropout=0.0) | kw
    return LanguageModel(LMConfig(vocab_size=17, cell=cell, **cfg))


def translation_batch(lengths: list[int], tgt_len: int = 6) -> dict[str, torch.Tensor]:
    S = max(lengths)
    src = torch.randint(4, V_SRC, (len(lengths), S))
    src_len = torch.tensor(lengths)
    src[torch.arange(S)[None, :] >= src_len[:, None]] = 0
    tgt = torch.randint(4, V_TGT, (len(lengths), tgt_len))
    tgt[:, 0] = 2
    tgt[:, -1] = 3
    tgt[0, -2:] = torch.tensor([3, 0])  # one shorter target: eos then pad
    return {"src": src, "src_len": src_len, "tgt": tgt}


@pytest.mark.parametrize("cell", CELLS)
def test_every_cell_trains_in_every_model(cell):
    torch.manual_seed(0)
    batches = [
        (tiny_translation(cell), translation_batch([5, 3, 1])),
        (tiny_forecaster(cell, bidirectional=True), {"window": torch.randn(3, 10, 2), "target": torch.randn(3, 5, 2)}),
        (tiny_lm(cell), {"tokens": torch.randint(0, 17, (2, 7)), "targets": torch.randint(0, 17, (2, 7))}),
    ]
    for model, batch in batches:
        out = model.loss(batch)
        loss = out[0] if isinstance(out, tuple) else out
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None for g in grads), f"{model.task}: a parameter got no gradient"


@pytest.mark.parametrize("cell", ["lstm", "gru", "peephole", "coupled", "rnn"])
def test_encoder_padding_invariance(cell):
    torch.manual_seed(1)
    model = tiny_translation(cell).eval()
    alone = torch.randint(4, V_SRC, (1, 4))
    batch = torch.randint(4, V_SRC, (3, 8))
    batch[1, :4] = alone[0]
    batch[1, 4:] = 0
    with torch.no_grad():
        m1, k1, s1 = model.encode(alone, torch.tensor([4]))
        m3, k3, s3 = model.encode(batch, torch.tensor([8, 4, 6]))
    torch.testing.assert_close(m3[1, :4], m1[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(k3[1, :4], k1[0], atol=1e-5, rtol=0)
    for a, b in zip(s3 if isinstance(s3, tuple) else (s3,), s1 if isinstance(s1, tuple) else (s1,)):
        torch.testing.assert_close(a[:, 1], b[:, 0], atol=1e-5, rtol=0)
    # One decoder step from the padded batch equals the one from the sentence alone.
    mask1, mask3 = model.source_mask(torch.tensor([4]), 4), model.source_mask(torch.tensor([8, 4, 6]), 8)
    with torch.no_grad():
        lp1, _, a1 = model.decode_step(torch.tensor([2]), s1, m1, k1, mask1)
        lp3, _, a3 = model.decode_step(torch.tensor([2, 2, 2]), s3, m3, k3, mask3)
    torch.testing.assert_close(lp3[1], lp1[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(a3[1, :4], a1[0], atol=1e-5, rtol=0)


def test_decode_step_attention_and_log_probs():
    torch.manual_seed(2)
    model = tiny_translation("gru").eval()
    batch = translation_batch([6, 2, 4])
    with torch.no_grad():
        memory, keys, state = model.encode(batch["src"], batch["src_len"])
        mask = model.source_mask(batch["src_len"], 6)
        log_probs, _, attention = model.decode_step(torch.tensor([2, 2, 2]), state, memory, keys, mask)
    assert log_probs.shape == (3, V_TGT) and attention.shape == (3, 6)
    torch.testing.assert_close(log_probs.exp().sum(1), torch.ones(3))
    torch.testing.assert_close(attention.sum(1), torch.ones(3))
    assert torch.all(attention[mask == 0] == 0)


def test_teacher_forced_forward_equals_step_by_step_decoding():
    torch.manual_seed(3)
    model = tiny_translation("lstm").eval()
    batch = translation_batch([5, 3])
    tgt_in = batch["tgt"][:, :-1]
    with torch.no_grad():
        logits = model(batch["src"], batch["src_len"], tgt_in)
        memory, keys, state = model.encode(batch["src"], batch["src_len"])
        mask = model.source_mask(batch["src_len"], batch["src"].shape[1])
        for t in range(tgt_in.shape[1]):
            log_probs, state, _ = model.decode_step(tgt_in[:, t], state, memory, keys, mask)
            torch.testing.assert_close(log_probs, torch.log_softmax(logits[:, t], -1), atol=1e-5, rtol=0)
        # Without teacher forcing, the model's own argmax is fed back: a different input sequence.
        free = model(batch["src"], batch["src_len"], tgt_in, teacher_forcing=0.0)
    torch.testing.assert_close(free[:, 0], logits[:, 0])


def test_translation_loss_ignores_padding():
    torch.manual_seed(4)
    model = tiny_translation("gru").eval()
    batch = translation_batch([4, 4], tgt_len=5)
    longer = dict(batch, tgt=torch.cat([batch["tgt"], torch.zeros(2, 3, dtype=torch.int64)], 1))
    with torch.no_grad():
        torch.testing.assert_close(model.loss(batch), model.loss(longer))


@pytest.mark.parametrize("cell,bidirectional", [("lstm", False), ("gru", True), ("coupled", False)])
def test_forecaster_scale_and_shift_invariance(cell, bidirectional):
    torch.manual_seed(5)
    model = tiny_forecaster(cell, bidirectional=bidirectional).eval()
    window = torch.randn(3, 12, 2)
    with torch.no_grad():
        out = model(window)
        scaled = model(window * 250.0 - 40.0)
    assert out.shape == (3, 5, 2, 4)
    torch.testing.assert_close(scaled, out * 250.0 - 40.0, atol=1e-3, rtol=1e-4)


def test_forecaster_quantiles_ordered_and_any_length():
    torch.manual_seed(6)
    model = tiny_forecaster()
    with torch.no_grad():
        model.head.weight.mul_(20.0)  # large raw outputs: ordering must still hold
        for T in (4, 9, 16):
            q = model(torch.randn(4, T, 2) * 3)
            assert q.shape == (4, 5, 2, 4)
            assert torch.all(q[..., 1:] >= q[..., :-1])
    with pytest.raises(ValueError, match="min_history"):
        model(torch.randn(1, 3, 2))


def test_forecaster_flat_window_is_finite():
    model = tiny_forecaster().eval()
    with torch.no_grad():
        q = model(torch.full((2, 8, 2), 7.0))
    assert torch.isfinite(q).all()


def test_pinball_loss_prefers_the_right_quantiles():
    torch.manual_seed(7)
    model = tiny_forecaster(channels=1, quantiles=(0.1, 0.5, 0.9), window=8, min_history=8, horizon=1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    window = torch.randn(256, 8, 1)
    target = window.mean(1, keepdim=True) + window.std(1, keepdim=True) * torch.randn(256, 1, 1)
    batch = {"window": window, "target": target}
    first = model.loss(batch).item()
    for _ in range(60):
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    assert model.loss(batch).item() < first
    with torch.no_grad():
        q = model(window)
    covered = (target[..., None] <= q).float().mean(dim=(0, 1, 2))  # share of targets below each quantile
    assert covered[0] < 0.3 and 0.3 < covered[1] < 0.7 and covered[2] > 0.7


@pytest.mark.parametrize("cell", CELLS)
def test_lm_state_carry(cell):
    torch.manual_seed(8)
    model = tiny_lm(cell).eval()
    tokens = torch.randint(0, 17, (2, 6))
    with torch.no_grad():
        logits, state = model(tokens)
        step_state = model.init_state(2)
        for t in range(6):
            step_logits, step_state = model(tokens[:, t : t + 1], step_state)
            torch.testing.assert_close(step_logits[:, 0], logits[:, t], atol=1e-5, rtol=0)
    for a, b in zip(state if isinstance(state, tuple) else (state,), step_state if isinstance(step_state, tuple) else (step_state,)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_lm_loss_returns_detached_state_for_tbptt():
    model = tiny_lm("lstm")
    batch = {"tokens": torch.randint(0, 17, (2, 5)), "targets": torch.randint(0, 17, (2, 5))}
    loss, state = model.loss(batch)
    assert loss.requires_grad and all(not s.requires_grad for s in state)
    loss2, _ = model.loss(batch, state)
    loss2.backward()


def test_lm_tied_weights():
    same = tiny_lm("gru", embed_size=12, tie_weights=True)
    assert same.decoder.weight is same.embed.weight
    projected = tiny_lm("gru", embed_size=8, tie_weights=True)
    assert projected.decoder.weight is projected.embed.weight
    logits, _ = projected(torch.randint(0, 17, (1, 3)))
    assert logits.shape == (1, 3, 17)


def test_build_model_from_dict_and_config_round_trip():
    d = {"channels": 1, "window": 8, "min_history": 2, "horizon": 3, "cell": "peephole", "quantiles": [0.05, 0.5, 0.95]}
    model = build_model("forecast", d)
    assert model.task == "forecast" and model.config.quantiles == (0.05, 0.5, 0.95)
    assert config_from_dict("forecast", config_to_dict(model.config)) == model.config
    lm = build_model("generate", LMConfig(vocab_size=9))
    assert isinstance(lm, LanguageModel) and lm.task == "generate"
    assert build_model("translate", {"src_vocab_size": 5, "tgt_vocab_size": 6}).task == "translate"


@pytest.mark.parametrize(
    "task,d,match",
    [
        ("forecast", {"cell": "lstn"}, "rnn, lstm, gru, peephole, coupled"),
        ("forecast", {"quantiles": [0.1, 0.9]}, "0.5"),
        ("forecast", {"window": 4, "min_history": 8}, "min_history"),
        ("generate", {"vocab_size": 9, "bogus": 1}, "bogus"),
        ("generate", {}, "vocab_size"),
        ("translate", {"src_vocab_size": 5, "tgt_vocab_size": 5, "attention": "luong"}, "luong"),
        ("classify", {}, "translate, forecast, generate"),
    ],
)
def test_bad_configs_say_what_is_wrong(task, d, match):
    with pytest.raises(ValueError, match=match):
        build_model(task, d)
