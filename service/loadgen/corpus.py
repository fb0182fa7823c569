"""The built-in inputs of load generation: German source sentences for translate, prompts for generate."""

from __future__ import annotations

# Built-in German source sentences (the project's translation direction is de -> en), short to long.
SENTENCES = (
    "Ein Mädchen lacht.",
    "Der Hund läuft schnell.",
    "Ein Mann trinkt Kaffee.",
    "Ein Kind liest ein Buch.",
    "Zwei Hunde spielen im Park.",
    "Die Katze schläft auf dem Sofa.",
    "Eine Frau singt ein Lied auf der Bühne.",
    "Zwei Männer arbeiten zusammen an einem Haus.",
    "Ein Junge spielt Fußball mit seinen Freunden im Park.",
    "Die Frau läuft am Strand, während die Sonne untergeht.",
    "Eine Gruppe von Menschen steht auf der Straße und wartet auf den Bus.",
    "Ein älterer Mann sitzt auf einer Bank und liest die Zeitung, während Kinder um ihn herum spielen.",
)

# Built-in prompts for the language models.
PROMPTS = (
    "First Citizen:\n",
    "Before we proceed any further, hear me speak.\n",
    "All:\nSpeak, speak.\n",
    "You are all resolved rather to die than to famish?",
    "First, you know Caius Marcius is chief enemy to the people.\n",
    "Resolved. resolved.\n\nFirst Citizen:\n",
    "We know't, we know't.",
    "Let us kill him, and we'll have corn at our own price.",
)
