"""Recognition results and streams: CTC results of a posteriorgram, one stream's state, and the step loop
every live stream of a streaming model shares.

A stream keeps its recurrent state and its not-yet-framed samples here; the chunks of every live
stream advance through one call of the step graph per scheduler step (rows with the same number of
new frames share a call), and each stream's posteriorgram grows by its rows of the output.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.contract import SpeechSpec
from service.inference import ctc
from service.inference.speech import ChunkFramer, blank_first_frame

from .. import audio as A
from ..errors import Internal, InvalidArgument, ResourceExhausted, ServiceError, Unavailable
from ..observe import GraphMeter, label_request
from ..runtime import GraphRuntime
from ..types import RecognitionConfig, SpeechAlternative, SpeechEvent, SpeechResult, Word

log = logging.getLogger(__name__)

BEAM = 8  # prefix beam width: alternatives and confidences come from it
MAX_STEP_FRAMES = 16  # a stream's frames per step call at most (a stream that fell behind catches up in parts)
STABILITY_FRAMES = 10  # an interim result's stability looks at its last frames
# single_utterance: a frame is silent when it is within SILENCE_ABOVE_FLOOR_DB of the quietest frame of
# the stream so far and at least SILENCE_BELOW_PEAK_DB below its loudest
SILENCE_ABOVE_FLOOR_DB = 10.0
SILENCE_BELOW_PEAK_DB = 20.0


def _clip01(x: float) -> float:
    return float(min(1.0, max(0.0, x)))


@dataclass
class Posteriors:
    """A growing posteriorgram (T, V) of log-probabilities."""

    parts: list[np.ndarray]
    frames: int = 0

    def add(self, lp: np.ndarray) -> None:
        self.parts.append(lp)
        self.frames += len(lp)

    def array(self, labels: int) -> np.ndarray:
        if len(self.parts) > 1:
            self.parts = [np.concatenate(self.parts)]
        return self.parts[0] if self.parts else np.zeros((0, labels), np.float32)


def speech_result(spec: SpeechSpec, log_probs: np.ndarray, max_alternatives: int, words: bool,
                  end_time: float) -> SpeechResult:
    """The final result of a posteriorgram (T, V): beam-searched alternatives, their posterior
    confidences and (``words``) each label's time span and probability."""
    n = max(1, max_alternatives)
    alts = ctc.prefix_beam_search(log_probs, beam_size=max(BEAM, n), blank=spec.blank, n_best=n)
    frame_s = spec.frame_seconds
    out = []
    for alt in alts:
        ws = []
        if words:
            prev_end = 0.0
            for text, at in spec.words(alt.labels):
                first, last = alt.spans[at[0]][0], alt.spans[at[-1]][1]
                # a word's confidence: its least certain label's peak probability
                conf = min(float(np.exp(log_probs[alt.spans[i][0] : alt.spans[i][1] + 1, alt.labels[i]].max()))
                           for i in at)
                # A word named in the appended silence (SpeechSpec.tail_ms) is placed at the end of the
                # audio; words stay in order.
                end = max(min((last + 1) * frame_s, end_time), prev_end)
                start = min(max(first * frame_s, prev_end), max(end - frame_s, prev_end))
                ws.append(Word(text, round(start, 3), round(end, 3), _clip01(conf)))
                prev_end = end
        out.append(SpeechAlternative(spec.transcript(alt.labels), _clip01(alt.confidence), ws))
    return SpeechResult(out, round(end_time, 3))


class BestPath:
    """The greedy CTC path of a growing posteriorgram, extended frame by frame (an interim result
    costs the new frames only, not the whole stream so far)."""

    def __init__(self, blank: int) -> None:
        self.blank = blank
        self.labels: list[int] = []
        self._last = blank  # the best label of the previous frame: a repeat of it is the same label
        self._sum = 0.0  # sum over frames of the best log-probability
        self.frames = 0
        self.recent: collections.deque[float] = collections.deque(maxlen=STABILITY_FRAMES)

    def extend(self, log_probs: np.ndarray) -> None:
        best = log_probs.argmax(axis=1)
        top = log_probs[np.arange(len(best)), best]
        for label in best.tolist():
            if label != self._last and label != self.blank:
                self.labels.append(label)
            self._last = label
        self._sum += float(top.sum())
        self.frames += len(best)
        self.recent.extend(top.tolist())

    def result(self, spec: SpeechSpec, end_time: float) -> SpeechResult:
        """An interim result: the best path so far; confidence the geometric mean of its frames' best
        probabilities (as ``ctc.greedy`` gives it), stability that of its latest frames, where a
        transcript still changes."""
        confidence = float(np.exp(self._sum / self.frames)) if self.frames else 1.0
        stability = float(np.exp(np.mean(self.recent))) if self.recent else 0.0
        text = spec.transcript(self.labels)
        return SpeechResult([SpeechAlternative(text, _clip01(confidence))], round(end_time, 3), is_final=False,
                            stability=_clip01(stability))


class Endpointer:
    """single_utterance: finds where the speaker stopped. Each model frame's audio level (dB) is
    judged against the stream's quietest and loudest frames so far; the utterance ends once a word
    has been recognised and ``end_silence`` seconds of silent frames, with no word among them, follow."""

    def __init__(self, frame_samples: int, frame_seconds: float, end_silence: float, blank: int) -> None:
        self.frame_samples, self.blank = frame_samples, blank
        self.frames_needed = max(1, int(np.ceil(end_silence / frame_seconds - 1e-9)))
        self._rest = np.zeros(0, np.float32)  # samples short of a whole frame
        self.levels: list[float] = []  # dB of each whole frame of audio received
        self._floor, self._peak = np.inf, -np.inf
        self._run = 0  # silent frames in a row
        self._heard = False  # a word was recognised
        self.checked = 0  # frames judged so far
        self.end_frame: int | None = None  # frames recognised when the utterance ended

    def push(self, samples: np.ndarray) -> None:
        """The stream's next samples at the model's rate."""
        x = np.concatenate([self._rest, samples]) if len(self._rest) else samples
        whole = len(x) // self.frame_samples * self.frame_samples
        if whole:
            frames = x[:whole].astype(np.float64).reshape(-1, self.frame_samples)
            self.levels.extend((10.0 * np.log10(np.mean(frames ** 2, axis=1) + 1e-10)).tolist())
        self._rest = x[whole:].copy()

    def check(self, log_probs: np.ndarray) -> bool:
        """Judge the next frames (their CTC log-probs, (k, V)); True once the utterance has ended."""
        for label in log_probs.argmax(axis=1).tolist():
            if self.end_frame is not None:
                break  # the frames after the end are not judged
            t = self.checked
            self.checked += 1
            level = self.levels[t] if t < len(self.levels) else -100.0  # past the audio: silence
            self._floor, self._peak = min(self._floor, level), max(self._peak, level)
            silent = level <= self._floor + SILENCE_ABOVE_FLOOR_DB and level <= self._peak - SILENCE_BELOW_PEAK_DB
            if label != self.blank:
                self._heard, self._run = True, 0
            elif silent:
                self._run += 1
            else:
                self._run = 0
            if self._heard and self._run >= self.frames_needed:
                self.end_frame = self.checked
        return self.end_frame is not None


class AudioStream:
    """One StreamingRecognize call's state: resampler, framer, recurrent state and posteriorgram.

    ``push`` adds a chunk (the step loop picks its whole frames up); ``updates`` yields interim
    results as frames are recognised (the newest only, when the reader is slower) and the final
    result after ``finish`` -- or, with ``end_silence`` (single_utterance), a SpeechEvent and the final
    result once the speaker stops."""

    def __init__(self, model: Any, config: RecognitionConfig, interim: bool, deadline: float | None,
                 end_silence: float | None = None) -> None:
        self.model, self.config, self.interim, self.deadline = model, config, interim, deadline
        spec = model.spec
        self._rate = config.sample_rate_hertz
        self._resampler = A.StreamResampler(self._rate, spec.sample_rate)
        self.framer = ChunkFramer(spec.context, spec.frame_samples)
        layers, hidden = model._state_shape
        self.state = {n: np.zeros((layers, 1, hidden), np.float32) for n in model._state_names}
        self.posteriors = Posteriors([])
        self.best = BestPath(spec.blank)
        self.received_seconds = 0.0  # audio received, at the client's rate
        self._samples = 0  # audio received, at the model's rate (the appended tail not counted)
        self._pending_times: list[tuple[int, float]] = []  # (frames needed, perf_counter of the chunk's arrival)
        self._changed = asyncio.Event()
        self._ended = False  # the client half-closed
        self._ended_at = 0.0
        self.error: ServiceError | None = None
        self._stop: ServiceError | None = None
        self.cancelled = False
        self._sent_frames = 0
        self.in_flight = 0  # frames taken by a step call whose output has not come back yet
        self.serial = 0
        self.endpointer = (Endpointer(spec.frame_samples, spec.frame_seconds, end_silence, spec.blank)
                           if end_silence is not None else None)
        self._endpoint_arrival = 0.0  # perf_counter of the chunk that completed the end silence

    @property
    def endpointed(self) -> bool:
        """single_utterance: the speaker stopped; no more audio is recognised."""
        return self.endpointer is not None and self.endpointer.end_frame is not None

    @property
    def frames_ready(self) -> int:
        return 0 if self.endpointed else self.framer.ready

    @property
    def caught_up(self) -> bool:
        """Every whole frame received has been recognised (none waiting, none in a running call)."""
        return self.frames_ready == 0 and self.in_flight == 0

    def take(self, frames: int) -> np.ndarray:
        """The step graph's input for the next ``frames`` frames; they count as in flight until ``advance``."""
        self.in_flight += frames
        return self.framer.take(frames)

    def push(self, data: bytes, index: int) -> None:
        """Add one audio_content message (message ``index`` of the stream); raises InvalidArgument."""
        cfg = self.model._config
        field = "audio_content"
        if len(data) > cfg.max_chunk_bytes:
            raise InvalidArgument(f"{field} of message {index} has {len(data):,} bytes; the limit is "
                                  f"{cfg.max_chunk_bytes:,} (max_chunk_bytes)", field=field)
        try:
            samples = A.pcm16(data, field)
        except InvalidArgument as err:
            raise InvalidArgument(err.message.replace(field, f"{field} of message {index}", 1), field=field) from None
        seconds = self.received_seconds + len(samples) / self._rate
        if seconds > cfg.max_stream_seconds:
            raise InvalidArgument(f"{field} of message {index}: the stream has {seconds:.1f} s of audio; the limit is "
                                  f"{cfg.max_stream_seconds:g} s "
                                  "(max_stream_seconds)", field=field)
        self.received_seconds = seconds
        if not len(samples) or self.endpointed:  # after the end of the utterance: received, not recognised
            return
        before = self.framer.frames + self.frames_ready
        resampled = self._resampler.push(samples)
        self._samples += len(resampled)
        self.framer.push(resampled)
        if self.endpointer is not None:
            self.endpointer.push(resampled)
        after = self.framer.frames + self.frames_ready
        if after > before:
            self._pending_times.append((after, time.perf_counter()))
            self.model.streams.wake()

    def finish(self) -> None:
        """The client half-closed: flush the resampler; the final result follows the last frames."""
        if self._ended or self.endpointed:
            return
        rest = self._resampler.flush()
        self._samples += len(rest)
        self.framer.push(rest)
        spec = self.model.spec
        # the silence the model needs after the last word, as in training (not after less than a frame
        # of audio: offline, that is refused; a stream that heard nothing says nothing)
        if spec.tail_samples and self.audio_frames:
            self.framer.push(np.zeros(spec.tail_samples, np.float32))  # the frames of audio + tail, as offline
        self._ended = True
        self._ended_at = time.perf_counter()
        self.model.streams.wake()
        self._changed.set()

    def fail(self, error: ServiceError) -> None:
        """End with ``error`` at once (bad input, a failed graph call)."""
        self.error = error
        self._changed.set()

    def stop(self, error: ServiceError) -> None:
        """End early (deadline, drain): the final result of what was recognised so far, then ``error``."""
        self._stop = error
        self._changed.set()

    def advance(self, log_probs: np.ndarray, states: dict[str, np.ndarray]) -> None:
        """Consume one step's rows: (k, V) log-probs and the new state."""
        self.in_flight -= len(log_probs)
        if not self.posteriors.frames:
            log_probs = blank_first_frame(log_probs, self.model.spec.blank)
        if self.endpointer is not None and not self.endpointed and self.endpointer.check(log_probs):
            end = self.endpointer.end_frame
            self._endpoint_arrival = next((at for need, at in self._pending_times if need >= end), time.perf_counter())
            log_probs = log_probs[: end - self.posteriors.frames]  # the utterance ends here
        self.posteriors.add(log_probs)
        if self.interim:
            self.best.extend(log_probs)
        self.state = states
        self._changed.set()

    def _interim_latency(self, sink) -> None:
        done = self.framer.frames
        now = time.perf_counter()
        while self._pending_times and self._pending_times[0][0] <= done:
            _, arrived = self._pending_times.pop(0)
            sink.speech_latency(self.model.name, self.model.version, "interim", now - arrived)

    @property
    def audio_frames(self) -> int:
        """Whole frames of the audio received (the appended tail not counted)."""
        return self._samples // self.model.spec.frame_samples

    def result_end(self) -> float:
        """Seconds of audio recognised: whole frames of what was received (the appended tail not counted)."""
        spec = self.model.spec
        return min(self.posteriors.frames, self._samples // spec.frame_samples) * spec.frame_seconds

    async def updates(self) -> AsyncIterator[SpeechResult | SpeechEvent]:
        """Interim results (when asked for) as frames arrive, then the final result once the input ended
        (single_utterance: or once the speaker stopped, after a SpeechEvent saying so)."""
        spec, sink = self.model.spec, self.model._ctx.sink
        while True:
            await self._changed.wait()
            self._changed.clear()
            if self.error is not None:
                raise self.error
            if self._stop is not None:
                yield self.final_result()
                raise self._stop
            if self.posteriors.frames > self._sent_frames:
                self._interim_latency(sink)
                if self.interim and not ((self._ended or self.endpointed) and self.caught_up):
                    self._sent_frames = self.posteriors.frames
                    yield self.best.result(spec, self.result_end())
            if self.endpointed and self.caught_up:
                yield SpeechEvent("END_OF_SINGLE_UTTERANCE")
                result = self.final_result()
                sink.speech_latency(self.model.name, self.model.version, "endpoint",
                                    time.perf_counter() - self._endpoint_arrival)
                yield result
                return
            if self._ended and self.caught_up:
                result = self.final_result()
                sink.speech_latency(self.model.name, self.model.version, "final", time.perf_counter() - self._ended_at)
                yield result
                return

    def final_result(self) -> SpeechResult:
        """The final result of what has been recognised so far."""
        lp = self.posteriors.array(len(self.model.spec.labels))
        return speech_result(self.model.spec, lp, self.config.max_alternatives, self.config.word_time_offsets,
                             self.result_end())


class AudioStepLoop:
    """The step loop of one streaming graph: each step takes every live stream with whole frames
    waiting, groups them by how many frames they bring (at most MAX_STEP_FRAMES), and runs one graph
    call per group; each stream's state goes in and comes out as its row."""

    def __init__(self, name: str, graph: GraphRuntime, state_names: list[str], meter: GraphMeter,
                 step_s: float = 0.0) -> None:
        self.name, self.graph, self._state_names, self._meter = name, graph, state_names, meter
        self.step_s = step_s  # the shortest time between the starts of two rounds
        self._streams: list[AudioStream] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closed = False
        self._serial = 0

    @property
    def open(self) -> int:
        return len(self._streams)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"audio loop {self.name}")

    def wake(self) -> None:
        self._wake.set()

    def add(self, stream: AudioStream) -> None:
        """Join the loop (and the server-wide count of open streams) until ``remove``."""
        if self._closed:
            raise Unavailable(f"{self.name} is shutting down")
        open_ = stream.model._ctx.speech_streams
        refused = open_.try_open()  # checked and counted at once, across worker processes too
        if refused is not None:
            label_request(reason="streams_full")
            raise ResourceExhausted(f"{refused} of {open_.capacity} recognition streams are open "
                                    "(max_speech_streams); retry later")
        self._serial += 1
        stream.serial = self._serial
        self._streams.append(stream)
        self._meter.streams(len(self._streams))

    def remove(self, stream: AudioStream) -> None:
        stream.cancelled = True
        if stream in self._streams:
            self._streams.remove(stream)
            stream.model._ctx.speech_streams.close()
        self._meter.streams(len(self._streams))

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for s in list(self._streams):
            s.fail(Unavailable(f"{self.name} shut down before the stream finished"))
            self.remove(s)
        self._meter.clear()

    async def _loop(self) -> None:
        while True:
            now = time.monotonic()
            groups: dict[int, list[AudioStream]] = {}
            for s in self._streams:
                if s.deadline is not None and now >= s.deadline:
                    continue  # the servicer ends it with its final result
                k = min(s.frames_ready, MAX_STEP_FRAMES)
                if k:
                    groups.setdefault(k, []).append(s)
            if not groups:
                self._wake.clear()
                await self._wake.wait()
                continue
            started = time.monotonic()
            for k, streams in sorted(groups.items()):
                await self._step(k, streams)
            # At most one round per step_s: audio that arrives meanwhile waits for the next round, so
            # that the streams share calls (a round per chunk would run one small call per message).
            # An idle loop steps at once when audio comes.
            rest = self.step_s - (time.monotonic() - started)
            if rest > 0:
                await asyncio.sleep(rest)

    async def _step(self, k: int, streams: list[AudioStream]) -> None:
        audio = np.stack([s.take(k) for s in streams])  # (B, context + k * frame)
        feeds = {"audio": audio}
        for n in self._state_names:
            feeds[n] = np.concatenate([s.state[n] for s in streams], axis=1) if len(streams) > 1 else streams[0].state[n]
        started = time.perf_counter()
        try:
            out = await self.graph.run(feeds)
        except ServiceError as err:
            for s in streams:
                s.fail(err)
            return
        except Exception:  # noqa: BLE001 - one broken call must not stop every stream
            log.exception("%s: step failed", self.name)
            for s in streams:
                s.fail(Internal(f"recognition failed in {self.name}"))
            return
        seconds = time.perf_counter() - started
        self._meter.batch(len(streams), seconds)
        lp = out["log_probs"]
        frame_s = streams[0].model.spec.frame_seconds
        sink = streams[0].model._ctx.sink
        m = streams[0].model
        real = sum(max(0, min(k, s.audio_frames - s.posteriors.frames)) for s in streams)  # not the tails
        sink.speech_audio(m.name, m.version, "stream", real * frame_s, seconds)
        for i, s in enumerate(streams):
            if s.cancelled:
                continue
            s.advance(lp[i], {n: out[f"{n}_out"][:, i : i + 1] for n in self._state_names})


def deadline_margin(deadline: float | None) -> float | None:
    """When a stream with ``deadline`` should stop and send what it recognised: a little before the
    deadline, so the final result reaches the client before its call expires."""
    if deadline is None:
        return None
    remaining = deadline - time.monotonic()
    return deadline - min(0.25, max(0.0, 0.1 * remaining))


