"""Tasks (forecast, translate, generate): validation, tokenisation and decoding above the schedulers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..config import ServeConfig
from ..observe import NULL_METER, GraphMeter
from ..scheduler import StreamSlots
from ..types import EngineStats

if TYPE_CHECKING:
    from service.front.metrics import Metrics, TokenTimer

    from ..repository import Bundle, TaskModel


@dataclass
class TaskContext:
    """What every task model shares with the engine."""

    config: ServeConfig
    slots: StreamSlots  # the server-wide cap on decoding streams
    stats: EngineStats = field(default_factory=EngineStats)
    metrics: Metrics | None = None  # Prometheus metrics of the server; None records nothing
    workers: int = 1  # threads running graph calls: how many batches of one graph may run at once

    def meter(self, model: str, version: str, graph: str) -> GraphMeter:
        """Where a batcher or step scheduler of ``graph`` records queue depth, batches and streams."""
        return NULL_METER if self.metrics is None else self.metrics.graph_meter(model, version, graph)

    def token_timer(self, model: str, version: str) -> TokenTimer | None:
        """Time to first token / between tokens of one generated sequence (None without metrics)."""
        return None if self.metrics is None else self.metrics.token_timer(model, version)

    def count_tokens(self, model: str, version: str, n: int) -> None:
        if self.metrics is not None:
            self.metrics.count_tokens(model, version, n)


def build_model(bundle: "Bundle", ctx: TaskContext) -> "TaskModel":
    """The task model for a loaded bundle (ForecastModel, TranslateModel or GenerateModel)."""
    # Imported here: the task modules import TaskContext from this package.
    from .forecast import ForecastModel
    from .generate import GenerateModel
    from .translate import TranslateModel

    task = bundle.manifest.task
    models = {"forecast": ForecastModel, "translate": TranslateModel, "generate": GenerateModel}
    return models[task](bundle, ctx)
