"""Weight averaging for training (``train.ema``): an exponential moving average of a model's weights."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn


class WeightAverage:
    """An exponential moving average of a model's floating-point weights (Polyak averaging, as TensorFlow's
    ExponentialMovingAverage with num_updates): after step t the decay is min(decay, (1 + t) / (10 + t)),
    so early weights fade fast. ``swapped()`` puts the average in the model for validation and saving."""

    def __init__(self, model: nn.Module, decay: float, state: dict[str, Tensor] | None = None) -> None:
        self.model, self.decay = model, decay
        source = state if state is not None else model.state_dict()
        self.shadow = {k: v.detach().clone() for k, v in source.items()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        for k, v in self.model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1.0 - d)
            else:
                self.shadow[k].copy_(v)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[dict[str, Tensor]]:
        """The model holds the average inside (yields its own weights), its own weights again after."""
        raw = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.shadow)
        try:
            yield raw
        finally:
            self.model.load_state_dict(raw)
