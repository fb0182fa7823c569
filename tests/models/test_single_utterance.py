"""StreamingRecognize with single_utterance on the bundled streaming model and real FSDD speech: the stream
ends itself when the speaker stops, with the transcript of what was said until then."""

from __future__ import annotations

import shutil
import wave

import grpc
import numpy as np
import pytest
import pytest_asyncio

from service.front.metrics import Metrics
from service.v1 import recognize_pb2, recognize_pb2_grpc
from tests.conftest import REPO
from tests.integration.harness import metric_value, serving

pytestmark = pytest.mark.asyncio(loop_scope="module")
MODEL = "speech-digits-stream"
RATE = 8000
EVENT = recognize_pb2.StreamingRecognizeResponse.END_OF_SINGLE_UTTERANCE


def _take(recordings, digit: int, speaker: str, take: int) -> np.ndarray:
    with wave.open(str(recordings / f"{digit}_{speaker}_{take}.wav")) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768


def _said(recordings, digits: str, speakers: list[str]) -> np.ndarray:
    """FSDD test takes of ``digits`` with 250 ms pauses between them."""
    parts = []
    for i, d in enumerate(digits):
        if i:
            parts.append(np.zeros(RATE // 4, np.float32))
        parts.append(_take(recordings, int(d), speakers[i % len(speakers)], 2))
    return np.concatenate(parts)


@pytest.fixture(scope="module")
def speech(data_dir):
    recordings = data_dir / "fsdd" / "recordings"
    if not recordings.is_dir():
        pytest.skip("no FSDD recordings")
    first = _said(recordings, "407", ["jackson", "theo", "lucas"])
    second = _said(recordings, "12", ["yweweler", "jackson"])
    pause = np.zeros(int(1.5 * RATE), np.float32)
    audio = np.concatenate([first, pause, second])
    audio += np.random.default_rng(0).normal(0, 0.001, len(audio)).astype(np.float32)  # a quiet room
    return audio, len(first) / RATE, (len(first) + len(pause)) / RATE


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    shutil.copytree(REPO / "models" / MODEL, models / MODEL)
    async with serving(models, metrics=Metrics(process_metrics=False)) as s:
        yield s


def _pcm(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


async def _stream(served, audio: np.ndarray, **streaming) -> list[recognize_pb2.StreamingRecognizeResponse]:
    data = _pcm(audio)
    config = recognize_pb2.RecognitionConfig(encoding=recognize_pb2.RecognitionConfig.LINEAR16,
                                             sample_rate_hertz=RATE, model=MODEL)
    requests = [recognize_pb2.StreamingRecognizeRequest(streaming_config=recognize_pb2.StreamingRecognitionConfig(
        config=config, interim_results=True, **streaming))]
    requests += [recognize_pb2.StreamingRecognizeRequest(audio_content=data[i : i + 1600])
                 for i in range(0, len(data), 1600)]  # 100 ms chunks
    stub = recognize_pb2_grpc.RecognizerStub(served.channel)
    return [r async for r in stub.StreamingRecognize(iter(requests), timeout=20)]


async def _offline(served, audio: np.ndarray) -> str:
    stub = recognize_pb2_grpc.RecognizerStub(served.channel)
    config = recognize_pb2.RecognitionConfig(encoding=recognize_pb2.RecognitionConfig.LINEAR16,
                                             sample_rate_hertz=RATE, model=MODEL)
    reply = await stub.Recognize(recognize_pb2.RecognizeRequest(config=config, audio=_pcm(audio)))
    return reply.results[0].alternatives[0].transcript


async def test_the_stream_ends_when_the_speaker_stops(served, speech):
    audio, first_end, second_start = speech
    first_part = await _offline(served, audio[: int(first_end * RATE)])
    assert first_part.split() and len(first_part.split()) <= 3  # the model hears the first digits
    before = metric_value(served.metrics, "seqserve_speech_result_latency_seconds_count", model=MODEL, kind="endpoint")
    responses = await _stream(served, audio, single_utterance=True)
    events = [i for i, r in enumerate(responses) if r.speech_event_type == EVENT]
    assert len(events) == 1 and not responses[events[0]].results
    # the event, then the final result, then the end of the call (status OK)
    final = responses[events[0] + 1]
    assert responses[-1] is final and final.results[0].is_final
    assert all(not r.results[0].is_final for r in responses[: events[0]])
    result = final.results[0]
    assert result.alternatives[0].transcript == first_part  # what was said before the pause, nothing after
    end = result.result_end_time.ToMilliseconds() / 1000
    silence = served.config.end_silence_ms / 1000  # the server's default: the request named none
    assert first_end + silence - 0.3 <= end <= min(first_end + silence + 0.3, second_start)
    assert metric_value(served.metrics, "seqserve_speech_result_latency_seconds_count", model=MODEL,
                        kind="endpoint") == before + 1


async def test_a_longer_end_silence_or_no_single_utterance_hears_everything(served, speech):
    audio, _, _ = speech
    whole = await _offline(served, audio)
    assert len(whole.split()) > 3
    for streaming in ({}, {"single_utterance": True, "end_silence_ms": 2000}):
        responses = await _stream(served, audio, **streaming)
        assert not any(r.speech_event_type for r in responses), streaming
        assert responses[-1].results[0].is_final and responses[-1].results[0].alternatives[0].transcript == whole
        assert responses[-1].results[0].result_end_time.ToMilliseconds() == pytest.approx(len(audio) / RATE * 1000,
                                                                                            abs=30)


async def test_silence_alone_never_ends_an_utterance(served):
    quiet = np.random.default_rng(1).normal(0, 0.001, 3 * RATE).astype(np.float32)
    responses = await _stream(served, quiet, single_utterance=True, end_silence_ms=300)
    assert not any(r.speech_event_type for r in responses)
    assert responses[-1].results[0].is_final and responses[-1].results[0].alternatives[0].transcript == ""


async def test_a_client_still_sending_after_the_end_is_not_an_error(served, speech):
    """A microphone keeps sending after the utterance ended: the call still ends OK with the final result."""
    audio, first_end, _ = speech
    stub = recognize_pb2_grpc.RecognizerStub(served.channel)
    call = stub.StreamingRecognize(timeout=20)  # without an end of utterance, a deadline instead of a hang
    config = recognize_pb2.RecognitionConfig(encoding=recognize_pb2.RecognitionConfig.LINEAR16,
                                             sample_rate_hertz=RATE, model=MODEL)
    await call.write(recognize_pb2.StreamingRecognizeRequest(streaming_config=recognize_pb2.StreamingRecognitionConfig(
        config=config, single_utterance=True, end_silence_ms=500)))
    data = _pcm(audio)
    got = []
    for i in range(0, len(data), 1600):
        try:
            await call.write(recognize_pb2.StreamingRecognizeRequest(audio_content=data[i : i + 1600]))
        except Exception:  # noqa: BLE001 - writing after the server ended the call
            break
    while (r := await call.read()) != grpc.aio.EOF:
        got.append(r)
    assert await call.code() == grpc.StatusCode.OK
    assert [r.speech_event_type for r in got if r.speech_event_type] == [EVENT]
    assert got[-1].results[0].is_final and got[-1].results[0].result_end_time.ToMilliseconds() / 1000 < first_end + 0.9


async def test_the_python_client_yields_the_event_then_the_final_result(served, speech):
    import asyncio

    from service.client import SeqserveClient

    audio, first_end, _ = speech
    data = _pcm(audio)

    def run():
        with SeqserveClient(f"127.0.0.1:{served.port}", timeout=20) as client:
            chunks = (data[i : i + 1600] for i in range(0, len(data), 1600))
            return list(client.recognize_stream(chunks, sample_rate_hertz=RATE, model=MODEL, single_utterance=True))

    updates = await asyncio.to_thread(run)
    assert [u.speech_event for u in updates[-2:]] == ["END_OF_SINGLE_UTTERANCE", ""]
    assert updates[-1].is_final and updates[-1].transcript == await _offline(served, audio[: int(first_end * RATE)])
    assert not any(u.is_final or u.speech_event for u in updates[:-2])
