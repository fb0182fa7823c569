"""How well single_utterance finds the end of a spoken number: pairs of FSDD digit strings (validation
takes 5-9, 2-10 digits, 50-400 ms pauses, noise at a chosen SNR) separated by a longer pause, streamed
at full speed to a running server with single_utterance. Counted: where the stream ended (in the pause,
inside the first string, or not in the pause), and whether a stream that ended in the pause gave the
offline transcript of the first string alone.

    python scripts/endpoint_eval.py --address 127.0.0.1:50051 --pairs 100 --pause-ms 1500 --snr-db 30
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--address", default="127.0.0.1:50051")
    p.add_argument("--model", default="speech-digits-stream")
    p.add_argument("--pairs", type=int, default=100)
    p.add_argument("--pause-ms", type=float, default=1500.0, help="silence between the two strings")
    p.add_argument("--end-silence-ms", type=int, default=0, help="0 = the server's")
    p.add_argument("--snr-db", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)

    from service.client import SeqserveClient
    from training.data.speech import EVAL_MIX, FSDD_RATE, eval_strings, fsdd_split, load_fsdd

    pool = fsdd_split(load_fsdd(args.data_dir), "val")
    mix = dataclasses.replace(EVAL_MIX, snr_db=(args.snr_db, args.snr_db))
    strings = eval_strings(pool, 2 * args.pairs, args.seed, mix)
    pause = np.zeros(int(args.pause_ms * FSDD_RATE / 1000), np.float32)
    rng = np.random.default_rng(args.seed)
    placed = inside = run_on = same = 0
    ends = []
    with SeqserveClient(args.address, timeout=60) as client:
        for k in range(args.pairs):
            (a, _), (b, _) = strings[2 * k], strings[2 * k + 1]
            first = client.recognize(_pcm(a), encoding="LINEAR16", sample_rate_hertz=FSDD_RATE,
                                     model=args.model).transcript
            frames = a[: len(a) // 240 * 240].reshape(-1, 240).astype(np.float64)
            noise_rms = float(np.sqrt(np.mean(frames ** 2, axis=1)).min())  # the string's own background noise
            gap = pause + rng.normal(0, noise_rms, len(pause)).astype(np.float32)
            data = _pcm(np.concatenate([a, gap, b]))
            chunks = (data[i : i + 1600] for i in range(0, len(data), 1600))
            updates = list(client.recognize_stream(chunks, sample_rate_hertz=FSDD_RATE, model=args.model,
                                                   interim_results=False, single_utterance=True,
                                                   end_silence_ms=args.end_silence_ms))
            final = updates[-1]
            end = final.result_end_time - len(a) / FSDD_RATE  # after the first string's audio
            if not any(u.speech_event for u in updates) or end > len(pause) / FSDD_RATE:
                run_on += 1
            elif end < 0:
                inside += 1
            else:
                placed += 1
                ends.append(end)
                same += final.transcript == first
    print(f"pairs {args.pairs}, pause {args.pause_ms:g} ms, SNR {args.snr_db:g} dB: ended in the pause {placed} "
          f"({placed / args.pairs:.1%}; transcript = the offline one of the first string in {same}), inside the first "
          f"string {inside}, not in the pause {run_on}")
    if ends:
        print(f"end of the result after the end of the first string's audio: median {np.median(ends):.2f} s, "
              f"max {max(ends):.2f} s")
    return 0


def _pcm(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


if __name__ == "__main__":
    raise SystemExit(main())
