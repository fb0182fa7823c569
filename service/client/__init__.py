"""The client side: the Python client (``SeqserveClient``) and the ``seqserve`` command (``service.client.cli``)."""

from .client import (
    DEFAULT_ADDRESS,
    ClientError,
    ContinuationScore,
    ForecastResult,
    GenerateChunk,
    GenerateResult,
    ScoreResult,
    SeqserveClient,
    TokenLogprob,
    TranslateResult,
    Translation,
    channel_credentials,
    read_token_file,
)

__all__ = [
    "DEFAULT_ADDRESS", "ClientError", "ContinuationScore", "ForecastResult", "GenerateChunk", "GenerateResult",
    "ScoreResult", "SeqserveClient", "TokenLogprob", "TranslateResult", "Translation", "channel_credentials",
    "read_token_file",
]
