"""A synchronous Python client for seqserve; returns plain dataclasses and dicts, never protos."""

from __future__ import annotations

import itertools

import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status

from service.v1 import (
    forecast_pb2,
    generate_pb2,
    models_pb2,
    recognize_pb2,
    translate_pb2,
)

from .options import DEFAULT_ADDRESS, with_default_port
from .stubs import Stubs
from .results import (  # noqa: F401 - re-exported: the client's return types
    AUDIO_ENCODINGS,
    ContinuationScore,
    ForecastResult,
    GenerateChunk,
    GenerateResult,
    RecognizeResult,
    RecognizeUpdate,
    ScoreResult,
    SpeechAlternative,
    SpeechResult,
    TokenLogprob,
    TranslateResult,
    Translation,
    WordInfo,
    _alternatives,
    _logprobs,
    _model_dict,
    _seconds,
)

_UNSET = object()


def _read(what: str, path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise ValueError(f"{what} {str(path)!r} cannot be read: {err.strerror or err}") from None


def read_token_file(path: str | Path) -> str:
    """The bearer token in ``path``: its first line that is neither blank nor a ``#`` comment
    (the server's token-file format). Raises ValueError naming the file, never the token."""
    for line in _read("token file", path).decode("utf-8", "replace").splitlines():
        token = line.strip()
        if token and not token.startswith("#"):
            return token
    raise ValueError(f"token file {str(path)!r} holds no token")


def channel_credentials(
    ca: str | Path | None = None, cert: str | Path | None = None, key: str | Path | None = None
) -> grpc.ChannelCredentials:
    """TLS credentials for a channel: trust ``ca`` (PEM; None = the system's roots) and, for mutual
    TLS, present ``cert`` with ``key``. Raises ValueError when a file cannot be read or only one
    of cert / key is given."""
    if bool(cert) != bool(key):
        raise ValueError("a client certificate and its key go together: give both tls_cert and tls_key")
    return grpc.ssl_channel_credentials(
        root_certificates=_read("TLS CA", ca) if ca else None,
        private_key=_read("TLS key", key) if key else None,
        certificate_chain=_read("TLS certificate", cert) if cert else None,
    )


class ClientError(Exception):
    """An RPC that failed. ``code`` is the gRPC status code name ("NOT_FOUND", ...), ``message``
    the server's details, ``field`` the offending request field when the server named one."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.field = field

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> ClientError:
        code = err.code().name if err.code() is not None else "UNKNOWN"
        field = None
        try:
            status = rpc_status.from_call(err)
        except ValueError:
            status = None
        for detail in status.details if status is not None else ():
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(bad) and bad.field_violations:
                field = bad.field_violations[0].field
        return cls(code, err.details() or "", field)


class SeqserveClient:
    """Talks to a seqserve server. Every call raises ClientError when the RPC fails.

    ``timeout`` (seconds) applies to every call unless the call passes its own; None = no deadline.
    Use as a context manager, or call close().

    Security: the channel speaks TLS when ``tls`` is true or any of ``tls_ca`` (PEM CA bundle to
    trust; default the system's roots), ``tls_cert`` + ``tls_key`` (a client certificate, for
    mutual TLS) is given; ``tls_server_name`` overrides the name the server certificate must
    carry (tests, or addressing a server by IP). ``token`` is sent on every call as
    ``authorization: Bearer <token>`` metadata. A ``channel`` passed in is used as it is (only
    ``token`` applies to it). Raises ValueError for unreadable files or a cert without its key.

    ``channels`` > 1 opens that many connections and sends each call on the next one: a server run
    as several worker processes (``seqserve serve --workers N``) spreads connections over its
    workers, not calls, so a client that calls from several threads should open at least N.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        timeout: float | None = None,
        *,
        max_message_bytes: int = 4 * 1024 * 1024,
        channel: grpc.Channel | None = None,
        tls: bool = False,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        tls_server_name: str | None = None,
        token: str | None = None,
        channels: int = 1,
    ) -> None:
        if channels < 1:
            raise ValueError(f"channels {channels} must be at least 1")
        address = with_default_port(address)
        self.address = address
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        opened = [channel] if channel is not None else []
        if channel is None:
            options: list[tuple[str, Any]] = [
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
            ]
            if channels > 1:  # each its own connection (equal channels share one by default)
                options.append(("grpc.use_local_subchannel_pool", 1))
            if tls or tls_ca or tls_cert or tls_key:
                if tls_server_name:
                    options.append(("grpc.ssl_target_name_override", tls_server_name))
                credentials = channel_credentials(tls_ca, tls_cert, tls_key)
                opened = [grpc.secure_channel(address, credentials, options=options) for _ in range(channels)]
            else:
                opened = [grpc.insecure_channel(address, options=options) for _ in range(channels)]
        self._channels = opened
        self._channel = opened[0]
        self._stubs = [Stubs(c) for c in opened]
        self._turn = itertools.count()  # next(): atomic under the GIL, so threads may share the client

    def _next(self) -> Stubs:
        return self._stubs[next(self._turn) % len(self._stubs)]

    # Each call takes the stub of the next channel.
    _translator = property(lambda self: self._next().translator)
    _forecaster = property(lambda self: self._next().forecaster)
    _generator = property(lambda self: self._next().generator)
    _recognizer = property(lambda self: self._next().recognizer)
    _models = property(lambda self: self._next().models)
    _health = property(lambda self: self._next().health)

    def __enter__(self) -> SeqserveClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def _call(self, rpc, request, timeout):
        try:
            return rpc(request, timeout=self.timeout if timeout is _UNSET else timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise ClientError.from_rpc_error(err) from None

    # -- tasks ---------------------------------------------------------------------------------

    def translate(
        self,
        texts: str | Sequence[str],
        *,
        model: str = "",
        version: str = "",
        beam_size: int = 1,
        max_length: int = 0,
        return_attention: bool = False,
        timeout: float | None = _UNSET,  # type: ignore[assignment]
        batch_size: int = 0,
    ) -> TranslateResult:
        """Translate one text or a list of texts (one Translation each, in order); ``batch_size`` > 0
        sends them in requests of at most that many (the server's ``max_texts``), one after another."""
        if isinstance(texts, str):
            texts = [texts]
        if 0 < batch_size < len(texts):
            parts = [self.translate(texts[k : k + batch_size], model=model, version=version, beam_size=beam_size,
                                    max_length=max_length, return_attention=return_attention, timeout=timeout)
                     for k in range(0, len(texts), batch_size)]
            return TranslateResult(parts[-1].model, parts[-1].version, [t for p in parts for t in p.translations])
        request = translate_pb2.TranslateRequest(
            model=model, version=version, texts=list(texts), beam_size=beam_size,
            max_length=max_length, return_attention=return_attention,
        )
        reply = self._call(self._translator.Translate, request, timeout)
        out = []
        for t in reply.translations:
            attention = None
            if t.HasField("attention"):
                values = np.asarray(t.attention.values, dtype=np.float32).reshape(t.attention.rows, t.attention.cols)
                attention = values.tolist()
            out.append(Translation(t.text, list(t.tokens), list(t.source_tokens), t.score, attention,
                                   t.unknown_source_tokens, list(t.unknown_words), t.copied_words, t.sentences,
                                   t.warning))
        return TranslateResult(reply.model, reply.version, out)

    def forecast(
        self,
        history: Sequence[float] | Sequence[Sequence[float]] | np.ndarray,
        horizon: int = 0,
        quantiles: Sequence[float] = (),
        *,
        model: str = "",
        version: str = "",
        frequency: str = "",
        season_length: int = 0,
        timeout: float | None = _UNSET,  # type: ignore[assignment]
    ) -> ForecastResult:
        """Forecast ``horizon`` steps (0 = the model's) after ``history``.

        ``history`` is (T,) for one channel or (T, C) for several (rows are time steps).
        ``quantiles`` empty returns the model's own levels. ``frequency`` (a pandas-style alias such as
        "h", "D", "M") and ``season_length`` (steps) tell a model that takes a season about the series.
        """
        values = np.asarray(history, dtype=np.float64)
        request = forecast_pb2.ForecastRequest(
            model=model, version=version, horizon=horizon, quantiles=list(quantiles), frequency=frequency,
            season_length=season_length,
        )
        if values.ndim == 1:
            request.history.extend(values.tolist())
        elif values.ndim == 2:
            request.channels.extend(forecast_pb2.Series(values=col.tolist()) for col in values.T)
        else:
            raise ValueError(f"history must be (T,) or (T, C), got shape {values.shape}")
        reply = self._call(self._forecaster.Forecast, request, timeout)
        return ForecastResult(
            model=reply.model,
            version=reply.version,
            forecast=list(reply.forecast),
            quantiles={q.quantile: list(q.values) for q in reply.quantiles},
            target_channel=reply.target_channel,
            channels=[list(s.values) for s in reply.channels],
            channel_quantiles={
                q.quantile: [list(s.values) for s in q.channels] for q in reply.quantiles if q.channels
            },
            season_length=reply.season_length,
        )

    @staticmethod
    def _generate_request(prompt, model, version, max_tokens, temperature, top_k, top_p, seed, stop,
                          logprobs=False, top_logprobs=0):
        request = generate_pb2.GenerateRequest(
            model=model, version=version, prompt=prompt, max_tokens=max_tokens or 0,
            top_k=top_k or 0, stop=list(stop), logprobs=logprobs, top_logprobs=top_logprobs,
        )
        if temperature is not None:
            request.temperature = temperature
        if top_p is not None:
            request.top_p = top_p
        if seed is not None:
            request.seed = seed
        return request

    def generate(
        self,
        prompt: str,
        *,
        model: str = "",
        version: str = "",
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
        logprobs: bool = False,
        top_logprobs: int = 0,
        timeout: float | None = _UNSET,  # type: ignore[assignment]
    ) -> GenerateResult:
        """Continue ``prompt``; None leaves a parameter to the server (temperature 0 = greedy).
        ``logprobs`` adds each sampled token's log-probability, ``top_logprobs`` > 0 that many
        alternatives per token."""
        request = self._generate_request(prompt, model, version, max_tokens, temperature, top_k, top_p, seed, stop,
                                         logprobs, top_logprobs)
        r = self._call(self._generator.Generate, request, timeout)
        return GenerateResult(r.model, r.version, r.text, r.finish_reason, r.prompt_tokens, r.completion_tokens,
                              _logprobs(r.logprobs))

    def score(
        self,
        prompt: str,
        continuations: str | Sequence[str],
        *,
        model: str = "",
        version: str = "",
        timeout: float | None = _UNSET,  # type: ignore[assignment]
    ) -> ScoreResult:
        """log P(continuation | prompt) for each continuation (total and per token), from a generation model."""
        if isinstance(continuations, str):
            continuations = [continuations]
        request = generate_pb2.ScoreRequest(model=model, version=version, prompt=prompt, continuations=list(continuations))
        r = self._call(self._generator.Score, request, timeout)
        return ScoreResult(r.model, r.version, r.prompt_tokens,
                           [ContinuationScore(s.text, s.logprob, _logprobs(s.tokens), s.greedy, s.unknown_tokens)
                            for s in r.scores], r.unknown_prompt_tokens)

    def generate_stream(
        self,
        prompt: str,
        *,
        model: str = "",
        version: str = "",
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
        logprobs: bool = False,
        top_logprobs: int = 0,
        timeout: float | None = _UNSET,  # type: ignore[assignment]
    ) -> Iterator[GenerateChunk]:
        """Yield the continuation chunk by chunk; the last chunk has finish_reason and the counts.

        Leaving the loop early (break, close(), garbage collection) cancels the call on the server.
        """
        request = self._generate_request(prompt, model, version, max_tokens, temperature, top_k, top_p, seed, stop,
                                         logprobs, top_logprobs)
        call = self._generator.GenerateStream(
            request, timeout=self.timeout if timeout is _UNSET else timeout, metadata=self._metadata
        )
        try:
            for c in call:
                yield GenerateChunk(c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens, _logprobs(c.logprobs))
        except grpc.RpcError as err:
            raise ClientError.from_rpc_error(err) from None
        finally:
            call.cancel()  # a no-op when the stream already ended

    def recognize(
        self,
        audio: bytes,
        *,
        encoding: str = "",
        sample_rate_hertz: int = 0,
        max_alternatives: int = 1,
        word_time_offsets: bool = False,
        model: str = "",
        version: str = "",
        timeout: float | None = _UNSET,  # type: ignore[assignment]
    ) -> RecognizeResult:
        """Transcribe one whole recording with a recognition model.

        ``audio`` is a WAV file's bytes (``encoding`` "WAV", or "" and the RIFF header says so;
        ``sample_rate_hertz`` 0 or the file's rate) or raw LINEAR16 samples (signed 16-bit
        little-endian mono; ``sample_rate_hertz`` required, 8000..48000). ``max_alternatives``
        transcripts come back per result, best first; ``word_time_offsets`` adds each word's start
        and end (seconds). Raises ValueError for an unknown ``encoding``.
        """
        config = self._recognition_config(encoding, sample_rate_hertz, max_alternatives, word_time_offsets, model,
                                          version)
        r = self._call(self._recognizer.Recognize, recognize_pb2.RecognizeRequest(config=config, audio=bytes(audio)),
                       timeout)
        return RecognizeResult(r.model, r.version,
                               [SpeechResult(_alternatives(x.alternatives), _seconds(x.result_end_time))
                                for x in r.results],
                               _seconds(r.total_billed_time))

    def recognize_stream(
        self,
        chunks: Iterable[bytes],
        *,
        sample_rate_hertz: int,
        interim_results: bool = True,
        max_alternatives: int = 1,
        word_time_offsets: bool = False,
        model: str = "",
        version: str = "",
        single_utterance: bool = False,
        end_silence_ms: int = 0,
        timeout: float | None = _UNSET,  # type: ignore[assignment]
    ) -> Iterator[RecognizeUpdate]:
        """Transcribe audio as it arrives: yield interim results (with ``interim_results``) while
        ``chunks`` are sent, then the final result once ``chunks`` is exhausted. With
        ``single_utterance``, the server ends the stream itself once the speaker stops
        (``end_silence_ms`` of silence after speech; 0 = the server's, 1000 ms by default): an update
        whose ``speech_event`` is "END_OF_SINGLE_UTTERANCE", then the final result of the audio until
        then; the rest of ``chunks`` is not sent.

        ``chunks`` yields LINEAR16 audio (signed 16-bit little-endian mono samples at
        ``sample_rate_hertz``), each an even number of bytes and at most the server's
        max_chunk_bytes (64 KiB by default); it is read on gRPC's sending thread, so it may block
        (a microphone, or pacing at real time). An exception it raises cancels the call and is
        raised here. Leaving the loop early (break, close(), garbage collection) cancels the call
        on the server. The model must stream (ModelInfo.speech.streaming); "" = the server's
        default among those that do.
        """
        config = recognize_pb2.StreamingRecognitionConfig(
            config=self._recognition_config("LINEAR16", sample_rate_hertz, max_alternatives, word_time_offsets, model,
                                            version),
            interim_results=interim_results,
            single_utterance=single_utterance,
            end_silence_ms=end_silence_ms,
        )
        started = threading.Event()  # set once ``call`` exists: the sender may need to cancel it
        failure: list[BaseException] = []

        def requests() -> Iterator[recognize_pb2.StreamingRecognizeRequest]:
            yield recognize_pb2.StreamingRecognizeRequest(streaming_config=config)
            try:
                for chunk in chunks:
                    yield recognize_pb2.StreamingRecognizeRequest(audio_content=bytes(chunk))
            except Exception as err:  # noqa: BLE001 - raised again on the reading side
                # Half-closing would ask for a final result of part of the audio: cancel instead.
                failure.append(err)
                started.wait()
                call.cancel()

        call = self._recognizer.StreamingRecognize(
            requests(), timeout=self.timeout if timeout is _UNSET else timeout, metadata=self._metadata
        )
        started.set()
        try:
            for r in call:
                if r.speech_event_type:
                    yield RecognizeUpdate(r.model, r.version, False, [], 0.0, 0.0, _seconds(r.total_billed_time),
                                          recognize_pb2.StreamingRecognizeResponse.SpeechEventType.Name(
                                              r.speech_event_type))
                for x in r.results:
                    yield RecognizeUpdate(r.model, r.version, x.is_final, _alternatives(x.alternatives), x.stability,
                                          _seconds(x.result_end_time), _seconds(r.total_billed_time))
        except grpc.RpcError as err:
            if failure:
                raise failure[0] from None
            raise ClientError.from_rpc_error(err) from None
        finally:
            call.cancel()  # a no-op when the stream already ended

    @staticmethod
    def _recognition_config(encoding, sample_rate_hertz, max_alternatives, word_time_offsets, model, version):
        if encoding not in AUDIO_ENCODINGS:
            raise ValueError(f"encoding {encoding!r} is not one of {', '.join(repr(e) for e in AUDIO_ENCODINGS)}")
        return recognize_pb2.RecognitionConfig(
            encoding=AUDIO_ENCODINGS[encoding], sample_rate_hertz=sample_rate_hertz, max_alternatives=max_alternatives,
            enable_word_time_offsets=word_time_offsets, model=model, version=version,
        )

    # -- catalogue and health ------------------------------------------------------------------

    def list_models(self, task: str = "", *, timeout: float | None = _UNSET) -> list[dict[str, Any]]:  # type: ignore[assignment]
        """Every model version the server knows (optionally of one task), as dicts named like ModelInfo."""
        reply = self._call(self._models.ListModels, models_pb2.ListModelsRequest(task=task), timeout)
        return [_model_dict(m) for m in reply.models]

    def get_model(self, name: str, version: str = "", *, timeout: float | None = _UNSET) -> dict[str, Any]:  # type: ignore[assignment]
        """One model version ("" = its default) as a dict named like ModelInfo."""
        reply = self._call(self._models.GetModel, models_pb2.GetModelRequest(name=name, version=version), timeout)
        return _model_dict(reply.model)

    def health(self, service: str = "", *, timeout: float | None = _UNSET) -> str:  # type: ignore[assignment]
        """The grpc.health.v1 status of ``service`` ("" = the whole server): "SERVING", "NOT_SERVING", ..."""
        reply = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
