"""What one ``seqserve bench`` run measures: the endpoints, the load levels and the workload."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from service.client.options import DEFAULT_ADDRESS
from service.loadgen.corpus import SENTENCES

ENDPOINTS = ("forecast", "translate", "generate", "generate_stream", "score", "infer")  # infer: the OIP's ModelInfer
# Speech recognition (seqserve.v1.Recognizer): run only when named (--endpoint), as they need a recognition
# model and a stream lasts as long as its audio (real-time pace).
SPEECH_ENDPOINTS = ("recognize", "recognize_stream")
ALL_ENDPOINTS = ENDPOINTS + SPEECH_ENDPOINTS  # every endpoint bench knows; ENDPOINTS is the default set
GENERATION_ENDPOINTS = ("generate", "generate_stream")
DEFAULT_CONCURRENCY = (1, 4, 16, 64)
DEFAULT_CHUNK_MS = 100.0  # recognize_stream: audio per StreamingRecognize message
STREAM_P99_BOUND_MS = 100.0  # recognize_stream: a level "holds" when its p99 chunk-to-interim latency is at most this


@dataclass(frozen=True)
class Load:
    """One load level: ``mode`` "concurrency" (closed loop, ``level`` workers) or "rate" (open
    loop, ``level`` requests/s)."""

    mode: str
    level: float

    @property
    def label(self) -> str:
        return f"c={self.level:g}" if self.mode == "concurrency" else f"r={self.level:g}/s"


@dataclass
class BenchConfig:
    """Everything one benchmark run needs; ``run`` builds it from the command line."""

    address: str = DEFAULT_ADDRESS
    metrics_address: str = ""  # host:port of the server's /metrics; "" = no server-side figures
    endpoints: Sequence[str] = ENDPOINTS
    model: str = ""  # "" = the server's default model of each task
    version: str = ""
    concurrency: Sequence[int] = DEFAULT_CONCURRENCY
    rates: Sequence[float] = ()
    duration_s: float = 10.0  # per level; 0 = bounded by max_requests only
    max_requests: int = 0  # per level; 0 = bounded by duration only
    warmup_s: float = 1.0
    max_outstanding: int = 512  # open loop: requests in flight at most
    seed: int = 0
    texts: Sequence[str] = SENTENCES
    beam: int = 1
    max_tokens: int = 32
    history_len: Sequence[int] = ()  # forecast: (n,) or (low, high) steps; () = random in [min_history, window]
    frequency: str = ""  # forecast: ForecastRequest.frequency of every request ("" = none; the histories are hourly)
    timeout_s: float = 30.0
    channels: int = 1
    chunk_ms: float = DEFAULT_CHUNK_MS  # recognize_stream: milliseconds of audio per message, sent at real-time pace
    data_dir: str = ""  # recognize*: where fsdd/recordings is; "" = $SEQSERVE_DATA_DIR (synthetic audio without it)
    digits: Sequence[int] = ()  # recognize*: (n,) or (low, high) digits per utterance; () = 2-10 (the connected-digits test)

    def loads(self) -> list[Load]:
        """The levels to run for each endpoint: closed-loop ones first, then open-loop ones."""
        return [Load("concurrency", c) for c in self.concurrency] + [Load("rate", r) for r in self.rates]

    def validate(self) -> None:
        """Raise ValueError when the run would be unbounded or a value is out of range."""
        unknown = [e for e in self.endpoints if e not in ALL_ENDPOINTS]
        if unknown or not self.endpoints:
            raise ValueError(f"endpoints must be among {', '.join(ALL_ENDPOINTS)}; got {', '.join(unknown) or 'none'}")
        if self.duration_s <= 0 and self.max_requests <= 0:
            raise ValueError("every level needs an end: give --duration > 0 and/or --requests > 0")
        if not self.loads():
            raise ValueError("no load level: give --concurrency and/or --rate")
        if any(c < 1 for c in self.concurrency) or any(not r > 0 for r in self.rates):
            raise ValueError("concurrency levels must be >= 1 and rates > 0")
        checks = {"--warmup": self.warmup_s >= 0, "--timeout": self.timeout_s > 0, "--channels": self.channels >= 1,
                  "--max-outstanding": self.max_outstanding >= 1, "--beam": self.beam >= 1,
                  "--max-tokens": self.max_tokens >= 1, "--texts": bool(self.texts),
                  "--chunk-ms": 1.0 <= self.chunk_ms <= 2000.0,
                  "--history-len": len(self.history_len) <= 2 and all(n >= 1 for n in self.history_len)
                  and list(self.history_len) == sorted(self.history_len),
                  "--digits": len(self.digits) <= 2 and all(1 <= n <= 100 for n in self.digits)
                  and list(self.digits) == sorted(self.digits)}
        bad = [name for name, good in checks.items() if not good]
        if bad:
            raise ValueError(f"out of range: {', '.join(bad)}")
