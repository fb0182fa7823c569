"""Speech graphs' arithmetic shared by the server and evaluation: cutting a stream into step-graph inputs, batching audio."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class ChunkFramer:
    """Cuts a stream of samples into the streaming graph's inputs: ``context`` samples from before
    (zeros at the start), then as many whole frames of ``frame_samples`` as have arrived. The
    samples left over wait for the next chunk; the frames of a stream cut anywhere are the frames of
    the whole audio (as the offline graph computes them), and a tail shorter than a frame is dropped
    as the offline graph drops it."""

    def __init__(self, context: int, frame_samples: int) -> None:
        self.context, self.frame_samples = context, frame_samples
        self._buffer = np.zeros(context, np.float32)  # context, then samples not yet framed
        self.samples = 0  # samples pushed so far
        self.frames = 0  # frames handed out so far

    @property
    def pending(self) -> int:
        """Samples received that no frame has consumed yet."""
        return len(self._buffer) - self.context

    @property
    def ready(self) -> int:
        """Whole frames waiting."""
        return self.pending // self.frame_samples

    def push(self, samples: np.ndarray) -> None:
        """Add ``samples`` (float32 (n,))."""
        self.samples += len(samples)
        if len(samples):
            self._buffer = np.concatenate([self._buffer, np.asarray(samples, np.float32)])

    def take(self, frames: int | None = None) -> np.ndarray | None:
        """The graph input for the next ``frames`` whole frames (default: all waiting): float32
        (context + frames * frame_samples,); None when no whole frame is waiting."""
        k = self.ready if frames is None else min(frames, self.ready)
        if k <= 0:
            return None
        end = self.context + k * self.frame_samples
        chunk = self._buffer[:end]
        self._buffer = self._buffer[end - self.context :]
        self.frames += k
        return chunk


def pad_batch(audios: Sequence[np.ndarray], least: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad float32 signals with zeros into (B, N) (N >= ``least``); returns it and the lengths (B,) int64."""
    lengths = np.array([len(a) for a in audios], np.int64)
    out = np.zeros((len(audios), max(int(lengths.max(initial=0)), least)), np.float32)
    for i, a in enumerate(audios):
        out[i, : len(a)] = a
    return out, lengths


def with_tail(audio: np.ndarray, tail_samples: int) -> np.ndarray:
    """``audio`` followed by ``tail_samples`` zeros (a model's end-of-recording silence, SpeechSpec.tail_samples)."""
    if not tail_samples:
        return audio
    return np.concatenate([np.asarray(audio, np.float32), np.zeros(tail_samples, np.float32)])


def blank_first_frame(log_probs: np.ndarray, blank: int) -> np.ndarray:
    """``log_probs`` (T, V) of a recording's or stream's first frames, with frame 0 made a certain blank.

    Frame 0 hears the zero padding in front and the first few milliseconds: no word can be in it. A
    unidirectional model, which knows it is at frame 0 (its state is zero), otherwise learns to put
    a blind guess of the first word there instead of naming it once heard; training masks frame 0
    the same way."""
    if not len(log_probs):
        return log_probs
    out = np.array(log_probs, dtype=np.float32, copy=True)
    out[0] = BLANK_FLOOR
    out[0, blank] = 0.0
    return out


BLANK_FLOOR = -1e4  # log-probability of every other label in a masked frame
