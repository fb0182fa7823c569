"""The speech recognizer: log-mel features -> normalise -> stack frames -> recurrent encoder -> CTC."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.checks import check_dropout as _check_dropout
from training.checks import check_positive as _check_positive
from training.layers import Recurrent, State, check_cell


def _default_features() -> dict[str, Any]:
    from training.features import FeatureSpec

    return FeatureSpec().to_dict()


@dataclass
class SpeechConfig:
    num_labels: int = 11  # CTC outputs: blank (0) + the labels (digits "0".."9" -> 1..10)
    labels: list[str] = dataclasses.field(default_factory=list)  # the text of each output; [] = blank + digits
    word_separator: str = " "  # SpeechSpec.word_separator: " " each label a word; "" labels are characters
    features: dict[str, Any] = dataclasses.field(default_factory=_default_features)  # training.features.FeatureSpec
    stack: int = 2  # feature frames stacked into one model frame (10 ms -> 20 ms at the default hop)
    cell: str = "lstm"  # one of service.contract.CELLS
    hidden_size: int = 128  # H per direction
    num_layers: int = 2
    bidirectional: bool = True  # False: the model can stream (its state carried across chunks)
    dropout: float = 0.1  # between recurrent layers and before the head
    forget_bias: float = 1.0
    feature_mean: list[float] = dataclasses.field(default_factory=list)  # per mel band, from the training audio
    feature_std: list[float] = dataclasses.field(default_factory=list)
    time_masks: int = 2  # SpecAugment in training: masks of up to time_mask_frames feature frames
    time_mask_frames: int = 10
    freq_masks: int = 2  # and of up to freq_mask_bands mel bands
    freq_mask_bands: int = 6
    # Distillation (streaming students): the per-frame CTC posteriors of a bidirectional teacher
    # checkpoint, shifted distill_delay frames later (a unidirectional model can only name a word
    # once it has heard it), are a second target: loss = CTC + distill_weight * KL(teacher || model),
    # both per label.
    tail_ms: int = 0  # silence after every recording, in training and in serving (SpeechSpec.tail_ms)
    distill_from: str = ""  # the teacher's checkpoint (a recognize model with the same features and stack)
    distill_delay: int = 6
    distill_weight: float = 1.0
    # Offline models: subtract each recording's own mean (per mel band) over its loud frames, those within
    # utterance_norm_db of its loudest. A log-mel band's fixed offset -- a microphone's or a room's
    # frequency response, the recording level -- then cancels exactly, whoever recorded it.
    utterance_norm: bool = False
    utterance_norm_db: float = 20.0

    @property
    def n_mels(self) -> int:
        return int(self.features["n_mels"])

    def validate(self) -> "SpeechConfig":
        from training.features import FeatureSpec

        check_cell(self.cell)
        _check_positive(self, "num_labels", "stack", "hidden_size", "num_layers")
        if self.distill_delay < 0 or self.distill_weight < 0:
            raise ValueError(f"SpeechConfig.distill_delay {self.distill_delay!r} and distill_weight "
                             f"{self.distill_weight!r} must be >= 0")
        _check_dropout(self)
        if self.utterance_norm and not self.bidirectional:
            raise ValueError("SpeechConfig.utterance_norm needs the whole recording: a bidirectional (offline) model, "
                             "not a streaming one")
        if self.utterance_norm_db <= 0:
            raise ValueError(f"SpeechConfig.utterance_norm_db {self.utterance_norm_db!r} must be > 0")
        if self.labels and (len(self.labels) != self.num_labels or self.labels[0] != ""):
            raise ValueError(f"SpeechConfig.labels has {len(self.labels)} labels for num_labels {self.num_labels} "
                             "(the first, the blank, must be '')")
        try:
            FeatureSpec(**self.features)
        except TypeError as err:
            raise ValueError(f"SpeechConfig.features: {err}") from None
        for key in ("feature_mean", "feature_std"):
            v = getattr(self, key)
            if v and len(v) != self.n_mels:
                raise ValueError(f"SpeechConfig.{key} has {len(v)} values for {self.n_mels} mel bands")
        return self


class SpeechRecognizer(nn.Module):
    """Log-mel features -> normalise -> stack frames -> recurrent encoder -> CTC label log-probabilities."""

    task = "recognize"

    def __init__(self, config: SpeechConfig) -> None:
        super().__init__()
        self.config = c = config.validate()
        M = c.n_mels
        self.register_buffer("mean", torch.tensor(c.feature_mean or [0.0] * M, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(c.feature_std or [1.0] * M, dtype=torch.float32))
        self.encoder = Recurrent(c.cell, c.stack * M, c.hidden_size, c.num_layers, c.bidirectional, c.dropout,
                                 forget_bias=c.forget_bias)
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(self.encoder.output_size, c.num_labels)

    def frames(self, feat_len: Tensor) -> Tensor:
        """Model frames of ``feat_len`` feature frames (the tail that fills no whole frame is dropped)."""
        return torch.div(feat_len, self.config.stack, rounding_mode="floor")

    def _inputs(self, features: Tensor, feat_len: Tensor | None = None) -> Tensor:
        """features (B, F, M) -> normalised, masked in training, stacked (B, F // stack, stack * M)."""
        c = self.config
        x = (features - self.mean) / self.std
        if c.utterance_norm:  # offline models only (validate): forward always gives the lengths
            x = x - loud_mean(x, features, feat_len, c.utterance_norm_db)
        if self.training:
            x = self._spec_augment(x)
        T = features.shape[1] // c.stack
        return x[:, : T * c.stack].reshape(x.shape[0], T, c.stack * x.shape[2])

    def _spec_augment(self, x: Tensor) -> Tensor:
        c = self.config
        B, F_, M = x.shape
        keep = torch.ones_like(x)
        for _ in range(c.time_masks):
            width = torch.randint(0, c.time_mask_frames + 1, (B, 1))
            start = (torch.rand(B, 1) * (F_ - width).clamp_min(1)).long()
            t = torch.arange(F_)[None, :]
            keep = keep * ~((t >= start) & (t < start + width))[:, :, None]
        for _ in range(c.freq_masks):
            width = torch.randint(0, c.freq_mask_bands + 1, (B, 1))
            start = (torch.rand(B, 1) * (M - width).clamp_min(1)).long()
            m = torch.arange(M)[None, :]
            keep = keep * ~((m >= start) & (m < start + width))[:, None, :]
        return x * keep  # masked values become the mean (0 after normalising)

    def forward(self, features: Tensor, feat_len: Tensor) -> tuple[Tensor, Tensor]:
        """features (B, F, M), feat_len (B,) -> log-probs (B, F // stack, V), frames (B,)."""
        frames = self.frames(feat_len)
        y, _ = self.encoder(self._inputs(features, feat_len), frames)  # (B, T, D*H)
        return F.log_softmax(self.head(self.dropout(y)), dim=-1), frames

    def step(self, features: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Streaming (unidirectional): features (B, k * stack, M) of one chunk, state -> log-probs (B, k, V), state."""
        y, state = self.encoder(self._inputs(features), state=state)
        return F.log_softmax(self.head(self.dropout(y)), dim=-1), state

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        """batch: features (B, F, M), feat_len (B,), labels (B, L) (0-padded), label_len (B,) [, teacher
        (B, T, V) log-probs] -> mean CTC loss per label [+ distill_weight * mean per-frame KL to the teacher]."""
        log_probs, frames = self(batch["features"], batch["feat_len"])
        # frame 0 is a certain blank, as the server reads it (service.inference.speech.blank_first_frame)
        first = torch.full_like(log_probs[:, :1], -1e4)
        first[..., 0] = 0.0
        log_probs = torch.cat([first, log_probs[:, 1:]], dim=1)
        loss = F.ctc_loss(log_probs.transpose(0, 1), batch["labels"], frames, batch["label_len"], blank=0,
                          reduction="mean", zero_infinity=True)
        teacher = batch.get("teacher")
        if teacher is not None and self.config.distill_weight > 0:
            # the teacher's last distill_delay frames fall past the end: the student's are left to CTC
            t = torch.arange(log_probs.shape[1])[None, :]
            valid = ((t >= 1) & (t < (frames - self.config.distill_delay)[:, None])).float()
            kl = (teacher.exp() * (teacher - log_probs)).sum(-1)  # (B, T)
            # per label, as the CTC loss is (a per-frame mean would drown the few frames that carry words)
            per_label = (kl * valid).sum(1) / batch["label_len"].clamp_min(1)
            loss = loss + self.config.distill_weight * per_label.mean()
        return loss


def loud_mean(x: Tensor, features: Tensor, feat_len: Tensor, db: float) -> Tensor:
    """x (B, F, M) -> its mean (B, 1, M) over each row's loud frames: the valid frames (t < feat_len)
    whose mean log-mel energy is within ``db`` dB of the row's loudest. A row without valid frames: 0."""
    energy = features.mean(-1)  # (B, F) natural log of power: 10 dB = ln(10)
    valid = torch.arange(energy.shape[1], device=energy.device)[None, :] < feat_len[:, None]
    top = energy.masked_fill(~valid, -1e4).amax(1, keepdim=True)
    w = (valid & (energy >= top - db * math.log(10.0) / 10.0)).to(x.dtype)
    return (x * w[..., None]).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1.0)[..., None]
