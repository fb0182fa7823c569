"""Stacking several sequences' decoding-step inputs into one graph call and splitting its outputs back.

The server's step scheduler and training's evaluation both decode many sequences through one shared
call per step; this is how their rows are put together, so both compute the same thing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StepLayout:
    """How to stack items' feeds: states along axis 1, padded inputs along axis 0 after
    right-padding axis 1 with zeros, everything else along axis 0."""

    state_inputs: tuple[str, ...]
    state_outputs: tuple[str, ...]
    padded_inputs: tuple[str, ...] = ()

    def stack(self, per_item: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """One call's per-step feeds (not the padded ones) from each item's, in item order."""
        feeds: dict[str, np.ndarray] = {}
        for name in per_item[0]:
            axis = 1 if name in self.state_inputs else 0
            arrays = [f[name] for f in per_item]
            feeds[name] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=axis)
        return feeds

    def pad(self, statics: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The padded inputs of each item, (rows, S_i, ...), stacked into (sum rows, max S_i, ...) with zeros."""
        out: dict[str, np.ndarray] = {}
        for name in self.padded_inputs:
            arrays = [s[name] for s in statics]
            if len(arrays) == 1:
                out[name] = arrays[0]
                continue
            longest = max(a.shape[1] for a in arrays)
            rows = sum(a.shape[0] for a in arrays)
            buf = np.zeros((rows, longest, *arrays[0].shape[2:]), dtype=arrays[0].dtype)
            r = 0
            for a in arrays:
                buf[r : r + a.shape[0], : a.shape[1]] = a
                r += a.shape[0]
            out[name] = buf
        return out

    def split(self, outputs: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows ``start:stop`` of one call's outputs (states along axis 1)."""
        return {
            name: (value[:, start:stop] if name in self.state_outputs else value[start:stop])
            for name, value in outputs.items()
        }
