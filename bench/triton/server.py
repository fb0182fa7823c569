"""Serve seqserve's forecast graph through Triton Inference Server (nvidia-pytriton), for benchmarking.

Runs inside ``.venv-triton`` (see ``bench/triton/setup.sh``); does not import ``service``.

The model is the SAME ``forecast.onnx`` that seqserve serves from the bundle directory, run by one
onnxruntime session with seqserve's session options (1 intra-op and 1 inter-op thread, graph
optimisation "all", sequential execution, no spinning, no memory pattern). What seqserve does around
the graph is reproduced as follows:

* seqserve crops each history to the manifest's ``forecast.window`` most recent steps, casts to
  float32 and batches only windows of equal length (a recurrent net must not see padding). Triton
  input ``window`` is (steps, channels) float32 per request with a variable ``steps`` dimension; the
  callable crops to the window as seqserve does. Triton's dynamic batcher only puts requests whose
  inputs have the same shape into one batch, so equal lengths are batched together exactly as in
  seqserve (``bench/triton/load.py`` sends full windows by default; ``--random-length`` mirrors
  ``seqserve bench``'s random lengths in [min_history, window]).
* Standardisation happens inside the graph (it normalises each window by its own mean/std), so the
  server adds none.
* Output ``quantiles`` is the graph's (horizon, channels, quantiles) float32 paths at the manifest's
  levels. seqserve additionally converts to float64, splits out the median and interpolates
  requested levels (a few microseconds of numpy); that is not done here.

Dynamic batching: ``--max-batch-size`` (default 32, seqserve's ``max_batch_size``) and
``--queue-delay-us`` (default 2000 = 2 ms; NOTE seqserve's own default ``max_batch_wait_ms`` is 0,
i.e. greedy batching: run with ``--queue-delay-us 0`` to match a default seqserve, or start seqserve
with ``--max-batch-wait-ms 2``). ``--instances`` model instances (default 1: seqserve runs one batch
per model at a time) share the one session; each instance is a thread of this process.

Optionally (``--lm-bundle models/generate-shakespeare/1``) a second model ``lm_step`` serves one
step of the LM graph (tokens (steps,) int64 + LSTM state (layers, hidden) per request; the state is
transposed to the graph's (layers, batch, hidden) layout inside the callable).

    .venv-triton/bin/python bench/triton/server.py --bundle models/forecast-etth1/1 --grpc-port 8001
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import sysconfig
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

# Run as a script in Triton's venv (which has onnxruntime, not seqserve): the checkout's sessions
# module needs nothing else, so import it from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from service.inference.sessions import RuntimeOptions, load_session  # noqa: E402

log = logging.getLogger("bench.triton.server")

FORECAST_MODEL = "forecast"
LM_MODEL = "lm_step"


def python_libdir_on_ld_path() -> None:
    """Triton's python backend stub links libpython3.X.so; without the running interpreter's lib/
    first on LD_LIBRARY_PATH it can pick another build (e.g. Debian's /usr/lib 3.11.2 instead of
    pyenv's 3.11.7) and then fails at start with ``'_thread.RLock' object has no attribute
    '_recursion_count'``. pytriton passes our environment on to tritonserver and the stubs."""
    libdir = sysconfig.get_config_var("LIBDIR")
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir and libdir not in current.split(":"):
        os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{current}" if current else libdir


def session(path: Path, manifest: dict) -> ort.InferenceSession:
    """An InferenceSession built by seqserve's own load_session (its defaults; int8 weights folded to
    float32 at load as seqserve folds them): both servers run the same kernels."""
    return load_session(path, RuntimeOptions(int8_weights=manifest.get("weights") == "int8"))


def read_manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))


def forecast_binding(bundle: Path, instances: int):
    """(inputs, outputs, callables, spec) for the forecast graph of ``bundle``."""
    from pytriton.decorators import batch
    from pytriton.model_config import Tensor

    manifest = read_manifest(bundle)
    spec = manifest["forecast"]
    graph = session(bundle / manifest["graphs"]["forecast"], manifest)
    steps, channels = int(spec["window"]), int(spec["channels"])
    stats = {"calls": 0, "rows": 0}

    def make_infer():
        @batch
        def infer(window: np.ndarray) -> dict[str, np.ndarray]:
            # (B, T, C) float32, one T per batch (Triton batches equal shapes only); keep the last
            # `steps` (the manifest's window), as seqserve's ForecastModel.prepare does.
            x = np.ascontiguousarray(window[:, -steps:, :], dtype=np.float32)
            stats["calls"] += 1
            stats["rows"] += x.shape[0]
            (q,) = graph.run(["quantiles"], {"window": x})  # (B, H, C, Q)
            return {"quantiles": q}

        return infer

    inputs = [Tensor(name="window", dtype=np.float32, shape=(-1, channels))]
    paths = (int(spec["horizon"]), channels, len(spec["quantiles"]))
    outputs = [Tensor(name="quantiles", dtype=np.float32, shape=paths)]
    return inputs, outputs, [make_infer() for _ in range(instances)], spec, stats


def lm_binding(bundle: Path, instances: int):
    """(inputs, outputs, callables) for one step of the LM graph of ``bundle``."""
    from pytriton.decorators import batch
    from pytriton.model_config import Tensor

    manifest = read_manifest(bundle)
    graph = session(bundle / manifest["graphs"]["lm"], manifest)
    shapes = {i.name: i.shape for i in graph.get_inputs()}
    layers, hidden = int(shapes["state_h"][0]), int(shapes["state_h"][2])
    vocab = int(graph.get_outputs()[0].shape[2])

    def make_infer():
        @batch
        def infer(tokens: np.ndarray, state_h: np.ndarray, state_c: np.ndarray) -> dict[str, np.ndarray]:
            feeds = {
                "tokens": tokens.astype(np.int64),
                "state_h": np.ascontiguousarray(state_h.transpose(1, 0, 2)),  # (B, L, H) -> (L, B, H)
                "state_c": np.ascontiguousarray(state_c.transpose(1, 0, 2)),
            }
            logits, h, c = graph.run(["logits", "state_h_out", "state_c_out"], feeds)
            return {"logits": logits, "state_h_out": h.transpose(1, 0, 2), "state_c_out": c.transpose(1, 0, 2)}

        return infer

    inputs = [
        Tensor(name="tokens", dtype=np.int64, shape=(-1,)),
        Tensor(name="state_h", dtype=np.float32, shape=(layers, hidden)),
        Tensor(name="state_c", dtype=np.float32, shape=(layers, hidden)),
    ]
    outputs = [
        Tensor(name="logits", dtype=np.float32, shape=(-1, vocab)),
        Tensor(name="state_h_out", dtype=np.float32, shape=(layers, hidden)),
        Tensor(name="state_c_out", dtype=np.float32, shape=(layers, hidden)),
    ]
    return inputs, outputs, [make_infer() for _ in range(instances)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=Path("models/forecast-etth1/1"),
                   help="forecast bundle dir with manifest.json + forecast.onnx (default models/forecast-etth1/1)")
    p.add_argument("--lm-bundle", type=Path, default=None,
                   help="optional generate bundle (lm.onnx): also serve one LM step as model 'lm_step'")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port on 127.0.0.1 (default 8001)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port on 127.0.0.1 (default 8000)")
    p.add_argument("--metrics-port", type=int, default=0,
                   help="Prometheus metrics port on 127.0.0.1; 0 = metrics off (default 0)")
    p.add_argument("--max-batch-size", type=int, default=32, help="Triton max_batch_size (default 32)")
    p.add_argument("--queue-delay-us", type=int, default=2000,
                   help="dynamic batcher max_queue_delay_microseconds (default 2000; seqserve's default wait is 0)")
    p.add_argument("--instances", type=int, default=1, help="model instances (threads sharing the session; default 1)")
    p.add_argument("--verbose", action="store_true", help="pytriton debug logging")
    args = p.parse_args(argv)
    if args.max_batch_size < 1 or args.queue_delay_us < 0 or args.instances < 1:
        p.error("--max-batch-size and --instances must be >= 1, --queue-delay-us >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    python_libdir_on_ld_path()

    from pytriton.model_config import DynamicBatcher, ModelConfig
    from pytriton.triton import Triton, TritonConfig

    started = time.perf_counter()
    config = TritonConfig(
        grpc_address="127.0.0.1", grpc_port=args.grpc_port,
        http_address="127.0.0.1", http_port=args.http_port,
        allow_metrics=args.metrics_port > 0,
        **({"metrics_address": "127.0.0.1", "metrics_port": args.metrics_port} if args.metrics_port > 0 else {}),
    )
    batching = ModelConfig(
        max_batch_size=args.max_batch_size,
        batcher=DynamicBatcher(max_queue_delay_microseconds=args.queue_delay_us),
    )
    triton = Triton(config=config)
    inputs, outputs, infers, spec, stats = forecast_binding(args.bundle, args.instances)
    triton.bind(model_name=FORECAST_MODEL, infer_func=infers, inputs=inputs, outputs=outputs,
                config=batching, strict=True)
    if args.lm_bundle is not None:
        lm_inputs, lm_outputs, lm_infers = lm_binding(args.lm_bundle, args.instances)
        triton.bind(model_name=LM_MODEL, infer_func=lm_infers, inputs=lm_inputs, outputs=lm_outputs,
                    config=batching, strict=True)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        triton.run()  # starts tritonserver, loads the models, waits until they are ready
        models = FORECAST_MODEL + (f", {LM_MODEL}" if args.lm_bundle is not None else "")
        print(f"model(s) {models}: window {spec['window']}, channels {spec['channels']}, horizon {spec['horizon']}, "
              f"quantiles {spec['quantiles']}; max_batch_size {args.max_batch_size}, "
              f"queue delay {args.queue_delay_us} us, {args.instances} instance(s); "
              f"ready in {time.perf_counter() - started:.1f} s", flush=True)
        print(f"triton serving gRPC on 127.0.0.1:{args.grpc_port}", flush=True)
        while not stop.wait(1.0):
            if not triton.is_alive():
                print("error: tritonserver or a model proxy died", file=sys.stderr)
                return 1
    finally:
        triton.stop()
        if stats["calls"]:
            print(f"forecast: {stats['rows']} windows in {stats['calls']} graph calls "
                  f"(mean batch {stats['rows'] / stats['calls']:.2f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
