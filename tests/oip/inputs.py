"""The inputs tritonclient_checks.py sends, shared with the test that checks its answers."""

import numpy as np

HISTORY = np.sin(np.arange(400) / 24 * 2 * np.pi)
TEXTS = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee.", "Ein Mann namens Gerhard fährt nach Würzburg."]
PROMPTS = ["ROMEO:", "JULIET:\nO"]
SAMPLE = {"translate-zh-en": "我是中国人，我说中文。", "generate-zh": "我是中国人，我说"}  # one row for each BYTES model
