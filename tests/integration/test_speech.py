"""seqserve.v1.Recognizer on a real server: batching and streaming compute what one offline call
computes, interim and final results, limits and bad input, stream cap, deadline and drain, metrics."""

from __future__ import annotations

import asyncio
import io
import wave

import grpc
import numpy as np
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2

from service.front.metrics import Metrics
from service.v1 import models_pb2, recognize_pb2, recognize_pb2_grpc
from tests.bundles import make_bundle
from tests.integration.harness import bad_request_fields, metric_value, rpc_error, serving

pytestmark = pytest.mark.asyncio(loop_scope="module")
RATE = 8000
LINEAR16, WAV = recognize_pb2.RecognitionConfig.LINEAR16, recognize_pb2.RecognitionConfig.WAV
MAX_SPEECH_STREAMS = 3


def tones(seconds: float, seed: int, rate: int = RATE) -> np.ndarray:
    """A few tone bursts with pauses and a little noise: speech-like input for a random-weight model."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    out = 0.005 * rng.standard_normal(len(t))
    for start in np.arange(0.1, seconds - 0.3, 0.45):
        f = rng.uniform(300, 3000)
        burst = (t >= start) & (t < start + 0.25)
        out[burst] += 0.3 * np.sin(2 * np.pi * f * t[burst])
    return out.astype(np.float32)


def pcm(signal: np.ndarray) -> bytes:
    return (np.clip(signal, -1, 1) * 32767).astype("<i2").tobytes()


def wav_file(signal: np.ndarray, rate: int = RATE, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm(np.repeat(signal, channels)) if channels > 1 else pcm(signal))
    return buf.getvalue()


def config(**kw) -> recognize_pb2.RecognitionConfig:
    return recognize_pb2.RecognitionConfig(**{"encoding": LINEAR16, "sample_rate_hertz": RATE, **kw})


def first(config_msg: recognize_pb2.RecognitionConfig, interim: bool = True, **kw) -> recognize_pb2.StreamingRecognizeRequest:
    return recognize_pb2.StreamingRecognizeRequest(
        streaming_config=recognize_pb2.StreamingRecognitionConfig(config=config_msg, interim_results=interim, **kw))


def chunks(data: bytes, sizes: list[int]) -> list[recognize_pb2.StreamingRecognizeRequest]:
    out, i, k = [], 0, 0
    while i < len(data):
        n = sizes[k % len(sizes)]
        out.append(recognize_pb2.StreamingRecognizeRequest(audio_content=data[i : i + n]))
        i, k = i + n, k + 1
    return out


def alt_key(alt) -> tuple:
    return alt.transcript, round(alt.confidence, 4), tuple((w.word, w.start_time.ToNanoseconds()) for w in alt.words)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(module_models):
    make_bundle(module_models, "recognize", name="tiny-speech-bi", bidirectional=True, hidden_size=8, seed=2)
    async with serving(module_models, metrics=Metrics(process_metrics=False), max_speech_streams=MAX_SPEECH_STREAMS,
                       max_audio_seconds=5.0, max_stream_seconds=4.0, max_chunk_bytes=8000, max_batch_wait_ms=20.0) as s:
        yield s


def recognizer(served) -> recognize_pb2_grpc.RecognizerStub:
    return recognize_pb2_grpc.RecognizerStub(served.channel)


async def test_health_and_model_info_describe_the_speech_models(served):
    reply = await served.health_stub.Check(health_pb2.HealthCheckRequest(service="seqserve.v1.Recognizer"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    info = (await served.models.GetModel(models_pb2.GetModelRequest(name="tiny-recognize"))).model
    assert info.task == "recognize" and info.speech.streaming and info.speech.sample_rate == RATE
    assert list(info.speech.labels) == [str(d) for d in range(10)]
    assert info.speech.frame_seconds == pytest.approx(0.02)  # hop 80 x stack 2 at 8 kHz
    bi = (await served.models.GetModel(models_pb2.GetModelRequest(name="tiny-speech-bi"))).model
    assert bi.bidirectional and not bi.speech.streaming
    assert info.limits["max_audio_seconds"] == 5 and info.limits["max_speech_streams"] == MAX_SPEECH_STREAMS
    assert info.limits["end_silence_ms"] == 1000


async def test_batched_requests_equal_single_ones(served):
    stub = recognizer(served)
    signals = [tones(s, seed) for seed, s in enumerate((0.5, 1.7, 0.9, 2.6, 1.2, 0.31))]
    for model in ("tiny-recognize", "tiny-speech-bi"):
        cfg = config(model=model, max_alternatives=3, enable_word_time_offsets=True)
        alone = [await stub.Recognize(recognize_pb2.RecognizeRequest(config=cfg, audio=pcm(x))) for x in signals]
        before = metric_value(served.metrics, "seqserve_batch_size_count", model=model, graph="acoustic")
        together = await asyncio.gather(*(stub.Recognize(recognize_pb2.RecognizeRequest(config=cfg, audio=pcm(x)))
                                          for x in signals))
        runs = metric_value(served.metrics, "seqserve_batch_size_count", model=model, graph="acoustic") - before
        assert runs < len(signals)  # some of them did share a call
        for a, b in zip(alone, together):
            assert [alt_key(x) for x in a.results[0].alternatives] == [alt_key(x) for x in b.results[0].alternatives]
        for x, r in zip(signals, alone):
            assert r.total_billed_time.ToNanoseconds() == pytest.approx(len(x) / RATE * 1e9, abs=1e3)
            assert 1 <= len(r.results[0].alternatives) <= 3
            assert sum(a.confidence for a in r.results[0].alternatives) <= 1.0 + 1e-5
            end = r.results[0].result_end_time.ToNanoseconds()
            for alt in r.results[0].alternatives:
                spans = [(w.start_time.ToNanoseconds(), w.end_time.ToNanoseconds()) for w in alt.words]
                # in order, within the audio; words named in the appended silence end it (tiny-recognize has
                # tail_ms 100), possibly several at once
                assert all(0 <= a < b or a == b == end for a, b in spans) and all(b <= end for _, b in spans)
                assert all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:]))


async def test_wav_at_another_rate_is_resampled(served):
    stub = recognizer(served)
    x = tones(1.2, 7, rate=16000)
    r = await stub.Recognize(recognize_pb2.RecognizeRequest(config=config(encoding=WAV, sample_rate_hertz=0),
                                                            audio=wav_file(x, 16000)))
    assert r.model == "tiny-recognize" and r.total_billed_time.ToMilliseconds() == 1200
    assert r.results[0].result_end_time.ToMilliseconds() == 1200  # resampled to 9,600 samples at 8 kHz


@pytest.mark.parametrize("rate", [RATE, 16000])
async def test_a_stream_recognises_what_one_offline_call_does(served, rate):
    stub = recognizer(served)
    x = tones(2.3, 3, rate=rate)
    data = pcm(x)
    offline = await stub.Recognize(recognize_pb2.RecognizeRequest(config=config(sample_rate_hertz=rate, max_alternatives=2),
                                                                  audio=data))
    requests = [first(config(sample_rate_hertz=rate, max_alternatives=2)), *chunks(data, [1602, 34, 800, 3200, 2])]
    responses = [r async for r in stub.StreamingRecognize(iter(requests))]
    finals = [r for r in responses if r.results[0].is_final]
    assert len(finals) == 1 and responses[-1] is finals[0]
    got = [alt_key(a) for a in finals[0].results[0].alternatives]
    assert got == [alt_key(a) for a in offline.results[0].alternatives]
    assert finals[0].results[0].result_end_time == offline.results[0].result_end_time
    ends = [r.results[0].result_end_time.ToNanoseconds() for r in responses]
    assert ends == sorted(ends)


async def test_interim_results_arrive_while_the_stream_is_open(served):
    stub = recognizer(served)
    call = stub.StreamingRecognize()
    await call.write(first(config()))
    data = pcm(tones(1.0, 5))
    await call.write(recognize_pb2.StreamingRecognizeRequest(audio_content=data[:4000]))  # 0.25 s
    interim = await call.read()
    assert not interim.results[0].is_final and 0.0 <= interim.results[0].stability <= 1.0
    assert interim.results[0].result_end_time.ToMilliseconds() == 240  # 12 frames of 20 ms
    for i in range(4000, len(data), 4000):
        await call.write(recognize_pb2.StreamingRecognizeRequest(audio_content=data[i : i + 4000]))
    await call.done_writing()
    rest = []
    while (r := await call.read()) != grpc.aio.EOF:
        rest.append(r)
    assert rest[-1].results[0].is_final and rest[-1].results[0].result_end_time.ToMilliseconds() == 1000
    assert rest[-1].total_billed_time.ToMilliseconds() == 1000 and rest[-1].model == "tiny-recognize"


async def test_without_interim_results_only_the_final_comes(served):
    responses = [r async for r in recognizer(served).StreamingRecognize(
        iter([first(config(), interim=False), *chunks(pcm(tones(1.0, 1)), [1600])]))]
    assert len(responses) == 1 and responses[0].results[0].is_final


async def _stream_error(stub, requests) -> grpc.aio.AioRpcError:
    async def run():
        async for _ in stub.StreamingRecognize(iter(requests)):
            pass
    return await rpc_error(run())


async def test_bad_streams_are_invalid_argument_naming_the_field(served):
    stub = recognizer(served)
    audio = recognize_pb2.StreamingRecognizeRequest(audio_content=b"\x00\x00" * 400)
    cases = [
        ([audio], "message 0 has no streaming_config", "streaming_config"),
        ([first(config()), audio, first(config())], "message 2 carries streaming_config", "streaming_config"),
        ([first(config()), recognize_pb2.StreamingRecognizeRequest(audio_content=b"\x01\x02\x03")],
         "audio_content of message 1 has 3 bytes; LINEAR16 needs an even number", "audio_content"),
        ([first(config()), recognize_pb2.StreamingRecognizeRequest(audio_content=b"\x00" * 8002)],
         "audio_content of message 1 has 8,002 bytes; the limit is 8,000 (max_chunk_bytes)", "audio_content"),
        ([first(config()), *[recognize_pb2.StreamingRecognizeRequest(audio_content=b"\x00" * 8000)] * 9],
         "the stream has 4.5 s of audio; the limit is 4 s (max_stream_seconds)", "audio_content"),
        ([first(config(sample_rate_hertz=4000))], "streaming_config.config.sample_rate_hertz 4000 is outside 8000..48000",
         "streaming_config.config.sample_rate_hertz"),
        ([first(config(encoding=WAV))], "streaming_config.config.encoding WAV cannot stream",
         "streaming_config.config.encoding"),
        ([first(config(max_alternatives=11))], "streaming_config.config.max_alternatives 11 is outside 0..10",
         "streaming_config.config.max_alternatives"),
        ([], "the stream ended before its first message", "streaming_config"),
        ([first(config(), single_utterance=True, end_silence_ms=99)],
         "streaming_config.end_silence_ms 99 is outside 100..10000 (0: the server's end_silence_ms)",
         "streaming_config.end_silence_ms"),
        ([first(config(), single_utterance=True, end_silence_ms=-5)], "streaming_config.end_silence_ms -5 is outside",
         "streaming_config.end_silence_ms"),
        ([first(config(), end_silence_ms=500)],
         "streaming_config.end_silence_ms 500 needs streaming_config.single_utterance", "streaming_config.end_silence_ms"),
    ]
    for requests, message, field in cases:
        err = await _stream_error(stub, requests)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (message, err.details())
        assert message in err.details()
        assert bad_request_fields(err) == [field]
    err = await _stream_error(stub, [first(config(model="tiny-speech-bi"))])
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "bidirectional and cannot stream" in err.details()
    err = await _stream_error(stub, [first(config(model="nope"))])
    assert err.code() == grpc.StatusCode.NOT_FOUND
    # ... and the server keeps serving
    ok = [r async for r in stub.StreamingRecognize(iter([first(config()), *chunks(pcm(tones(0.5, 2)), [800])]))]
    assert ok[-1].results[0].is_final


async def test_bad_offline_requests_are_invalid_argument_naming_the_field(served):
    stub = recognizer(served)
    x = tones(0.5, 0)
    cases = [
        (config(), b"", "audio is empty", "audio"),
        (config(), b"\x00" * 5, "audio has 5 bytes; LINEAR16 needs an even number", "audio"),
        (config(encoding=WAV, sample_rate_hertz=0), wav_file(x, channels=2), "2 channels", "audio"),
        (config(encoding=WAV, sample_rate_hertz=0), b"RIFF\x00\x00", "audio", "audio"),
        (config(sample_rate_hertz=0), pcm(x), "config.sample_rate_hertz 0", "config.sample_rate_hertz"),
        (config(sample_rate_hertz=96000), pcm(x), "config.sample_rate_hertz 96000 is outside 8000..48000",
         "config.sample_rate_hertz"),
        (config(max_alternatives=-1), pcm(x), "config.max_alternatives -1 is outside 0..10", "config.max_alternatives"),
        (config(), pcm(tones(5.5, 0)), "audio is 5.5 s; the limit is 5 s (max_audio_seconds)", "audio"),
        (config(), pcm(x[:100]), "needs at least 20 ms (one frame)", "audio"),
        (config(encoding=9), pcm(x), "config.encoding 9 is not one of LINEAR16 (1), WAV (2)", "config.encoding"),
    ]
    for cfg, data, message, field in cases:
        err = await rpc_error(stub.Recognize(recognize_pb2.RecognizeRequest(config=cfg, audio=data)))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (message, err.details())
        assert message in err.details(), (message, err.details())
        assert bad_request_fields(err) == [field]
    err = await rpc_error(stub.Recognize(recognize_pb2.RecognizeRequest(config=config(model="tiny-forecast"), audio=pcm(x))))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "is a forecast model" in err.details()


async def _open_stream(stub):
    call = stub.StreamingRecognize()
    await call.write(first(config()))
    await call.write(recognize_pb2.StreamingRecognizeRequest(audio_content=pcm(tones(0.2, 1))))
    await call.read()  # an interim result: the stream is live
    return call


async def test_streams_past_the_cap_are_refused_and_a_cancelled_one_frees_its_slot(served):
    stub = recognizer(served)
    calls = [await _open_stream(stub) for _ in range(MAX_SPEECH_STREAMS)]
    try:
        err = await _stream_error(stub, [first(config())])
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.details() == (f"{MAX_SPEECH_STREAMS} of {MAX_SPEECH_STREAMS} recognition streams are open "
                                 "(max_speech_streams); retry later")
        calls.pop().cancel()
        late = await _open_stream(stub)
        late.cancel()
    finally:
        for call in calls:
            call.cancel()


async def test_a_deadline_ends_the_stream_with_what_was_recognised(served):
    call = recognizer(served).StreamingRecognize(timeout=1.5)
    await call.write(first(config(), interim=False))
    data = pcm(tones(0.6, 4))
    await call.write(recognize_pb2.StreamingRecognizeRequest(audio_content=data[:4800]))
    await call.write(recognize_pb2.StreamingRecognizeRequest(audio_content=data[4800:]))
    final = await call.read()  # never half-closed: the deadline ends it
    assert final.results[0].is_final and final.results[0].result_end_time.ToMilliseconds() == 600
    assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_metrics_count_audio_and_stream_latencies(served):
    m = served.metrics
    before = metric_value(m, "seqserve_audio_seconds_total", model="tiny-recognize", mode="stream")
    finals = metric_value(m, "seqserve_speech_result_latency_seconds_count", model="tiny-recognize", kind="final")
    [r async for r in recognizer(served).StreamingRecognize(iter([first(config()), *chunks(pcm(tones(1.0, 6)), [1600])]))]
    assert metric_value(m, "seqserve_audio_seconds_total", model="tiny-recognize", mode="stream") - before == \
        pytest.approx(1.0)
    assert metric_value(m, "seqserve_speech_result_latency_seconds_count", model="tiny-recognize", kind="final") == \
        finals + 1
    assert metric_value(m, "seqserve_speech_result_latency_seconds_count", model="tiny-recognize", kind="interim") > 0
    assert metric_value(m, "seqserve_real_time_factor_count", model="tiny-recognize") > 0


async def test_a_drain_ends_open_streams_with_their_final_result(module_models):
    async with serving(module_models, grace_s=5.0) as s:
        call = recognizer(s).StreamingRecognize()
        await call.write(first(config(), interim=False))
        await call.write(recognize_pb2.StreamingRecognizeRequest(audio_content=pcm(tones(0.4, 8))))
        await asyncio.sleep(0.2)
        drain = asyncio.create_task(s.drain(5.0))
        final = await call.read()
        assert final.results[0].is_final and final.results[0].result_end_time.ToMilliseconds() == 400
        assert await call.code() == grpc.StatusCode.UNAVAILABLE
        assert "server is draining" in await call.details()
        await asyncio.wait_for(drain, 5.0)  # the drain did not wait out its grace for the stream
