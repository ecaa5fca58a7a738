"""Held-back general instructions for judging the SmolLM2 recipe's student: nothing like its support-ticket data.

Every task template applied to every topic, topics first (so the first n prompts cover n / 4 topics in full).
"""

from __future__ import annotations

TASKS = [
    "Summarise what you know about {t} in one short paragraph.",
    "Why does {t} matter? Answer briefly.",
    "Write a friendly two-line note recommending {t}.",
    "How would you explain {t} to someone from the year 1800?",
]
TOPICS = [
    "penguins",
    "the periodic table",
    "meditation",
    "black holes",
    "coffee",
    "the Olympic Games",
    "bicycles",
    "origami",
]


def heldout_prompts() -> list[str]:
    return [task.format(t=topic) for topic in TOPICS for task in TASKS]
