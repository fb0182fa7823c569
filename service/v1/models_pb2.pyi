import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListModelsRequest(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: str
    def __init__(self, task: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ...) -> None: ...

class ForecastSpec(_message.Message):
    __slots__ = ("window", "min_history", "horizon", "channels", "quantiles", "target_channel", "channel_names", "frequency", "frequencies", "season_input", "season_length")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    MIN_HISTORY_FIELD_NUMBER: _ClassVar[int]
    HORIZON_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    QUANTILES_FIELD_NUMBER: _ClassVar[int]
    TARGET_CHANNEL_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_NAMES_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_FIELD_NUMBER: _ClassVar[int]
    FREQUENCIES_FIELD_NUMBER: _ClassVar[int]
    SEASON_INPUT_FIELD_NUMBER: _ClassVar[int]
    SEASON_LENGTH_FIELD_NUMBER: _ClassVar[int]
    window: int
    min_history: int
    horizon: int
    channels: int
    quantiles: _containers.RepeatedScalarFieldContainer[float]
    target_channel: int
    channel_names: _containers.RepeatedScalarFieldContainer[str]
    frequency: str
    frequencies: _containers.RepeatedScalarFieldContainer[str]
    season_input: bool
    season_length: int
    def __init__(self, window: _Optional[int] = ..., min_history: _Optional[int] = ..., horizon: _Optional[int] = ..., channels: _Optional[int] = ..., quantiles: _Optional[_Iterable[float]] = ..., target_channel: _Optional[int] = ..., channel_names: _Optional[_Iterable[str]] = ..., frequency: _Optional[str] = ..., frequencies: _Optional[_Iterable[str]] = ..., season_input: _Optional[bool] = ..., season_length: _Optional[int] = ...) -> None: ...

class SpeechSpec(_message.Message):
    __slots__ = ("sample_rate", "labels", "frame_seconds", "streaming", "n_fft", "hop", "n_mels", "word_separator")
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    FRAME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STREAMING_FIELD_NUMBER: _ClassVar[int]
    N_FFT_FIELD_NUMBER: _ClassVar[int]
    HOP_FIELD_NUMBER: _ClassVar[int]
    N_MELS_FIELD_NUMBER: _ClassVar[int]
    WORD_SEPARATOR_FIELD_NUMBER: _ClassVar[int]
    sample_rate: int
    labels: _containers.RepeatedScalarFieldContainer[str]
    frame_seconds: float
    streaming: bool
    n_fft: int
    hop: int
    n_mels: int
    word_separator: str
    def __init__(self, sample_rate: _Optional[int] = ..., labels: _Optional[_Iterable[str]] = ..., frame_seconds: _Optional[float] = ..., streaming: _Optional[bool] = ..., n_fft: _Optional[int] = ..., hop: _Optional[int] = ..., n_mels: _Optional[int] = ..., word_separator: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "task", "cell", "num_layers", "hidden_size", "bidirectional", "num_parameters", "state", "is_default", "description", "evaluation", "limits", "forecast", "error", "loaded_at", "weights", "languages", "manifest_name", "manifest_version", "speech")
    class LimitsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class LanguagesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    BIDIRECTIONAL_FIELD_NUMBER: _ClassVar[int]
    NUM_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    FORECAST_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    LANGUAGES_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_NAME_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    SPEECH_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    task: str
    cell: str
    num_layers: int
    hidden_size: int
    bidirectional: bool
    num_parameters: int
    state: str
    is_default: bool
    description: str
    evaluation: _struct_pb2.Struct
    limits: _containers.ScalarMap[str, int]
    forecast: ForecastSpec
    error: str
    loaded_at: _timestamp_pb2.Timestamp
    weights: str
    languages: _containers.ScalarMap[str, str]
    manifest_name: str
    manifest_version: str
    speech: SpeechSpec
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., task: _Optional[str] = ..., cell: _Optional[str] = ..., num_layers: _Optional[int] = ..., hidden_size: _Optional[int] = ..., bidirectional: _Optional[bool] = ..., num_parameters: _Optional[int] = ..., state: _Optional[str] = ..., is_default: _Optional[bool] = ..., description: _Optional[str] = ..., evaluation: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., limits: _Optional[_Mapping[str, int]] = ..., forecast: _Optional[_Union[ForecastSpec, _Mapping]] = ..., error: _Optional[str] = ..., loaded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., weights: _Optional[str] = ..., languages: _Optional[_Mapping[str, str]] = ..., manifest_name: _Optional[str] = ..., manifest_version: _Optional[str] = ..., speech: _Optional[_Union[SpeechSpec, _Mapping]] = ...) -> None: ...
