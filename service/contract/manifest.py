"""The bundle manifest: ``manifest.json`` schema, task and cell names, safe names, read and write.

A bundle is a folder ``<repository>/<name>/<version>/`` holding ``manifest.json``, the ONNX graphs
and tokenizer files that the manifest names. The graphs' inputs and outputs are in ``graphs.py``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
WEIGHT_FORMATS = ("float32", "int8")
MANIFEST_FILE = "manifest.json"
TASKS = ("translate", "forecast", "generate", "recognize")
CELLS = ("rnn", "lstm", "gru", "peephole", "coupled")
LSTM_FAMILY = ("lstm", "peephole", "coupled")

# Graphs each task must ship, by role -> default file name.
GRAPHS: dict[str, dict[str, str]] = {
    "forecast": {"forecast": "forecast.onnx"},
    "generate": {"lm": "lm.onnx"},
    "translate": {"encoder": "encoder.onnx", "decoder_step": "decoder_step.onnx"},
    "recognize": {"acoustic": "acoustic.onnx"},
}
# Graphs a task may also ship: with them a bundle can do more (a speech bundle with a step graph streams).
OPTIONAL_GRAPHS: dict[str, dict[str, str]] = {"recognize": {"acoustic_step": "acoustic_step.onnx"}}
# Tokenizer files (HF `tokenizers` JSON) each task must ship, by role.
TOKENIZERS: dict[str, tuple[str, ...]] = {
    "forecast": (),
    "generate": ("text",),
    "translate": ("source", "target"),
    "recognize": (),
}
# The only kinds of file a bundle may name; the service refuses anything else.
ALLOWED_SUFFIXES = (".onnx", ".json")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION_RE = re.compile(r"^[0-9]{1,9}$")


class BundleError(ValueError):
    """A bundle or manifest that does not follow this schema; the message says what and where."""


def state_names(cell: str) -> tuple[str, ...]:
    """Recurrent state tensors a graph carries for ``cell``: ("h",) or ("h", "c")."""
    return ("h", "c") if cell in LSTM_FAMILY else ("h",)


def check_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a safe model name (kind="name") or version (kind="version").

    Raises BundleError for anything else, path-like names such as ``../x`` included.
    """
    pattern = _VERSION_RE if kind == "version" else _NAME_RE
    if not isinstance(value, str) or not pattern.match(value) or value in (".", ".."):
        rule = "digits only, at most 9" if kind == "version" else "letters, digits, '.', '_', '-', at most 128, not starting with a symbol"
        raise BundleError(f"{kind} {value!r} is not valid ({rule})")
    return value


def check_file_name(field_name: str, value: str) -> str:
    """Return ``value`` if it is a plain file name inside the bundle with an allowed suffix."""
    if (
        not isinstance(value, str)
        or not value
        or "/" in value
        or "\\" in value
        or value.startswith(".")
        or not value.endswith(ALLOWED_SUFFIXES)
    ):
        raise BundleError(
            f"{field_name} {value!r} must be a plain file name in the bundle ending in "
            f"{' or '.join(ALLOWED_SUFFIXES)}"
        )
    return value


@dataclass
class ForecastSpec:
    """What a forecasting bundle accepts and returns."""

    window: int  # longest history the graph is trained on (steps); longer histories are cut
    min_history: int  # shortest history accepted (steps)
    horizon: int  # steps the graph predicts
    channels: int  # input channels C (1 = univariate)
    quantiles: list[float]  # levels of the Q outputs, sorted ascending, contains 0.5
    target_channel: int = -1  # the channel the evaluation figures refer to
    channel_names: list[str] = field(default_factory=list)
    frequency: str = ""  # e.g. "1h": the series' frequency the model was trained on (its default when a request names none)
    frequencies: list[str] = field(default_factory=list)  # every frequency it was trained for (a global model's several)
    season_input: bool = False  # forecast.onnx also takes ``season`` (B,) int64: each row's season length in steps
    season_length: int = 0  # the season a request naming neither frequency nor season gets (0: its frequency's)

    def __post_init__(self) -> None:
        if not self.frequencies and self.frequency:  # bundles written before `frequencies` existed
            self.frequencies = [self.frequency]

    @property
    def target_index(self) -> int:
        """``target_channel`` as an index into the channels (-1 = the last one)."""
        return self.target_channel % self.channels

    def info(self) -> dict[str, Any]:
        """The spec as plain values for model descriptions, its target channel resolved to an index."""
        return {**asdict(self), "target_channel": self.target_index}

    def validate(self) -> None:
        for key in ("window", "min_history", "horizon", "channels"):
            v = getattr(self, key)
            if not isinstance(v, int) or v < 1:
                raise BundleError(f"forecast.{key} must be a positive integer, got {v!r}")
        if self.min_history > self.window:
            raise BundleError(
                f"forecast.min_history {self.min_history} exceeds forecast.window {self.window}"
            )
        q = self.quantiles
        if not q or any(not (0.0 < x < 1.0) for x in q) or sorted(q) != list(q) or len(set(q)) != len(q):
            raise BundleError(f"forecast.quantiles {q!r} must be distinct, ascending, within (0, 1)")
        if not any(math.isclose(x, 0.5) for x in q):
            raise BundleError(f"forecast.quantiles {q!r} must contain 0.5 (the point forecast)")
        if not isinstance(self.season_length, int) or self.season_length < 0:
            raise BundleError(f"forecast.season_length must be a non-negative integer, got {self.season_length!r}")
        from .frequency import FrequencyError, parse

        try:
            for alias in ([self.frequency] if self.frequency else []) + list(self.frequencies):
                parse(alias, "forecast.frequencies")
        except FrequencyError as err:
            raise BundleError(str(err)) from None


@dataclass
class SpeechSpec:
    """What a speech bundle hears and emits: the features its graphs compute and its CTC labels."""

    sample_rate: int  # Hz of the audio the graphs take (requests are resampled to it)
    n_fft: int  # feature window and DFT length, samples
    hop: int  # samples between feature frames
    n_mels: int
    f_min: float
    f_max: float
    stack: int  # feature frames per model frame: a model frame is stack * hop samples
    labels: list[str]  # the text of each CTC output index; labels[blank] is ""
    blank: int = 0
    # " " (or any text): each label is a word, and this joins them (digits); "": the labels are
    # characters, joined as they are, and the label " " separates words.
    word_separator: str = " "
    # Silence appended to the end of every recording (and stream) before its last frames are
    # recognised: a unidirectional model names a word only after it has heard it, so audio cut right
    # after the last word needs frames to name it in. Trained with the same silence; 0 = none.
    tail_ms: int = 0

    @property
    def tail_samples(self) -> int:
        """tail_ms of silence in whole frames, at the model's rate."""
        frames = -(-self.tail_ms * self.sample_rate // 1000 // self.frame_samples)
        return frames * self.frame_samples

    @property
    def frame_samples(self) -> int:
        """Samples per model frame (the streaming graph takes whole frames)."""
        return self.hop * self.stack

    @property
    def context(self) -> int:
        """Samples before a chunk that its first feature frame also reads (the streaming graph's input starts with them)."""
        return self.n_fft - self.hop

    @property
    def frame_seconds(self) -> float:
        return self.frame_samples / self.sample_rate

    def info(self) -> dict[str, Any]:
        return asdict(self)

    def words(self, labels: Sequence[int]) -> list[tuple[str, list[int]]]:
        """The words of a label sequence, each with the positions (in ``labels``) of its labels."""
        if self.word_separator:
            return [(self.labels[k], [i]) for i, k in enumerate(labels)]
        out: list[tuple[str, list[int]]] = []
        current: list[int] = []
        for i, k in enumerate([*labels, -1]):
            if k >= 0 and not self.labels[k].isspace():
                current.append(i)
            elif current:
                out.append(("".join(self.labels[labels[j]] for j in current), current))
                current = []
        return out

    def transcript(self, labels: Sequence[int]) -> str:
        return (self.word_separator or " ").join(w for w, _ in self.words(labels))

    def validate(self) -> None:
        for key in ("sample_rate", "n_fft", "hop", "n_mels", "stack"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise BundleError(f"speech.{key} must be a positive integer, got {v!r}")
        if self.hop > self.n_fft:
            raise BundleError(f"speech.hop {self.hop} exceeds speech.n_fft {self.n_fft}")
        if not 0.0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise BundleError(f"speech.f_min {self.f_min} and f_max {self.f_max} must satisfy 0 <= f_min < f_max <= "
                              f"{self.sample_rate / 2:g} (half the sample rate)")
        labels = self.labels
        if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
            raise BundleError(f"speech.labels {labels!r} must be a list of at least 2 strings (blank included)")
        if not isinstance(self.blank, int) or not 0 <= self.blank < len(labels) or labels[self.blank] != "":
            raise BundleError(f"speech.blank {self.blank!r} must index the empty label in speech.labels")
        if any(not x for i, x in enumerate(labels) if i != self.blank):
            raise BundleError("speech.labels: only the blank may be empty")
        if not isinstance(self.word_separator, str):
            raise BundleError(f"speech.word_separator {self.word_separator!r} must be a string")
        if not isinstance(self.tail_ms, int) or isinstance(self.tail_ms, bool) or not 0 <= self.tail_ms <= 5000:
            raise BundleError(f"speech.tail_ms {self.tail_ms!r} must be an integer within 0..5000")


@dataclass
class Manifest:
    """``manifest.json`` of a bundle. Unknown keys are kept in ``extra``."""

    name: str
    version: str
    task: str
    cell: str
    num_layers: int
    hidden_size: int
    graphs: dict[str, str]  # role -> file name, roles per GRAPHS[task]
    bidirectional: bool = False  # of the (encoder) recurrent layers
    embed_size: int = 0  # 0 when the task has no embedding
    num_parameters: int = 0
    vocab_size: dict[str, int] = field(default_factory=dict)  # tokenizer role -> size
    tokenizers: dict[str, str] = field(default_factory=dict)  # role -> file, roles per TOKENIZERS[task]
    special_tokens: dict[str, int] = field(default_factory=dict)  # pad/unk/bos/eos -> id
    languages: dict[str, str] = field(default_factory=dict)  # tokenizer role -> ISO 639-1 code, e.g. source: de
    limits: dict[str, int] = field(default_factory=dict)  # e.g. max_source_tokens, max_target_tokens
    forecast: ForecastSpec | None = None
    speech: SpeechSpec | None = None
    training: dict[str, Any] = field(default_factory=dict)  # config, seed, seconds, data sha256 ...
    evaluation: dict[str, Any] = field(default_factory=dict)  # metric -> figure, with split names
    description: str = ""
    weights: str = "float32"  # float32 | int8: large weights stored as int8 (training/quantize.py)
    default: bool = False  # the task's default model (an empty request ``model``); first by name if several
    seqserve_version: str = ""
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def state_names(self) -> tuple[str, ...]:
        return state_names(self.cell)

    def validate(self) -> "Manifest":
        """Check every field against the schema; returns self, raises BundleError."""
        if self.schema_version != SCHEMA_VERSION:
            raise BundleError(
                f"schema_version {self.schema_version!r} is not supported (this seqserve reads {SCHEMA_VERSION})"
            )
        check_name("name", self.name)
        check_name("version", self.version)
        if self.task not in TASKS:
            raise BundleError(f"task {self.task!r} is not one of {', '.join(TASKS)}")
        if self.cell not in CELLS:
            raise BundleError(f"cell {self.cell!r} is not one of {', '.join(CELLS)}")
        for key in ("num_layers", "hidden_size"):
            v = getattr(self, key)
            if not isinstance(v, int) or v < 1:
                raise BundleError(f"{key} must be a positive integer, got {v!r}")
        if not isinstance(self.default, bool):
            raise BundleError(f"default {self.default!r} must be true or false")
        if self.weights not in WEIGHT_FORMATS:
            raise BundleError(f"weights {self.weights!r} is not one of {', '.join(WEIGHT_FORMATS)}")
        want, optional = set(GRAPHS[self.task]), set(OPTIONAL_GRAPHS.get(self.task, {}))
        if not want <= set(self.graphs) <= want | optional:
            may = f" and may add {sorted(optional)}" if optional else ""
            raise BundleError(f"graphs has roles {sorted(self.graphs)}, task {self.task} needs {sorted(want)}{may}")
        for role, file in self.graphs.items():
            check_file_name(f"graphs.{role}", file)
            if not file.endswith(".onnx"):
                raise BundleError(f"graphs.{role} {file!r} must be an .onnx file")
        want_tok = set(TOKENIZERS[self.task])
        if set(self.tokenizers) != want_tok:
            raise BundleError(
                f"tokenizers has roles {sorted(self.tokenizers)}, task {self.task} needs {sorted(want_tok)}"
            )
        for role, file in self.tokenizers.items():
            check_file_name(f"tokenizers.{role}", file)
            if not file.endswith(".json"):
                raise BundleError(f"tokenizers.{role} {file!r} must be a tokenizer .json file")
        for role, code in self.languages.items():
            if role not in want_tok or not isinstance(code, str) or not code.isalpha():
                raise BundleError(f"languages.{role} {code!r}: roles are the tokenizers' ({', '.join(sorted(want_tok))}), "
                                  "codes letters like de or zh")
        if self.task in ("translate", "generate"):
            needed = ("pad", "unk", "bos", "eos") if self.task == "translate" else ()
            for tok in needed:
                if not isinstance(self.special_tokens.get(tok), int):
                    raise BundleError(f"special_tokens.{tok} is missing (task {self.task} needs pad, unk, bos, eos)")
        if self.task == "forecast":
            if self.forecast is None:
                raise BundleError("forecast section is missing (task forecast needs it)")
            self.forecast.validate()
        if self.task == "recognize":
            if self.speech is None:
                raise BundleError("speech section is missing (task recognize needs it)")
            self.speech.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        for section in ("forecast", "speech"):
            if d[section] is None:
                d.pop(section)
        if not d["default"]:
            d.pop("default")  # written only where it says something
        if not d["languages"]:
            d.pop("languages")
        d.update(extra)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        """Build and validate a manifest from parsed JSON; raises BundleError."""
        if not isinstance(data, dict):
            raise BundleError(f"manifest must be a JSON object, got {type(data).__name__}")
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        missing = [k for k in ("name", "version", "task", "cell", "num_layers", "hidden_size", "graphs") if k not in data]
        if missing:
            raise BundleError(f"manifest is missing required field(s): {', '.join(missing)}")
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["version"] = str(kwargs["version"])
        for key, section in (("forecast", ForecastSpec), ("speech", SpeechSpec)):
            value = kwargs.get(key)
            if value is None:
                continue
            if not isinstance(value, dict):
                raise BundleError(f"{key} must be an object")
            try:
                kwargs[key] = section(**value)
            except TypeError as err:
                raise BundleError(f"{key} section: {err}") from None
        try:
            m = cls(**kwargs, extra={k: v for k, v in data.items() if k not in known})
        except TypeError as err:
            raise BundleError(f"manifest: {err}") from None
        return m.validate()

    def files(self) -> list[str]:
        """Every file the bundle must contain besides the manifest."""
        return [*self.graphs.values(), *self.tokenizers.values()]


def read_manifest(bundle_dir: str | Path) -> Manifest:
    """Read and validate ``bundle_dir/manifest.json`` and check the files it names exist.

    Raises BundleError (missing/garbled manifest, schema violation, missing file).
    """
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{path} is not readable JSON: {err}") from None
    manifest = Manifest.from_dict(data)
    for file in manifest.files():
        f = bundle_dir / file
        if not f.is_file() or f.is_symlink():
            raise BundleError(f"{bundle_dir}: file {file!r} named by the manifest is missing")
    return manifest


def write_manifest(bundle_dir: str | Path, manifest: Manifest) -> Path:
    """Validate ``manifest`` and write it as ``bundle_dir/manifest.json``; returns the path."""
    manifest.validate()
    path = Path(bundle_dir) / MANIFEST_FILE
    path.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
