"""The inputs tritonclient_checks.py sends, shared with the test that checks its answers."""

import numpy as np

HISTORY = np.sin(np.arange(400) / 24 * 2 * np.pi)
TEXTS = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee.", "Ein Mann namens Gerhard fährt nach Würzburg."]
PROMPTS = ["ROMEO:", "JULIET:\nO"]
SAMPLE = {"translate-zh-en": "我是中国人，我说中文。", "generate-zh": "我是中国人，我说"}  # one row for each BYTES model



def tone_wav(seconds: float = 1.0, rate: int = 8000) -> bytes:
    """A WAV file (mono 16-bit) of tone bursts: the row a speech model answers through tritonclient."""
    import io
    import wave

    t = np.arange(int(seconds * rate)) / rate
    signal = 0.3 * np.sin(2 * np.pi * 440 * t) * (np.sin(2 * np.pi * 2 * t) > 0)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((signal * 32767).astype("<i2").tobytes())
    return buf.getvalue()
