"""Recognize task: audio in, CTC transcripts out; offline through the dynamic batcher, streams through a shared step loop.

Offline requests are decoded from their bytes, resampled to the model's rate, padded into one call
of the acoustic graph with their lengths (padding never changes a result), and decoded by CTC
prefix beam search. Streams live in ``speech_streams``.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from service.contract import BundleError
from service.inference.speech import blank_first_frame, pad_batch, with_tail

from .. import audio as A
from ..batching import DynamicBatcher
from ..config import END_SILENCE_MS
from ..errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from ..observe import label_request
from ..repository import Bundle
from ..types import RecognitionConfig, RecognizeRequest, RecognizeResult
from .context import TaskContext
from .speech_streams import AudioStepLoop, AudioStream, deadline_margin, speech_result

log = logging.getLogger(__name__)

class RecognizeModel:
    """One loaded recognition version: a dynamic batcher in front of ``acoustic.onnx`` and, when
    the bundle streams, a step loop on ``acoustic_step.onnx``."""

    task = "recognize"

    def __init__(self, bundle: Bundle, ctx: TaskContext) -> None:
        m = bundle.manifest
        assert m.speech is not None  # validated by the manifest
        self.name, self.version, self.spec = m.name, m.version, m.speech
        self._ctx = ctx
        self._config = ctx.config
        self._acoustic = bundle.graphs["acoustic"]
        self._batcher: DynamicBatcher[np.ndarray, np.ndarray] = ctx.batcher(m.name, m.version, "acoustic",
                                                                            self._run_batch)
        self._state_names = [f"state_{s}" for s in m.state_names]
        self._state_shape = (m.num_layers, m.hidden_size)
        step = bundle.graphs.get("acoustic_step")
        self.streams: AudioStepLoop | None = None
        if step is not None:
            self.streams = AudioStepLoop(f"model {m.name} version {m.version} (acoustic_step)", step,
                                         self._state_names, ctx.meter(m.name, m.version, "acoustic_step"),
                                         ctx.config.stream_step_ms / 1000.0)

    @property
    def streaming(self) -> bool:
        return self.streams is not None

    def limits(self) -> dict[str, int]:
        cfg = self._config
        return {
            "sample_rate": self.spec.sample_rate,
            "max_audio_seconds": int(cfg.max_audio_seconds),
            "max_alternatives": cfg.max_alternatives,
            "max_chunk_bytes": cfg.max_chunk_bytes,
            "max_stream_seconds": int(cfg.max_stream_seconds),
            "max_speech_streams": cfg.max_speech_streams,
            "end_silence_ms": cfg.end_silence_ms,  # single_utterance's default
        }

    def start(self) -> None:
        self._batcher.start()
        if self.streams is not None:
            self.streams.start()

    async def close(self) -> None:
        await self._batcher.close()
        if self.streams is not None:
            await self.streams.close()

    async def warmup(self) -> None:
        """Two padded signals through the acoustic graph, one chunk through the step graph; check shapes."""
        spec, frame = self.spec, self.spec.frame_samples
        t = np.arange(40 * frame, dtype=np.float32)
        audio = np.stack([0.1 * np.sin(t / 7.0), 0.1 * np.sin(t / 5.0) * (t < 25 * frame)]).astype(np.float32)
        out = await self._acoustic.run({"audio": audio, "audio_len": np.array([40 * frame, 25 * frame], np.int64)})
        lp, frames = out["log_probs"], out["frames"]
        if lp.ndim != 3 or lp.shape[0] != 2 or lp.shape[2] != len(spec.labels):
            raise BundleError(f"{self._acoustic.name}: log_probs have shape {lp.shape}; the manifest has "
                              f"{len(spec.labels)} labels")
        if list(frames) != [40, 25]:
            raise BundleError(f"{self._acoustic.name}: frames are {list(frames)} for 40 and 25 frames of audio; "
                              f"the manifest's hop {spec.hop} x stack {spec.stack} says 40 and 25")
        if self.streams is not None:
            chunk = np.zeros((1, spec.context + 3 * frame), np.float32)
            states = {n: np.zeros((self._state_shape[0], 1, self._state_shape[1]), np.float32) for n in self._state_names}
            res = await self.streams.graph.run({"audio": chunk, **states})
            if res["log_probs"].shape != (1, 3, len(spec.labels)):
                raise BundleError(f"{self.streams.graph.name}: log_probs have shape {res['log_probs'].shape} for 3 "
                                  "frames of audio")

    # ---- offline

    def prepare(self, config: RecognitionConfig, data: bytes, samples: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """Validate and decode ``data`` (or take ``samples``, floats at config.sample_rate_hertz);
        returns the samples at the model's rate (float32 (N,)) and the seconds received."""
        cfg = self._config
        self._check_alternatives(config, "config")
        if samples is not None:
            audio = A.from_samples(samples, config.sample_rate_hertz, max_seconds=cfg.max_audio_seconds)
        else:
            encoding = config.encoding or (A.WAV if data[:4] in (b"RIFF", b"RF64") else A.LINEAR16)
            audio = A.decode(data, encoding, config.sample_rate_hertz, max_seconds=cfg.max_audio_seconds)
        samples = A.resample(audio.samples, audio.rate, self.spec.sample_rate)
        if len(samples) < self.spec.frame_samples:
            ms = 1000.0 * self.spec.frame_samples / self.spec.sample_rate
            raise InvalidArgument(f"audio is {audio.seconds * 1000:.1f} ms; model {self.name!r} needs at least "
                                  f"{ms:g} ms (one frame)", field="audio")
        return samples, audio.seconds

    def _check_alternatives(self, config: RecognitionConfig, where: str) -> None:
        n, limit = config.max_alternatives, self._config.max_alternatives
        if n < 0 or n > limit:
            raise InvalidArgument(f"{where}.max_alternatives {n} is outside 0..{limit}", field=f"{where}.max_alternatives")

    async def recognize(self, req: RecognizeRequest, deadline: float | None) -> RecognizeResult:
        samples, seconds = self.prepare(req.config, req.audio, req.samples)
        started = time.perf_counter()
        log_probs = await self._batcher.submit(with_tail(samples, self.spec.tail_samples), deadline)  # (T, V)
        self._ctx.sink.speech_audio(self.name, self.version, "offline", seconds, time.perf_counter() - started)
        # result_end_time: the whole frames of the audio (not the appended silence, nor a last part
        # shorter than a frame), as a stream's
        result = speech_result(self.spec, log_probs, req.config.max_alternatives, req.config.word_time_offsets,
                               len(samples) // self.spec.frame_samples * self.spec.frame_seconds)
        return RecognizeResult(self.name, self.version, result, seconds)

    async def _run_batch(self, signals: list[np.ndarray]) -> list[np.ndarray]:
        audio, lengths = pad_batch(signals, self.spec.frame_samples)
        out = await self._acoustic.run({"audio": audio, "audio_len": lengths})
        lp, frames = out["log_probs"], out["frames"]
        return [blank_first_frame(lp[i, : int(frames[i])], self.spec.blank) for i in range(len(signals))]

    # ---- streaming

    def open_stream(self, config: RecognitionConfig, interim: bool, deadline: float | None,
                    single_utterance: bool = False, end_silence_ms: int = 0) -> "AudioStream":
        """A stream of LINEAR16 chunks at config.sample_rate_hertz; raises FailedPrecondition when the
        model cannot stream, InvalidArgument for a bad config, ResourceExhausted when streams are full.
        ``single_utterance``: the stream ends itself after ``end_silence_ms`` (0: the server's) of silence
        that follows speech."""
        if self.streams is None:
            raise FailedPrecondition(f"model {self.name!r} is bidirectional and cannot stream; use a model whose "
                                     "ModelInfo.speech.streaming is true", field="streaming_config.config.model")
        where = "streaming_config.config"
        self._check_alternatives(config, where)
        if config.encoding not in ("", A.LINEAR16):
            raise InvalidArgument(f"{where}.encoding {config.encoding} cannot stream; send LINEAR16 samples",
                                  field=f"{where}.encoding")
        rate = config.sample_rate_hertz
        if not A.MIN_RATE <= rate <= A.MAX_RATE:
            raise InvalidArgument(f"{where}.sample_rate_hertz {rate} is outside {A.MIN_RATE}..{A.MAX_RATE}",
                                  field=f"{where}.sample_rate_hertz")
        end_silence = None
        if end_silence_ms and not single_utterance:
            raise InvalidArgument(f"streaming_config.end_silence_ms {end_silence_ms} needs "
                                  "streaming_config.single_utterance (without it the stream ends when the client "
                                  "half-closes)", field="streaming_config.end_silence_ms")
        if single_utterance:
            low, high = END_SILENCE_MS
            ms = end_silence_ms or self._config.end_silence_ms
            if not low <= ms <= high:
                raise InvalidArgument(f"streaming_config.end_silence_ms {end_silence_ms} is outside {low}..{high} "
                                      "(0: the server's end_silence_ms)", field="streaming_config.end_silence_ms")
            end_silence = ms / 1000.0
        open_ = self._ctx.speech_streams
        if open_.open >= open_.capacity:
            label_request(reason="streams_full")
            raise ResourceExhausted(f"{open_.open} of {open_.capacity} recognition streams are open "
                                    "(max_speech_streams); retry later")
        return AudioStream(self, config, interim, deadline, end_silence)




__all__ = ["AudioStream", "RecognizeModel", "deadline_margin", "speech_result"]
