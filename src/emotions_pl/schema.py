"""The names every stage shares: labels, splits, one prediction record and the prediction-log record.

A prediction is ``{"label", "score", "scores"}`` everywhere: ``predict`` output, the Python
predictor, the server and its client. The server's prediction log writes ``LOG_FIELDS`` per text and
``drift`` reads them, so both take the names from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

LABELS = ["sadness", "joy", "love", "anger", "fear", "surprise"]
SPLITS = ("train", "validation", "test")

# A prediction record's fields.
LABEL, SCORE, SCORES = "label", "score", "scores"
# A prediction-log line per text holds its length (never the text unless asked), label and score.
LOG_TEXT_CHARS = "text_chars"


def prediction(labels: Sequence[str], probabilities: Sequence[float]) -> dict[str, Any]:
    """The record for one text from its class probabilities (in label order)."""
    values = [float(p) for p in probabilities]
    top = max(range(len(values)), key=values.__getitem__)
    return {LABEL: labels[top], SCORE: values[top], SCORES: dict(zip(labels, values, strict=True))}


def label_index(value: Any, labels: Sequence[str]) -> int | None:
    """A label given by name (any case) or by index, as its index; ``None`` when it is neither."""
    if isinstance(value, str):
        name = value.strip().lower()
        return list(labels).index(name) if name in labels else None
    is_index = not isinstance(value, bool) and isinstance(value, int | float) and float(value).is_integer()
    return int(value) if is_index and 0 <= int(value) < len(labels) else None


# How much test accuracy (in points) a faster variant may lose against fp32 and still be `serve`'s
# default: export's model card states it, serve/options.py applies it.
MAX_ACCURACY_LOSS_POINTS = 0.5
