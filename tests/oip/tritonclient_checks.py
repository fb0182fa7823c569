"""Runs in .venv-oip (tritonclient, protobuf < 7), against a live seqserve: the Open Inference
Protocol exactly as a Triton user calls it. Prints one JSON object of what it received for the
caller (tests/oip/test_tritonclient.py) to compare with seqserve.v1 answers; exits non-zero on the
first failed expectation.

    .venv-oip/bin/python tests/oip/tritonclient_checks.py 127.0.0.1:50051 translate-de-en,forecast-etth1,...
"""

import json
import sys

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from inputs import HISTORY, PROMPTS, SAMPLE, TEXTS, tone_wav  # this script runs as a file: its folder is on sys.path


def expect_error(call, code: str, words: str) -> str:
    try:
        call()
    except InferenceServerException as err:
        assert code in str(err.status()), (code, err.status(), err.message())
        assert words in err.message(), (words, err.message())
        return err.message()
    raise AssertionError(f"no error; expected {code} ({words})")


def main(address: str) -> None:
    client = triton.InferenceServerClient(address)
    out: dict = {"models": {}}
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    out["server"] = {"name": meta.name, "version": meta.version}
    names = sys.argv[2].split(",")
    for name in names:
        assert client.is_model_ready(name), name
        m = client.get_model_metadata(name)
        out["models"][name] = {"versions": list(m.versions), "platform": m.platform,
                               "inputs": [(t.name, t.datatype, list(t.shape)) for t in m.inputs],
                               "outputs": [(t.name, t.datatype, list(t.shape)) for t in m.outputs]}
        first = m.inputs[0]  # every model answers one row through the client
        if first.name == "audio":  # a speech model: one WAV file per row
            row = triton.InferInput(first.name, [1], "BYTES")
            row.set_data_from_numpy(np.array([tone_wav()], dtype=np.object_))
        elif first.datatype == "BYTES":
            row = triton.InferInput(first.name, [1], "BYTES")
            row.set_data_from_numpy(np.array([SAMPLE.get(name, "Ein Mann").encode()], dtype=np.object_))
        else:
            row = triton.InferInput(first.name, [1, len(HISTORY)], "FP32")
            row.set_data_from_numpy(HISTORY.astype(np.float32)[None])
        reply = client.infer(name, [row])
        out["models"][name]["answered"] = [o.name for o in reply.get_response().outputs]
    assert not client.is_model_ready("no-such-model")

    # translation: BYTES in, BYTES out, a batch of three rows, a parameter of the request
    text = triton.InferInput("text", [len(TEXTS)], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=np.object_))
    r = client.infer("translate-de-en", [text], parameters={"beam_size": 4}, request_id="t-1")
    assert r.get_response().id == "t-1" and r.get_response().model_version == "1"
    out["translate"] = {"translation": [b.decode() for b in r.as_numpy("translation")],
                        "score": r.as_numpy("score").tolist(),
                        "unknown_source_tokens": r.as_numpy("unknown_source_tokens").tolist()}
    only = client.infer("translate-de-en", [text], outputs=[triton.InferRequestedOutput("translation")])
    assert [o.name for o in only.get_response().outputs] == ["translation"]

    # forecasting: FP32 and FP64 batches, horizon and quantiles parameters
    for dtype, name in ((np.float32, "FP32"), (np.float64, "FP64")):
        batch = np.stack([HISTORY, 2 * HISTORY + 5]).astype(dtype)
        history = triton.InferInput("history", list(batch.shape), name)
        history.set_data_from_numpy(batch)
        r = client.infer("forecast-etth1", [history], parameters={"horizon": 24, "quantiles": "0.1,0.5,0.9"})
        forecast, quantiles = r.as_numpy("forecast"), r.as_numpy("quantiles")
        assert forecast.dtype == dtype and forecast.shape == (2, 24) and quantiles.shape == (2, 24, 3)
        out[f"forecast_{name}"] = {"forecast": forecast.tolist(), "quantiles": quantiles.tolist()}

    # generation: [rows, 1] BYTES (the shape tritonclient examples use), sampling parameters
    prompt = triton.InferInput("prompt", [len(PROMPTS), 1], "BYTES")
    prompt.set_data_from_numpy(np.array([[p.encode()] for p in PROMPTS], dtype=np.object_))
    r = client.infer("generate-shakespeare", [prompt], parameters={"max_tokens": 30, "seed": 7, "temperature": 0.8})
    out["generate"] = {"text": [b.decode() for b in r.as_numpy("text").reshape(-1)],
                       "finish_reason": [b.decode() for b in r.as_numpy("finish_reason").reshape(-1)],
                       "completion_tokens": r.as_numpy("completion_tokens").reshape(-1).tolist()}

    # what goes wrong says so
    out["errors"] = {
        "unknown model": expect_error(lambda: client.infer("no-such-model", [text]), "NOT_FOUND", "no-such-model"),
        "parameter": expect_error(lambda: client.infer("translate-de-en", [text], parameters={"beam_size": 99}),
                                  "INVALID_ARGUMENT", "beam_size 99"),
        "unknown parameter": expect_error(lambda: client.infer("translate-de-en", [text], parameters={"beams": 2}),
                                          "INVALID_ARGUMENT", "parameters.beams"),
        "sequence": expect_error(lambda: client.infer("translate-de-en", [text], sequence_id=5),
                                 "INVALID_ARGUMENT", "sequence"),
        "wrong input": expect_error(lambda: client.infer("forecast-etth1", [text]), "INVALID_ARGUMENT", "history"),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
