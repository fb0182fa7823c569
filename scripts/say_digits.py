"""Write a WAV file of a digit string spoken by FSDD's speakers: audio to try `seqserve recognize` on.

Usage: python scripts/say_digits.py 4155092 --out phone.wav [--gap-ms 200] [--speakers theo,george] [--rate 16000]
       python scripts/say_digits.py "415 5092" --out two.wav [--pause-ms 1500]   # a space: a longer pause

Joins recordings of the Free Spoken Digit Dataset (CC BY-SA 4.0, "Free Spoken Digit Dataset (FSDD),
Zohar Jackson and contributors") from $SEQSERVE_DATA_DIR/fsdd/recordings (or --data-dir): one take
per digit from the standard test set (takes 0-4, which no bundled model trained on), the speakers
taking turns, with --gap-ms of silence between digits. --rate resamples the result (soxr), to try
the server's resampling. Standard library, numpy and soxr only (the serving install).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import wave
from pathlib import Path

import numpy as np

SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
RATE = 8000


def say(digits: str, recordings: Path, speakers: list[str], gap_ms: float, rate: int, pause_ms: float = 1500.0) -> bytes:
    """The WAV file's bytes (mono, 16-bit) of ``digits`` spoken with ``gap_ms`` between them; a space in
    ``digits`` adds ``pause_ms`` more."""
    pieces = []
    i = 0  # digits spoken so far: who speaks, and which take
    for d in digits:
        if d == " ":
            pieces.append(np.zeros(int(pause_ms * RATE / 1000), np.float32))
            continue
        path = recordings / f"{d}_{speakers[i % len(speakers)]}_{i % 5}.wav"
        i += 1
        with wave.open(str(path), "rb") as w:
            pieces.append(np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768)
        pieces.append(np.zeros(int(gap_ms * RATE / 1000), np.float32))
    audio = np.concatenate(pieces)
    if rate != RATE:
        import soxr

        audio = np.clip(soxr.resample(audio, RATE, rate), -1, 32767 / 32768)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((audio * 32768).astype("<i2").tobytes())
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("digits", help="the digits to speak, e.g. 4155092 (a space: a longer pause, --pause-ms)")
    p.add_argument("--out", default="-", help="WAV file to write (default: standard output)")
    p.add_argument("--gap-ms", type=float, default=200.0, help="silence between digits (default 200)")
    p.add_argument("--pause-ms", type=float, default=1500.0,
                   help="more silence where DIGITS has a space, e.g. between two numbers (default 1500)")
    p.add_argument("--speakers", default=",".join(SPEAKERS), help="who speaks, in turn (default: all six)")
    p.add_argument("--rate", type=int, default=RATE, help="sample rate of the file (default 8000, FSDD's own)")
    p.add_argument("--data-dir", default=os.environ.get("SEQSERVE_DATA_DIR", ""), help="default $SEQSERVE_DATA_DIR")
    args = p.parse_args(argv)
    if not args.digits.replace(" ", "").isdigit():
        p.error(f"digits {args.digits!r} must be digits 0-9 (and spaces) only")
    speakers = [s for s in args.speakers.split(",") if s]
    unknown = [s for s in speakers if s not in SPEAKERS]
    if unknown or not speakers:
        p.error(f"--speakers {args.speakers!r}: choose from {', '.join(SPEAKERS)}")
    recordings = Path(args.data_dir) / "fsdd" / "recordings"
    if not recordings.is_dir():
        p.error(f"{recordings} does not exist: set SEQSERVE_DATA_DIR or --data-dir to the datasets' folder")
    data = say(args.digits, recordings, speakers, args.gap_ms, args.rate, args.pause_ms)
    if args.out == "-":
        sys.stdout.buffer.write(data)
    else:
        Path(args.out).write_bytes(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
