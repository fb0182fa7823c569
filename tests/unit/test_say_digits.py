"""scripts/say_digits.py: FSDD test takes joined into a WAV file, at FSDD's rate or resampled."""

from __future__ import annotations

import subprocess
import sys
import wave

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "say_digits.py"


def test_a_digit_string_becomes_one_wav_file(data_dir, tmp_path):
    recordings = data_dir / "fsdd" / "recordings"
    if not recordings.is_dir():
        pytest.skip("no FSDD recordings")
    samples = 0
    for i, (d, s) in enumerate(zip("407", ("george", "jackson", "lucas"))):
        with wave.open(str(recordings / f"{d}_{s}_{i}.wav")) as w:
            samples += w.getnframes() + 1600  # 200 ms after each digit
    for rate, out in ((8000, tmp_path / "a.wav"), (16000, tmp_path / "b.wav")):
        run = subprocess.run([sys.executable, str(SCRIPT), "407", "--out", str(out), "--rate", str(rate),
                              "--data-dir", str(data_dir)], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        with wave.open(str(out)) as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, rate)
            assert abs(w.getnframes() - samples * rate // 8000) <= 1
    bad = subprocess.run([sys.executable, str(SCRIPT), "4x7", "--data-dir", str(data_dir)], capture_output=True, text=True)
    assert bad.returncode == 2 and "must be digits 0-9 (and spaces) only" in bad.stderr
    paused = tmp_path / "c.wav"  # a space: --pause-ms more silence
    run = subprocess.run([sys.executable, str(SCRIPT), "40 7", "--out", str(paused), "--pause-ms", "1000",
                          "--data-dir", str(data_dir)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    with wave.open(str(paused)) as w:
        assert w.getnframes() == samples + 8000
