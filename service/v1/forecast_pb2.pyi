from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Series(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class ForecastRequest(_message.Message):
    __slots__ = ("model", "version", "history", "channels", "horizon", "quantiles", "frequency", "season_length")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    HORIZON_FIELD_NUMBER: _ClassVar[int]
    QUANTILES_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_FIELD_NUMBER: _ClassVar[int]
    SEASON_LENGTH_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    history: _containers.RepeatedScalarFieldContainer[float]
    channels: _containers.RepeatedCompositeFieldContainer[Series]
    horizon: int
    quantiles: _containers.RepeatedScalarFieldContainer[float]
    frequency: str
    season_length: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., history: _Optional[_Iterable[float]] = ..., channels: _Optional[_Iterable[_Union[Series, _Mapping]]] = ..., horizon: _Optional[int] = ..., quantiles: _Optional[_Iterable[float]] = ..., frequency: _Optional[str] = ..., season_length: _Optional[int] = ...) -> None: ...

class QuantilePath(_message.Message):
    __slots__ = ("quantile", "values", "channels")
    QUANTILE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    quantile: float
    values: _containers.RepeatedScalarFieldContainer[float]
    channels: _containers.RepeatedCompositeFieldContainer[Series]
    def __init__(self, quantile: _Optional[float] = ..., values: _Optional[_Iterable[float]] = ..., channels: _Optional[_Iterable[_Union[Series, _Mapping]]] = ...) -> None: ...

class ForecastResponse(_message.Message):
    __slots__ = ("model", "version", "forecast", "channels", "quantiles", "target_channel", "season_length")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORECAST_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    QUANTILES_FIELD_NUMBER: _ClassVar[int]
    TARGET_CHANNEL_FIELD_NUMBER: _ClassVar[int]
    SEASON_LENGTH_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    forecast: _containers.RepeatedScalarFieldContainer[float]
    channels: _containers.RepeatedCompositeFieldContainer[Series]
    quantiles: _containers.RepeatedCompositeFieldContainer[QuantilePath]
    target_channel: int
    season_length: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., forecast: _Optional[_Iterable[float]] = ..., channels: _Optional[_Iterable[_Union[Series, _Mapping]]] = ..., quantiles: _Optional[_Iterable[_Union[QuantilePath, _Mapping]]] = ..., target_channel: _Optional[int] = ..., season_length: _Optional[int] = ...) -> None: ...
