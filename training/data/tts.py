"""Spoken digits from speech synthesisers: many more voices than FSDD's six, for speaker-robust training.

FSDD has six speakers, so a model trained on five of them meets the sixth as a stranger (leave-one-
speaker-out: training.speakers). Synthetic voices widen what "a voice" can be: Debian's ``flite``
(CMU Flite: its kal, kal16, awb, rms and slt voices, BSD-style licence) and ``espeak-ng`` (GPL-3; the
audio it makes is not covered) speak each digit word in several accents (American, British, Scottish,
Received Pronunciation, Caribbean, New York, Lancaster, West Midlands), with espeak-ng's voice
variants (male, female, Klatt synthesis), and at drawn pitches and speaking rates. Each take is
resampled to 8 kHz with soxr (as the server resamples requests), trimmed of silence and levelled to
FSDD's median peak.

The takes are generated once and cached (``SEQSERVE_CACHE_DIR`` or ``~/.cache/seqserve``) under a key
of the recipe and both programs' versions; nothing is committed or downloaded. They join the
training pool only (``data.tts_share``): validation and test stay FSDD's own recordings.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from training.data.files import DataError
from training.data.speech import FSDD_RATE, Recording

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan",
                  "en-gb-x-gbcwmd")
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2")
RECIPE = 2  # bump when the generation below changes (a new cache key)


def tools() -> dict[str, str]:
    """The synthesisers' versions; DataError naming what to install when one is missing."""
    missing = [t for t in ("flite", "espeak-ng") if shutil.which(t) is None]
    if missing:
        raise DataError(f"data.tts_share needs the speech synthesisers {' and '.join(missing)} "
                        "(Debian/Ubuntu: apt-get install flite espeak-ng)")
    flite = subprocess.run(["flite", "--version"], capture_output=True, text=True).stdout.split("\n")[0].strip()
    espeak = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.strip()
    return {"flite": flite, "espeak-ng": espeak}


def voices() -> list[tuple[str, str]]:
    """(engine, voice) of every synthetic speaker."""
    return [("flite", v) for v in FLITE_VOICES] + [("espeak-ng", f"{a}+{v}") for a in ESPEAK_ACCENTS
                                                  for v in ESPEAK_VARIANTS]


def _command(engine: str, voice: str, word: str, rng: np.random.Generator, out: str) -> list[str]:
    """The synthesiser's command line writing ``word`` as a WAV file to ``out``."""
    if engine == "flite":  # mean pitch 80-200 Hz, duration stretched 0.8-1.3x
        return ["flite", "-voice", voice, "--setf", f"int_f0_target_mean={rng.uniform(80, 200):.0f}",
                "--setf", f"duration_stretch={rng.uniform(0.8, 1.3):.2f}", "-t", word, "-o", out]
    # pitch 20-80 (of 0-99), 120-200 words per minute
    return ["espeak-ng", "-v", voice, "-p", str(int(rng.integers(20, 81))), "-s", str(int(rng.integers(120, 201))),
            "-w", out, word]


def _decode(wav: bytes) -> np.ndarray:
    """WAV bytes -> float32 mono at 8 kHz, silence trimmed (frames under 2% of the peak at either end)."""
    import soxr

    with wave.open(io.BytesIO(wav), "rb") as w:
        rate, pcm = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    audio = pcm.astype(np.float32) / 32768.0
    if rate != FSDD_RATE:
        audio = soxr.resample(audio, rate, FSDD_RATE).astype(np.float32)
    loud = np.flatnonzero(np.abs(audio) > 0.02 * (np.abs(audio).max() or 1.0))
    if len(loud):
        audio = audio[max(0, loud[0] - 160) : loud[-1] + 160]  # keep 20 ms either side
    return audio


def _render(job: tuple[str, str, int, int, int]) -> tuple[int, str, int, np.ndarray]:
    engine, voice, digit, take, seed = job
    rng = np.random.default_rng([seed, digit, take, int(hashlib.sha256(voice.encode()).hexdigest()[:8], 16)])
    # a file, not a pipe: a WAV written to a pipe cannot have its sizes filled in afterwards
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "take.wav")
        subprocess.run(_command(engine, voice, WORDS[digit], rng, out), check=True, capture_output=True)
        wav = Path(out).read_bytes()
    return digit, f"tts:{engine}:{voice}", take, _decode(wav)


def cache_dir() -> Path:
    return Path(os.environ.get("SEQSERVE_CACHE_DIR") or Path.home() / ".cache" / "seqserve")


def tts_recordings(takes: int = 3, seed: int = 0, voice_list: Sequence[tuple[str, str]] | None = None,
                   workers: int = 4) -> list[Recording]:
    """``takes`` takes of each digit by each synthetic voice (cached after the first call), as Recordings
    whose speaker is ``tts:ENGINE:VOICE`` and whose takes count from 10 (training takes)."""
    chosen = list(voice_list or voices())
    versions = tools()
    key = hashlib.sha256(json.dumps([RECIPE, takes, seed, chosen, versions]).encode()).hexdigest()[:16]
    path = cache_dir() / f"tts-digits-{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return [Recording(d, s, t, z[f"a{i}"]) for i, (d, s, t) in enumerate(meta)]
    jobs = [(engine, voice, digit, 10 + take, seed) for engine, voice in chosen for digit in range(10)
            for take in range(takes)]
    with ThreadPoolExecutor(workers) as pool:  # the work is in the subprocesses
        done = list(pool.map(_render, jobs))
    empty = [f"{s} '{WORDS[d]}'" for d, s, _, a in done if len(a) < FSDD_RATE // 20]
    if empty:
        raise DataError(f"the synthesisers gave no speech for {', '.join(empty[:5])}")
    peak = 0.27  # FSDD's median peak; the training mix then draws the gain
    recs = [Recording(d, s, t, (a * (peak / max(float(np.abs(a).max()), 1e-6))).astype(np.float32))
            for d, s, t, a in done]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, meta=json.dumps([(r.digit, r.speaker, r.take) for r in recs]),
             **{f"a{i}": r.audio for i, r in enumerate(recs)})
    tmp.replace(path)
    return recs
