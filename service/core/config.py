"""Serving configuration: one dataclass, filled from flags > SEQSERVE_<FIELD> env vars > defaults."""

from __future__ import annotations

import argparse
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from service.inference.seq2seq import DEFAULT_LENGTH_PENALTY

ENV_PREFIX = "SEQSERVE_"
GRAPH_OPTIMIZATIONS = ("disable", "basic", "extended", "all")
EVENT_LOOPS = ("auto", "uvloop", "asyncio")  # auto = uvloop where it is installed
END_SILENCE_MS = (100, 10_000)  # StreamingRecognize end_silence_ms: the range a server or a request may set


def default_models_dir() -> Path:
    """The checkout's ``models/`` (next to the ``service`` package) when there is one, as in a
    source checkout or editable install; otherwise ``./models`` of the working directory."""
    beside = Path(__file__).resolve().parents[2] / "models"
    return beside if beside.is_dir() else Path("models").resolve()


def _opt(default: Any, help_text: str) -> Any:
    """A ServeConfig field with its one-line ``seqserve serve --help`` description."""
    return field(default=default, metadata={"help": help_text})


@dataclass
class ServeConfig:
    """Everything ``seqserve serve`` can be told. Request limits apply to every model; a model's
    manifest ``limits`` can only tighten the token limits further."""

    # Bundles live in <models>/<name>/<version>/manifest.json.
    models: Path = field(
        default_factory=default_models_dir, metadata={"help": "the model repository: <name>/<version>/ bundle folders"}
    )
    host: str = _opt("127.0.0.1", 'gRPC bind address ("0.0.0.0" inside a container)')
    port: int = _opt(50051, "gRPC port; 0 picks a free one")
    metrics_host: str = _opt("127.0.0.1", "Prometheus /metrics bind address")
    metrics_port: int = _opt(9464, "Prometheus /metrics port; 0 picks a free one")
    poll_interval_s: float = _opt(5.0, "how often to look for new/removed versions; 0 = only at start")
    keep_versions: int = _opt(1, "version policy: serve the latest N loadable versions of each model")
    # Serving processes behind the one address (SO_REUSEPORT): each runs its own event loop, engine
    # and models; a supervisor restarts one that dies and merges their /metrics.
    workers: int = _opt(
        0,
        "serving processes behind the one address (SO_REUSEPORT spreads connections, not calls: clients "
        "open several channels); 0 = one per two cores",
    )
    # Dynamic batching (forecast windows, translation encoder calls).
    max_batch_size: int = _opt(32, "requests stacked into one graph call")
    # How long the first request of a batch waits for company. 0 = greedy: a batch is whatever queued
    # while the previous graph call ran (no added latency when idle; full batches under load).
    max_batch_wait_ms: float = _opt(
        0.0,
        "how long the first request of a batch waits for company; 0 = a batch is whatever queued while "
        "the previous call ran",
    )
    max_queue: int = _opt(256, "requests waiting per batcher; beyond it -> RESOURCE_EXHAUSTED")
    # Step scheduler: generation streams + translation beam searches decoding at once (whole server).
    max_streams: int = _opt(
        64,
        "generation streams and translation beam searches decoding at once (whole server); beyond it "
        "RESOURCE_EXHAUSTED",
    )
    # Streams (or beam searches) sharing one decoding-step call; 0 = all active ones (continuous
    # batching), 1 = batching off (each steps alone: the benchmark's baseline).
    max_streams_per_step: int = _opt(
        0,
        "streams sharing one decoding-step call; 0 = all active ones (continuous batching), 1 = batching "
        "off",
    )
    # Multi-step decoding: while only generation streams share a step loop, each round decodes this
    # many tokens per stream on a worker thread (graph, sampling, graph, ...) before the event loop
    # turns them into text and messages: the Python around each token is paid once per round.
    decode_steps: int = _opt(
        8,
        "tokens each generation stream decodes per round of the step loop (graph and sampling on a worker "
        "thread); 1 = one token per round",
    )
    # Translation: each model version's beam searches are split over this many step loops (lanes),
    # new ones joining the least busy; greedy sentences all share the first lane. While one lane's
    # decoder call runs on a worker thread (onnxruntime releases the GIL), another lane's beam search
    # runs on the event loop: graph and host time overlap instead of adding up each step, at the cost
    # of smaller calls.
    decoder_lanes: int = _opt(
        2,
        "translation step loops per model version: beam searches join the least busy, greedy sentences "
        "the first (one lane's beam search overlaps another's decoder call); 1 = one loop for all",
    )
    # onnxruntime session options (per graph).
    intra_op_threads: int = _opt(1, "threads inside one operator")
    inter_op_threads: int = _opt(1, "threads across operators (>1 switches to parallel execution mode)")
    graph_optimization: str = _opt("all", "disable | basic | extended | all")
    # Graph calls whose previous run took less than this run on the event loop instead of a worker
    # thread (the hand-off costs more than a small decoding step); 0 = always a worker thread.
    inline_graph_ms: float = _opt(
        0.2,
        "graph calls whose last run took less than this run on the event loop, not a worker thread; 0 = "
        "never",
    )
    # ... and calls that took less than this for the same input shapes while requests come one at a
    # time (one in the server, none on a worker, no two overlapped for 1 s): with nothing to
    # overlap, the hand-off is pure latency. Bounds how long the loop blocks then; 0 = never.
    inline_idle_graph_ms: float = _opt(
        2.0,
        "also inline: calls that took less than this for the same input shapes while requests come one at"
        " a time; 0 = never",
    )
    # The server's asyncio event loop: uvloop (libuv, installed with seqserve on Linux and macOS)
    # runs the gRPC server's callbacks faster than the standard loop (forecast at concurrency 1:
    # ~8% lower p50; 32 streams: ~6% more tokens/s); auto = uvloop when importable.
    event_loop: str = _opt("auto", "asyncio event loop: uvloop, asyncio, or auto (uvloop when installed)")
    worker_threads: int = _opt(0, "threads running graph calls concurrently; 0 = number of CPUs")
    grace_s: float = _opt(10.0, "on shutdown, how long in-flight work and streams may finish")
    # Request limits.
    max_texts: int = _opt(32, "texts per Translate request")
    max_text_chars: int = _opt(1000, "characters per text or prompt")
    max_source_tokens: int = _opt(0, "source tokens per text; 0 = manifest limits, else 256")
    max_target_tokens: int = _opt(0, "translation length; 0 = manifest limits, else 256")
    max_prompt_tokens: int = _opt(0, "generation prompt tokens; 0 = manifest limits, else 1024")
    max_history: int = _opt(100_000, "forecast history steps (longer than the window is cut)")
    max_quantiles: int = _opt(32, "quantile levels per Forecast request")
    max_beam: int = _opt(8, "beam_size upper bound")
    max_tokens: int = _opt(1024, "generation max_tokens upper bound")
    default_max_tokens: int = _opt(128, "generation max_tokens when the request leaves it unset")
    max_stop: int = _opt(8, "stop sequences per Generate request")
    max_stop_chars: int = _opt(64, "characters per stop sequence")
    max_top_logprobs: int = _opt(20, "alternatives per generated token a request may ask for (top_logprobs)")
    max_continuations: int = _opt(16, "continuations per Score request")
    max_audio_seconds: float = _opt(60.0, "seconds of audio per Recognize request")
    max_alternatives: int = _opt(10, "recognition alternatives a request may ask for (max_alternatives)")
    max_speech_streams: int = _opt(
        512, "StreamingRecognize streams open at once (whole server); beyond it RESOURCE_EXHAUSTED")
    max_chunk_bytes: int = _opt(64 * 1024, "bytes of audio per StreamingRecognize message")
    max_stream_seconds: float = _opt(600.0, "seconds of audio per StreamingRecognize stream")
    # Recognition streams: one round of the shared step loop per this many ms at most, so that the
    # chunks of many streams share graph calls; an idle loop steps as soon as audio arrives.
    stream_step_ms: float = _opt(
        20.0, "StreamingRecognize: the shortest time between two rounds of a model's shared step loop; 0 = a "
        "round whenever audio arrives")
    # StreamingRecognize single_utterance: the silence after speech that ends an utterance, when the
    # request names none (end_silence_ms). FSDD strings pause up to 400 ms between digits, and each
    # recording has its own quiet edges: 1000 ms ended 98% of validation numbers in the pause after them.
    end_silence_ms: int = _opt(1000, "StreamingRecognize single_utterance: ms of silence after speech that end "
                               "the utterance when a request gives no end_silence_ms (100..10000)")
    max_message_bytes: int = _opt(4 * 1024 * 1024, "gRPC send/receive message size")
    length_penalty: float = _opt(DEFAULT_LENGTH_PENALTY, "GNMT alpha for beam search: score / ((5 + len) / 6) ** alpha")
    # Transport security (PEM files; all empty = plaintext). A client CA turns on mutual TLS:
    # every client must then present a certificate signed by it.
    tls_cert: str = _opt("", "server certificate chain; needs tls_key")
    tls_key: str = _opt("", "private key of tls_cert")
    tls_client_ca: str = _opt("", "CA bundle that client certificates must chain to (mutual TLS)")
    # Bearer-token authentication: when a token is set, every RPC except grpc.health.v1 must carry
    # metadata "authorization: Bearer <token>" (server reflection included).
    auth_token_file: str = _opt("", "file with the accepted token(s), one per line ('#' comments)")
    # The accepted token itself: environment only (SEQSERVE_AUTH_TOKEN), never a flag or repr().
    auth_token: str = field(default="", repr=False, metadata={"env_only": True, "alternative_to": "auth_token_file"})

    def validate(self) -> "ServeConfig":
        """Check ranges and the TLS / token settings (their files are read); raises ValueError
        naming the field, the value and the rule -- never a token."""
        positive = (
            "keep_versions", "max_batch_size", "max_queue", "max_streams", "intra_op_threads",
            "inter_op_threads", "max_texts", "max_text_chars", "max_history", "max_quantiles",
            "max_beam", "max_tokens", "default_max_tokens", "max_stop", "max_stop_chars",
            "max_message_bytes", "max_top_logprobs", "max_continuations", "max_alternatives", "max_speech_streams",
            "max_chunk_bytes", "decode_steps", "decoder_lanes",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)!r} must be at least 1")
        for name in ("workers", "worker_threads", "max_source_tokens", "max_target_tokens", "max_prompt_tokens",
                     "max_streams_per_step"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} {getattr(self, name)!r} must be 0 (automatic) or more")
        for name in ("poll_interval_s", "max_batch_wait_ms", "grace_s", "length_penalty", "inline_graph_ms",
                     "inline_idle_graph_ms", "stream_step_ms"):
            if not getattr(self, name) >= 0:  # also rejects NaN
                raise ValueError(f"{name} {getattr(self, name)!r} must be 0 or more")
        if not END_SILENCE_MS[0] <= self.end_silence_ms <= END_SILENCE_MS[1]:
            raise ValueError(f"end_silence_ms {self.end_silence_ms!r} must be within {END_SILENCE_MS[0]}..{END_SILENCE_MS[1]}")
        for name in ("max_audio_seconds", "max_stream_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} {getattr(self, name)!r} must be more than 0")
        for name in ("port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name} {getattr(self, name)!r} must be within 0..65535")
        if self.graph_optimization not in GRAPH_OPTIMIZATIONS:
            raise ValueError(
                f"graph_optimization {self.graph_optimization!r} is not one of {', '.join(GRAPH_OPTIMIZATIONS)}"
            )
        if self.event_loop not in EVENT_LOOPS:
            raise ValueError(f"event_loop {self.event_loop!r} is not one of {', '.join(EVENT_LOOPS)}")
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(f"default_max_tokens {self.default_max_tokens} exceeds max_tokens {self.max_tokens}")
        self.validate_security()
        self.models = Path(self.models)
        return self

    def validate_security(self) -> None:
        """TLS files come as a readable, parseable certificate + matching unencrypted key (plus an
        optional client CA); at most one token source, holding at least one well-formed token.
        Raises ValueError naming the fields and paths; messages never quote a token."""
        if bool(self.tls_cert) != bool(self.tls_key):
            given, missing = ("tls_cert", "tls_key") if self.tls_cert else ("tls_key", "tls_cert")
            raise ValueError(
                f"tls_cert and tls_key must be set together: {given} {getattr(self, given)!r} is set "
                f"but {missing} is not"
            )
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError(
                f"tls_client_ca {self.tls_client_ca!r} needs tls_cert and tls_key (mutual TLS runs on top of TLS)"
            )
        # "PRIVATE KEY-----" also matches the "RSA PRIVATE KEY" and "EC PRIVATE KEY" forms.
        pem = (("tls_cert", "-----BEGIN CERTIFICATE-----"), ("tls_key", "PRIVATE KEY-----"),
               ("tls_client_ca", "-----BEGIN CERTIFICATE-----"))
        for name, marker in pem:
            path = getattr(self, name)
            if path and marker.encode() not in read_config_file(name, path):
                kind = "private key" if name == "tls_key" else "certificate"
                raise ValueError(f"{name} {path!r} holds no PEM {kind}")
        if self.tls_cert:  # the stdlib parses like gRPC would, with clearer errors than a failed bind
            for name in ("tls_cert", "tls_client_ca"):
                if getattr(self, name):
                    try:
                        ssl.create_default_context(cafile=getattr(self, name))
                    except ssl.SSLError as err:
                        raise ValueError(
                            f"{name} {getattr(self, name)!r} holds a malformed certificate ({err.reason or err})"
                        ) from None
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            try:  # an empty password: an encrypted key fails here instead of prompting on a terminal
                context.load_cert_chain(self.tls_cert, self.tls_key, password=lambda: b"")
            except ssl.SSLError as err:
                raise ValueError(
                    f"tls_key {self.tls_key!r} is not the unencrypted private key of tls_cert "
                    f"{self.tls_cert!r} ({err.reason or err})"
                ) from None
        if self.auth_token and self.auth_token_file:
            raise ValueError(
                f"set either auth_token ({env_var('auth_token')}) or auth_token_file "
                f"{self.auth_token_file!r}, not both"
            )
        self.auth_tokens()

    def auth_tokens(self) -> tuple[str, ...]:
        """The bearer tokens clients may present; empty = no authentication.

        From ``auth_token_file`` (one token per line; blank lines and ``#`` comments are skipped,
        so a second line can hold the next token during a rotation) or else ``auth_token``. Raises
        ValueError naming the file, never a token, when the file cannot be read, holds no token, or
        a token is not printable ASCII without spaces (it must fit a gRPC metadata value).
        """
        if self.auth_token_file:
            source = f"auth_token_file {self.auth_token_file!r}"
            raw = read_config_file("auth_token_file", self.auth_token_file).decode("utf-8", "replace")
            tokens = tuple(
                stripped for stripped in (line.strip() for line in raw.splitlines())
                if stripped and not stripped.startswith("#")
            )
            if not tokens:
                raise ValueError(f"{source} holds no token")
        elif self.auth_token:
            source = f"auth_token ({env_var('auth_token')})"
            tokens = (self.auth_token.strip(),)
        else:
            return ()
        for number, token in enumerate(tokens, start=1):
            if not token or not all("!" <= ch <= "~" for ch in token):
                raise ValueError(
                    f"{source}: token {number} must be printable ASCII without spaces "
                    "(it travels as 'authorization: Bearer <token>' metadata)"
                )
        return tokens


def read_config_file(name: str, path: str | Path) -> bytes:
    """The bytes of the file configured as field ``name``; ValueError naming both when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise ValueError(f"{name} {str(path)!r} cannot be read: {err.strerror or err}") from None


def effective_limit(configured: int, manifest_limits: Mapping[str, Any], key: str, default: int) -> int:
    """A token limit for one model: the manifest's ``limits[key]`` (else ``default``), lowered to
    the configured value when that is set (> 0)."""
    value = manifest_limits.get(key)
    base = value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default
    return min(base, configured) if configured > 0 else base


def _kind(f: Any) -> type:
    """The Python type of a field (annotations are strings under ``from __future__``)."""
    return {"Path": Path, "str": str, "int": int, "float": float}[str(f.type)]


def _parse(name: str, kind: type, raw: str, source: str) -> Any:
    try:
        return kind(raw)
    except ValueError:
        noun = {int: "an integer", float: "a number"}.get(kind, "valid")
        raise ValueError(f"{source}={raw!r} is not {noun} (field {name})") from None


def env_var(name: str) -> str:
    """The environment variable for field ``name``, e.g. SEQSERVE_MAX_BATCH_SIZE."""
    return ENV_PREFIX + name.upper()


class _RefuseSecret(argparse.Action):
    """A flag for an env-only secret: exits with a usage error that does not repeat the value."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        name = self.dest
        alternative = next((f.metadata["alternative_to"] for f in fields(ServeConfig) if f.name == name), "")
        instead = f"--{alternative.replace('_', '-')} or " if alternative else ""
        parser.error(f"{option_string} is not accepted (command lines are visible to other users); "
                     f"use {instead}env {env_var(name)}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--<field-name>`` for every ServeConfig field but the env-only secrets; an unset flag
    stays None so that config_from_args can fall back to the environment, then the default."""
    defaults = ServeConfig()
    for f in fields(ServeConfig):
        if f.metadata.get("env_only"):  # secrets: a flag would show up in `ps` and shell history
            # Registered only to refuse it; otherwise argparse would take it as an abbreviation of
            # the alternative's flag (--auth-token -> --auth-token-file) and echo the secret as a path.
            parser.add_argument("--" + f.name.replace("_", "-"), action=_RefuseSecret, help=argparse.SUPPRESS)
            continue
        kind = _kind(f)
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_text = f"{f.metadata['help']} (default {default if default != '' else 'unset'}; env {env_var(f.name)}"
        for other in fields(ServeConfig):
            if other.metadata.get("alternative_to") == f.name:
                help_text += f"; or env {env_var(other.name)}"
        help_text += ")"
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "type": kind, "help": help_text}
        if f.name == "graph_optimization":
            kwargs["choices"] = GRAPH_OPTIMIZATIONS
        if f.name == "event_loop":
            kwargs["choices"] = EVENT_LOOPS
        parser.add_argument(flag, **kwargs)


def config_from_args(namespace: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> ServeConfig:
    """Resolve every field: flag > SEQSERVE_<FIELD> > default. Raises ValueError on a bad env
    value or an out-of-range result."""
    values: dict[str, Any] = {}
    for f in fields(ServeConfig):
        flag_value = getattr(namespace, f.name, None)
        if flag_value is not None:
            values[f.name] = _kind(f)(flag_value)
        elif env_var(f.name) in environ:
            values[f.name] = _parse(f.name, _kind(f), environ[env_var(f.name)].strip(), env_var(f.name))
    return ServeConfig(**values).validate()
