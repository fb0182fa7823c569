"""What the event loop's Python costs a decoding thread: the default LM's one-row step (``session.run``
fed the state and token of the step before, as ``bench.inprocess`` times it) on a worker thread while
another thread runs pure Python for a share of every millisecond (0 = idle), as the event loop does
when it makes a round's text and messages. ``session.run`` releases the GIL; taking it back waits for the other thread.

``python -m bench.gil [--models DIR] [--steps N]`` prints one line per share: the mean ms per step and its
ratio to the step on an idle process.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from bench.inprocess import decode_step_latency

SHARES = (0.0, 0.1, 0.3, 0.6)


def step_ms(bundle: Path, steps: int) -> float:
    """Mean ms of one-row ``session.run`` steps, as ``bench.inprocess`` times the raw step."""
    return decode_step_latency(bundle, n=steps, batch=1)[1].mean_ms


def busy(stop: threading.Event, share: float) -> None:
    """Pure Python for ``share`` of every millisecond (holding the GIL), asleep for the rest."""
    while not stop.is_set():
        start = time.perf_counter()
        while time.perf_counter() - start < share * 1e-3:
            sum(range(50))
        time.sleep((1.0 - share) * 1e-3)


def measure(bundle: Path, steps: int, share: float) -> float:
    result: list[float] = []
    stop = threading.Event()
    other = threading.Thread(target=busy, args=(stop, share)) if share else None
    worker = threading.Thread(target=lambda: result.append(step_ms(bundle, steps)))
    if other is not None:
        other.start()
    worker.start()
    worker.join()
    stop.set()
    if other is not None:
        other.join()
    return result[0]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gil", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path(__file__).resolve().parent.parent / "models")
    parser.add_argument("--model", default="generate-shakespeare")
    parser.add_argument("--steps", type=int, default=4000)
    args = parser.parse_args(argv)
    bundle = max((args.models / args.model).iterdir())
    idle = measure(bundle, args.steps, 0.0)
    print(f"one-row step on a worker thread, the other thread idle: {idle:.4f} ms")
    for share in SHARES[1:]:
        ms = measure(bundle, args.steps, share)
        print(f"  the other thread running Python {share:.0%} of the time: {ms:.4f} ms ({ms / idle:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
