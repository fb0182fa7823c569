"""The served models: seq2seq translation with Bahdanau attention, quantile forecaster, language model, CTC speech recognizer."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from service.contract import TASKS
from training.checks import check_dropout as _check_dropout
from training.checks import check_positive as _check_positive
from training.layers import Recurrent, State, check_cell
from training.speech_models import SpeechConfig, SpeechRecognizer

_MASK_PENALTY = 1e9  # added (negated) to attention scores of padding; exp(-1e9) is exactly 0 in float32


def detach_state(state: State) -> State:
    """Cut the graph behind a recurrent state (truncated BPTT)."""
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


# ---- translation ---------------------------------------------------------------------------------


@dataclass
class TranslationConfig:
    src_vocab_size: int  # source tokenizer's vocabulary size
    tgt_vocab_size: int  # target tokenizer's vocabulary size
    cell: str = "gru"  # one of service.contract.CELLS, for encoder and decoder
    embed_size: int = 256  # source and target embedding width E
    hidden_size: int = 512  # H per direction in the encoder; the decoder's hidden size
    num_layers: int = 1  # layers of the encoder and of the decoder
    bidirectional: bool = True  # encoder reads both ways (memory width M = 2H)
    attention: str = "bahdanau"  # additive attention; the only kind implemented
    attention_size: int = 256  # A, width of the additive attention's hidden layer
    dropout: float = 0.3  # on embeddings, between layers and before the read-out
    forget_bias: float = 1.0  # initial forget (GRU: update) gate bias of the gated cells; ignored by rnn
    teacher_forcing: float = 1.0  # probability of feeding the gold previous token in training
    pad_id: int = 0
    bos_id: int = 2
    eos_id: int = 3

    def validate(self) -> "TranslationConfig":
        check_cell(self.cell)
        _check_positive(self, "src_vocab_size", "tgt_vocab_size", "embed_size", "hidden_size", "num_layers", "attention_size")
        _check_dropout(self)
        if self.attention != "bahdanau":
            raise ValueError(f"TranslationConfig.attention {self.attention!r} is not one of bahdanau")
        if not 0.0 <= self.teacher_forcing <= 1.0:
            raise ValueError(f"TranslationConfig.teacher_forcing {self.teacher_forcing!r} must be in [0, 1]")
        return self


class Seq2Seq(nn.Module):
    """Recurrent encoder (bidirectional by default) + attentional recurrent decoder (Bahdanau et al. 2015)."""

    task = "translate"

    def __init__(self, config: TranslationConfig) -> None:
        super().__init__()
        self.config = c = config.validate()
        D = 2 if c.bidirectional else 1
        self.memory_size = D * c.hidden_size  # M
        self.src_embed = nn.Embedding(c.src_vocab_size, c.embed_size, padding_idx=c.pad_id)
        self.tgt_embed = nn.Embedding(c.tgt_vocab_size, c.embed_size, padding_idx=c.pad_id)
        self.encoder = Recurrent(c.cell, c.embed_size, c.hidden_size, c.num_layers, c.bidirectional, c.dropout,
                                 forget_bias=c.forget_bias)
        # Decoder's initial state per layer: tanh(Linear([last fwd; last bwd])) of the same encoder layer.
        self.bridge_h = nn.Linear(self.memory_size, c.hidden_size)
        self.bridge_c = nn.Linear(self.memory_size, c.hidden_size) if self.encoder.has_cell_state else None
        self.attn_key = nn.Linear(self.memory_size, c.attention_size, bias=False)  # W_k m_s
        self.attn_query = nn.Linear(c.hidden_size, c.attention_size)  # W_q h_{t-1} + b
        self.attn_v = nn.Linear(c.attention_size, 1, bias=False)  # v^T tanh(.)
        self.decoder = Recurrent(c.cell, c.embed_size + self.memory_size, c.hidden_size, c.num_layers, False, c.dropout,
                                 forget_bias=c.forget_bias)
        self.readout = nn.Linear(c.hidden_size + self.memory_size + c.embed_size, c.embed_size)
        self.generator = nn.Linear(c.embed_size, c.tgt_vocab_size)
        self.dropout = nn.Dropout(c.dropout)

    def encode(self, src: Tensor, src_len: Tensor) -> tuple[Tensor, Tensor, State]:
        """src (B, S) int64 right-padded, src_len (B,) -> memory (B, S, M), memory_keys (B, S, A),
        decoder initial state h (L, B, H) [or (h, c)]. Padding never changes the results."""
        emb = self.dropout(self.src_embed(src))  # (B, S, E)
        memory, enc_state = self.encoder(emb, src_len)  # (B, S, M), (L*D, B, H)
        memory_keys = self.attn_key(memory)  # (B, S, A)
        if self.encoder.has_cell_state:
            h, c = enc_state
            return memory, memory_keys, (self._bridge(self.bridge_h, h), self._bridge(self.bridge_c, c))
        return memory, memory_keys, self._bridge(self.bridge_h, enc_state)

    def _bridge(self, linear: nn.Module, s: Tensor) -> Tensor:
        L, D, H = self.config.num_layers, self.encoder.num_directions, self.config.hidden_size
        s = s.reshape(L, D, -1, H).permute(0, 2, 1, 3).flatten(2)  # (L, B, D*H): [fwd; bwd] per layer
        return torch.tanh(linear(s))  # (L, B, H)

    def _step(
        self, prev_token: Tensor, state: State, memory: Tensor, memory_keys: Tensor, src_mask: Tensor
    ) -> tuple[Tensor, State, Tensor]:
        """One decoder step -> logits (B, V), new state, attention (B, S)."""
        emb = self.dropout(self.tgt_embed(prev_token))  # (B, E)
        h_top = (state[0] if isinstance(state, tuple) else state)[-1]  # (B, H): previous top-layer hidden
        scores = self.attn_v(torch.tanh(memory_keys + self.attn_query(h_top).unsqueeze(1))).squeeze(2)  # (B, S)
        scores = scores + (src_mask - 1.0) * _MASK_PENALTY
        attention = torch.softmax(scores, dim=1)  # (B, S)
        context = torch.bmm(attention.unsqueeze(1), memory).squeeze(1)  # (B, M)
        out, state = self.decoder(torch.cat([emb, context], dim=1).unsqueeze(1), state=state)  # (B, 1, H)
        hidden = torch.tanh(self.readout(torch.cat([out.squeeze(1), context, emb], dim=1)))  # (B, E)
        return self.generator(self.dropout(hidden)), state, attention  # (B, V)

    def decode_step(
        self, prev_token: Tensor, state: State, memory: Tensor, memory_keys: Tensor, src_mask: Tensor
    ) -> tuple[Tensor, State, Tensor]:
        """prev_token (B,) int64, state, memory (B, S, M), memory_keys (B, S, A), src_mask (B, S) float
        (1 real, 0 padding) -> log_probs (B, V), new state, attention (B, S)."""
        logits, state, attention = self._step(prev_token, state, memory, memory_keys, src_mask)
        return torch.log_softmax(logits, dim=-1), state, attention

    @staticmethod
    def source_mask(src_len: Tensor, max_len: int) -> Tensor:
        """(B,) lengths -> (B, S) float mask, 1.0 on real tokens."""
        return (torch.arange(max_len, device=src_len.device)[None, :] < src_len[:, None]).float()

    def forward(self, src: Tensor, src_len: Tensor, tgt_in: Tensor, teacher_forcing: float = 1.0) -> Tensor:
        """src (B, S), src_len (B,), tgt_in (B, T) starting with BOS -> logits (B, T, V).

        With teacher_forcing < 1 each step after the first feeds, per sentence, the model's own argmax
        with probability 1 - teacher_forcing instead of the gold token."""
        memory, memory_keys, state = self.encode(src, src_len)
        src_mask = self.source_mask(src_len, src.shape[1])
        token = tgt_in[:, 0]
        logits = []
        for t in range(tgt_in.shape[1]):
            step_logits, state, _ = self._step(token, state, memory, memory_keys, src_mask)
            logits.append(step_logits)
            if t + 1 < tgt_in.shape[1]:
                token = tgt_in[:, t + 1]
                if teacher_forcing < 1.0:
                    own = step_logits.argmax(dim=-1)
                    use_gold = torch.rand(token.shape, device=token.device) < teacher_forcing
                    token = torch.where(use_gold, token, own)
        return torch.stack(logits, dim=1)  # (B, T, V)

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        """batch: src (B, S), src_len (B,), tgt (B, T) = [bos ... eos pad ...] -> mean token cross-entropy."""
        tgt = batch["tgt"]
        ratio = self.config.teacher_forcing if self.training else 1.0
        logits = self(batch["src"], batch["src_len"], tgt[:, :-1], teacher_forcing=ratio)  # (B, T-1, V)
        return F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=self.config.pad_id)


# ---- forecasting ---------------------------------------------------------------------------------


@dataclass
class ForecastConfig:
    channels: int = 1  # input channels C; every channel is forecast
    window: int = 96  # longest history (steps) the model is trained on
    min_history: int = 24  # shortest history (steps) the model accepts
    horizon: int = 24  # steps predicted at once (direct multi-horizon head)
    cell: str = "lstm"  # one of service.contract.CELLS
    hidden_size: int = 64  # H per direction
    num_layers: int = 2
    bidirectional: bool = False  # the encoder may read the window both ways
    dropout: float = 0.0  # between recurrent layers and before the head
    forget_bias: float = 1.0  # initial forget (GRU: update) gate bias of the gated cells; ignored by rnn
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)  # ascending, must contain 0.5 (the point forecast)
    scale_floor: float = 1e-5  # smallest per-window std used to normalise (flat windows)
    relative_scale_floor: float = 0.0  # and at least this share of the window's mean |value| (0 = off)
    # The graph also takes each row's season length (steps): the encoder reads the seasonal difference
    # and log(season) beside each value, and the median is a correction to seasonal naive's forecast.
    seasonal: bool = False
    season_lags: int = 1  # seasonal: the encoder reads the differences from 1..season_lags seasons before

    def validate(self) -> "ForecastConfig":
        check_cell(self.cell)
        _check_positive(self, "channels", "window", "min_history", "horizon", "hidden_size", "num_layers")
        _check_dropout(self)
        if self.min_history > self.window:
            raise ValueError(f"ForecastConfig.min_history {self.min_history} exceeds window {self.window}")
        q = list(self.quantiles)
        if not q or any(not 0.0 < x < 1.0 for x in q) or sorted(set(q)) != q or not any(math.isclose(x, 0.5) for x in q):
            raise ValueError(f"ForecastConfig.quantiles {q!r} must be distinct, ascending, in (0, 1) and contain 0.5")
        if not self.scale_floor > 0.0:
            raise ValueError(f"ForecastConfig.scale_floor {self.scale_floor!r} must be > 0")
        if not 0.0 <= self.relative_scale_floor < 1.0:
            raise ValueError(f"ForecastConfig.relative_scale_floor {self.relative_scale_floor!r} must be in [0, 1)")
        if not 1 <= self.season_lags <= 4:
            raise ValueError(f"ForecastConfig.season_lags {self.season_lags!r} must be within 1..4")
        return self


class Forecaster(nn.Module):
    """Per-window normalisation -> recurrent encoder -> direct (B, H, C, Q) quantile head, in input scale."""

    task = "forecast"

    def __init__(self, config: ForecastConfig) -> None:
        super().__init__()
        self.config = c = config.validate()
        features = (1 + c.season_lags) * c.channels + 1 if c.seasonal else c.channels
        self.encoder = Recurrent(c.cell, features, c.hidden_size, c.num_layers, c.bidirectional, c.dropout,
                                 forget_bias=c.forget_bias)
        self.dropout = nn.Dropout(c.dropout)
        self.num_quantiles = len(c.quantiles)
        self.median_index = next(i for i, q in enumerate(c.quantiles) if math.isclose(q, 0.5))
        self.head = nn.Linear(self.encoder.output_size, c.horizon * c.channels * self.num_quantiles)
        self.register_buffer("levels", torch.tensor(c.quantiles, dtype=torch.float32), persistent=False)

    def normalise(self, window: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """window (B, T, C) -> normalised window, mean (B, 1, C), scale (B, 1, C) (std, floored)."""
        mean = window.mean(dim=1, keepdim=True)
        scale = (window - mean).pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(self.config.scale_floor)
        if self.config.relative_scale_floor:  # a flat window of large values: its std says nothing of the next steps
            scale = torch.maximum(scale, self.config.relative_scale_floor * window.abs().mean(dim=1, keepdim=True))
        return (window - mean) / scale, mean, scale

    def seasonal_inputs(self, x: Tensor, season: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, T, C) normalised, season (B,) steps -> encoder features (B, T, (1 + season_lags) C + 1):
        the value, its differences from 1..season_lags seasons before (0 where the history is shorter)
        and log(season) / log(512); and seasonal naive's forecast (B, H, C) on x's scale. A season
        longer than the window counts as 1 (as seasonal naive falls back to the last value)."""
        steps = torch.arange(x.shape[1], device=x.device)  # traced: follows the window's length
        s = season.to(torch.int64).clamp_min(1)
        s = torch.where(s <= steps[-1:] + 1, s, torch.ones_like(s))
        channels = x.shape[2]
        diffs = []
        for k in range(1, self.config.season_lags + 1):
            back = k * s
            lag = (steps.unsqueeze(0) - back.unsqueeze(1)).clamp_min(0)  # (B, T)
            before = torch.gather(x, 1, lag.unsqueeze(-1).expand(-1, -1, channels))
            diffs.append((x - before) * (steps.unsqueeze(0) >= back.unsqueeze(1)).unsqueeze(-1).to(x.dtype))
        level = torch.ones_like(x[..., :1]) * (torch.log(s.to(x.dtype)) / math.log(512.0)).view(-1, 1, 1)
        ahead = torch.arange(self.config.horizon, device=x.device).unsqueeze(0)  # (1, H)
        at = steps[-1:] + 1 - s.unsqueeze(1) + torch.remainder(ahead, s.unsqueeze(1))  # (B, H)
        naive = torch.gather(x, 1, at.unsqueeze(-1).expand(-1, -1, channels))
        return torch.cat([x, *diffs, level], dim=-1), naive

    def forward_normalised(self, window: Tensor, season: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """window (B, T, C) [, season (B,)] -> quantiles (B, H, C, Q) on the window-normalised scale, mean, scale."""
        c = self.config
        if not torch.jit.is_tracing() and (window.dim() != 3 or window.shape[2] != c.channels):
            raise ValueError(f"window must have shape (B, T, {c.channels}), got {tuple(window.shape)}")
        if not torch.jit.is_tracing() and not c.min_history <= window.shape[1]:
            raise ValueError(f"window length {window.shape[1]} is below min_history {c.min_history}")
        if c.seasonal and season is None:
            raise ValueError("a seasonal forecaster needs each row's season length")
        x, mean, scale = self.normalise(window)
        base = None
        if c.seasonal:
            x, base = self.seasonal_inputs(x, season)
        _, h = self.encoder(x)
        h = h[0] if isinstance(h, tuple) else h  # (L*D, B, H)
        summary = h[-self.encoder.num_directions :].transpose(0, 1).flatten(1)  # (B, D*H), top layer
        raw = self.head(self.dropout(summary)).unflatten(1, (c.horizon, c.channels, self.num_quantiles))
        return self._ordered(raw, base), mean, scale

    def _ordered(self, raw: Tensor, base: Tensor | None = None) -> Tensor:
        """(B, H, C, Q) free outputs -> non-crossing quantiles: median (plus ``base``, (B, H, C)) ±
        cumulative softplus offsets."""
        k = self.median_index
        median = raw[..., k] if base is None else raw[..., k] + base
        cols = [median]
        below = median
        for j in range(k - 1, -1, -1):
            below = below - F.softplus(raw[..., j])
            cols.insert(0, below)
        above = median
        for j in range(k + 1, self.num_quantiles):
            above = above + F.softplus(raw[..., j])
            cols.append(above)
        return torch.stack(cols, dim=-1)

    def forward(self, window: Tensor, season: Tensor | None = None) -> Tensor:
        """window (B, T, C), any scale, min_history <= T [, season (B,)] -> quantiles (B, H, C, Q) in the input's scale."""
        q, mean, scale = self.forward_normalised(window, season)
        return q * scale.unsqueeze(-1) + mean.unsqueeze(-1)

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        """batch: window (B, T, C), target (B, H, C) [, season (B,)] -> pinball loss on the normalised scale (mean over Q)."""
        q, mean, scale = self.forward_normalised(batch["window"], batch.get("season"))
        target = ((batch["target"] - mean) / scale).unsqueeze(-1)  # (B, H, C, 1)
        diff = target - q
        return torch.maximum(self.levels * diff, (self.levels - 1.0) * diff).mean()


# ---- language model ------------------------------------------------------------------------------


@dataclass
class LMConfig:
    vocab_size: int  # tokenizer's vocabulary size
    cell: str = "lstm"  # one of service.contract.CELLS (never bidirectional)
    embed_size: int = 128  # E
    hidden_size: int = 512  # H
    num_layers: int = 2
    dropout: float = 0.2  # on embeddings, between layers and on the output
    forget_bias: float = 1.0  # initial forget (GRU: update) gate bias of the gated cells; ignored by rnn
    tie_weights: bool = False  # output layer shares the embedding table (a projection H -> E when E != H)

    def validate(self) -> "LMConfig":
        check_cell(self.cell)
        _check_positive(self, "vocab_size", "embed_size", "hidden_size", "num_layers")
        _check_dropout(self)
        return self


class LanguageModel(nn.Module):
    """Embedding -> recurrent stack -> vocabulary logits; state carried across calls (truncated BPTT)."""

    task = "generate"

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = c = config.validate()
        self.embed = nn.Embedding(c.vocab_size, c.embed_size)
        self.rnn = Recurrent(c.cell, c.embed_size, c.hidden_size, c.num_layers, False, c.dropout,
                             forget_bias=c.forget_bias)
        self.dropout = nn.Dropout(c.dropout)
        out_size = c.hidden_size
        self.proj = None
        if c.tie_weights and c.embed_size != c.hidden_size:
            self.proj = nn.Linear(c.hidden_size, c.embed_size)
            out_size = c.embed_size
        self.decoder = nn.Linear(out_size, c.vocab_size)
        if c.tie_weights:
            self.decoder.weight = self.embed.weight

    def init_state(self, batch_size: int, device: torch.device | None = None) -> State:
        """Zero state: h (L, B, H), or (h, c) for the LSTM family."""
        return self.rnn.init_state(batch_size, device)

    def forward(self, tokens: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """tokens (B, T) int64, state (zeros when None) -> logits (B, T, V), new state."""
        out, state = self.rnn(self.dropout(self.embed(tokens)), state=state)  # (B, T, H)
        out = self.dropout(out)
        if self.proj is not None:
            out = self.proj(out)
        return self.decoder(out), state

    def loss(self, batch: dict[str, Tensor], state: State | None = None) -> tuple[Tensor, State]:
        """batch: tokens (B, T), targets (B, T) -> (mean cross-entropy in nats, new state detached)."""
        logits, state = self(batch["tokens"], state)
        loss = F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten())
        return loss, detach_state(state)


# ---- construction --------------------------------------------------------------------------------

CONFIGS: dict[str, type] = {"translate": TranslationConfig, "forecast": ForecastConfig, "generate": LMConfig,
                             "recognize": SpeechConfig}
MODELS: dict[str, type[nn.Module]] = {"translate": Seq2Seq, "forecast": Forecaster, "generate": LanguageModel,
                                     "recognize": SpeechRecognizer}
Config = TranslationConfig | ForecastConfig | LMConfig | SpeechConfig


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {', '.join(TASKS)}")


def config_from_dict(task: str, d: dict[str, Any]) -> Config:
    """Build and validate the config dataclass of ``task`` from a plain dict (e.g. parsed JSON).

    Raises ValueError for an unknown task, unknown keys or missing required fields."""
    _check_task(task)
    cls = CONFIGS[task]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {task} config key(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    d = dict(d)
    if "quantiles" in d:
        d["quantiles"] = tuple(float(x) for x in d["quantiles"])
    try:
        return cls(**d).validate()
    except TypeError as err:
        raise ValueError(f"{task} config: {err}") from None


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain-JSON form of a config (round-trips through config_from_dict)."""
    d = asdict(config)
    if "quantiles" in d:
        d["quantiles"] = list(d["quantiles"])
    return d


def build_model(task: str, config: Config | dict[str, Any]) -> nn.Module:
    """The model of ``task`` ("translate" | "forecast" | "generate" | "recognize") from a config dataclass or dict."""
    _check_task(task)
    if isinstance(config, dict):
        config = config_from_dict(task, config)
    if not isinstance(config, CONFIGS[task]):
        raise ValueError(f"task {task} needs a {CONFIGS[task].__name__}, got {type(config).__name__}")
    return MODELS[task](config)
