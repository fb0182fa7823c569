from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TranslateRequest(_message.Message):
    __slots__ = ("model", "version", "texts", "beam_size", "max_length", "return_attention")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    BEAM_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    RETURN_ATTENTION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    texts: _containers.RepeatedScalarFieldContainer[str]
    beam_size: int
    max_length: int
    return_attention: bool
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., texts: _Optional[_Iterable[str]] = ..., beam_size: _Optional[int] = ..., max_length: _Optional[int] = ..., return_attention: _Optional[bool] = ...) -> None: ...

class TranslateResponse(_message.Message):
    __slots__ = ("model", "version", "translations")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TRANSLATIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    translations: _containers.RepeatedCompositeFieldContainer[Translation]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., translations: _Optional[_Iterable[_Union[Translation, _Mapping]]] = ...) -> None: ...

class Translation(_message.Message):
    __slots__ = ("text", "tokens", "source_tokens", "score", "attention", "unknown_source_tokens", "unknown_words", "copied_words", "sentences", "warning")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_SOURCE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_WORDS_FIELD_NUMBER: _ClassVar[int]
    COPIED_WORDS_FIELD_NUMBER: _ClassVar[int]
    SENTENCES_FIELD_NUMBER: _ClassVar[int]
    WARNING_FIELD_NUMBER: _ClassVar[int]
    text: str
    tokens: _containers.RepeatedScalarFieldContainer[str]
    source_tokens: _containers.RepeatedScalarFieldContainer[str]
    score: float
    attention: Matrix
    unknown_source_tokens: int
    unknown_words: _containers.RepeatedScalarFieldContainer[str]
    copied_words: int
    sentences: int
    warning: str
    def __init__(self, text: _Optional[str] = ..., tokens: _Optional[_Iterable[str]] = ..., source_tokens: _Optional[_Iterable[str]] = ..., score: _Optional[float] = ..., attention: _Optional[_Union[Matrix, _Mapping]] = ..., unknown_source_tokens: _Optional[int] = ..., unknown_words: _Optional[_Iterable[str]] = ..., copied_words: _Optional[int] = ..., sentences: _Optional[int] = ..., warning: _Optional[str] = ...) -> None: ...

class Matrix(_message.Message):
    __slots__ = ("rows", "cols", "values")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    rows: int
    cols: int
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, rows: _Optional[int] = ..., cols: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...
