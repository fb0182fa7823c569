"""Serving configuration: one dataclass, filled from flags > SEQSERVE_<FIELD> env vars > defaults."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "SEQSERVE_"
GRAPH_OPTIMIZATIONS = ("disable", "basic", "extended", "all")


def default_models_dir() -> Path:
    """The repository's ``models/`` directory (next to the ``service`` package)."""
    return Path(__file__).resolve().parents[1] / "models"


@dataclass
class ServeConfig:
    """Everything ``seqserve serve`` can be told. Request limits apply to every model; a model's
    manifest ``limits`` can only tighten the token limits further."""

    # Bundles live in <models>/<name>/<version>/manifest.json.
    models: Path = field(default_factory=default_models_dir)
    host: str = "127.0.0.1"  # gRPC bind address ("0.0.0.0" inside a container)
    port: int = 50051  # gRPC port; 0 picks a free one
    metrics_host: str = "127.0.0.1"  # Prometheus /metrics bind address
    metrics_port: int = 9464  # Prometheus /metrics port; 0 picks a free one
    poll_interval_s: float = 5.0  # how often to look for new/removed versions; 0 = only at start
    keep_versions: int = 1  # version policy: serve the latest N loadable versions of each model
    # Dynamic batching (forecast windows, translation encoder calls).
    max_batch_size: int = 32  # requests stacked into one graph call
    max_batch_wait_ms: float = 2.0  # how long the first request of a batch waits for company
    max_queue: int = 256  # requests waiting per batcher; beyond it -> RESOURCE_EXHAUSTED
    # Step scheduler: generation streams + translation beam searches decoding at once (whole server).
    max_streams: int = 64
    # onnxruntime session options (per graph).
    intra_op_threads: int = 1  # threads inside one operator
    inter_op_threads: int = 1  # threads across operators (>1 switches to parallel execution mode)
    graph_optimization: str = "all"  # disable | basic | extended | all
    worker_threads: int = 0  # threads running graph calls concurrently; 0 = number of CPUs
    grace_s: float = 10.0  # on shutdown, how long in-flight work and streams may finish
    # Request limits.
    max_texts: int = 32  # texts per Translate request
    max_text_chars: int = 1000  # characters per text or prompt
    max_source_tokens: int = 0  # source tokens per text; 0 = manifest limits, else 256
    max_target_tokens: int = 0  # translation length; 0 = manifest limits, else 256
    max_prompt_tokens: int = 0  # generation prompt tokens; 0 = manifest limits, else 1024
    max_history: int = 100_000  # forecast history steps (longer than the window is cut)
    max_quantiles: int = 32  # quantile levels per Forecast request
    max_beam: int = 8  # beam_size upper bound
    max_tokens: int = 1024  # generation max_tokens upper bound
    default_max_tokens: int = 128  # generation max_tokens when the request leaves it unset
    max_stop: int = 8  # stop sequences per Generate request
    max_stop_chars: int = 64  # characters per stop sequence
    max_message_bytes: int = 4 * 1024 * 1024  # gRPC send/receive message size
    length_penalty: float = 0.6  # GNMT alpha for beam search: score / ((5 + len) / 6) ** alpha

    def validate(self) -> "ServeConfig":
        """Check ranges; raises ValueError naming the field, the value and the rule."""
        positive = (
            "keep_versions", "max_batch_size", "max_queue", "max_streams", "intra_op_threads",
            "inter_op_threads", "max_texts", "max_text_chars", "max_history", "max_quantiles",
            "max_beam", "max_tokens", "default_max_tokens", "max_stop", "max_stop_chars",
            "max_message_bytes",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)!r} must be at least 1")
        for name in ("worker_threads", "max_source_tokens", "max_target_tokens", "max_prompt_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} {getattr(self, name)!r} must be 0 (automatic) or more")
        for name in ("poll_interval_s", "max_batch_wait_ms", "grace_s", "length_penalty"):
            if not getattr(self, name) >= 0:  # also rejects NaN
                raise ValueError(f"{name} {getattr(self, name)!r} must be 0 or more")
        for name in ("port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name} {getattr(self, name)!r} must be within 0..65535")
        if self.graph_optimization not in GRAPH_OPTIMIZATIONS:
            raise ValueError(
                f"graph_optimization {self.graph_optimization!r} is not one of {', '.join(GRAPH_OPTIMIZATIONS)}"
            )
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(f"default_max_tokens {self.default_max_tokens} exceeds max_tokens {self.max_tokens}")
        self.models = Path(self.models)
        return self


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--<field-name>`` for every ServeConfig field; an unset flag stays None so that
    config_from_args can fall back to the environment, then the default."""
    defaults = ServeConfig()
    for f in fields(ServeConfig):
        kind = _kind(f)
        flag = "--" + f.name.replace("_", "-")
        help_text = f"(default {getattr(defaults, f.name)}; env {env_var(f.name)})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "type": kind, "help": help_text}
        if f.name == "graph_optimization":
            kwargs["choices"] = GRAPH_OPTIMIZATIONS
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
