"""Plain request/result values of the engine (numpy arrays, no protos)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# ModelInfo.state values.
LOADING, READY, FAILED, UNLOADING = "LOADING", "READY", "FAILED", "UNLOADING"


@dataclass
class ForecastRequest:
    model: str = ""  # "" = the forecast task's default model
    version: str = ""  # "" = newest loaded version
    history: np.ndarray = field(default_factory=lambda: np.zeros((0, 1)))  # (T, C) float64; (T,) = one channel
    horizon: int = 0  # steps to return; 0 = the model's horizon
    # Levels to return; empty = the model's levels. Levels between the model's are linearly
    # interpolated; outside the model's range -> InvalidArgument.
    quantiles: list[float] = field(default_factory=list)
    # The request field the history came from: "history" (univariate) or "channels" (one series
    # per channel); validation errors name it.
    history_field: str = "history"
    frequency: str = ""  # pandas-style alias; "" = the model's own (service.contract.frequency)
    season_length: int = 0  # steps per season, for models that take one; 0 = from the frequency


@dataclass
class ForecastResult:
    model: str
    version: str
    forecast: np.ndarray  # (H, C) the median (0.5 level)
    quantiles: list[float]  # the levels of quantile_paths, in request order
    quantile_paths: np.ndarray  # (Q, H, C)
    target_channel: int = 0  # the channel the model's figures refer to (the manifest's, within 0..C-1)
    season_length: int = 0  # the season the model was given (0: it takes none)


@dataclass
class TranslateRequest:
    model: str = ""
    version: str = ""
    texts: list[str] = field(default_factory=list)
    beam_size: int = 1  # 0 or 1 = greedy; up to config.max_beam
    max_length: int = 0  # target tokens per sentence; 0 = min(model limit, 2 * source tokens + 10)
    return_attention: bool = False


@dataclass
class Translation:
    text: str
    tokens: list[str]  # target tokens, BOS/EOS excluded
    source_tokens: list[str]
    score: float  # sum of token log-probs (EOS included) / ((5 + n) / 6) ** alpha (GNMT)
    attention: np.ndarray | None = None  # (len(tokens), len(source_tokens)) when asked for
    unknown_source_tokens: int = 0  # source tokens outside the model's vocabulary
    unknown_words: list[str] = field(default_factory=list)  # those tokens as written, each once, in order
    copied_words: int = 0  # unknown words passed through into the translation as written
    sentences: int = 1  # the text was translated sentence by sentence
    warning: str = ""  # set when most of the source is unknown to the model (e.g. another language)


@dataclass
class TranslateResult:
    model: str
    version: str
    translations: list[Translation]


@dataclass
class GenerateRequest:
    model: str = ""
    version: str = ""
    prompt: str = ""  # "" starts from the model's BOS token (InvalidArgument when it has none)
    max_tokens: int | None = None  # None = config.default_max_tokens
    temperature: float | None = None  # None = 1.0; 0 = greedy (argmax)
    top_k: int | None = None  # None or 0 = off
    top_p: float | None = None  # None = 1.0 (off)
    seed: int | None = None  # None = random; same seed -> same text, alone or under load
    stop: list[str] = field(default_factory=list)  # the text ends before the first of these
    logprobs: bool = False  # also return each generated token's log-probability
    top_logprobs: int = 0  # and this many alternatives per token (> 0 implies logprobs)


@dataclass
class TokenLogprob:
    token: str
    token_id: int
    logprob: float  # natural log, under the model's distribution (before temperature / top-k / top-p)
    top_logprobs: list["TokenLogprob"] = field(default_factory=list)  # best first, when asked for


@dataclass
class GenerateChunk:
    text: str  # new text only
    finish_reason: str = ""  # set on the last chunk: "length" | "stop" | "eos"
    prompt_tokens: int = 0
    completion_tokens: int = 0  # tokens sampled so far, EOS and a stop's tokens included
    logprobs: list[TokenLogprob] = field(default_factory=list)  # the tokens this chunk counts, when asked for


@dataclass
class GenerateResult:
    model: str
    version: str
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per sampled token, when asked for


@dataclass
class ScoreRequest:
    model: str = ""
    version: str = ""
    prompt: str = ""  # "" starts from the model's BOS token (InvalidArgument when it has none)
    continuations: list[str] = field(default_factory=list)


@dataclass
class ContinuationScore:
    text: str
    logprob: float  # log P(text | prompt), the sum over its tokens
    tokens: list[TokenLogprob]
    greedy: bool  # every token was the most probable at its position
    unknown_tokens: int = 0  # tokens outside the vocabulary (scored as the unknown token)


@dataclass
class ScoreResult:
    model: str
    version: str
    prompt_tokens: int
    scores: list[ContinuationScore]
    unknown_prompt_tokens: int = 0


@dataclass
class RecognitionConfig:
    encoding: str = ""  # "LINEAR16" | "WAV" | "" (WAV when the audio starts with a RIFF header)
    sample_rate_hertz: int = 0  # of the audio; required for LINEAR16
    max_alternatives: int = 1  # 0 or 1 = one
    word_time_offsets: bool = False
    model: str = ""
    version: str = ""


@dataclass
class RecognizeRequest:
    config: RecognitionConfig = field(default_factory=RecognitionConfig)
    audio: bytes = b""  # encoded as config.encoding says
    samples: np.ndarray | None = None  # instead of audio: float samples in [-1, 1] at config.sample_rate_hertz


@dataclass
class Word:
    word: str
    start: float  # seconds from the start of the audio
    end: float
    confidence: float


@dataclass
class SpeechAlternative:
    transcript: str
    confidence: float
    words: list[Word] = field(default_factory=list)  # with word_time_offsets


@dataclass
class SpeechResult:
    alternatives: list[SpeechAlternative]  # best first, at least one
    end_time: float  # seconds of audio the result covers
    is_final: bool = True
    stability: float = 0.0  # interim results: how likely the transcript is to stay


@dataclass
class SpeechEvent:
    """Something a stream noticed in the audio (not a result)."""

    kind: str  # "END_OF_SINGLE_UTTERANCE": the speaker stopped (single_utterance); the final result follows


@dataclass
class RecognizeResult:
    model: str
    version: str
    result: SpeechResult
    audio_seconds: float  # of the audio as received


@dataclass
class ModelInfo:
    name: str
    version: str
    task: str
    cell: str
    num_layers: int
    hidden_size: int
    bidirectional: bool
    num_parameters: int
    state: str  # LOADING | READY | FAILED | UNLOADING
    is_default: bool  # this version answers requests that leave model/version empty
    description: str = ""
    evaluation: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, int] = field(default_factory=dict)  # effective request limits
    forecast: dict[str, Any] | None = None  # the manifest's forecast section (ForecastSpec.info(): target resolved)
    speech: dict[str, Any] | None = None  # the manifest's speech section (SpeechSpec.info()) and "streaming"
    error: str = ""  # why a FAILED version failed
    loaded_at: float = 0.0  # time.time() when it became READY; 0 otherwise
    weights: str = ""  # the manifest's weight format (float32 | int8); "" when it did not load
    languages: dict[str, str] = field(default_factory=dict)  # translation: source/target ISO 639-1 codes
    manifest_name: str = ""  # what manifest.json says, where it differs from the directory's name
    manifest_version: str = ""  # likewise for the version
