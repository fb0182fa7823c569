"""Tasks (forecast, translate, generate, recognize): validation, tokenisation and decoding above the schedulers."""

from __future__ import annotations

from ..repository import Bundle, TaskModel
from .context import TaskContext
from .forecast import ForecastModel
from .generate import GenerateModel
from .recognize import RecognizeModel
from .translate import TranslateModel

MODELS = {"forecast": ForecastModel, "translate": TranslateModel, "generate": GenerateModel,
          "recognize": RecognizeModel}

__all__ = ["MODELS", "TaskContext", "build_model"]


def build_model(bundle: Bundle, ctx: TaskContext) -> TaskModel:
    """The task model for a loaded bundle (ForecastModel, TranslateModel, GenerateModel or RecognizeModel)."""
    return MODELS[bundle.manifest.task](bundle, ctx)
