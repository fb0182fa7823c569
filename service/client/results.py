"""What the client returns: plain dataclasses built from the replies, never protos."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from service.v1 import models_pb2, recognize_pb2


@dataclass
class Translation:
    text: str
    tokens: list[str]  # target tokens, end-of-sentence excluded
    source_tokens: list[str]
    score: float  # length-normalised log-probability, <= 0
    attention: list[list[float]] | None = None  # (len(tokens), len(source_tokens)) when asked for
    unknown_source_tokens: int = 0  # source tokens the model did not know
    unknown_words: list[str] = field(default_factory=list)  # those words as written, each once
    copied_words: int = 0  # unknown words passed through into the text as written
    sentences: int = 1  # sentences the text was split into and translated one by one
    warning: str = ""  # set when most of the source is unknown to the model (e.g. another language)


@dataclass
class TranslateResult:
    model: str
    version: str
    translations: list[Translation]


@dataclass
class ForecastResult:
    model: str
    version: str
    forecast: list[float]  # (H,) point forecast (median) of the target channel
    quantiles: dict[float, list[float]]  # level -> (H,) path of the target channel
    target_channel: int = 0
    channels: list[list[float]] = field(default_factory=list)  # (C, H) medians, multichannel only
    channel_quantiles: dict[float, list[list[float]]] = field(default_factory=dict)  # level -> (C, H)
    season_length: int = 0  # the season the model was given (0: it takes none)


@dataclass
class TokenLogprob:
    token: str
    token_id: int
    logprob: float  # natural log, under the model's own distribution
    top_logprobs: list["TokenLogprob"] = field(default_factory=list)  # alternatives, best first, when asked for


@dataclass
class GenerateResult:
    model: str
    version: str
    text: str
    finish_reason: str  # "length" | "stop" | "eos"
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per sampled token, when asked for


@dataclass
class GenerateChunk:
    text: str
    finish_reason: str = ""  # set on the last chunk only
    prompt_tokens: int = 0
    completion_tokens: int = 0  # tokens sampled so far; the total in the last chunk
    logprobs: list[TokenLogprob] = field(default_factory=list)  # the tokens this chunk counts, when asked for


@dataclass
class ContinuationScore:
    text: str
    logprob: float  # log P(text | prompt), natural log
    tokens: list[TokenLogprob]  # each token of the continuation with its log-probability
    greedy: bool  # every token was the model's most probable choice
    unknown_tokens: int = 0  # tokens outside the model's vocabulary


@dataclass
class ScoreResult:
    model: str
    version: str
    prompt_tokens: int
    scores: list[ContinuationScore]  # one per continuation, in order
    unknown_prompt_tokens: int = 0  # prompt tokens outside the model's vocabulary

    def best(self) -> ContinuationScore:
        """The continuation the model finds most probable."""
        return max(self.scores, key=lambda s: s.logprob)


@dataclass
class WordInfo:
    word: str  # one label of the model, e.g. "7"
    start_time: float  # seconds from the start of the audio
    end_time: float  # seconds from the start of the audio
    confidence: float  # probability of the word at its frames, 0..1


@dataclass
class SpeechAlternative:
    transcript: str  # the words separated by single spaces; "" when nothing was recognised
    confidence: float  # posterior probability among the transcripts the beam search kept, 0..1
    words: list[WordInfo] = field(default_factory=list)  # one per word, with word_time_offsets


@dataclass
class SpeechResult:
    alternatives: list[SpeechAlternative]  # most probable first; at least one
    result_end_time: float  # seconds of audio this result covers, from the start


@dataclass
class RecognizeResult:
    model: str
    version: str
    results: list[SpeechResult]  # one for the whole recording
    total_billed_time: float  # seconds of audio the server received

    @property
    def transcript(self) -> str:
        """The most probable transcript ("" when nothing was recognised)."""
        return " ".join(t for r in self.results if r.alternatives and (t := r.alternatives[0].transcript))


@dataclass
class RecognizeUpdate:
    """One result of a recognition stream: interim (the best transcript so far) or, once, final."""

    model: str
    version: str
    is_final: bool  # the transcript of the whole stream, sent after the audio ended
    alternatives: list[SpeechAlternative]  # interim: the best one; final: up to max_alternatives, best first
    stability: float  # interim: how likely the transcript is to stay as it is, 0..1; 0 when final
    result_end_time: float  # seconds of audio recognised so far
    total_billed_time: float  # seconds of audio the server has received so far
    # "END_OF_SINGLE_UTTERANCE" (single_utterance): the speaker stopped, the final result follows; then
    # alternatives is empty. "" for results.
    speech_event: str = ""

    @property
    def transcript(self) -> str:
        """The most probable transcript so far."""
        return self.alternatives[0].transcript if self.alternatives else ""


# RecognitionConfig.encoding by name ("" = not given: WAV when the audio starts with a RIFF header, else LINEAR16).
AUDIO_ENCODINGS = {"": recognize_pb2.RecognitionConfig.ENCODING_UNSPECIFIED,
                   "LINEAR16": recognize_pb2.RecognitionConfig.LINEAR16, "WAV": recognize_pb2.RecognitionConfig.WAV}


def _seconds(d) -> float:
    return d.ToNanoseconds() / 1e9


def _alternatives(entries) -> list[SpeechAlternative]:
    return [SpeechAlternative(a.transcript, a.confidence,
                              [WordInfo(w.word, _seconds(w.start_time), _seconds(w.end_time), w.confidence)
                               for w in a.words])
            for a in entries]


def _logprobs(entries) -> list[TokenLogprob]:
    return [TokenLogprob(e.token, e.token_id, e.logprob, _logprobs(e.top_logprobs)) for e in entries]


def _model_dict(info: models_pb2.ModelInfo) -> dict[str, Any]:
    out = json_format.MessageToDict(
        info, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    out["limits"] = {k: int(v) for k, v in out.get("limits", {}).items()}  # int64 arrive as strings
    out["num_parameters"] = int(out.get("num_parameters", 0))
    return out
