"""The serving engine: routes requests to loaded model versions, admits and drains work, and
reports readiness. Everything below the gRPC servicer; no grpc, no torch."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing, asynccontextmanager, contextmanager
from typing import Any

from service.contract import TASKS

from .admission import Admission
from .config import ServeConfig
from .errors import DeadlineExceeded, NotFound, Unavailable
from .observe import NULL_SINK, Sink, label_request
from .repository import DECLARED, Bundle, ModelRepository, ModelVersion, TaskModel
from .runtime import WorkerPool
from .scheduler import StreamSlots
from .shared import SharedCounts
from .tasks import TaskContext, build_model
from .tasks.context import SpeechStreams
from .types import (
    LOADING,
    READY,
    UNLOADING,
    ForecastRequest,
    ForecastResult,
    GenerateChunk,
    GenerateRequest,
    GenerateResult,
    ModelInfo,
    RecognitionConfig,
    RecognizeRequest,
    RecognizeResult,
    ScoreRequest,
    ScoreResult,
    TokenLogprob,
    TranslateRequest,
    TranslateResult,
)

log = logging.getLogger(__name__)


def freeze_heap() -> tuple[float, int]:
    """Collect garbage, then move every object alive into the collector's permanent generation.

    What loading leaves behind (modules, protobuf descriptors, tokenizers, ONNX sessions: ~40,000
    objects) is then never scanned again; without this, each full collection under load walks all
    of it and stalls the event loop ~30-50 ms, which shows in the p99. Objects frozen earlier are
    unfrozen first, so garbage from versions that were unloaded meanwhile is freed, not kept.
    Returns (seconds the collection took, objects frozen)."""
    start = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - start, gc.get_freeze_count()


class Engine:
    """Owns the repository, the thread pool that runs graphs, and the stream cap.

    ``deadline`` arguments are absolute ``time.monotonic()`` values (None = no deadline). Every
    method raises ServiceError subclasses only (anything else is a bug: the caller maps it to
    INTERNAL). Empty model name = the task's default model; empty version = newest loaded."""

    def __init__(self, config: ServeConfig, metrics: Sink | None = None, shared: SharedCounts | None = None) -> None:
        """``shared``: the counts of a server run as several worker processes (service.core.shared),
        which its whole-server limits are checked against."""
        self.config = config.validate()
        self.sink = metrics if metrics is not None else NULL_SINK  # every event of the core goes here
        workers = config.worker_threads or os.cpu_count() or 1
        self.admission = Admission()  # requests in the server, counted here (_admit)
        self._executor = WorkerPool(max_workers=workers, thread_name_prefix="seqserve-run", admission=self.admission)
        self._slots = StreamSlots(config.max_streams, shared)
        self._ctx = TaskContext(config, self._slots, self.sink, workers, SpeechStreams(config.max_speech_streams, shared))
        self._repo = ModelRepository(config, self._build, self._executor, self._on_repository_change, self.sink)
        self._listeners: list[Callable[[], None]] = []
        self._ready = {task: False for task in TASKS}
        self._started = False
        self._draining = False
        self._drain_started = asyncio.Event()  # set when stop() begins: long streams end early on it
        self._idle = asyncio.Event()
        self._idle.set()
        self._frozen: frozenset[tuple[str, str]] | None = None  # READY versions at the last freeze_heap()

    def _build(self, bundle: Bundle) -> TaskModel:
        return build_model(bundle, self._ctx)

    # ------------------------------------------------------------ lifecycle and readiness

    async def start(self) -> None:
        """Load (and warm up) every bundle's newest versions, then poll for changes."""
        await self._repo.start()
        self._started = True
        self._notify_if_changed()
        self._refreeze_when_settled()
        log.info("engine started: %s", ", ".join(f"{t}={'ready' if r else 'not ready'}" for t, r in self._ready.items()))

    async def stop(self, grace_s: float | None = None) -> None:
        """Refuse new calls (Unavailable "server is draining"), give in-flight calls and streams
        ``grace_s`` (default config.grace_s) to finish, then unload everything."""
        grace = self.config.grace_s if grace_s is None else grace_s
        self._draining = True
        self._drain_started.set()
        self._notify_if_changed()
        if self.admission.requests and grace > 0:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout=grace)
            except asyncio.TimeoutError:
                log.warning("grace period of %.1f s over with %d calls still running; cancelling them", grace,
                            self.admission.requests)
        await self._repo.stop(0.0)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._started = False
        self._frozen = None
        gc.unfreeze()  # what this engine held may now be garbage in cycles: let the collector see it

    async def refresh(self) -> None:
        """Scan the model repository now (the poll task does this every poll_interval_s)."""
        await self._repo.refresh()

    def task_ready(self, task: str) -> bool:
        """True while the engine is started, not draining, and a version of ``task`` is READY."""
        return self._ready.get(task, False)

    def add_listener(self, callback: Callable[[], None]) -> None:
        """``callback()`` runs (on the event loop) whenever task_ready() of some task changes."""
        self._listeners.append(callback)

    def _on_repository_change(self) -> None:
        self._notify_if_changed()
        if self._started:  # after the unload or load that changed it has returned
            asyncio.get_running_loop().call_soon(self._refreeze_when_settled)

    def _refreeze_when_settled(self) -> None:
        """freeze_heap() once the loaded versions change and nothing is loading or unloading."""
        if not self._started or self._draining:
            return
        versions = self._repo.versions()
        if any(e.state in (LOADING, UNLOADING) for e in versions):
            return
        loaded = frozenset((e.name, e.version) for e in versions if e.state == READY)
        if loaded != self._frozen:
            self._frozen = loaded
            seconds, frozen = freeze_heap()
            log.info("heap frozen after loading: %d objects out of the collector's sight (collect took %.1f ms)",
                     frozen, seconds * 1000)

    def _notify_if_changed(self) -> None:
        ready_tasks = {e.task for e in self._repo.ready()}
        now = {task: self._started and not self._draining and task in ready_tasks for task in TASKS}
        if now == self._ready:
            return
        self._ready = now
        for callback in list(self._listeners):
            try:
                callback()
            except Exception:  # noqa: BLE001 - a listener must not break loading
                log.exception("readiness listener failed")

    def check_accepting(self) -> None:
        """Raise Unavailable while the engine starts or drains: what any request would get then
        (front ends that look models up before calling in ask first)."""
        if self._draining:
            raise Unavailable("server is draining")
        if not self._started:
            raise Unavailable("server is starting")

    @contextmanager
    def _admit(self, deadline: float | None) -> Iterator[None]:
        self.check_accepting()
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded("deadline passed before the request was started")
        self.admission.enter()
        self._idle.clear()
        try:
            yield
        finally:
            self.admission.leave()
            if not self.admission.requests:
                self._idle.set()

    # ------------------------------------------------------------ models

    def list_models(self) -> list[ModelInfo]:
        """Every known version (LOADING, READY, FAILED, UNLOADING), by name and version."""
        return [self._info(e) for e in self._repo.versions()]

    def get_model(self, name: str, version: str = "") -> ModelInfo:
        """One version ("" = newest READY, else newest known). Raises NotFound."""
        if not name:
            raise NotFound("model '' not found; name a model", field="model")
        return self._info(self._repo.find(name, version))

    def model_spec(self, name: str, version: str = "") -> tuple[str, str, str, dict[str, Any] | None]:
        """(name, version, task, forecast spec info) of one version, without building a whole
        ModelInfo: what a front end needs on every request to route it. Raises NotFound, or
        Unavailable (loading, failed, unloading) as a request to that version would."""
        if not name:
            raise NotFound("model '' not found; name a model", field="model")
        e = self._repo.find_ready(name, version)
        m = e.manifest
        return e.name, e.version, m.task, m.forecast.info() if m.forecast else None

    def _info(self, e: ModelVersion) -> ModelInfo:
        m = e.manifest
        declared = m.extra.get(DECLARED, {}) if m else {}  # the manifest's own name/version, where they differ
        is_default = False
        if m is not None and e.state == READY and self._repo.default_name(m.task) == e.name:
            is_default = self._repo.find(e.name) is e
        return ModelInfo(
            name=e.name,
            version=e.version,
            task=m.task if m else "",
            cell=m.cell if m else "",
            num_layers=m.num_layers if m else 0,
            hidden_size=m.hidden_size if m else 0,
            bidirectional=m.bidirectional if m else False,
            num_parameters=m.num_parameters if m else 0,
            state=e.state,
            is_default=is_default,
            description=m.description if m else "",
            evaluation=dict(m.evaluation) if m else {},
            limits=e.model.limits() if e.model is not None else {},
            forecast=m.forecast.info() if m and m.forecast else None,
            speech={**m.speech.info(), "frame_seconds": m.speech.frame_seconds, "streaming": "acoustic_step" in m.graphs}
            if m and m.speech else None,
            error=e.error,
            loaded_at=e.loaded_at,
            weights=m.weights if m else "",
            languages=dict(m.languages) if m else {},
            manifest_name=declared.get("name", ""),
            manifest_version=declared.get("version", ""),
        )

    # ------------------------------------------------------------ requests

    def _resolve(self, task: str, name: str, version: str) -> ModelVersion:
        """The version that answers (NotFound / Unavailable otherwise); the RPC is labelled with it."""
        entry = self._repo.resolve(task, name, version)
        label_request(model=entry.name, version=entry.version)
        return entry

    async def forecast(self, req: ForecastRequest, deadline: float | None = None) -> ForecastResult:
        with self._admit(deadline):
            entry = self._resolve("forecast", req.model, req.version)
            with entry.lease() as model:
                return await model.forecast(req, deadline)

    async def translate(self, req: TranslateRequest, deadline: float | None = None) -> TranslateResult:
        with self._admit(deadline):
            entry = self._resolve("translate", req.model, req.version)
            with entry.lease() as model:
                return await model.translate(req, deadline)

    async def recognize(self, req: RecognizeRequest, deadline: float | None = None) -> RecognizeResult:
        with self._admit(deadline):
            entry = self._resolve("recognize", req.config.model, req.config.version)
            with entry.lease() as model:
                return await model.recognize(req, deadline)

    async def wait_draining(self) -> None:
        """Returns once the server starts draining (streams that may last minutes end then)."""
        await self._drain_started.wait()

    def _streaming_default(self) -> str:
        """The model a stream with an empty model name goes to: the task's default when it can
        stream, else the first (by name) READY recognition model that can."""
        default = self._repo.default_name("recognize")
        streaming = sorted({e.name for e in self._repo.ready("recognize")
                            if e.manifest is not None and "acoustic_step" in e.manifest.graphs})
        if default in streaming or not streaming:
            return default or ""
        return streaming[0]

    @asynccontextmanager
    async def recognize_stream(self, config: RecognitionConfig, interim: bool, deadline: float | None = None,
                               single_utterance: bool = False,
                               end_silence_ms: int = 0) -> AsyncIterator[tuple[str, str, Any]]:
        """Open a recognition stream: yields (model, version, AudioStream) while it lives; the stream
        leaves the step loop when the block exits. ``single_utterance``: it ends itself once the speaker
        stops (``end_silence_ms`` of silence after speech; 0 = the server's). Raises NotFound,
        Unavailable, FailedPrecondition (a model that cannot stream), InvalidArgument, ResourceExhausted."""
        with self._admit(deadline):
            name = config.model or self._streaming_default()
            entry = self._resolve("recognize", name, config.version)
            with entry.lease() as model:
                stream = model.open_stream(config, interim, deadline, single_utterance, end_silence_ms)
                model.streams.add(stream)
                try:
                    yield entry.name, entry.version, stream
                finally:
                    model.streams.remove(stream)

    async def generate(self, req: GenerateRequest, deadline: float | None = None) -> GenerateResult:
        """The whole completion at once (the stream, collected)."""
        entry_name, entry_version = "", ""
        parts: list[str] = []
        logprobs: list[TokenLogprob] = []
        last = GenerateChunk("")
        async with aclosing(self._stream(req, deadline)) as stream:
            async for name, version, chunk in stream:
                entry_name, entry_version = name, version
                parts.append(chunk.text)
                logprobs.extend(chunk.logprobs)
                last = chunk
        return GenerateResult(entry_name, entry_version, "".join(parts), last.finish_reason, last.prompt_tokens,
                              last.completion_tokens, logprobs)

    async def score(self, req: ScoreRequest, deadline: float | None = None) -> ScoreResult:
        """log P(continuation | prompt) for each continuation, with a generation model."""
        with self._admit(deadline):
            entry = self._resolve("generate", req.model, req.version)
            with entry.lease() as model:
                return await model.score(req, deadline)

    async def generate_stream(self, req: GenerateRequest, deadline: float | None = None) -> AsyncIterator[GenerateChunk]:
        """Chunks of new text; the last carries finish_reason. Close the iterator (``aclosing``)
        or cancel the task to stop: the stream leaves the step loop before its next step."""
        async with aclosing(self._stream(req, deadline)) as stream:
            async for _, _, chunk in stream:
                yield chunk

    async def _stream(self, req: GenerateRequest, deadline: float | None) -> AsyncIterator[tuple[str, str, GenerateChunk]]:
        with self._admit(deadline):
            entry = self._resolve("generate", req.model, req.version)
            with entry.lease() as model:
                async with aclosing(model.stream(req, deadline)) as chunks:
                    async for chunk in chunks:
                        yield entry.name, entry.version, chunk
