"""The client side: the Python client (``SeqserveClient``) and the ``seqserve`` command (``service.client.cli``)."""

from .client import (
    DEFAULT_ADDRESS,
    ClientError,
    ContinuationScore,
    ForecastResult,
    GenerateChunk,
    GenerateResult,
    RecognizeResult,
    RecognizeUpdate,
    ScoreResult,
    SeqserveClient,
    SpeechAlternative,
    SpeechResult,
    TokenLogprob,
    TranslateResult,
    Translation,
    WordInfo,
    channel_credentials,
    read_token_file,
)

__all__ = [
    "DEFAULT_ADDRESS", "ClientError", "ContinuationScore", "ForecastResult", "GenerateChunk", "GenerateResult",
    "RecognizeResult", "RecognizeUpdate", "ScoreResult", "SeqserveClient", "SpeechAlternative", "SpeechResult",
    "TokenLogprob", "TranslateResult", "Translation", "WordInfo", "channel_credentials", "read_token_file",
]
