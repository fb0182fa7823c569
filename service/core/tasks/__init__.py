"""Tasks (forecast, translate, generate): validation, tokenisation and decoding above the schedulers."""

from __future__ import annotations

from ..repository import Bundle, TaskModel
from .context import TaskContext
from .forecast import ForecastModel
from .generate import GenerateModel
from .translate import TranslateModel

MODELS = {"forecast": ForecastModel, "translate": TranslateModel, "generate": GenerateModel}

__all__ = ["MODELS", "TaskContext", "build_model"]


def build_model(bundle: Bundle, ctx: TaskContext) -> TaskModel:
    """The task model for a loaded bundle (ForecastModel, TranslateModel or GenerateModel)."""
    return MODELS[bundle.manifest.task](bundle, ctx)
