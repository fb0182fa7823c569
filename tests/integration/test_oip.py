"""The Open Inference Protocol's wire rules on a live server (our own stubs of the spec's proto):
raw and typed inputs, BYTES framing, parameters of every kind, batches, readiness, metrics and the
errors a client meets. tests/oip/ checks the same service through tritonclient."""

from __future__ import annotations

import struct

import grpc
import numpy as np
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from service.front.metrics import Metrics
from service.v1 import open_inference_grpc_pb2 as pb
from service.v1 import open_inference_grpc_pb2_grpc as pb_grpc
from service.v1 import translate_pb2
from tests.integration.harness import bad_request_fields, metric_value, rpc_error, serving

pytestmark = pytest.mark.asyncio(loop_scope="module")
HISTORY = np.sin(np.arange(40) / 6.0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(module_models):
    async with serving(module_models, metrics=Metrics(CollectorRegistry(), process_metrics=False)) as s:
        s.oip = pb_grpc.GRPCInferenceServiceStub(s.channel)
        yield s


def framed(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def request(model: str, name: str, datatype: str, shape: list[int], raw: bytes | None = None, **params) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name=name, datatype=datatype, shape=shape)
    if raw is not None:
        req.raw_input_contents.append(raw)
    for key, value in params.items():
        kind = {bool: "bool_param", int: "int64_param", float: "double_param", str: "string_param"}[type(value)]
        setattr(req.parameters[key], kind, value)
    return req


def output(reply: pb.ModelInferResponse, name: str, dtype=None) -> np.ndarray | list[bytes]:
    k = [o.name for o in reply.outputs].index(name)
    meta, data = reply.outputs[k], reply.raw_output_contents[k]
    if meta.datatype == "BYTES":
        items, pos = [], 0
        while pos < len(data):
            (n,) = struct.unpack_from("<I", data, pos)
            items.append(data[pos + 4 : pos + 4 + n])
            pos += 4 + n
        return items
    return np.frombuffer(data, dtype={"FP32": "<f4", "FP64": "<f8", "INT32": "<i4"}[meta.datatype]).reshape(list(meta.shape))


async def test_typed_contents_and_raw_bytes_give_the_same_answer(served):
    raw = await served.oip.ModelInfer(request("tiny-forecast", "history", "FP64", [2, 40], np.stack([HISTORY, -HISTORY]).tobytes()))
    typed = request("tiny-forecast", "history", "FP64", [2, 40])
    typed.inputs[0].contents.fp64_contents.extend(np.stack([HISTORY, -HISTORY]).ravel().tolist())
    typed = await served.oip.ModelInfer(typed)
    np.testing.assert_array_equal(output(raw, "forecast"), output(typed, "forecast"))
    assert not typed.outputs[0].HasField("contents") and len(typed.raw_output_contents) == 2  # always raw
    texts = [b"Ein Mann", "Zwei Hunde spielen.".encode()]
    by_raw = await served.oip.ModelInfer(request("tiny-translate", "text", "BYTES", [2], framed(texts)))
    by_contents = request("tiny-translate", "text", "BYTES", [2])
    by_contents.inputs[0].contents.bytes_contents.extend(texts)
    assert output(by_raw, "translation") == output(await served.oip.ModelInfer(by_contents), "translation")


async def test_a_row_answers_as_its_own_seqserve_v1_call(served):
    reply = await served.oip.ModelInfer(request("tiny-translate", "text", "BYTES", [2, 1], framed([b"Ein Mann", b"Ein Hund"]),
                                                beam_size=2))
    for text, got in zip(("Ein Mann", "Ein Hund"), output(reply, "translation"), strict=True):
        alone = await served.translator.Translate(translate_pb2.TranslateRequest(model="tiny-translate", texts=[text], beam_size=2))
        assert got.decode() == alone.translations[0].text
    assert reply.outputs[0].shape == [2, 1]  # outputs keep the input's shape


async def test_multichannel_forecasts_take_rows_steps_channels(served):
    history = np.stack([np.stack([HISTORY, 2 * HISTORY, HISTORY + 1], axis=1)] * 3).astype(np.float32)  # (3, 40, 3)
    reply = await served.oip.ModelInfer(request("tiny-forecast3", "history", "FP32", [3, 40, 3], history.tobytes(),
                                                horizon=5, quantiles="0.1,0.9"))
    forecast, quantiles = output(reply, "forecast"), output(reply, "quantiles")
    assert forecast.dtype == np.float32 and forecast.shape == (3, 5) and quantiles.shape == (3, 5, 2)
    err = await rpc_error(served.oip.ModelInfer(request("tiny-forecast3", "history", "FP32", [1, 40, 2],
                                                        history[:1, :, :2].tobytes())))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "takes 3" in err.details()


async def test_parameters_of_every_kind(served):
    req = request("tiny-generate", "prompt", "BYTES", [1], framed([b"First"]), temperature=0, stop="\n")
    req.parameters["max_tokens"].uint64_param = 5  # tritonclient sends unsigned integers too
    req.parameters["seed"].double_param = 3.0  # an integral double is an integer
    req.parameters["sequence_id"].int64_param = 0  # what tritonclient sends by default
    req.parameters["sequence_start"].bool_param = False
    req.parameters["priority"].uint64_param = 0
    reply = await served.oip.ModelInfer(req)
    assert output(reply, "completion_tokens").tolist() == [5] or output(reply, "finish_reason")[0] in (b"eos", b"stop")


@pytest.mark.parametrize("make, field, words", [
    (lambda: request("tiny-forecast", "history", "FP32", [1, 40], HISTORY.tobytes()), "raw_input_contents[0]", "bytes"),
    (lambda: request("tiny-translate", "text", "BYTES", [2], framed([b"Ein Mann"])), "raw_input_contents[0]", "holds 1"),
    (lambda: request("tiny-translate", "text", "BYTES", [1], b"\x09\x00\x00\x00Ein"), "raw_input_contents[0]", "runs past"),
    (lambda: request("tiny-translate", "text", "BYTES", [1], b"\x09\x00"), "raw_input_contents[0]", "cut off"),
    (lambda: request("tiny-translate", "text", "BYTES", [1], framed([b"\xff\xfe"])), "inputs", "not UTF-8"),
    (lambda: request("tiny-translate", "text", "BYTES", [33], framed([b"Ein"] * 33)), "inputs", "1 to 32"),
    (lambda: request("tiny-translate", "text", "FP16", [1], b"\x00\x00"), "inputs", "must be BYTES"),
    (lambda: request("tiny-translate", "text", "STRING", [1], b""), "inputs[0].datatype", "'STRING'"),
    (lambda: request("tiny-translate", "words", "BYTES", [1], framed([b"Ein"])), "inputs", "'text'"),
    (lambda: request("tiny-translate", "text", "BYTES", [1], framed([b"Ein"]), beam_size="4"), "parameters.beam_size",
     "must be an integer"),
    (lambda: request("tiny-translate", "text", "BYTES", [1], framed([b"Ein"]), beam_size=99), "parameters.beam_size", "99"),
    (lambda: request("tiny-translate", "text", "BYTES", [1, 1 << 62], b""), "inputs[0].shape", "out of range"),
    (lambda: request("tiny-translate", "text", "BYTES", [2], framed([b"a"] * 5)), "raw_input_contents[0]", "more than 2"),
    (lambda: request("tiny-translate", "text", "BYTES", [1], framed([b"Ein"]), max_length=999), "parameters.max_length",
     "999"),
    (lambda: request("tiny-forecast", "history", "FP32", [1, 40], HISTORY.astype(np.float32).tobytes(),
                     quantiles="low"), "parameters.quantiles", "'low'"),
    (lambda: request("", "text", "BYTES", [1], framed([b"Ein"])), "model_name", "empty"),
])
async def test_bad_requests_name_the_field(served, make, field, words):
    err = await rpc_error(served.oip.ModelInfer(make()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert words in err.details() and bad_request_fields(err) == [field], (err.details(), bad_request_fields(err))


async def test_raw_and_typed_together_and_unknown_outputs_are_refused(served):
    both = request("tiny-forecast", "history", "FP64", [1, 40], HISTORY.tobytes())
    both.inputs[0].contents.fp64_contents.extend(HISTORY.tolist())
    err = await rpc_error(served.oip.ModelInfer(both))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "both set" in err.details()
    fp16 = request("tiny-forecast", "history", "FP16", [1, 1])
    fp16.inputs[0].contents.fp32_contents.append(1.0)
    assert "raw_input_contents" in (await rpc_error(served.oip.ModelInfer(fp16))).details()
    asked = request("tiny-forecast", "history", "FP64", [1, 40], HISTORY.tobytes())
    asked.outputs.add(name="quantiles")
    reply = await served.oip.ModelInfer(asked)
    assert [o.name for o in reply.outputs] == ["quantiles"] and len(reply.raw_output_contents) == 1
    asked.outputs.add(name="median")
    assert "'median'" in (await rpc_error(served.oip.ModelInfer(asked))).details()
    err = await rpc_error(served.oip.ModelInfer(request("nope", "text", "BYTES", [1], framed([b"x"]))))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_metadata_readiness_and_metrics(served):
    assert (await served.oip.ServerLive(pb.ServerLiveRequest())).live
    assert (await served.oip.ServerReady(pb.ServerReadyRequest())).ready
    assert (await served.oip.ModelReady(pb.ModelReadyRequest(name="tiny-generate"))).ready
    assert not (await served.oip.ModelReady(pb.ModelReadyRequest(name="tiny-generate", version="9"))).ready
    assert not (await served.oip.ModelReady(pb.ModelReadyRequest(name="nope"))).ready
    meta = await served.oip.ModelMetadata(pb.ModelMetadataRequest(name="tiny-forecast3"))
    assert (meta.platform, list(meta.versions)) == ("seqserve", ["1"])
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("history", "FP32", [-1, -1, 3])]
    before = metric_value(served.metrics, "seqserve_request_duration_seconds_count", method="ModelInfer",
                          model="tiny-forecast", version="1", code="OK") or 0.0
    await served.oip.ModelInfer(request("tiny-forecast", "history", "FP64", [1, 40], HISTORY.tobytes()))
    assert metric_value(served.metrics, "seqserve_request_duration_seconds_count", method="ModelInfer",
                        model="tiny-forecast", version="1", code="OK") == before + 1


async def test_a_batch_of_many_sentence_texts_is_served_like_seqserve_v1(served):
    text = " ".join(f"Ein Mann {i}." for i in range(32)).encode()  # 32 sentences in each of 3 rows
    reply = await served.oip.ModelInfer(request("tiny-translate", "text", "BYTES", [3], framed([text] * 3)))
    assert len(output(reply, "translation")) == 3


async def test_a_version_that_is_not_loaded_is_unavailable_not_internal(module_models, tmp_path):
    import shutil

    shutil.copytree(module_models, tmp_path / "models")
    (tmp_path / "models" / "broken" / "1").mkdir(parents=True)
    (tmp_path / "models" / "broken" / "1" / "manifest.json").write_text("{not json")
    async with serving(tmp_path / "models") as s:
        stub = pb_grpc.GRPCInferenceServiceStub(s.channel)
        for call in (stub.ModelInfer(request("broken", "text", "BYTES", [1], framed([b"x"]))),
                     stub.ModelMetadata(pb.ModelMetadataRequest(name="broken"))):
            err = await rpc_error(call)
            assert err.code() == grpc.StatusCode.UNAVAILABLE and "FAILED" in err.details(), err.details()
        assert not (await stub.ModelReady(pb.ModelReadyRequest(name="broken"))).ready


async def test_not_ready_until_the_models_load(module_models):
    async with serving(module_models, start_engine=False) as s:
        stub = pb_grpc.GRPCInferenceServiceStub(s.channel)
        assert (await stub.ServerLive(pb.ServerLiveRequest())).live
        assert not (await stub.ServerReady(pb.ServerReadyRequest())).ready
        assert not (await stub.ModelReady(pb.ModelReadyRequest(name="tiny-generate"))).ready
        await s.engine.start()
        assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
        assert (await stub.ModelReady(pb.ModelReadyRequest(name="tiny-generate"))).ready


async def test_generation_logprobs_and_scoring_continuations(served):
    from service.v1 import generate_pb2

    req = request("tiny-generate", "prompt", "BYTES", [2], framed([b"First", b"All:"]), max_tokens=6, seed=4, logprobs=True)
    reply = await served.oip.ModelInfer(req)
    steps, counts = output(reply, "token_logprobs"), output(reply, "completion_tokens")
    for row, n in zip(steps, counts, strict=True):
        assert np.all(np.isfinite(row[:n])) and np.all(row[:n] <= 0) and np.all(np.isnan(row[n:]))
    np.testing.assert_allclose(output(reply, "cum_logprob"), [row[:n].sum() for row, n in zip(steps, counts)])
    alone = await served.generator.Generate(generate_pb2.GenerateRequest(model="tiny-generate", prompt="First", max_tokens=6,
                                                                        seed=4, logprobs=True))
    np.testing.assert_allclose(steps[0, : counts[0]], [t.logprob for t in alone.logprobs])

    scoring = request("tiny-generate", "prompt", "BYTES", [2], framed([b"First Citi", b"All:"]))
    scoring.inputs.add(name="continuation", datatype="BYTES", shape=[2])
    scoring.raw_input_contents.append(framed([b"zen", b" we"]))
    reply = await served.oip.ModelInfer(scoring)
    assert [o.name for o in reply.outputs] == ["logprob", "greedy"]
    direct = await served.generator.Score(generate_pb2.ScoreRequest(model="tiny-generate", prompt="First Citi",
                                                                    continuations=["zen"]))
    assert output(reply, "logprob")[0] == pytest.approx(direct.scores[0].logprob, abs=1e-9)
    assert len(reply.raw_output_contents[1]) == 2  # BOOL: one byte per row
    scoring.parameters["max_tokens"].int64_param = 3
    err = await rpc_error(served.oip.ModelInfer(scoring))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "for generating" in err.details()


async def test_recognition_takes_encoded_audio_or_samples(served):
    import io
    import wave

    from service.v1 import recognize_pb2

    rng = np.random.default_rng(3)
    signals = [(0.2 * np.sin(np.arange(n) / 3.0) + 0.01 * rng.standard_normal(n)).astype(np.float32)
               for n in (6000, 9000)]
    pcm = [(x * 32767).astype("<i2").tobytes() for x in signals]

    def wav(data: bytes) -> bytes:
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(data)
        return buf.getvalue()

    reply = await served.oip.ModelInfer(request("tiny-recognize", "audio", "BYTES", [2], framed([wav(p) for p in pcm])))
    assert [o.name for o in reply.outputs] == ["transcript", "confidence", "audio_seconds"]
    np.testing.assert_allclose(output(reply, "audio_seconds"), [0.75, 1.125])
    config = recognize_pb2.RecognitionConfig(encoding=recognize_pb2.RecognitionConfig.LINEAR16, sample_rate_hertz=8000)
    for row, data in enumerate(pcm):  # each row answers as its own Recognize call
        alone = await recognize_pb2_grpc_stub(served).Recognize(recognize_pb2.RecognizeRequest(config=config, audio=data))
        assert output(reply, "transcript")[row] == alone.results[0].alternatives[0].transcript.encode()
        assert output(reply, "confidence")[row] == pytest.approx(alone.results[0].alternatives[0].confidence, abs=1e-6)
    raw16 = await served.oip.ModelInfer(request("tiny-recognize", "audio", "BYTES", [1], framed(pcm[:1]),
                                                encoding="LINEAR16", sample_rate_hertz=8000))
    assert output(raw16, "transcript")[0] == output(reply, "transcript")[0]
    samples = np.stack([x[:6000] for x in signals])  # FP32 samples at sample_rate_hertz
    by_samples = await served.oip.ModelInfer(request("tiny-recognize", "audio", "FP32", [2, 6000], samples.tobytes(),
                                                     sample_rate_hertz=8000))
    np.testing.assert_allclose(output(by_samples, "audio_seconds"), [0.75, 0.75])
    meta = await served.oip.ModelMetadata(pb.ModelMetadataRequest(name="tiny-recognize"))
    assert [(t.name, t.datatype) for t in meta.inputs] == [("audio", "BYTES")]
    for req, words, field in (
        (request("tiny-recognize", "audio", "FP32", [1, 100], np.full(100, 2.0, np.float32).tobytes(), sample_rate_hertz=8000),
         "inputs['audio'] row 0: audio sample 0 is 2.0", "inputs"),
        (request("tiny-recognize", "audio", "BYTES", [1], framed(pcm[:1]), encoding="LINEAR16"),
         "parameters.sample_rate_hertz: config.sample_rate_hertz 0 is outside", "parameters.sample_rate_hertz"),
        (request("tiny-recognize", "audio", "BYTES", [1], framed(pcm[:1]), encoding="MP3"),
         "parameters.encoding 'MP3' is not one of LINEAR16, WAV", "parameters.encoding"),
        (request("tiny-recognize", "audio", "INT32", [1, 2], np.zeros(2, np.int32).tobytes()),
         "inputs['audio'] is INT32", "inputs"),
    ):
        err = await rpc_error(served.oip.ModelInfer(req))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and words in err.details(), err.details()
        assert bad_request_fields(err) == [field]


def recognize_pb2_grpc_stub(served):
    from service.v1 import recognize_pb2_grpc

    return recognize_pb2_grpc.RecognizerStub(served.channel)
