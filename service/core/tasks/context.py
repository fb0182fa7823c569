"""What every task model shares with the engine, and how it gets its batchers and step schedulers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from service.inference.steps import StepLayout

from ..batching import DynamicBatcher
from ..config import ServeConfig
from ..observe import NULL_SINK, GraphMeter, Sink, TokenTimer
from ..runtime import GraphRuntime
from ..scheduler import StepScheduler, StreamSlots
from ..shared import SharedCounts


class SpeechStreams:
    """The server-wide count of open recognition streams, against max_speech_streams (every worker
    process's together with ``shared``)."""

    def __init__(self, capacity: int, shared: SharedCounts | None = None) -> None:
        self.capacity = capacity
        self._shared = shared
        self._open = 0

    @property
    def open(self) -> int:
        return self._open if self._shared is None else self._shared.total("speech_streams")

    def try_open(self) -> int | None:
        """Count one more open stream unless that passes the capacity: None when counted, else the
        count that refused it (checked and counted at once across worker processes)."""
        if self._shared is not None:
            return self._shared.try_add("speech_streams", 1, self.capacity)
        if self._open >= self.capacity:
            return self._open
        self._open += 1
        return None

    def close(self) -> None:
        if self._shared is None:
            self._open -= 1
        else:
            self._shared.add("speech_streams", -1)


@dataclass
class TaskContext:
    """The server's settings, stream cap and sink, shared by every task model."""

    config: ServeConfig
    slots: StreamSlots  # the server-wide cap on decoding streams
    sink: Sink = field(default_factory=lambda: NULL_SINK)  # where every event is recorded
    workers: int = 1  # threads running graph calls: how many batches of one graph may run at once
    speech_streams: SpeechStreams = field(default_factory=lambda: SpeechStreams(1 << 30))  # the server-wide cap

    def batcher(self, model: str, version: str, graph: str, run_batch: Callable[[list[Any]], Awaitable[list[Any]]],
                key: Callable[[Any], Hashable] | None = None) -> DynamicBatcher:
        """A dynamic batcher in front of ``graph`` of ``model``/``version``, with the server's batch
        size, wait, queue bound and concurrency; ``key``: requests with different keys never share a call."""
        cfg = self.config
        return DynamicBatcher(
            f"model {model} version {version} ({graph})",
            run_batch,
            max_batch_size=cfg.max_batch_size,
            max_wait_s=cfg.max_batch_wait_ms / 1000.0,
            max_queue=cfg.max_queue,
            **({"key": key} if key is not None else {}),
            meter=self.meter(model, version, graph),
            max_concurrent=self.workers,
        )

    def step_scheduler(self, model: str, version: str, graph: str, runtime: GraphRuntime,
                       layout: StepLayout, meter: GraphMeter | None = None) -> StepScheduler:
        """The step loop of ``graph`` (a decoder step or LM): every stream of the version (or of one
        of its lanes, recording into ``meter``) shares its calls."""
        return StepScheduler(f"model {model} version {version} ({graph})", runtime, layout,
                             meter or self.meter(model, version, graph),
                             max_streams_per_step=self.config.max_streams_per_step,
                             decode_steps=self.config.decode_steps)

    def meter(self, model: str, version: str, graph: str) -> GraphMeter:
        """Where a batcher or step scheduler of ``graph`` records queue depth, batches and streams."""
        return self.sink.graph_meter(model, version, graph)

    def token_timer(self, model: str, version: str) -> TokenTimer:
        """Time to first token / between tokens of one generated sequence."""
        return self.sink.token_timer(model, version)

    def count_tokens(self, model: str, version: str, n: int) -> None:
        self.sink.count_tokens(model, version, n)

    def count_source_tokens(self, model: str, version: str, n: int, unknown: int) -> None:
        self.sink.count_source_tokens(model, version, n, unknown)
