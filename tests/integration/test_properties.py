"""Property-based attack tests against one live server: hostile requests for every RPC.

One server runs for the whole module in a background thread with its own event loop; hypothesis
drives synchronous ``grpc`` stubs against it. For every request an oracle built from the protos'
documented rules (and the bundles' own tokenizers) says which fields are invalid, and the property
is:

* a request the oracle finds valid succeeds with a well-formed answer (one translation per text,
  ``horizon`` finite values per path, quantile paths ordered by level, a documented finish_reason,
  completion_tokens <= max_tokens, the stream equal to the unary answer ...);
* any other request fails with NOT_FOUND (unknown model or version) or INVALID_ARGUMENT whose
  message and ``google.rpc.BadRequest`` name one of the invalid fields -- never INTERNAL, UNKNOWN
  or another code.

Raw bytes (random, truncated, wrong wire types, huge length prefixes, larger than
max_message_bytes) go through generic channel calls. After the storm the server must still report
SERVING, answer the requests recorded before it exactly as before, and have logged no error.

The CI profile is derandomized (reproducible) and runs with ``-m heavy`` (CI's second step; the
regression tests below run by default); ``-m slow`` runs the same properties with 10x the examples.
The number of examples run is written to the terminal at the end of the module.
"""

from __future__ import annotations

import asyncio
import collections
import io
import itertools
import logging
import math
import threading
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import text_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.contract import TASKS, frequency
from service.core.sentences import SentenceSplitter
from service.core.tasks.forecast import max_abs_value
from service.core.tokenizing import TextCodec
from service.front.status import MAX_MESSAGE_BYTES
from service.v1 import (
    forecast_pb2,
    forecast_pb2_grpc,
    generate_pb2,
    generate_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    recognize_pb2,
    recognize_pb2_grpc,
    translate_pb2,
    translate_pb2_grpc,
)
from service.v1 import open_inference_grpc_pb2 as oip_pb2
from service.v1 import open_inference_grpc_pb2_grpc as oip_grpc
from tests.bundles import PAIRS_DE_EN, TEXT
from tests.integration.harness import bad_request_fields, metric_value, serving

# --- profiles ------------------------------------------------------------------------------------

COMMON: dict[str, Any] = {
    "deadline": None,
    "derandomize": True,  # the same examples on every run: CI is reproducible
    "database": None,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
}
SOAK_FACTOR = 10


def profiles(examples: int) -> list[Any]:
    """The CI profile (``examples``, derandomized; 4,100 in all, behind the ``heavy`` marker that CI
    runs as its second step) and a soak profile behind the ``slow`` marker."""
    return [
        pytest.param(settings(max_examples=examples, **COMMON), id="ci", marks=pytest.mark.heavy),
        pytest.param(settings(max_examples=examples * SOAK_FACTOR, **COMMON), id="soak", marks=pytest.mark.slow),
    ]


# Server limits for the storm: small enough that the "just past the limit" cases stay cheap.
LIMITS = {"max_history": 64, "max_tokens": 64, "default_max_tokens": 16, "max_message_bytes": 1 << 20,
          "max_audio_seconds": 4.0, "max_chunk_bytes": 6400, "max_stream_seconds": 1.0}
CALL_TIMEOUT_S = 20.0  # a hung server fails a call instead of the whole run
FINISH_REASONS = {"length", "stop", "eos"}
# The protos also document UNAVAILABLE, RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED, but one request at
# a time to a loaded server can meet none of them: here they would be bugs too.
ALLOWED_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
# Largest |history value| the tiny forecast models (window 24; windows standardised in float64) accept.
VALUE_BOUND = 1e153

# Examples run per property, written out at the end of the module (see ``live``).
EXAMPLES: collections.Counter[str] = collections.Counter()
OUTCOMES: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
# The fields errors named (NOT_FOUND: "model" / "version"), per RPC: see assert_fields.
NAMED: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)


# --- the live server -------------------------------------------------------------------------------


@dataclass
class ModelFacts:
    """What the oracle needs about one served model (from ListModels and its tokenizers)."""

    name: str
    task: str
    limits: dict[str, int]
    forecast: models_pb2.ForecastSpec | None = None
    speech: models_pb2.SpeechSpec | None = None
    codecs: dict[str, TextCodec] = field(default_factory=dict)
    languages: dict[str, str] = field(default_factory=dict)


class _ErrorLog(logging.Handler):
    """Collects ERROR records of the server (handle_errors logs every INTERNAL there)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class LiveServer:
    """A real server (tests.integration.harness.serving) on an event loop in a daemon thread, a
    synchronous channel to it, and what the oracle knows about its models."""

    facts: dict[str, ModelFacts]  # by model name
    defaults: dict[str, str]  # task -> the model answering an empty name
    baseline: dict[str, bytes]  # answers to BASELINE_REQUESTS before the storm
    errors: _ErrorLog

    def __init__(self, models: Path, **overrides: Any) -> None:
        from prometheus_client import CollectorRegistry

        from service.front.metrics import Metrics

        self.loop_errors: list[dict[str, Any]] = []
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(lambda loop, ctx: self.loop_errors.append(ctx))
        self.thread = threading.Thread(target=self.loop.run_forever, name="storm-server", daemon=True)
        self.thread.start()
        self.metrics = Metrics(CollectorRegistry(), process_metrics=False)
        self._cm = serving(models, metrics=self.metrics, **overrides)
        self.served = self._run(self._cm.__aenter__(), 120)
        self.config = self.served.config
        self.channel = grpc.insecure_channel(self.served.address)
        self.translator = translate_pb2_grpc.TranslatorStub(self.channel)
        self.forecaster = forecast_pb2_grpc.ForecasterStub(self.channel)
        self.generator = generate_pb2_grpc.GeneratorStub(self.channel)
        self.recognizer = recognize_pb2_grpc.RecognizerStub(self.channel)
        self.models = models_pb2_grpc.ModelsStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.oip = oip_grpc.GRPCInferenceServiceStub(self.channel)

    def _run(self, coro, timeout: float):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.channel.close()
        try:
            self._run(self._cm.__aexit__(None, None, None), 60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)
            self.loop.close()


# --- speech audio ---------------------------------------------------------------------------------

LINEAR16, WAV = recognize_pb2.RecognitionConfig.LINEAR16, recognize_pb2.RecognitionConfig.WAV
SIGNALS = ("tones", "tone", "noise", "silence", "full scale")


def synth(kind: str, n: int, rate: int, seed: int) -> np.ndarray:
    """``n`` int16 samples at ``rate`` Hz of a test signal: tone bursts with pauses (speech-like for the
    random-weight model), one tone, noise, silence, or a full-scale square wave (-32768 and 32767)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    if kind == "full scale":
        return np.where(np.sin(2 * np.pi * 440 * t) >= 0, 32767, -32768).astype("<i2")
    x = np.zeros(n)
    if kind == "tones":
        x = 0.005 * rng.standard_normal(n)
        for start in np.arange(0.02, max(t[-1] if n else 0.0, 0.0), 0.3):
            burst = (t >= start) & (t < start + 0.18)
            x[burst] += 0.3 * np.sin(2 * np.pi * rng.uniform(300, 3000) * t[burst])
    elif kind == "tone":
        x = 0.5 * np.sin(2 * np.pi * rng.uniform(200, 3500) * t)
    elif kind == "noise":
        x = 0.1 * rng.standard_normal(n)
    return (np.clip(x, -1, 1) * 32767).astype("<i2")


def linear16(samples: np.ndarray) -> bytes:
    """LINEAR16 bytes that never look like a WAV file (the unspecified encoding would take them as one)."""
    data = samples.astype("<i2").tobytes()
    return b"\x00" + data[1:] if data[:4] in (b"RIFF", b"RF64") else data


def wav_bytes(samples: np.ndarray, rate: int, channels: int = 1, width: int = 2) -> bytes:
    """A WAV file (the stdlib's ``wave``) of int16 ``samples`` as ``width``-byte PCM, each sample repeated
    on ``channels`` channels."""
    x = np.repeat(samples.astype(np.int32), channels)
    if width == 1:
        frames = ((x >> 8) + 128).astype(np.uint8).tobytes()  # 8-bit WAV is unsigned
    elif width == 3:
        frames = (x << 8).astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    elif width == 4:
        frames = (x << 16).astype("<i4").tobytes()
    else:
        frames = x.astype("<i2").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(frames)
    return buf.getvalue()


# Recorded before the storm and compared after it (byte for byte).
BASELINE_REQUESTS = {
    "generate": generate_pb2.GenerateRequest(
        prompt="First Citizen:", max_tokens=24, temperature=0.9, top_k=20, top_p=0.95, seed=1234
    ),
    "generate_stream": generate_pb2.GenerateRequest(
        prompt="All:\n", max_tokens=24, temperature=1.0, seed=99, stop=["zz"]
    ),
    "translate": translate_pb2.TranslateRequest(
        texts=[de for de, _ in PAIRS_DE_EN[:3]], max_length=12, return_attention=True
    ),
    "translate_beam": translate_pb2.TranslateRequest(texts=[PAIRS_DE_EN[4][0]], beam_size=4, max_length=12),
    "forecast": forecast_pb2.ForecastRequest(
        history=[float(np.sin(t / 3.0) * 10 + 50) for t in range(30)], quantiles=[0.9, 0.25, 0.5]
    ),
    "forecast3": forecast_pb2.ForecastRequest(
        model="tiny-forecast3",
        channels=[forecast_pb2.Series(values=[float(np.cos(t / (c + 2.0)) + c) for t in range(20)]) for c in range(3)],
        horizon=4,
    ),
    "recognize": recognize_pb2.RecognizeRequest(
        config=recognize_pb2.RecognitionConfig(encoding=LINEAR16, sample_rate_hertz=16000, max_alternatives=3,
                                               enable_word_time_offsets=True),
        audio=linear16(synth("tones", 24000, 16000, 7)),
    ),
}


def _baseline(server: LiveServer) -> dict[str, bytes]:
    out = {}
    for key, req in BASELINE_REQUESTS.items():
        if key.startswith("generate_stream"):
            chunks = list(server.generator.GenerateStream(req, timeout=CALL_TIMEOUT_S))
            reply = generate_pb2.GenerateResponse(
                text="".join(c.text for c in chunks),
                finish_reason=chunks[-1].finish_reason,
                prompt_tokens=chunks[-1].prompt_tokens,
                completion_tokens=chunks[-1].completion_tokens,
            )
        elif key.startswith("generate"):
            reply = server.generator.Generate(req, timeout=CALL_TIMEOUT_S)
        elif key.startswith("translate"):
            reply = server.translator.Translate(req, timeout=CALL_TIMEOUT_S)
        elif key.startswith("recognize"):
            reply = server.recognizer.Recognize(req, timeout=CALL_TIMEOUT_S)
        else:
            reply = server.forecaster.Forecast(req, timeout=CALL_TIMEOUT_S)
        out[key] = reply.SerializeToString(deterministic=True)
    return out


@pytest.fixture(scope="module")
def live(module_models, request) -> Iterator[LiveServer]:
    errors = _ErrorLog()
    service_log = logging.getLogger("service")
    service_log.addHandler(errors)
    server = LiveServer(module_models, **LIMITS)
    try:
        facts, defaults = {}, {}
        for info in server.models.ListModels(models_pb2.ListModelsRequest(), timeout=CALL_TIMEOUT_S).models:
            assert info.state == "READY", info
            f = ModelFacts(info.name, info.task, dict(info.limits), languages=dict(info.languages))
            if info.task == "forecast":
                f.forecast = info.forecast
            if info.task == "recognize":
                f.speech = info.speech
            for kind in ("text", "source", "target"):
                path = module_models / info.name / info.version / f"tokenizer_{kind}.json"
                if path.is_file():
                    f.codecs[kind] = TextCodec.from_json(path.read_text(encoding="utf-8"))
            facts[info.name] = f
            if info.is_default:
                defaults[info.task] = info.name
        assert set(defaults) == set(TASKS)
        server.facts, server.defaults, server.errors = facts, defaults, errors
        server.baseline = _baseline(server)
        yield server
    finally:
        server.close()
        service_log.removeHandler(errors)
        total = sum(EXAMPLES.values())
        lines = [f"property storm: {total} examples run ({', '.join(f'{k} {v}' for k, v in sorted(EXAMPLES.items()))})"]
        for rpc, outcomes in sorted(OUTCOMES.items()):
            lines.append(f"  {rpc}: " + ", ".join(f"{code} {n}" for code, n in outcomes.most_common()))
        report(request.config, lines)


def report(config: pytest.Config, lines: list[str]) -> None:
    """Write ``lines`` to the terminal past pytest's output capturing."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(*lines, sep="\n")
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        for line in lines:
            reporter.write_line(line)


# --- strategies ----------------------------------------------------------------------------------

NAN, INF = math.nan, math.inf
# fmt: off
SPECIAL_CHARS = [
    "\x00", "\x01", "\x07", "\x1b", "\x7f", "\x85", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\u0301",
    "\u0338", "\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u202a", "\u202e", "\u2066", "\u2028",
    "\u2029", "\u3000", "\ufeff", "\ufffd", "\uffff", "\U0010ffff", "\U000e0001", "\u05d0", "\u0627",
    "\u0915\u094d", "\u4e2d", "\uac00", "\U0001f600", "\U0001f468\u200d\U0001f469\u200d\U0001f467",
    "\U0001f1e9\U0001f1ea", "e\u0301", "\u1e9b\u0323", "\ufb01", "\u0130", "\u00df", "I\u0307",
]
# fmt: on
# Every Unicode category but surrogates (protobuf strings must be valid UTF-8).
ANY_CHAR = st.characters(exclude_categories=("Cs",))
WILD_TEXT = st.one_of(
    st.text(ANY_CHAR, max_size=30),
    st.lists(st.sampled_from(SPECIAL_CHARS), max_size=12).map("".join),
    st.text(st.characters(max_codepoint=0x7F), max_size=30),
)
SENTENCES = [de for de, _ in PAIRS_DE_EN]
PROMPTS = [TEXT[:n] for n in (0, 1, 5, 14, 40, 120)] + ["All:\n", "Speak, speak.", "resolved"]


def mostly(valid: st.SearchStrategy, invalid: st.SearchStrategy, one_in: int = 5) -> st.SearchStrategy:
    """``valid`` most of the time, ``invalid`` about once in ``one_in`` draws (failures shrink
    towards the valid side: hypothesis simplifies towards k = 0)."""
    return st.integers(0, one_in - 1).flatmap(lambda k: invalid if k == one_in - 1 else valid)


def huge_text(limit: int) -> st.SearchStrategy[str]:
    """Strings of about ``limit`` characters: just below, at, just past and far past it."""
    sizes = st.sampled_from([limit - 1, limit, limit + 1, 2 * limit, 10 * limit])
    seeds = st.one_of(
        st.sampled_from(["a", " ", "Ein Mann ", "\u0301", "\U0001f600", "\x00", "\u202e"]),
        st.text(ANY_CHAR, min_size=1, max_size=3),
    )
    return st.builds(lambda seed, n: (seed * (n // len(seed) + 1))[:n], seeds, sizes)


# fmt: off
MODEL_TRAPS = [
    "../x", "/etc/passwd", "a/b", "..", ".", "%2e%2e", "%2e%2e%2ftiny-forecast", "..%2f..%2fetc%2fpasswd",
    "tiny-forecast/../tiny-forecast", "tiny-forecast/", "./tiny-forecast", "tiny-forecast/1", "TINY-FORECAST",
    " tiny-forecast", "tiny-forecast ", "tiny-forecast\x00", "tiny-forecast\n", "tiny\u2011forecast", "t" * 300,
    "x" * 5000, "\u202etsacerof-ynit", "\u6a21\u578b", "\U0001f99c", "C:\\Windows\\win.ini", "~root", "$(id)",
    "*", "?", "manifest.json", "1", "default", "\ufefftiny-generate",
    # Echoed in NOT_FOUND: long enough to overflow the client's 8 KiB trailer limit unless clipped.
    "\u00e9" * 3000, "\x00" * 3000, "\U0001f600" * 2000, "y" * 100_000,
]
# fmt: on
# fmt: off
VERSION_TRAPS = [
    "0", "01", "2", "-1", "+1", "1 ", " 1", "1.0", "1e0", "\uff11", "\u0661", "../1", "1/..", "%31", "9" * 30,
    "latest", "\x00", "1\x00", "1/", "*", "..", "9" * 20_000, "\u00e9" * 3000,
]
# fmt: on


def model_names(task: str) -> st.SearchStrategy[str]:
    """Names that reach a model of ``task`` ("" = the default), and traps; task "": GetModel."""
    others = ["tiny-translate", "tiny-forecast", "tiny-forecast3", "tiny-global", "tiny-generate", "tiny-recognize"]
    own = {
        "translate": ["", "tiny-translate"],
        "forecast": ["", "tiny-forecast", "tiny-forecast3", "tiny-global"],
        "generate": ["", "tiny-generate"],
        "recognize": ["", "tiny-recognize"],
        "": others,
    }[task]
    valid = st.sampled_from(own)
    return mostly(valid, st.one_of(st.sampled_from(MODEL_TRAPS + others), WILD_TEXT), one_in=6)


def versions() -> st.SearchStrategy[str]:
    return mostly(st.sampled_from(["", "1"]), st.one_of(st.sampled_from(VERSION_TRAPS), WILD_TEXT), one_in=6)


INT32 = (-(2**31), 2**31 - 1)


def int_field(lo: int, hi: int, extra_invalid: tuple[int, ...] = ()) -> st.SearchStrategy[int]:
    """Mostly ``lo..hi``; sometimes just outside, far outside or an int32 extreme."""
    invalid = st.one_of(
        st.sampled_from(sorted({lo - 1, hi + 1, *INT32, -1, *extra_invalid} - set(range(lo, hi + 1)))),
        st.integers(*INT32),
    )
    return mostly(st.integers(lo, hi), invalid)


# fmt: off
FLOAT_TRAPS = [  # NaN/inf, signed zeros, denormals, float32 overflow, the 1e153 bound of the tiny models
    NAN, -NAN, INF, -INF, 0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1e-300, 1e300, -1e300,
    1.7976931348623157e308, -1.7976931348623157e308, 3.4028234663852886e38, 3.5e38, 1e17, -1e17, 1e18, -1e18,
    1e19, -1e19, 1e20, 1e100, 1e153, -1e153, 1.5e153,
]
# fmt: on


@st.composite
def histories(draw, length: st.SearchStrategy[int]) -> list[float]:
    """Values of a normal range, sometimes spiked with NaN / inf / huge / denormal values."""
    n = draw(length)
    scale = draw(st.sampled_from([1.0, 1e-3, 1e3, 1e9, 1e-300]))
    base = draw(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=n, max_size=n))
    values = [v * scale for v in base]
    if values and draw(st.integers(0, 3)) == 3:
        for pos, bad in draw(
            st.lists(
                st.tuples(st.integers(0, 10**6), st.one_of(st.sampled_from(FLOAT_TRAPS), st.floats())),
                min_size=1,
                max_size=3,
            )
        ):
            values[pos % n] = bad
    return values


@st.composite
def forecast_requests(draw) -> forecast_pb2.ForecastRequest:
    req = forecast_pb2.ForecastRequest(model=draw(model_names("forecast")), version=draw(versions()))
    max_history = LIMITS["max_history"]
    lengths = mostly(st.integers(8, 40), st.sampled_from([0, 1, 7, max_history, max_history + 1, max_history + 3]))
    channels = 3 if req.model == "tiny-forecast3" else 1  # what the named model reads
    usual = ["channels"] if channels > 1 else ["history", "channels"]
    mode = draw(mostly(st.sampled_from(usual), st.sampled_from(["history", "channels", "both", "none"])))
    if mode in ("history", "both"):
        req.history.extend(draw(histories(lengths)))
    if mode in ("channels", "both"):
        count = draw(mostly(st.just(channels), st.sampled_from([0, 1, 2, 3, 4])))
        if draw(st.integers(0, 5)) == 5:  # ragged
            series = [draw(histories(lengths)) for _ in range(count)]
        else:
            n = draw(lengths)
            series = [draw(histories(st.just(n))) for _ in range(count)]
        req.channels.extend(forecast_pb2.Series(values=s) for s in series)
    req.horizon = draw(int_field(0, 6, (7, 100)))
    levels = mostly(
        st.one_of(st.sampled_from([0.1, 0.25, 0.5, 0.75, 0.9, 0.1 + 1e-12, 0.9 - 1e-12]), st.floats(0.1, 0.9)),
        st.sampled_from([0.0, 1.0, NAN, INF, -INF, -0.5, 1.5, 0.05, 0.95, 0.1 - 1e-8, 0.9 + 1e-8, 5e-324, 1 - 1e-16]),
        one_in=8,
    )
    req.quantiles.extend(
        draw(mostly(st.lists(levels, max_size=6), st.lists(levels, min_size=30, max_size=36), one_in=8))
    )
    req.frequency = draw(mostly(st.sampled_from(["", "", "h", "1h", "60min", "D", "M", "MS", "Q", "W-SUN", "15min", "5min"]),
                                st.one_of(st.sampled_from(["0h", "fortnightly", "1.5h", "-1D", "h2", " ", "W-MONDAY"]),
                                          WILD_TEXT), one_in=6))
    req.season_length = draw(mostly(st.sampled_from([0, 0, 0, 1, 4, 12, 24]),
                                    st.sampled_from([-1, 25, 2**31 - 1, -(2**31)]), one_in=8))
    return req


@st.composite
def translate_requests(draw) -> translate_pb2.TranslateRequest:
    text = mostly(
        st.one_of(
            st.sampled_from(SENTENCES), st.lists(st.sampled_from(SENTENCES), min_size=1, max_size=4).map(" ".join)
        ),
        st.one_of(WILD_TEXT, st.sampled_from(["", " ", "\t\n", "\u3000", "\x1c\x1d"]), huge_text(1000)),
    )
    texts = draw(
        mostly(
            st.lists(text, min_size=1, max_size=4),
            st.one_of(st.just([]), st.lists(text, min_size=31, max_size=34)),
            one_in=10,
        )
    )
    return translate_pb2.TranslateRequest(
        model=draw(model_names("translate")),
        version=draw(versions()),
        texts=texts,
        beam_size=draw(int_field(0, 8)),
        max_length=draw(int_field(0, 48, (49,))),
        return_attention=draw(st.booleans()),
    )


FLOAT32_TRAPS = [NAN, INF, -INF, -1.0, -1e-45, -0.0, 0.0, 1e-45, 1e-38, 3.4028234663852886e38, 1.0000001192092896]


@st.composite
def generate_requests(draw) -> generate_pb2.GenerateRequest:
    req = generate_pb2.GenerateRequest(
        model=draw(model_names("generate")),
        version=draw(versions()),
        prompt=draw(mostly(st.one_of(st.sampled_from(PROMPTS), WILD_TEXT), st.one_of(huge_text(1000), huge_text(512)))),
        max_tokens=draw(int_field(0, 20, (64, 65))),
        top_k=draw(int_field(0, 50, (2**31 - 1,))),
    )
    if draw(st.booleans()):
        req.temperature = draw(mostly(st.floats(0.0, 3.0, width=32), st.sampled_from(FLOAT32_TRAPS)))
    if draw(st.booleans()):
        req.top_p = draw(mostly(st.floats(0.0, 1.0, exclude_min=True, width=32), st.sampled_from(FLOAT32_TRAPS)))
    if draw(st.booleans()):
        req.seed = draw(mostly(st.integers(0, 2**63 - 1), st.sampled_from([-1, -(2**63)])))
    stop = st.one_of(st.sampled_from(["\n", "e", " ", "zz", ".", "First", "\U0001f600"]), WILD_TEXT, huge_text(64))
    req.stop.extend(draw(mostly(st.lists(stop, max_size=3), st.lists(stop, min_size=7, max_size=10))))
    req.logprobs = draw(st.booleans())
    req.top_logprobs = draw(st.one_of(st.just(0), int_field(0, 5, (20, 21))))
    return req


@st.composite
def score_requests(draw) -> generate_pb2.ScoreRequest:
    continuation = st.one_of(st.sampled_from(["zen", "\n", " we are", "a", "Citizen:\nWe"]), WILD_TEXT)
    return generate_pb2.ScoreRequest(
        model=draw(model_names("generate")),
        version=draw(versions()),
        prompt=draw(mostly(st.one_of(st.sampled_from(PROMPTS), WILD_TEXT), st.one_of(huge_text(1000), huge_text(512)))),
        continuations=draw(mostly(st.lists(mostly(continuation, st.one_of(st.just(""), huge_text(1000))), min_size=1,
                                           max_size=4),
                                  st.one_of(st.just([]), st.lists(continuation, min_size=17, max_size=18)))),
    )


@st.composite
def models_requests(draw):
    if draw(st.booleans()):
        task = draw(
            mostly(
                st.sampled_from(["", *TASKS]),
                st.one_of(
                    st.sampled_from(
                        ["Translate", "translate ", "forecasts", "\x00", "*", "x" * 20_000, "\u00e9" * 3000]
                    ),
                    WILD_TEXT,
                ),
                one_in=3,
            )
        )
        return models_pb2.ListModelsRequest(task=task)
    return models_pb2.GetModelRequest(name=draw(model_names("")), version=draw(versions()))


# --- oracle --------------------------------------------------------------------------------------


class Problems:
    """What may go wrong with a request: (code, field) pairs, any of which may be the answer."""

    def __init__(self) -> None:
        self.items: set[tuple[grpc.StatusCode, str]] = set()

    def add(self, field_name: str, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> None:
        self.items.add((code, field_name))

    def __bool__(self) -> bool:
        return bool(self.items)


def resolve(live: LiveServer, task: str, name: str, version: str, problems: Problems) -> ModelFacts | None:
    """The model a request of ``task`` reaches, or None after recording why it cannot."""
    facts = live.facts.get(name or live.defaults[task])
    if facts is None:
        problems.add("model", grpc.StatusCode.NOT_FOUND)
        return None
    if version not in ("", "1"):
        problems.add("version", grpc.StatusCode.NOT_FOUND)
        return None
    if facts.task != task:
        problems.add("model")
        return None
    return facts


def brief(message: Any, limit: int = 600) -> str:
    """A request for an assertion message, cut to ``limit`` characters."""
    text = repr(message) if not hasattr(message, "ListFields") else str(message)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_error(err: grpc.RpcError, problems: Problems, request: Any, unnamed: str = "") -> tuple[str, str]:
    """An error answer must be documented and name one of the invalid fields (in its BadRequest and its
    message; ``unnamed``: the one message that may leave the field out, a known server deviation).
    Returns the code's name and the field named."""
    code = err.code()
    assert code in ALLOWED_ERRORS, f"{code.name}: {brief(err.details())} for {brief(request)}"
    message = err.details() or ""
    assert len(message.encode()) <= MAX_MESSAGE_BYTES, f"a {len(message.encode())}-byte message: {message[:200]!r}..."
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        fields = bad_request_fields(err)
        assert len(fields) == 1, f"BadRequest names {fields} for {message!r}"
        named = fields[0]
        assert named in message or message == unnamed, f"the message {message!r} does not name the field {named!r}"
    else:
        named = "version" if "has no version" in message else "model"
        assert named in message, message
    assert (code, named) in problems.items, (
        f"{code.name} naming {named!r} ({message!r}), but the invalid fields are {sorted((c.name, f) for c, f in problems.items)} "
        f"for {brief(request)}"
    )
    return code.name, named


def assert_mixed(rpc_name: str) -> None:
    """The strategies reach both sides: some answers, some errors."""
    outcomes = OUTCOMES[rpc_name]
    assert outcomes["OK"] and sum(outcomes.values()) > outcomes["OK"], f"{rpc_name}: {dict(outcomes)}"


def call(rpc, request: Any) -> tuple[Any, grpc.RpcError | None]:
    try:
        return rpc(request, timeout=CALL_TIMEOUT_S), None
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise AssertionError(f"the server did not answer within {CALL_TIMEOUT_S} s: {brief(request)}") from None
        return None, err


def assert_fields(rpc_name: str, fields: set[str]) -> None:
    """The strategy reached each of these rules: an error named each field."""
    assert fields <= set(NAMED[rpc_name]), f"{rpc_name}: no error named {sorted(fields - set(NAMED[rpc_name]))}"


def outcome(rpc_name: str, problems: Problems, request: Any, reply: Any, err: grpc.RpcError | None,
            unnamed: str = "") -> bool:
    """Check the error path, or that a valid request succeeded; True when there is a reply to check."""
    EXAMPLES[rpc_name] += 1
    if err is not None:
        code, named = check_error(err, problems, request, unnamed)
        OUTCOMES[rpc_name][code] += 1
        NAMED[rpc_name][named] += 1
        return False
    assert not problems, (
        f"succeeded although {sorted((c.name, f) for c, f in problems.items)} are invalid: {brief(request)}"
    )
    OUTCOMES[rpc_name]["OK"] += 1
    return True


# --- Forecast --------------------------------------------------------------------------------------


def forecast_oracle(live: LiveServer, req: forecast_pb2.ForecastRequest) -> tuple[Problems, ModelFacts | None]:
    problems = Problems()
    where = "channels" if req.channels else "history"
    if req.history and req.channels:
        problems.add("channels")
    if req.channels and len({len(s.values) for s in req.channels}) > 1:
        problems.add("channels")
    facts = resolve(live, "forecast", req.model, req.version, problems)
    if facts is None or problems:
        return problems, facts
    spec, cfg = facts.forecast, live.config
    series = [list(s.values) for s in req.channels] if req.channels else [list(req.history)]
    steps = len(series[0])
    values = np.array(series, dtype=np.float64)
    shape_ok = len(series) == spec.channels and spec.min_history <= steps <= cfg.max_history
    if not shape_ok or not np.all(np.isfinite(values)) or np.any(np.abs(values) > VALUE_BOUND):
        problems.add(where)
    if not 0 <= req.horizon <= spec.horizon:
        problems.add("horizon")
    lo, hi = spec.quantiles[0], spec.quantiles[-1]
    if len(req.quantiles) > cfg.max_quantiles or any(
        not (0 < q < 1 and lo - 1e-9 <= q <= hi + 1e-9) for q in req.quantiles
    ):
        problems.add("quantiles")
    try:
        asked = frequency.parse(req.frequency) if req.frequency else None
    except frequency.FrequencyError:
        problems.add("frequency")
        asked = None
    trained = [frequency.parse(f) for f in spec.frequencies]
    if asked is not None and not spec.season_input and trained and not any(asked.same_as(f) for f in trained):
        problems.add("frequency")
    if req.season_length and (not spec.season_input or not 1 <= req.season_length <= spec.window):
        problems.add("season_length")
    return problems, facts


def check_forecast(live: LiveServer, req: forecast_pb2.ForecastRequest) -> None:
    problems, facts = forecast_oracle(live, req)
    reply, err = call(live.forecaster.Forecast, req)
    if not outcome("Forecast", problems, req, reply, err):
        return
    spec = facts.forecast
    horizon = req.horizon or spec.horizon
    assert (reply.model, reply.version) == (facts.name, "1")
    assert len(reply.forecast) == horizon and all(math.isfinite(v) for v in reply.forecast), brief(reply)
    levels = list(req.quantiles) or list(spec.quantiles)
    assert [q.quantile for q in reply.quantiles] == levels
    target = reply.target_channel
    assert 0 <= target < spec.channels
    assert len(reply.channels) == (spec.channels if spec.channels > 1 else 0)
    for series in reply.channels:
        assert len(series.values) == horizon and all(math.isfinite(v) for v in series.values)
    if spec.channels > 1:
        assert list(reply.channels[target].values) == list(reply.forecast)
    paths = []
    for qp in reply.quantiles:
        assert len(qp.values) == horizon and all(math.isfinite(v) for v in qp.values)
        assert len(qp.channels) == (spec.channels if spec.channels > 1 else 0)
        for series in qp.channels:
            assert len(series.values) == horizon and all(math.isfinite(v) for v in series.values)
        paths.append((qp.quantile, np.array(qp.values)))
    paths.sort(key=lambda p: p[0])
    for (q1, lower), (q2, upper) in itertools.pairwise(paths):
        tolerance = 1e-6 * (1.0 + np.abs(lower) + np.abs(upper))
        assert np.all(lower <= upper + tolerance), f"the paths of levels {q1} and {q2} cross: {lower} vs {upper}"
        if q1 == q2:
            np.testing.assert_array_equal(lower, upper)
    for q, path in paths:
        if q == 0.5:
            np.testing.assert_allclose(path, reply.forecast, rtol=1e-12, atol=0)
    if not spec.season_input:
        assert reply.season_length == 0
    elif req.season_length:
        assert reply.season_length == req.season_length
    elif req.frequency:
        assert reply.season_length == min(frequency.season_of(req.frequency), spec.window)
    else:
        assert 1 <= reply.season_length <= spec.window


@pytest.mark.parametrize("profile", profiles(600))
def test_forecast_storm(live, profile):
    @profile
    @given(req=forecast_requests())
    def storm(req):
        check_forecast(live, req)

    storm()
    assert_mixed("Forecast")


# --- Translate -------------------------------------------------------------------------------------


def translate_oracle(
    live: LiveServer, req: translate_pb2.TranslateRequest
) -> tuple[Problems, ModelFacts | None, list[list[str]]]:
    problems = Problems()
    facts = resolve(live, "translate", req.model, req.version, problems)
    if facts is None:
        return problems, None, []
    cfg, limits = live.config, facts.limits
    if not req.texts or len(req.texts) > cfg.max_texts:
        problems.add("texts")
    if not 0 <= req.beam_size <= cfg.max_beam:
        problems.add("beam_size")
    if not 0 <= req.max_length <= limits["max_target_tokens"]:
        problems.add("max_length")
    tokens = []  # per text: each sentence's source tokens
    splitter = SentenceSplitter(facts.languages.get("source", ""))
    for text in req.texts:
        if not text.strip() or len(text) > cfg.max_text_chars:
            problems.add("texts")
            continue
        sentences = [toks for toks in (facts.codecs["source"].encode(s)[1] for s in splitter.split(text)) if toks]
        if not sentences or any(len(toks) > limits["max_source_tokens"] for toks in sentences):
            problems.add("texts")
        if req.return_attention and sum(map(len, sentences)) > limits["max_source_tokens"]:
            problems.add("texts")
        tokens.append(sentences)
    return problems, facts, tokens


def check_translate(live: LiveServer, req: translate_pb2.TranslateRequest) -> None:
    problems, facts, source_tokens = translate_oracle(live, req)
    reply, err = call(live.translator.Translate, req)
    if not outcome("Translate", problems, req, reply, err):
        return
    assert (reply.model, reply.version) == (facts.name, "1")
    assert len(reply.translations) == len(req.texts)
    for t, sentences in zip(reply.translations, source_tokens):
        src = [tok for toks in sentences for tok in toks]
        assert list(t.source_tokens) == src and t.sentences == len(sentences)
        assert t.unknown_source_tokens == src.count("[UNK]") <= len(src) and 0 <= t.copied_words <= len(t.tokens)
        limit = sum(req.max_length or min(facts.limits["max_target_tokens"], 2 * len(toks) + 10) for toks in sentences)
        assert len(t.tokens) <= limit
        assert isinstance(t.text, str) and math.isfinite(t.score) and t.score <= 1e-9, t
        assert t.HasField("attention") == req.return_attention
        if req.return_attention:
            rows, cols = t.attention.rows, t.attention.cols
            assert (rows, cols) == (len(t.tokens), len(src)) and len(t.attention.values) == rows * cols
            if rows:
                weights = np.array(t.attention.values).reshape(rows, cols)
                assert np.all(np.isfinite(weights)) and np.all(weights >= 0)
                np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-3)


@pytest.mark.parametrize("profile", profiles(500))
def test_translate_storm(live, profile):
    @profile
    @given(req=translate_requests())
    def storm(req):
        check_translate(live, req)

    storm()
    assert_mixed("Translate")


# --- Generate and GenerateStream ---------------------------------------------------------------


def generate_oracle(
    live: LiveServer, req: generate_pb2.GenerateRequest
) -> tuple[Problems, ModelFacts | None, int, int]:
    """Problems, model, expected prompt tokens and effective max_tokens."""
    problems = Problems()
    facts = resolve(live, "generate", req.model, req.version, problems)
    if facts is None:
        return problems, None, 0, 0
    cfg, limits = live.config, facts.limits
    max_tokens = req.max_tokens or min(cfg.default_max_tokens, limits["max_tokens"])
    if not 1 <= max_tokens <= limits["max_tokens"]:
        problems.add("max_tokens")
    if req.HasField("temperature") and not (req.temperature >= 0 and math.isfinite(req.temperature)):
        problems.add("temperature")
    if req.top_k < 0:
        problems.add("top_k")
    if req.HasField("top_p") and not 0 < req.top_p <= 1:
        problems.add("top_p")
    if req.HasField("seed") and req.seed < 0:
        problems.add("seed")
    if len(req.stop) > cfg.max_stop or any(not s or len(s) > cfg.max_stop_chars for s in req.stop):
        problems.add("stop")
    if not 0 <= req.top_logprobs <= cfg.max_top_logprobs:
        problems.add("top_logprobs")
    return problems, facts, prompt_oracle(live, facts, req.prompt, problems), max_tokens


def prompt_oracle(live: LiveServer, facts: ModelFacts, prompt: str, problems: Problems) -> int:
    """The prompt's token count (0 when it is refused; empty: the BOS token)."""
    if len(prompt) > live.config.max_text_chars:
        problems.add("prompt")
        return 0
    prompt_tokens = len(facts.codecs["text"].encode(prompt)[0]) or 1
    if prompt_tokens > facts.limits["max_prompt_tokens"]:
        problems.add("prompt")
    return prompt_tokens


def check_logprobs(req, entries, completion_tokens: int) -> None:
    """Every sampled token has its logprob (and top_logprobs alternatives, best first) when asked."""
    if not (req.logprobs or req.top_logprobs):
        assert not entries
        return
    assert len(entries) == completion_tokens
    for t in entries:
        assert math.isfinite(t.logprob) and t.logprob <= 1e-9
        alternatives = [a.logprob for a in t.top_logprobs]
        assert len(alternatives) == req.top_logprobs and alternatives == sorted(alternatives, reverse=True)
        if alternatives:
            assert t.logprob <= alternatives[0] + 1e-9


def check_result(
    req, text: str, finish: str, prompt_tokens: int, completion_tokens: int, want_prompt: int, max_tokens: int
) -> None:
    assert isinstance(text, str)
    assert finish in FINISH_REASONS, finish
    assert prompt_tokens == want_prompt
    assert 1 <= completion_tokens <= max_tokens
    if finish == "length":
        assert completion_tokens == max_tokens
    for s in req.stop:
        assert s not in text, f"stop {s!r} in {text!r}"


def check_generate(live: LiveServer, req: generate_pb2.GenerateRequest) -> None:
    problems, facts, want_prompt, max_tokens = generate_oracle(live, req)
    reply, err = call(live.generator.Generate, req)
    if not outcome("Generate", problems, req, reply, err):
        return
    assert (reply.model, reply.version) == (facts.name, "1")
    check_result(
        req, reply.text, reply.finish_reason, reply.prompt_tokens, reply.completion_tokens, want_prompt, max_tokens
    )
    check_logprobs(req, reply.logprobs, reply.completion_tokens)


def check_generate_stream(live: LiveServer, req: generate_pb2.GenerateRequest) -> None:
    problems, _, want_prompt, max_tokens = generate_oracle(live, req)
    chunks, err = call(lambda r, timeout: list(live.generator.GenerateStream(r, timeout=timeout)), req)
    if not outcome("GenerateStream", problems, req, chunks, err):
        return
    assert chunks, "a stream without chunks"
    *body, last = chunks
    assert all(c.finish_reason == "" for c in body) and last.finish_reason
    assert all(c.prompt_tokens == want_prompt for c in chunks)
    counts = [c.completion_tokens for c in chunks]
    assert counts == sorted(counts), counts
    text = "".join(c.text for c in chunks)
    check_result(req, text, last.finish_reason, last.prompt_tokens, last.completion_tokens, want_prompt, max_tokens)
    check_logprobs(req, [t for c in chunks for t in c.logprobs], last.completion_tokens)
    deterministic = req.HasField("seed") or (req.HasField("temperature") and req.temperature == 0)
    if deterministic:  # the stream is the unary answer, piece by piece
        reply = live.generator.Generate(req, timeout=CALL_TIMEOUT_S)
        assert (reply.text, reply.finish_reason, reply.completion_tokens) == (
            text,
            last.finish_reason,
            last.completion_tokens,
        )


@pytest.mark.parametrize("profile", profiles(600))
def test_generate_storm(live, profile):
    @profile
    @given(req=generate_requests())
    def storm(req):
        check_generate(live, req)

    storm()
    assert_mixed("Generate")


@pytest.mark.parametrize("profile", profiles(400))
def test_generate_stream_storm(live, profile):
    @profile
    @given(req=generate_requests())
    def storm(req):
        check_generate_stream(live, req)

    storm()
    assert_mixed("GenerateStream")


# --- Score --------------------------------------------------------------------------------------------


def check_score(live: LiveServer, req: generate_pb2.ScoreRequest) -> None:
    problems = Problems()
    facts = resolve(live, "generate", req.model, req.version, problems)
    want_prompt, lengths = 0, []
    if facts is not None:
        want_prompt = prompt_oracle(live, facts, req.prompt, problems)
        if not 1 <= len(req.continuations) <= live.config.max_continuations:
            problems.add("continuations")
        for text in req.continuations:
            n = len(facts.codecs["text"].encode(text)[0]) if len(text) <= live.config.max_text_chars else 0
            if not 1 <= n <= facts.limits["max_tokens"]:
                problems.add("continuations")
            lengths.append(n)
    reply, err = call(live.generator.Score, req)
    if not outcome("Score", problems, req, reply, err):
        return
    assert (reply.model, reply.version, reply.prompt_tokens) == (facts.name, "1", want_prompt)
    assert [s.text for s in reply.scores] == list(req.continuations)
    for s, n in zip(reply.scores, lengths, strict=True):
        assert len(s.tokens) == n and all(math.isfinite(t.logprob) and t.logprob <= 1e-9 for t in s.tokens)
        assert s.logprob == pytest.approx(sum(t.logprob for t in s.tokens), abs=1e-6)


@pytest.mark.parametrize("profile", profiles(300))
def test_score_storm(live, profile):
    @profile
    @given(req=score_requests())
    def storm(req):
        check_score(live, req)

    storm()
    assert_mixed("Score")


# --- Recognize and StreamingRecognize ------------------------------------------------------------------

RATES = [8000, 16000, 22050, 44100, 48000]
# Rates no audio of the storm has: outside 8000..48000 (each a config.sample_rate_hertz error).
RATE_TRAPS = [0, 7999, 48001, -1, 4000, 96000, *INT32]
ENCODING_TRAPS = [3, 9, -1, *INT32]  # numbers no RecognitionConfig.AudioEncoding has
ALTERNATIVES_TRAPS = [-1, 11, 12, 1000, *INT32]  # beyond the server's max_alternatives (10)
END_SILENCE_TRAPS = [-1, 1, 99, 10001, *INT32]  # outside 100..10000 ms


@dataclass(frozen=True)
class WavFacts:
    """What the strategy wrote into a WAV file: all the oracle knows of it (no second WAV parser here)."""

    channels: int
    width: int  # bytes per sample
    rate: int  # the file's own rate
    frames: int
    truncated: bool = False  # cut short: the server must refuse it whatever was cut


def resampled_length(n: int, rate: int, target: int) -> int:
    """Samples soxr makes of ``n`` at ``rate`` Hz at ``target`` Hz: n * target / rate rounded half up
    (checked against soxr for every rate of the storm, whole signals and streams)."""
    return (2 * n * target + rate) // (2 * rate)


def frame_samples(spec: models_pb2.SpeechSpec) -> int:
    return round(spec.frame_seconds * spec.sample_rate)


def sample_counts(rate: int) -> st.SearchStrategy[int]:
    """Mostly 0.03..3 s of samples at ``rate``; sometimes none, too few for one frame at any rate, exactly
    max_audio_seconds or past it."""
    limit = int(LIMITS["max_audio_seconds"] * rate)
    usual = st.floats(0.03, 3.0).map(lambda s: int(s * rate))
    edges = st.sampled_from([0, 1, 7, rate // 100, rate // 60, limit, limit + 1, limit + rate // 2])
    return mostly(usual, edges, one_in=6)


def speech_names() -> tuple[st.SearchStrategy[str], st.SearchStrategy[str]]:
    """Model and version: the recognition model most of the time, the traps of the other storms less often."""
    return (mostly(st.sampled_from(["", "tiny-recognize"]), model_names("recognize"), one_in=3),
            mostly(st.sampled_from(["", "1"]), versions(), one_in=3))


@st.composite
def recognize_requests(draw) -> tuple[recognize_pb2.RecognizeRequest, WavFacts | None]:
    """Mostly valid recordings (LINEAR16 or WAV files at 8..48 kHz, 0.03..3 s of tones, noise, silence
    or full scale) so that many succeed, with encodings, rates, alternatives, audio and models that
    are wrong now and then; and what the strategy wrote into a WAV file (None: no WAV file)."""
    rate = draw(st.sampled_from(RATES))
    samples = synth(draw(st.sampled_from(SIGNALS)), draw(sample_counts(rate)), rate, draw(st.integers(0, 2**16)))
    kind = draw(mostly(st.sampled_from(["linear16", "wav"]),
                       st.sampled_from(["odd", "junk", "truncated wav", "stereo wav", "wav at a bad rate"]), one_in=6))
    wav = None
    if kind == "linear16":
        audio = linear16(samples)
    elif kind == "odd":
        audio = linear16(samples) + b"\x01"
    elif kind == "junk":  # never a RIFF header: surely no WAV file, and far too short for LINEAR16
        audio = draw(st.binary(min_size=1, max_size=64).filter(lambda b: b[:4] not in (b"RIFF", b"RF64")))
    else:
        channels = 2 if kind == "stereo wav" else 1
        width = draw(mostly(st.just(2), st.sampled_from([1, 3, 4])))
        file_rate = draw(st.sampled_from([4000, 7999, 48001, 96000])) if kind == "wav at a bad rate" else rate
        audio = wav_bytes(samples, file_rate, channels, width)
        if kind == "truncated wav":
            audio = audio[: draw(st.integers(0, len(audio) - 1))]
        wav = WavFacts(channels, width, file_rate, len(samples), truncated=kind == "truncated wav")
    natural = [WAV, 0] if wav else [LINEAR16, 0]  # 0: WAV when the bytes start with RIFF, else LINEAR16
    encoding = draw(mostly(st.sampled_from(natural), st.sampled_from([LINEAR16, WAV, *ENCODING_TRAPS]), one_in=8))
    rates = [0, wav.rate] if wav else [rate]  # a WAV file: 0 or its own rate
    others = [r for r in RATES if r not in rates]  # valid, but not the audio's (a WAV file: a mismatch)
    model, version = speech_names()
    config = recognize_pb2.RecognitionConfig(
        encoding=encoding,
        sample_rate_hertz=draw(mostly(st.sampled_from(rates), st.sampled_from(RATE_TRAPS + others), one_in=8)),
        max_alternatives=draw(mostly(st.integers(0, 10), st.sampled_from(ALTERNATIVES_TRAPS), one_in=8)),
        enable_word_time_offsets=draw(st.booleans()),
        model=draw(model),
        version=draw(version),
    )
    return recognize_pb2.RecognizeRequest(config=config, audio=audio), wav


def recognize_oracle(
    live: LiveServer, req: recognize_pb2.RecognizeRequest, wav: WavFacts | None
) -> tuple[Problems, ModelFacts | None, int, int]:
    """The one problem the server's validation meets first (RecognizerServicer, then the engine's model
    resolution, RecognizeModel.prepare and audio.decode, in their order), the model, and the decoded
    audio's samples and rate."""
    problems = Problems()
    cfg, data = req.config, req.audio
    if cfg.encoding not in (0, LINEAR16, WAV):  # checked before the model is looked up
        problems.add("config.encoding")
        return problems, None, 0, 0
    facts = resolve(live, "recognize", cfg.model, cfg.version, problems)
    if facts is None:
        return problems, None, 0, 0

    def first_problem() -> tuple[str, int, int]:
        if not 0 <= cfg.max_alternatives <= live.config.max_alternatives:
            return "config.max_alternatives", 0, 0
        as_wav = cfg.encoding == WAV or (cfg.encoding == 0 and data[:4] in (b"RIFF", b"RF64"))
        rate = cfg.sample_rate_hertz
        if not (as_wav and rate == 0) and not 8000 <= rate <= 48000:
            return "config.sample_rate_hertz", 0, 0
        if not data:
            return "audio", 0, 0
        if as_wav:
            if wav is None or wav.truncated or wav.channels != 1 or not 8000 <= wav.rate <= 48000:
                return "audio", 0, 0
            if rate and rate != wav.rate:
                return "config.sample_rate_hertz", 0, 0
            n, rate = wav.frames, wav.rate
        elif len(data) % 2:
            return "audio", 0, 0
        else:
            n = len(data) // 2
        if not n or n / rate > live.config.max_audio_seconds:
            return "audio", 0, 0
        if resampled_length(n, rate, facts.speech.sample_rate) < frame_samples(facts.speech):
            return "audio", 0, 0  # not one frame
        return "", n, rate

    named, n, rate = first_problem()
    if named:
        problems.add(named)
    return problems, facts, n, rate


def check_alternatives(spec: models_pb2.SpeechSpec, alternatives, max_alternatives: int, words: bool,
                       end_ns: int) -> None:
    """1..max(1, max_alternatives) alternatives, best first, their confidences a distribution's part,
    transcripts of the model's labels separated by single spaces, and (``words``) one word per label,
    in order, within the result."""
    assert 1 <= len(alternatives) <= max(1, max_alternatives), alternatives
    confidences = [a.confidence for a in alternatives]
    assert all(0.0 <= c <= 1.0 for c in confidences) and sum(confidences) <= 1.0 + 1e-5, confidences
    assert confidences == sorted(confidences, reverse=True), confidences
    transcripts = [a.transcript for a in alternatives]
    assert len(set(transcripts)) == len(transcripts), transcripts
    labels = set(spec.labels)
    for a in alternatives:
        tokens = a.transcript.split(" ") if a.transcript else []
        assert all(t in labels for t in tokens), f"{a.transcript!r} is not made of {sorted(labels)}"
        if not words:
            assert not a.words
            continue
        assert [w.word for w in a.words] == tokens, (a.transcript, a.words)
        previous_end = 0
        for w in a.words:
            start, end = w.start_time.ToNanoseconds(), w.end_time.ToNanoseconds()
            # words named only in the silence the server appends (tail_ms) end the audio, possibly together
            assert previous_end <= start < end <= end_ns or start == end == end_ns, (a.words, end_ns)
            assert 0.0 <= w.confidence <= 1.0
            previous_end = end


def recognized_frames(end_time, spec: models_pb2.SpeechSpec) -> int:
    """The frames a result_end_time covers (a whole number of them)."""
    frames = round(end_time.ToNanoseconds() / (spec.frame_seconds * 1e9))
    assert abs(end_time.ToNanoseconds() - frames * spec.frame_seconds * 1e9) < 1e3, end_time
    return frames


def describe_recognize(req: recognize_pb2.RecognizeRequest, wav: WavFacts | None) -> str:
    config = text_format.MessageToString(req.config, as_one_line=True)
    return f"config {{{config}}} audio {len(req.audio)} bytes {req.audio[:16]!r}... {wav}"


def check_recognize(live: LiveServer, req: recognize_pb2.RecognizeRequest, wav: WavFacts | None) -> None:
    problems, facts, n, rate = recognize_oracle(live, req, wav)
    reply, err = call(live.recognizer.Recognize, req)
    if not outcome("Recognize", problems, describe_recognize(req, wav), reply, err):
        return
    spec = facts.speech
    assert (reply.model, reply.version) == (facts.name, "1")
    (result,) = reply.results
    assert reply.total_billed_time.ToNanoseconds() == round(n / rate * 1e9), (reply.total_billed_time, n, rate)
    # result_end_time: the whole frames of the resampled audio (one sample of slack either way).
    m = resampled_length(n, rate, spec.sample_rate)
    assert recognized_frames(result.result_end_time, spec) in {(m + d) // frame_samples(spec) for d in (-1, 0, 1)}
    check_alternatives(spec, result.alternatives, req.config.max_alternatives, req.config.enable_word_time_offsets,
                       result.result_end_time.ToNanoseconds())


@pytest.mark.parametrize("profile", profiles(300))
def test_recognize_storm(live, profile):
    @profile
    @given(case=recognize_requests())
    def storm(case):
        check_recognize(live, *case)

    storm()
    assert_mixed("Recognize")
    assert_fields("Recognize", {"model", "version", "config.encoding", "config.sample_rate_hertz",
                                "config.max_alternatives", "audio"})


CONFIG_MESSAGE = -1  # in a stream plan: a second streaming_config where audio belongs


@st.composite
def stream_requests(draw) -> list[recognize_pb2.StreamingRecognizeRequest]:
    """A stream's messages: a config (mostly valid: LINEAR16 or unspecified at 8..48 kHz), then 0..8
    chunks of one signal, mostly of even sizes within max_chunk_bytes; now and then a bad config,
    audio first, an odd or too large chunk, a second config, or more audio than max_stream_seconds."""
    message = recognize_pb2.StreamingRecognizeRequest
    model, version = speech_names()
    # 8 and 16 kHz twice as often: at 48 kHz the chunks hold far less audio.
    rate = draw(mostly(st.sampled_from([8000, 8000, 16000, *RATES]), st.sampled_from(RATE_TRAPS), one_in=12))
    config = recognize_pb2.RecognitionConfig(
        encoding=draw(mostly(st.sampled_from([LINEAR16, 0]), st.sampled_from([WAV, *ENCODING_TRAPS]), one_in=12)),
        sample_rate_hertz=rate,
        max_alternatives=draw(mostly(st.integers(0, 10), st.sampled_from(ALTERNATIVES_TRAPS), one_in=12)),
        enable_word_time_offsets=draw(st.booleans()),
        model=draw(model),
        version=draw(version),
    )
    limit = LIMITS["max_chunk_bytes"]
    even = mostly(st.sampled_from([1600, 2400, 3200, 4000, 4800, 6000, limit]),  # 0.1..0.4 s at 8 kHz
                  st.one_of(st.sampled_from([0, 2, 320]), st.integers(0, limit // 2).map(lambda k: 2 * k)), one_in=3)
    chunk = mostly(even, st.sampled_from([1, 3, 3201, limit + 1, limit + 2, 2 * limit, CONFIG_MESSAGE]), one_in=20)
    sizes = [draw(chunk) for _ in range(draw(mostly(st.integers(1, 8), st.just(0), one_in=8)))]
    data = linear16(synth(draw(st.sampled_from(SIGNALS)), sum(max(s, 0) for s in sizes) // 2 + 1,
                          rate if 8000 <= rate <= 48000 else 8000, draw(st.integers(0, 2**16))))
    first = message(streaming_config=recognize_pb2.StreamingRecognitionConfig(
        config=config, interim_results=draw(st.booleans()), single_utterance=draw(st.sampled_from([False, False, True])),
        end_silence_ms=draw(mostly(st.just(0), st.one_of(st.sampled_from([100, 300, 800, 10000]),
                                                          st.sampled_from(END_SILENCE_TRAPS)), one_in=4))))
    messages, pos = [], 0
    for size in sizes:
        if size == CONFIG_MESSAGE:
            messages.append(first)
        else:
            messages.append(message(audio_content=data[pos : pos + size]))
            pos += size
    opening = draw(mostly(st.just("config"), st.sampled_from(["audio", "empty message", "nothing"]), one_in=12))
    if opening == "config":
        return [first, *messages]
    if opening == "audio":
        return [message(audio_content=data[:320]), *messages]
    if opening == "empty message":
        return [message(), *messages]
    return []


@dataclass
class StreamPlan:
    """What the oracle expects of a stream."""

    problems: Problems
    facts: ModelFacts | None = None
    audio: bytes = b""  # every chunk's bytes, in order
    seconds: float = 0.0  # audio received, summed chunk by chunk as the server sums it
    unnamed: str = ""  # the error message that may leave its field out (see check_error)


def stream_oracle(live: LiveServer, messages: list[recognize_pb2.StreamingRecognizeRequest]) -> StreamPlan:
    """The first invalid thing in message order: the first message's config (checked when the stream
    opens: the encoding number, the model, then max_alternatives, encoding and rate), then each later
    message in turn (a config out of place, a chunk that is odd or over max_chunk_bytes, audio past
    max_stream_seconds)."""
    plan = StreamPlan(Problems())
    if not messages or messages[0].WhichOneof("streaming_request") != "streaming_config":
        plan.problems.add("streaming_config")
        return plan
    cfg, where = messages[0].streaming_config.config, "streaming_config.config"
    if cfg.encoding not in (0, LINEAR16, WAV):
        plan.problems.add(f"{where}.encoding")
        return plan
    plan.facts = resolve(live, "recognize", cfg.model, cfg.version, plan.problems)
    if plan.facts is None:
        return plan
    limits = live.config
    if not 0 <= cfg.max_alternatives <= limits.max_alternatives:
        plan.problems.add(f"{where}.max_alternatives")
    elif cfg.encoding == WAV:
        plan.problems.add(f"{where}.encoding")
    elif not 8000 <= cfg.sample_rate_hertz <= 48000:
        plan.problems.add(f"{where}.sample_rate_hertz")
    else:
        sc = messages[0].streaming_config
        if sc.end_silence_ms and not (sc.single_utterance and 100 <= sc.end_silence_ms <= 10000):
            plan.problems.add("streaming_config.end_silence_ms")
    if plan.problems:
        return plan
    audio = bytearray()
    for msg in messages[1:]:
        if msg.WhichOneof("streaming_request") == "streaming_config":
            plan.problems.add("streaming_config")
            break
        data = msg.audio_content
        if len(data) > limits.max_chunk_bytes or len(data) % 2:
            plan.problems.add("audio_content")
            break
        seconds = plan.seconds + len(data) // 2 / cfg.sample_rate_hertz
        if seconds > limits.max_stream_seconds:
            plan.problems.add("audio_content")
            break
        plan.seconds = seconds
        audio += data
    plan.audio = bytes(audio)
    return plan


def describe_stream(messages: list[recognize_pb2.StreamingRecognizeRequest]) -> str:
    parts = []
    for msg in messages:
        if msg.WhichOneof("streaming_request") == "streaming_config":
            parts.append(f"streaming_config {{{text_format.MessageToString(msg.streaming_config, as_one_line=True)}}}")
        elif msg.WhichOneof("streaming_request") == "audio_content":
            parts.append(f"audio_content {len(msg.audio_content)} bytes")
        else:
            parts.append("an empty message")
    return f"a stream of {len(messages)} messages: " + ", ".join(parts)


def check_stream(live: LiveServer, messages: list[recognize_pb2.StreamingRecognizeRequest]) -> None:
    plan = stream_oracle(live, messages)
    responses: list[recognize_pb2.StreamingRecognizeResponse] = []

    def run(_, timeout):
        responses.extend(live.recognizer.StreamingRecognize(iter(messages), timeout=timeout))
        return responses

    _, err = call(run, None)
    interim = messages and messages[0].streaming_config.interim_results
    if not outcome("StreamingRecognize", plan.problems, describe_stream(messages), responses, err, plan.unnamed):
        # What came before the error: interim results only, and only when asked for.
        assert not any(r.results[0].is_final for r in responses), responses
        assert interim or not responses, responses
        return
    facts, cfg = plan.facts, messages[0].streaming_config.config
    spec = facts.speech
    # single_utterance: the speaker may stop (END_OF_SINGLE_UTTERANCE) just before the final result
    events = [i for i, r in enumerate(responses) if r.speech_event_type]
    if events:
        assert messages[0].streaming_config.single_utterance and events == [len(responses) - 2], responses
        assert not responses[events[0]].results
        responses = [r for r in responses if not r.speech_event_type]
    assert responses, "a stream without a result"
    assert [r.results[0].is_final for r in responses] == [False] * (len(responses) - 1) + [True]
    if not interim:
        assert len(responses) == 1
    ends, billed = [], []
    for r in responses:
        assert (r.model, r.version) == (facts.name, "1") and len(r.results) == 1
        ends.append(r.results[0].result_end_time.ToNanoseconds())
        billed.append(r.total_billed_time.ToNanoseconds())
    assert ends == sorted(ends) and billed == sorted(billed), (ends, billed)
    for r in responses[:-1]:
        (alt,) = r.results[0].alternatives  # the best path so far
        check_alternatives(spec, [alt], 1, False, ends[-1])
        assert 0.0 <= r.results[0].stability <= 1.0
    final = responses[-1].results[0]
    assert final.stability == 0.0
    check_alternatives(spec, final.alternatives, cfg.max_alternatives, cfg.enable_word_time_offsets, ends[-1])
    if events:  # the stream ended before its audio did: the final result covers what was heard until then
        assert billed[-1] <= round(plan.seconds * 1e9) and ends[-1] <= billed[-1], (billed[-1], ends[-1], plan.seconds)
        assert final.alternatives[0].transcript, "an utterance ended without a word"
        return
    assert billed[-1] == round(plan.seconds * 1e9), (billed[-1], plan.seconds)
    n, rate = len(plan.audio) // 2, cfg.sample_rate_hertz
    if resampled_length(n, rate, spec.sample_rate) < frame_samples(spec):
        # Not one frame heard (no audio at all, or less than a frame): an empty transcript, sure of itself.
        assert [(a.transcript, a.confidence, len(a.words)) for a in final.alternatives] == [("", 1.0, 0)]
        assert ends[-1] == 0
        return
    # The final result is what one offline call on the whole audio recognises.
    offline = live.recognizer.Recognize(recognize_pb2.RecognizeRequest(
        config=recognize_pb2.RecognitionConfig(
            encoding=LINEAR16, sample_rate_hertz=rate, max_alternatives=cfg.max_alternatives,
            enable_word_time_offsets=cfg.enable_word_time_offsets, model=facts.name),
        audio=plan.audio), timeout=CALL_TIMEOUT_S).results[0]
    assert final.result_end_time == offline.result_end_time
    assert [a.transcript for a in final.alternatives] == [a.transcript for a in offline.alternatives]
    for got, want in zip(final.alternatives, offline.alternatives):
        assert got.confidence == pytest.approx(want.confidence, abs=1e-4), (final, offline)
        assert [(w.word, w.start_time, w.end_time) for w in got.words] == \
            [(w.word, w.start_time, w.end_time) for w in want.words]
        assert [w.confidence for w in got.words] == pytest.approx([w.confidence for w in want.words], abs=1e-4)


@pytest.mark.parametrize("profile", profiles(200))
def test_stream_storm(live, profile):
    @profile
    @given(messages=stream_requests())
    def storm(messages):
        check_stream(live, messages)

    storm()
    # A stream naming a model that does not exist, always (how many of hypothesis's draws hit a model
    # trap varied from run to run in CI; the field must be covered either way).
    config = recognize_pb2.RecognitionConfig(encoding=LINEAR16, sample_rate_hertz=8000, model="no-such-model")
    check_stream(live, [recognize_pb2.StreamingRecognizeRequest(
        streaming_config=recognize_pb2.StreamingRecognitionConfig(config=config, interim_results=True)),
        recognize_pb2.StreamingRecognizeRequest(audio_content=bytes(3200))])
    assert_mixed("StreamingRecognize")
    where = "streaming_config.config"
    assert_fields("StreamingRecognize", {"model", "streaming_config", f"{where}.encoding", f"{where}.sample_rate_hertz",
                                         f"{where}.max_alternatives", "audio_content"})


# --- ModelInfer (the Open Inference Protocol) ------------------------------------------------------

OIP_DATATYPES = ["BOOL", "UINT8", "INT32", "INT64", "UINT64", "FP16", "FP32", "FP64", "BYTES"]
OIP_INPUTS = {"translate": [("text", "BYTES")], "forecast": [("history", "FP32"), ("history", "FP64")],
              "generate": [("prompt", "BYTES")], "recognize": [("audio", "BYTES"), ("audio", "FP32")]}
OIP_TASKS = {"tiny-translate": "translate", "tiny-generate": "generate", "tiny-recognize": "recognize"}


@st.composite
def oip_recordings(draw, rate: int) -> bytes:
    """One row of an OIP `audio` BYTES input: mostly LINEAR16 at ``rate`` or a WAV file, 0.03..1 s (at
    most 8,000 samples: 33 rows stay far below max_message_bytes); sometimes empty, odd, stereo or junk."""
    n = min(int(draw(st.floats(0.03, 1.0)) * rate), 8000)
    samples = synth(draw(st.sampled_from(SIGNALS)), n, rate, draw(st.integers(0, 2**16)))
    kind = draw(mostly(st.sampled_from(["linear16", "wav"]), st.sampled_from(["empty", "odd", "stereo", "junk"])))
    if kind == "wav":
        return wav_bytes(samples, rate)
    if kind == "stereo":
        return wav_bytes(samples, rate, channels=2)
    if kind == "empty":
        return b""
    if kind == "junk":
        return draw(st.binary(min_size=1, max_size=64))
    return linear16(samples) + (b"\x01" if kind == "odd" else b"")


@st.composite
def infer_requests(draw) -> oip_pb2.ModelInferRequest:
    """Mostly well-formed ModelInfer requests for a served model (so that many succeed), with
    wrong names, datatypes, shapes, sizes, parameters and raw/typed mixes mixed in."""
    model = draw(mostly(st.sampled_from(["tiny-translate", "tiny-forecast", "tiny-forecast3", "tiny-generate",
                                         "tiny-recognize"]),
                        st.one_of(st.just(""), WILD_TEXT)))
    task = OIP_TASKS.get(model, "forecast")
    req = oip_pb2.ModelInferRequest(model_name=model, id=draw(st.text(max_size=5)))
    name, datatype = draw(st.sampled_from(OIP_INPUTS[task]))
    name = draw(mostly(st.just(name), st.sampled_from(["text", "history", "prompt", "continuation", "audio", "x"])))
    datatype = draw(mostly(st.just(datatype), st.sampled_from(OIP_DATATYPES + ["STRING", ""])))
    rows = draw(mostly(st.integers(1, 3), st.sampled_from([0, 33])))
    rate = draw(mostly(st.sampled_from(RATES), st.sampled_from(RATE_TRAPS)))  # recognize: the audio's rate
    if datatype == "BYTES" and task == "recognize":
        items = draw(st.lists(oip_recordings(rate if 8000 <= rate <= 48000 else 8000), min_size=rows, max_size=rows))
        t = req.inputs.add(name=name, datatype=datatype, shape=draw(mostly(st.just([rows]), st.just([rows, 1]))))
        if draw(st.booleans()):
            req.raw_input_contents.append(b"".join(len(b).to_bytes(4, "little") + b for b in items))
        else:
            t.contents.bytes_contents.extend(items)
    elif task == "recognize":  # samples [rows, n] within -1..1 (now and then beyond, or NaN)
        n = draw(mostly(st.integers(160, 3000), st.integers(0, 200)))  # 33 rows of FP64 stay below 1 MiB
        shape = draw(mostly(st.just([rows, n]), st.sampled_from([[rows], [rows, n, 1], [n]])))
        count = int(np.prod(shape))
        samples = np.sin(np.arange(count) * draw(st.floats(0.01, 3.0))) * draw(st.floats(0.0, 1.0))
        if count and draw(st.integers(0, 9)) == 0:
            samples[draw(st.integers(0, count - 1))] = draw(st.sampled_from([1.5, -2.0, NAN, INF]))
        t = req.inputs.add(name=name, datatype=datatype, shape=shape)
        dtype = {"FP64": "<f8", "FP16": "<f2", "INT64": "<i8", "UINT64": "<u8", "INT32": "<i4", "UINT8": "<u1",
                 "BOOL": "?"}.get(datatype, "<f4")
        if draw(st.booleans()):
            req.raw_input_contents.append(samples.astype(dtype).tobytes())
        elif datatype == "FP64":
            t.contents.fp64_contents.extend(samples.tolist())
        else:
            t.contents.fp32_contents.extend(samples.astype(np.float32).tolist())
    elif datatype == "BYTES":
        items = draw(st.lists(st.one_of(st.sampled_from(["Ein Mann", "First", "All:", ""]), WILD_TEXT).map(
            lambda t: t.encode("utf-8", "surrogatepass")), min_size=rows, max_size=rows))
        shape = draw(mostly(st.just([rows]), st.sampled_from([[rows, 1], [rows, 2], [], [-1]])))
        t = req.inputs.add(name=name, datatype=datatype, shape=shape)
        if draw(st.booleans()):
            req.raw_input_contents.append(b"".join(len(b).to_bytes(4, "little") + b for b in items)
                                          + draw(mostly(st.just(b""), st.binary(max_size=6))))
        else:
            t.contents.bytes_contents.extend(items)
    else:
        channels = 3 if model == "tiny-forecast3" else 1
        steps = draw(mostly(st.integers(8, 40), st.integers(0, 70)))
        shape = [rows, steps] if channels == 1 else [rows, steps, channels]
        shape = draw(mostly(st.just(shape), st.lists(st.integers(-1, 5), max_size=4)))
        count = int(np.prod(shape)) if shape and min(shape) >= 0 else 0
        values = np.cumsum(np.asarray(draw(st.lists(st.floats(-3, 3), min_size=1, max_size=8)) * (count // 8 + 1))[:count])
        t = req.inputs.add(name=name, datatype=datatype, shape=shape)
        dtype = {"FP64": "<f8", "FP16": "<f2", "INT64": "<i8", "UINT64": "<u8", "INT32": "<i4", "UINT8": "<u1",
                 "BOOL": "?"}.get(datatype, "<f4")
        if draw(mostly(st.just(True), st.just(False))):
            req.raw_input_contents.append(values.astype(dtype).tobytes() + draw(mostly(st.just(b""), st.binary(max_size=3))))
        elif datatype == "FP64":
            t.contents.fp64_contents.extend(values.tolist())
        else:
            t.contents.fp32_contents.extend(values.astype(np.float32).tolist())
        if draw(st.integers(0, 9)) == 0:
            t.contents.fp32_contents.append(1.0)  # typed and raw together
    params = {"translate": ["beam_size", "max_length"], "forecast": ["horizon", "quantiles"],
              "generate": ["max_tokens", "temperature", "top_k", "seed", "stop", "logprobs"],
              "recognize": ["sample_rate_hertz", "encoding"]}[task]
    if task == "recognize":  # mostly the audio's rate (WAV files carry theirs), and an encoding now and then
        if draw(mostly(st.just(True), st.just(False), one_in=10)):
            req.parameters["sample_rate_hertz"].int64_param = rate
        if draw(st.integers(0, 2)) == 0:
            req.parameters["encoding"].string_param = draw(mostly(st.sampled_from(["LINEAR16", "WAV", ""]),
                                                                  st.sampled_from(["linear16", "MP3", "\x00"])))
    for key in draw(mostly(st.just([]), st.lists(st.sampled_from(params + ["sequence_id", "nope"]), max_size=3,
                                                 unique=True), one_in=3)):
        kind = draw(st.sampled_from(["int64_param", "uint64_param", "double_param", "string_param", "bool_param"]))
        value = {"int64_param": st.integers(-3, 8), "uint64_param": st.integers(0, 8), "double_param": st.floats(-1, 4),
                 "string_param": st.sampled_from(["0.1,0.9", "x", "\n", ""]), "bool_param": st.booleans()}[kind]
        setattr(req.parameters[key], kind, draw(value))
    if draw(st.integers(0, 4)) == 0:
        req.outputs.add(name=draw(st.sampled_from(["translation", "forecast", "text", "transcript", "nope"])))
    return req


def check_infer(live: LiveServer, req: oip_pb2.ModelInferRequest) -> None:
    """No oracle of every rule here (tests/integration/test_oip.py pins them): every answer is OK
    with well-formed raw outputs, or INVALID_ARGUMENT naming one field, or NOT_FOUND — never
    INTERNAL or UNKNOWN."""
    EXAMPLES["ModelInfer"] += 1
    reply, err = call(live.oip.ModelInfer, req)
    if err is not None:
        code = err.code()
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), f"{code.name}: {err.details()}"
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            fields = bad_request_fields(err)
            assert len(fields) == 1 and fields[0] in err.details(), (fields, err.details())
        OUTCOMES["ModelInfer"][code.name] += 1
        return
    OUTCOMES["ModelInfer"]["OK"] += 1
    assert reply.id == req.id and len(reply.raw_output_contents) == len(reply.outputs) >= 1
    for out, raw in zip(reply.outputs, reply.raw_output_contents, strict=True):
        count = int(np.prod(out.shape))
        if out.datatype == "BYTES":
            pos = n = 0
            while pos < len(raw):
                pos += 4 + int.from_bytes(raw[pos : pos + 4], "little")
                n += 1
            assert pos == len(raw) and n == count, (out, len(raw))
        else:
            size = {"FP32": 4, "FP64": 8, "INT32": 4, "BOOL": 1}[out.datatype]
            assert len(raw) == count * size, (out, len(raw))


@pytest.mark.parametrize("profile", profiles(300))
def test_infer_storm(live, profile):
    @profile
    @given(req=infer_requests())
    def storm(req):
        check_infer(live, req)

    storm()
    assert_mixed("ModelInfer")


# --- ListModels and GetModel -----------------------------------------------------------------------


def check_models(live: LiveServer, req) -> None:
    problems = Problems()
    if isinstance(req, models_pb2.ListModelsRequest):
        if req.task not in ("", *TASKS):
            problems.add("task")
        reply, err = call(live.models.ListModels, req)
        if not outcome("ListModels", problems, req, reply, err):
            return
        names = [m.name for m in reply.models]
        assert names == sorted(names)
        assert set(names) == {n for n, f in live.facts.items() if not req.task or f.task == req.task}
        assert all(m.state == "READY" and m.version == "1" for m in reply.models)
        return
    if req.name not in live.facts:
        problems.add("model", grpc.StatusCode.NOT_FOUND)
    elif req.version not in ("", "1"):
        problems.add("version", grpc.StatusCode.NOT_FOUND)
    reply, err = call(live.models.GetModel, req)
    if outcome("GetModel", problems, req, reply, err):
        assert (reply.model.name, reply.model.version, reply.model.state) == (req.name, "1", "READY")
        assert reply.model.task == live.facts[req.name].task


@pytest.mark.parametrize("profile", profiles(400))
def test_models_storm(live, profile):
    @profile
    @given(req=models_requests())
    def storm(req):
        check_models(live, req)

    storm()
    assert_mixed("ListModels")
    assert_mixed("GetModel")


# --- malformed protobuf bytes -----------------------------------------------------------------------

def _infer_bytes() -> oip_pb2.ModelInferRequest:
    req = oip_pb2.ModelInferRequest(model_name="tiny-translate", id="r")
    req.inputs.add(name="text", datatype="BYTES", shape=[1])
    req.raw_input_contents.append(b"\x08\x00\x00\x00Ein Mann")
    req.parameters["beam_size"].int64_param = 2
    return req


METHODS = {  # path: (request type, response type, server streaming)
    "/seqserve.v1.Translator/Translate": (translate_pb2.TranslateRequest, translate_pb2.TranslateResponse, False),
    "/seqserve.v1.Forecaster/Forecast": (forecast_pb2.ForecastRequest, forecast_pb2.ForecastResponse, False),
    "/seqserve.v1.Generator/Generate": (generate_pb2.GenerateRequest, generate_pb2.GenerateResponse, False),
    "/seqserve.v1.Generator/GenerateStream": (generate_pb2.GenerateRequest, generate_pb2.GenerateChunk, True),
    "/seqserve.v1.Generator/Score": (generate_pb2.ScoreRequest, generate_pb2.ScoreResponse, False),
    # StreamingRecognize is bidirectional: see test_regression_undecodable_stream_messages_are_invalid_argument.
    "/seqserve.v1.Recognizer/Recognize": (recognize_pb2.RecognizeRequest, recognize_pb2.RecognizeResponse, False),
    "/inference.GRPCInferenceService/ModelInfer": (oip_pb2.ModelInferRequest, oip_pb2.ModelInferResponse, False),
    "/inference.GRPCInferenceService/ModelMetadata": (oip_pb2.ModelMetadataRequest, oip_pb2.ModelMetadataResponse, False),
    "/seqserve.v1.Models/ListModels": (models_pb2.ListModelsRequest, models_pb2.ListModelsResponse, False),
    "/seqserve.v1.Models/GetModel": (models_pb2.GetModelRequest, models_pb2.GetModelResponse, False),
}
VALID_BYTES = [
    req.SerializeToString()
    for req in (
        translate_pb2.TranslateRequest(texts=["Ein Mann fährt Fahrrad."], max_length=4),
        forecast_pb2.ForecastRequest(history=[float(t % 7) for t in range(12)], quantiles=[0.5]),
        generate_pb2.GenerateRequest(prompt="First", max_tokens=3, seed=1, stop=["x"], logprobs=True, top_logprobs=2),
        generate_pb2.ScoreRequest(prompt="First", continuations=["Citizen", "a"]),
        recognize_pb2.RecognizeRequest(
            config=recognize_pb2.RecognitionConfig(encoding=LINEAR16, sample_rate_hertz=8000, max_alternatives=2),
            audio=linear16(synth("tone", 400, 8000, 1)),
        ),
        _infer_bytes(),
        models_pb2.GetModelRequest(name="tiny-generate", version="1"),
        models_pb2.ListModelsRequest(task="forecast"),
    )
]


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


@st.composite
def malformed(draw) -> bytes:
    kind = draw(st.sampled_from(["random", "truncated", "flipped", "wire", "length", "utf8", "append"]))
    valid = draw(st.sampled_from(VALID_BYTES))
    if kind == "random":
        return draw(st.binary(max_size=64))
    if kind == "truncated":
        return valid[: draw(st.integers(0, max(len(valid) - 1, 0)))]
    if kind == "flipped":
        data = bytearray(valid)
        for pos, byte in draw(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4)):
            data[pos % len(data)] = byte
        return bytes(data)
    number = draw(st.integers(1, 20))
    if kind == "wire":  # a known field number with every wire type, including the invalid 6 and 7
        wire = draw(st.integers(0, 7))
        return varint(number << 3 | wire) + draw(st.binary(max_size=12)) + valid
    if kind == "length":  # a length prefix far beyond the message
        length = draw(st.sampled_from([2**31 - 1, 2**31, 2**32 + 5, 2**63 - 1, 2**64 - 1, 10**6]))
        return varint(number << 3 | 2) + varint(length) + draw(st.binary(max_size=16))
    if kind == "utf8":  # a string field holding invalid UTF-8
        junk = draw(st.sampled_from([b"\xc3\x28", b"\xff", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"]))
        return valid + varint(number << 3 | 2) + varint(len(junk)) + junk
    return valid + draw(st.binary(max_size=24))  # trailing garbage


def raw_call(live: LiveServer, method: str, data: bytes) -> tuple[bytes | list[bytes] | None, grpc.RpcError | None]:
    _, _, streaming = METHODS[method]
    try:
        if streaming:
            rpc = live.channel.unary_stream(method, request_serializer=None, response_deserializer=None)
            return list(rpc(data, timeout=CALL_TIMEOUT_S)), None
        rpc = live.channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        return rpc(data, timeout=CALL_TIMEOUT_S), None
    except grpc.RpcError as err:
        return None, err


# Raw bytes may decode into any request: a valid one, one with invalid fields (INVALID_ARGUMENT,
# NOT_FOUND) -- or bytes that are no message at all, which the server answers with
# INVALID_ARGUMENT too (grpc.aio itself would send UNKNOWN, see servicers.request_decoder).
RAW_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


@pytest.mark.parametrize("profile", profiles(500))
def test_malformed_bytes_storm(live, profile):
    @profile
    @given(method=st.sampled_from(sorted(METHODS)), data=malformed())
    def storm(method, data):
        EXAMPLES["raw bytes"] += 1
        reply, err = raw_call(live, method, data)
        if err is None:
            _, response_cls, streaming = METHODS[method]
            for message in reply if streaming else [reply]:
                response_cls.FromString(message)  # a well-formed answer
            OUTCOMES["raw bytes"]["OK"] += 1
            return
        assert err.code() in RAW_ERRORS, f"{err.code().name}: {brief(err.details())} for {method} {brief(data)}"
        assert "Unexpected <class" not in (err.details() or ""), err.details()
        OUTCOMES["raw bytes"][err.code().name] += 1

    storm()
    assert_mixed("raw bytes")


@pytest.mark.parametrize("excess", [1, 4096, 1 << 20])
@pytest.mark.parametrize("method", ["/seqserve.v1.Forecaster/Forecast", "/seqserve.v1.Generator/GenerateStream"])
def test_messages_past_max_message_bytes_are_resource_exhausted(live, method, excess):
    limit = live.config.max_message_bytes
    payload = b"a" * (limit + excess)
    data = b"\x1a" + varint(len(payload)) + payload  # field 3: GenerateRequest.prompt / ForecastRequest.history
    _, err = raw_call(live, method, data)
    assert err is not None and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
    assert str(limit) in err.details()
    # ... and the connection keeps serving.
    reply = live.forecaster.Forecast(BASELINE_REQUESTS["forecast"], timeout=CALL_TIMEOUT_S)
    assert reply.SerializeToString(deterministic=True) == live.baseline["forecast"]


# --- regressions: the server bugs the storm found ---------------------------------------------------


def _invalid(rpc, req) -> tuple[str, str]:
    reply, err = call(rpc, req)
    assert err is not None, f"succeeded: {reply}"
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    (named,) = bad_request_fields(err)
    return named, err.details()


@pytest.mark.parametrize("value", [1e308, -1e308, 1.7976931348623157e308, 1e200, 2e153, -1e154])
def test_regression_history_values_beyond_the_bound_are_rejected(live, value):
    """A finite but huge value used to come back as an OK answer full of inf / NaN (the
    normaliser squares deviations); it is INVALID_ARGUMENT naming field, value and limit."""
    history = [float(t % 5) for t in range(30)]
    history[17] = value
    named, message = _invalid(live.forecaster.Forecast, forecast_pb2.ForecastRequest(history=history))
    assert named == "history"
    assert message.startswith(f"history[17, 0] is {value}; ")
    assert "values must be within -1e+153..1e+153 (model 'tiny-forecast' standardises in float64)" in message
    assert max_abs_value(24) == VALUE_BOUND and max_abs_value(10_000) == 1e151


def test_regression_values_just_within_the_bound_give_finite_forecasts(live):
    history = [VALUE_BOUND if t % 2 else -VALUE_BOUND for t in range(24)]
    reply = live.forecaster.Forecast(forecast_pb2.ForecastRequest(history=history), timeout=CALL_TIMEOUT_S)
    values = [*reply.forecast, *(v for q in reply.quantiles for v in q.values)]
    assert all(math.isfinite(v) for v in values)


@pytest.mark.parametrize(
    "channels, expected",
    [
        ([[float(t) for t in range(20)]] * 2, "channels has 2 series; model 'tiny-forecast3' expects 3"),
        ([[1.0] * 5] * 3, "channels have 5 steps; model 'tiny-forecast3' needs at least 8"),
        ([[1.0] * 20, [1.0] * 19 + [math.nan], [1.0] * 20], "channels[1].values[19] is nan"),
        ([[1.0] * 20, [1.0] * 20, [1.0] * 3 + [1e300] + [1.0] * 16], "channels[2].values[3] is 1e+300"),
    ],
)
def test_regression_channels_errors_name_the_channels_field(live, channels, expected):
    """Errors about a multichannel history used to name `history`, a field the client left empty."""
    req = forecast_pb2.ForecastRequest(
        model="tiny-forecast3", channels=[forecast_pb2.Series(values=c) for c in channels]
    )
    named, message = _invalid(live.forecaster.Forecast, req)
    assert named == "channels" and message.startswith(expected), message
    assert "history" not in message


def test_regression_history_errors_still_name_history(live):
    named, message = _invalid(
        live.forecaster.Forecast, forecast_pb2.ForecastRequest(model="tiny-forecast3", history=[1.0] * 20)
    )
    assert named == "history" and message == "history has 1 channels; model 'tiny-forecast3' expects 3"
    named, message = _invalid(live.forecaster.Forecast, forecast_pb2.ForecastRequest(history=[1.0] * 9 + [math.inf]))
    assert named == "history" and message.startswith("history[9, 0] is inf")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_regression_undecodable_requests_are_invalid_argument(live, method):
    """grpc.aio answers bytes that do not parse with UNKNOWN "Unexpected <class '...DecodeError'>:
    ..." (leaking the exception, skipping the metrics); the servicers now answer INVALID_ARGUMENT
    naming the message type."""
    _, service, name = method.split("/")
    handled = live.metrics.grpc_handled.labels(
        "server_stream" if name.endswith("Stream") else "unary", service, name, "INVALID_ARGUMENT"
    )
    before = handled._value.get()
    _, err = raw_call(live, method, b"\x0a\xff\xff\xff\xff\x0f")  # field 1, length 2**32 - 1
    assert err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    request_type = METHODS[method][0].DESCRIPTOR.full_name
    assert err.details().startswith(f"request is not a valid {request_type} message"), err.details()
    assert "Unexpected" not in err.details() and bad_request_fields(err) == []
    # The metrics interceptor saw the call (it records just after the status went out).
    deadline = time.monotonic() + 5
    while handled._value.get() < before + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert handled._value.get() >= before + 1


STREAMING_RECOGNIZE = "/seqserve.v1.Recognizer/StreamingRecognize"


@pytest.mark.parametrize("position", [0, 1, 2])
def test_regression_undecodable_stream_messages_are_invalid_argument(live, position):
    """StreamingRecognize is bidirectional, so the raw-bytes storm leaves it out; bytes that do not
    parse as a StreamingRecognizeRequest, first or later in a stream, are INVALID_ARGUMENT naming the
    message type (and the message's place after the first), never UNKNOWN; the server goes on serving."""
    handled = live.metrics.grpc_handled.labels("bidi_stream", "seqserve.v1.Recognizer", "StreamingRecognize",
                                               "INVALID_ARGUMENT")
    before = handled._value.get()
    config = recognize_pb2.RecognitionConfig(encoding=LINEAR16, sample_rate_hertz=8000)
    messages = [
        recognize_pb2.StreamingRecognizeRequest(
            streaming_config=recognize_pb2.StreamingRecognitionConfig(config=config, interim_results=True)),
        recognize_pb2.StreamingRecognizeRequest(audio_content=linear16(synth("tones", 1600, 8000, 3))),
    ]
    data = [m.SerializeToString() for m in messages[:position]] + [b"\x0a\xff\xff\xff\xff\x0f"]
    rpc = live.channel.stream_stream(STREAMING_RECOGNIZE, request_serializer=None, response_deserializer=None)
    replies = []
    try:
        for reply in rpc(iter(data), timeout=CALL_TIMEOUT_S):
            replies.append(recognize_pb2.StreamingRecognizeResponse.FromString(reply))
        raise AssertionError(f"the stream succeeded: {replies}")
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
        prefix = "" if position == 0 else f"message {position}: "
        assert err.details().startswith(f"{prefix}request is not a valid seqserve.v1.StreamingRecognizeRequest "
                                        "message"), err.details()
        assert "Unexpected" not in err.details() and bad_request_fields(err) == []
    assert not any(r.results[0].is_final for r in replies)  # interim results at most
    deadline = time.monotonic() + 5
    while handled._value.get() < before + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert handled._value.get() >= before + 1
    # ... and the server keeps serving streams.
    responses = list(live.recognizer.StreamingRecognize(iter(messages), timeout=CALL_TIMEOUT_S))
    assert responses[-1].results[0].is_final and responses[-1].results[0].result_end_time.ToMilliseconds() == 200
    reply = live.health.Check(health_pb2.HealthCheckRequest(service="seqserve.v1.Recognizer"), timeout=CALL_TIMEOUT_S)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_regression_stream_seconds_error_names_audio_content(live):
    """A stream past max_stream_seconds names audio_content, and the message that crossed the limit,
    in its message as in its BadRequest (it once said only "the stream has 1.2 s of audio; ...")."""
    config = recognize_pb2.RecognitionConfig(encoding=LINEAR16, sample_rate_hertz=8000)
    chunk = recognize_pb2.StreamingRecognizeRequest(audio_content=linear16(synth("tones", 3200, 8000, 5)))
    messages = [recognize_pb2.StreamingRecognizeRequest(
        streaming_config=recognize_pb2.StreamingRecognitionConfig(config=config)), chunk, chunk, chunk]  # 1.2 s
    _, err = call(lambda r, timeout: list(live.recognizer.StreamingRecognize(iter(r), timeout=timeout)), messages)
    assert err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert bad_request_fields(err) == ["audio_content"]
    assert err.details() == "audio_content of message 3: the stream has 1.2 s of audio; the limit is 1 s (max_stream_seconds)"


@pytest.mark.parametrize("size", [300, 3000, 100_000])
def test_regression_long_echoed_names_keep_their_status(live, size):
    """Errors echo the requested model / version / task; a long one used to push the trailers past
    the client's metadata limit (8 KiB soft, 16 KiB hard), so the client got RESOURCE_EXHAUSTED
    "Stream removed" -- at random between the two limits -- instead of NOT_FOUND / INVALID_ARGUMENT."""
    history = [float(t % 7) for t in range(12)]
    cases = [
        (
            live.forecaster.Forecast,
            forecast_pb2.ForecastRequest(model="\u00e9" * size, history=history),
            "NOT_FOUND",
            "model '\u00e9",
        ),
        (
            live.forecaster.Forecast,
            forecast_pb2.ForecastRequest(version="9" * size, history=history),
            "NOT_FOUND",
            "model 'tiny-forecast' has no version '999",
        ),
        (live.models.GetModel, models_pb2.GetModelRequest(name="\x00" * size), "NOT_FOUND", "model '\\x00"),
        (
            live.models.ListModels,
            models_pb2.ListModelsRequest(task="\U0001f600" * size),
            "INVALID_ARGUMENT",
            "task '\U0001f600",
        ),
    ]
    for rpc, req, code, start in cases:
        _, err = call(rpc, req)
        assert err is not None and err.code().name == code, (err.code(), err.details()[:200])
        message = err.details()
        assert message.startswith(start) and len(message.encode()) <= MAX_MESSAGE_BYTES, message
        if size >= 3000:
            assert "characters cut]..." in message
        if code == "INVALID_ARGUMENT":
            assert bad_request_fields(err) == ["task"] and message.endswith(
                "is not one of translate, forecast, generate, recognize"
            )
        else:
            assert "' not found; the models are: " in message or "has no version" in message


# --- after the storm ---------------------------------------------------------------------------------


# Runs last in the module whichever of its tests ran before: the regression tests (default run), or
# the storms (-m heavy, CI's second step).
@pytest.mark.parametrize("after", [pytest.param("regressions", id="default"),
                                   pytest.param("storm", id="ci", marks=pytest.mark.heavy)])
def test_zz_after_the_storm_the_server_is_healthy_and_unchanged(live, after):
    """Runs last in this module: health, the pre-storm answers, no error logged, bounded metrics."""
    for service in (
        "",
        "seqserve.v1.Translator",
        "seqserve.v1.Forecaster",
        "seqserve.v1.Generator",
        "seqserve.v1.Recognizer",
        "seqserve.v1.Models",
    ):
        reply = live.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT_S)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    assert _baseline(live) == live.baseline
    engine = live.served.engine
    assert engine.admission.requests == 0 and engine._slots.in_use == 0  # no call or decoding slot leaked
    assert metric_value(live.metrics, "seqserve_active_streams") == 0  # no generation or recognition stream left
    assert not live.errors.records, [r.getMessage() for r in live.errors.records]
    assert not live.loop_errors, live.loop_errors
    labels = {
        s.labels.get("model")
        for metric in live.metrics.registry.collect()
        for s in metric.samples
        if "model" in s.labels
    }
    assert labels <= {"", "unknown", *live.facts}, labels
