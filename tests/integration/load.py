"""What the reliability suites drive and measure against a `seqserve serve` subprocess
(tests.integration.harness.ServerProcess): mixed traffic on every RPC with random input lengths,
resident memory, and the server's own Prometheus counters.

Every call is recorded as a ``Call`` (which RPC, when it started and ended, its status code and
message) so that a suite can say exactly which calls failed, were refused or were lost.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
import wave
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from service.v1 import (
    forecast_pb2,
    forecast_pb2_grpc,
    generate_pb2,
    generate_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    open_inference_grpc_pb2,
    open_inference_grpc_pb2_grpc,
    recognize_pb2,
    recognize_pb2_grpc,
    translate_pb2,
    translate_pb2_grpc,
)
from tests.integration.harness import ServerProcess

RPCS = ("Forecast", "Translate", "Generate", "GenerateStream", "Score", "Recognize", "StreamingRecognize", "ModelInfer",
        "ListModels", "GetModel", "Check")
WORDS = ("ein", "mann", "eine", "frau", "hund", "spielt", "auf", "der", "straße", "im", "park",
         "kinder", "laufen", "über", "die", "wiese", "zwei", "rote", "ball", "xylophon", "ßüöä")
PROMPT_CHARS = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ,.;:!?'\n"
SPEECH_RATES = (8000, 16000, 22050, 44100, 48000)  # Hz of the recordings; the server resamples them


def metric(exposition: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (0 when none)."""
    total = 0.0
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@dataclass
class Call:
    rpc: str
    start: float  # time.monotonic()
    end: float
    code: str  # grpc.StatusCode name
    details: str = ""
    complete: bool = True  # a stream that ended OK also carried its final chunk

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class Tally:
    calls: list[Call] = field(default_factory=list)

    def codes(self, rpc: str | None = None) -> Counter:
        return Counter(c.code for c in self.calls if rpc is None or c.rpc == rpc)

    def failures(self) -> list[Call]:
        return [c for c in self.calls if c.code != "OK" or not c.complete]

    def latencies_ms(self, code: str = "OK", rpc: str | None = None) -> np.ndarray:
        return np.array([c.seconds * 1e3 for c in self.calls if c.code == code and (rpc is None or c.rpc == rpc)])

    def summary(self) -> str:
        per_rpc = {rpc: dict(self.codes(rpc)) for rpc in sorted({c.rpc for c in self.calls})}
        return f"{len(self.calls)} calls: {per_rpc}"


class Mix:
    """Random valid requests for every RPC of the tiny bundles (or any models with the same tasks).

    ``weights`` maps an RPC name to its share of the traffic; input lengths, horizons, beam sizes,
    token budgets and sampling settings are drawn per call from ``seed``."""

    def __init__(self, channel: grpc.aio.Channel, *, seed: int = 0, weights: dict[str, float] | None = None,
                 translate: str = "tiny-translate", forecast: str = "tiny-forecast", generate: str = "tiny-generate",
                 recognize: str = "tiny-recognize", max_tokens: int = 48, timeout_s: float = 30.0):
        self.rng = np.random.default_rng(seed)
        weights = weights or {"Forecast": 4, "Translate": 2, "Generate": 2, "GenerateStream": 2, "Score": 1,
                              "Recognize": 1.5, "StreamingRecognize": 1.5, "ModelInfer": 2, "ListModels": 0.5,
                              "GetModel": 0.5, "Check": 0.5}
        self.rpcs = list(weights)
        p = np.array([weights[r] for r in self.rpcs], dtype=float)
        self.p = p / p.sum()
        self.names = {"translate": translate, "forecast": forecast, "generate": generate, "recognize": recognize}
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.forecaster = forecast_pb2_grpc.ForecasterStub(channel)
        self.translator = translate_pb2_grpc.TranslatorStub(channel)
        self.generator = generate_pb2_grpc.GeneratorStub(channel)
        self.recognizer = recognize_pb2_grpc.RecognizerStub(channel)
        self.oip = open_inference_grpc_pb2_grpc.GRPCInferenceServiceStub(channel)
        self.models = models_pb2_grpc.ModelsStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)
        self.spec: Any = None

    async def prepare(self) -> None:
        """Read the forecaster's window, horizon and quantiles from GetModel."""
        info = (await self.models.GetModel(models_pb2.GetModelRequest(name=self.names["forecast"]))).model
        self.spec = info.forecast

    def _history(self) -> list[float]:
        spec = self.spec
        length = int(self.rng.integers(spec.min_history, 3 * spec.window + 1))
        return np.cumsum(self.rng.normal(0, 1, length)).round(4).tolist()

    def _prompt(self, low: int = 1, high: int = 60) -> str:
        n = int(self.rng.integers(low, high + 1))
        return "".join(self.rng.choice(list(PROMPT_CHARS), n))

    def _generate_request(self) -> generate_pb2.GenerateRequest:
        return generate_pb2.GenerateRequest(
            model=self.names["generate"], prompt=self._prompt(), max_tokens=int(self.rng.integers(1, self.max_tokens + 1)),
            temperature=float(self.rng.choice([0.0, 0.7, 1.0, 1.3])), top_k=int(self.rng.choice([0, 5, 20])),
            top_p=float(self.rng.choice([1.0, 0.9])), seed=int(self.rng.integers(0, 2**31)),
            logprobs=bool(self.rng.random() < 0.3), top_logprobs=int(self.rng.choice([0, 0, 3])))

    def speech_samples(self, seconds: float, rate: int) -> np.ndarray:
        """int16 samples: tone bursts with pauses over a little noise (speech-like for the tiny model)."""
        t = np.arange(int(seconds * rate)) / rate
        x = 0.005 * self.rng.standard_normal(len(t))
        for start in np.arange(0.05, seconds, 0.3):
            burst = (t >= start) & (t < start + 0.18)
            x[burst] += 0.3 * np.sin(2 * np.pi * self.rng.uniform(300, 3000) * t[burst])
        return (np.clip(x, -1, 1) * 32767).astype("<i2")

    def recognize_request(self) -> recognize_pb2.RecognizeRequest:
        """0.2..2 s at a random rate, as LINEAR16 or (a third of the time) a WAV file."""
        rate = int(self.rng.choice(SPEECH_RATES))
        samples = self.speech_samples(float(self.rng.uniform(0.2, 2.0)), rate)
        config = recognize_pb2.RecognitionConfig(
            encoding=recognize_pb2.RecognitionConfig.LINEAR16, sample_rate_hertz=rate, model=self.names["recognize"],
            max_alternatives=int(self.rng.integers(0, 4)), enable_word_time_offsets=bool(self.rng.random() < 0.3))
        audio = samples.tobytes()
        if self.rng.random() < 1 / 3:
            buf = io.BytesIO()
            with wave.open(buf, "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(rate)
                w.writeframes(audio)
            audio = buf.getvalue()
            config.encoding, config.sample_rate_hertz = recognize_pb2.RecognitionConfig.WAV, 0
        return recognize_pb2.RecognizeRequest(config=config, audio=audio)

    def stream_messages(self, seconds: tuple[float, float] = (0.2, 1.2)) -> list[recognize_pb2.StreamingRecognizeRequest]:
        """A short StreamingRecognize stream: the config, then ``seconds`` (a range) of LINEAR16 at 8 or 16
        kHz in chunks of 50..200 ms, sent as fast as the server takes them."""
        rate = int(self.rng.choice([8000, 16000]))
        data = self.speech_samples(float(self.rng.uniform(*seconds)), rate).tobytes()
        chunk = 2 * int(rate * self.rng.choice([0.05, 0.1, 0.2]))
        config = recognize_pb2.RecognitionConfig(encoding=recognize_pb2.RecognitionConfig.LINEAR16, sample_rate_hertz=rate,
                                                 model=self.names["recognize"], max_alternatives=int(self.rng.integers(0, 3)))
        single = bool(self.rng.random() < 0.3)  # some end themselves when the "speaker" pauses
        first = recognize_pb2.StreamingRecognizeRequest(streaming_config=recognize_pb2.StreamingRecognitionConfig(
            config=config, interim_results=bool(self.rng.random() < 0.5), single_utterance=single,
            end_silence_ms=int(self.rng.choice([0, 100, 300])) if single else 0))
        return [first, *(recognize_pb2.StreamingRecognizeRequest(audio_content=data[i : i + chunk])
                         for i in range(0, len(data), chunk))]

    def request(self, rpc: str) -> Callable[[float | None], Awaitable[bool]]:
        """A coroutine function sending one random ``rpc`` call with a timeout; returns whether a
        stream was complete (unary calls: True; Recognize: whether it carried a result)."""
        timeout = self.timeout_s
        if rpc == "Forecast":
            spec = self.spec
            quantiles = [q for q in spec.quantiles if self.rng.random() < 0.5]
            req = forecast_pb2.ForecastRequest(model=self.names["forecast"], history=self._history(),
                                               horizon=int(self.rng.integers(0, spec.horizon + 1)), quantiles=quantiles)
            return lambda t: _unary(self.forecaster.Forecast(req, timeout=t or timeout))
        if rpc == "Translate":
            # At most 6 words: even spelt out letter by letter they stay within the tiny model's 64 tokens.
            texts = [" ".join(self.rng.choice(WORDS, int(self.rng.integers(1, 7)))) for _ in range(int(self.rng.integers(1, 4)))]
            req = translate_pb2.TranslateRequest(model=self.names["translate"], texts=texts,
                                                 beam_size=int(self.rng.integers(1, 5)))
            return lambda t: _unary(self.translator.Translate(req, timeout=t or timeout))
        if rpc == "Generate":
            req = self._generate_request()
            return lambda t: _unary(self.generator.Generate(req, timeout=t or timeout))
        if rpc == "GenerateStream":
            req = self._generate_request()
            return lambda t: _stream(self.generator.GenerateStream(req, timeout=t or timeout), req.max_tokens)
        if rpc == "Score":
            req = generate_pb2.ScoreRequest(model=self.names["generate"], prompt=self._prompt(),
                                            continuations=[self._prompt(1, 12) for _ in range(int(self.rng.integers(1, 6)))])
            return lambda t: _unary(self.generator.Score(req, timeout=t or timeout))
        if rpc == "Recognize":
            req = self.recognize_request()
            return lambda t: _recognized(self.recognizer.Recognize(req, timeout=t or timeout))
        if rpc == "StreamingRecognize":
            messages = self.stream_messages()
            return lambda t: _speech_stream(self.recognizer.StreamingRecognize(iter(messages), timeout=t or timeout))
        if rpc == "ModelInfer":  # the Open Inference Protocol: a batch of forecast rows, raw FP32
            rows = int(self.rng.integers(1, 5))
            length = int(self.rng.integers(self.spec.min_history, 2 * self.spec.window + 1))
            history = np.cumsum(self.rng.normal(0, 1, (rows, length)), axis=1).astype(np.float32)
            req = open_inference_grpc_pb2.ModelInferRequest(model_name=self.names["forecast"])
            req.inputs.add(name="history", datatype="FP32", shape=[rows, length])
            req.raw_input_contents.append(history.tobytes())
            return lambda t: _unary(self.oip.ModelInfer(req, timeout=t or timeout))
        if rpc == "ListModels":
            return lambda t: _unary(self.models.ListModels(models_pb2.ListModelsRequest(), timeout=t or timeout))
        if rpc == "GetModel":
            name = str(self.rng.choice(list(self.names.values())))
            return lambda t: _unary(self.models.GetModel(models_pb2.GetModelRequest(name=name), timeout=t or timeout))
        if rpc == "Check":
            return lambda t: _unary(self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=t or timeout))
        raise ValueError(rpc)

    def next(self) -> tuple[str, Callable[[float | None], Awaitable[bool]]]:
        rpc = self.rpcs[int(self.rng.choice(len(self.rpcs), p=self.p))]
        return rpc, self.request(rpc)


async def _unary(call: Awaitable[Any]) -> bool:
    await call
    return True


async def _stream(call: Any, max_tokens: int) -> bool:
    last = None
    async for chunk in call:
        last = chunk
    return last is not None and last.finish_reason in ("length", "stop", "eos") and last.completion_tokens <= max_tokens


async def _recognized(call: Awaitable[Any]) -> bool:
    reply = await call
    return len(reply.results) == 1 and len(reply.results[0].alternatives) >= 1


async def _speech_stream(call: Any) -> bool:
    """Complete: exactly one final result, the last response (after at most one END_OF_SINGLE_UTTERANCE)."""
    responses = [r async for r in call]
    events = [i for i, r in enumerate(responses) if r.speech_event_type]
    finals = [r.results[0].is_final for r in responses if not r.speech_event_type]
    return (finals.count(True) == 1 and finals[-1]  # (an empty stream: count 0)
            and events in ([], [len(responses) - 2]))


async def timed(rpc: str, send: Callable[[float | None], Awaitable[bool]], timeout_s: float | None = None) -> Call:
    """Run one call and record it; gRPC errors become the call's code, never an exception."""
    start = time.monotonic()
    try:
        complete = await send(timeout_s)
        return Call(rpc, start, time.monotonic(), "OK", complete=complete)
    except grpc.aio.AioRpcError as err:
        return Call(rpc, start, time.monotonic(), err.code().name, err.details() or "")


async def closed_loop(mix: Mix, tally: Tally, concurrency: int, duration_s: float,
                      stop: asyncio.Event | None = None, timeout_s: float | None = None,
                      backoff_s: float = 0.0) -> None:
    """``concurrency`` workers, each sending its next random call when the previous one ended
    (``backoff_s`` later when it failed, as a polite client would), until ``duration_s`` passed or
    ``stop`` is set."""
    end = time.monotonic() + duration_s
    stop = stop or asyncio.Event()

    async def worker() -> None:
        while time.monotonic() < end and not stop.is_set():
            rpc, send = mix.next()
            call = await timed(rpc, send, timeout_s)
            tally.calls.append(call)
            if backoff_s and call.code != "OK":
                await asyncio.sleep(backoff_s)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def open_loop(mix: Mix, tally: Tally, rate: float, duration_s: float, rpc: str,
                    timeout_s: float | None = None) -> None:
    """Poisson arrivals of ``rpc`` calls at ``rate`` per second for ``duration_s`` (no cap on
    outstanding calls: the server must protect itself)."""
    tasks: list[asyncio.Task] = []
    end = time.monotonic() + duration_s
    next_at = time.monotonic()
    while next_at < end:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        tasks.append(asyncio.ensure_future(timed(rpc, mix.request(rpc), timeout_s)))
        next_at += float(mix.rng.exponential(1.0 / rate))
    tally.calls.extend(await asyncio.gather(*tasks))


async def sample_rss(server: ServerProcess, samples: list[tuple[float, int]], stop: asyncio.Event,
                     every_s: float = 0.25) -> None:
    while not stop.is_set():
        samples.append((time.monotonic(), server.rss_bytes()))
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except asyncio.TimeoutError:
            pass


def rss_growth(samples: Sequence[tuple[float, int]], warmup_fraction: float = 0.3) -> tuple[float, float, float]:
    """(MiB after warm-up, MiB at the end, growth MiB): medians of the first and last fifth of the
    samples taken after the first ``warmup_fraction`` of the run."""
    after = [rss for _, rss in samples[int(len(samples) * warmup_fraction):]]
    fifth = max(1, len(after) // 5)
    first, last = np.median(after[:fifth]) / 2**20, np.median(after[-fifth:]) / 2**20
    return float(first), float(last), float(last - first)


def pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def report(name: str, **figures: Any) -> None:
    """Print one suite's figures (shown with -s) and append them as JSON to
    $SEQSERVE_RELIABILITY_REPORT when set (docs/reliability.md quotes those runs)."""
    import json

    line = json.dumps({"suite": name, **figures}, default=str)
    print(line)
    path = os.environ.get("SEQSERVE_RELIABILITY_REPORT")
    if path:
        with open(path, "a") as out:
            out.write(line + "\n")
