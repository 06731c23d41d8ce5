"""Named slices of a split (short, long, negation, ...) and accuracy and macro-F1 on each.

One implementation for ``evaluate`` (DVC metrics) and the model card's table. A slice is a rule on the
text alone; a text may be in several. Slices smaller than ``MIN_SIZE`` are reported but marked
``small``: their numbers move by several points with one text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

MIN_SIZE = 30
SHORT_WORDS, LONG_WORDS = 8, 25

# The data is lower-cased with apostrophes dropped or spaced ("dont", "don t"), so both spellings count.
NEGATION = re.compile(
    r"\b(?:not|no|never|nothing|nobody|none|nor|neither|nowhere|cannot|without)\b"
    r"|\b(?:do|does|did|is|was|are|were|have|has|had|could|would|should|ca|wo|ai|must|need)(?:n't|nt|n t)\b"
)
FEEL = re.compile(r"\bfeel(?:ing)?\b")
# Hashtags, mentions, URLs, and the "a href http" remnants of links that the data set's cleaning left.
WEB = re.compile(r"#\w|@\w|https?://|\bwww\b|\bhttps?\b|\bhref\b")
# From the error analysis of the pipeline model (docs/results.md#slices-and-data-quality): these words
# mark fear and surprise alike in this data set (test: 19 fear, 26 surprise of 53), and a third of the
# texts holding one are misclassified, against 7 % overall.
STRANGE = re.compile(r"\b(?:strange|weird|curious|funny)\b")

SLICES: dict[str, tuple[str, Callable[[str], bool]]] = {
    "short": (f"at most {SHORT_WORDS} words", lambda t: len(t.split()) <= SHORT_WORDS),
    "long": (f"at least {LONG_WORDS} words", lambda t: len(t.split()) >= LONG_WORDS),
    "negation": (
        "a negation (not, never, dont, can t, ...)",
        lambda t: bool(NEGATION.search(t)),
    ),
    "feel": ('"feel" or "feeling"', lambda t: bool(FEEL.search(t))),
    "web": ("a hashtag, URL or mention (or a link's remains: href, http)", lambda t: bool(WEB.search(t))),
    "strange": ("strange, weird, curious or funny (fear or surprise?)", lambda t: bool(STRANGE.search(t))),
}


def members(texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Slice name -> boolean mask over ``texts``."""
    return {name: np.array([rule(t) for t in texts], dtype=bool) for name, (_, rule) in SLICES.items()}


def table(texts: Sequence[str], preds: Any, targets: Any, num_classes: int) -> list[dict[str, Any]]:
    """One row per slice, ``all`` first: size, accuracy, macro-F1 (``metrics.scores``, so the classes
    a slice neither holds nor predicts do not count) and ``small``."""
    from emotions_pl import metrics

    preds, targets = np.asarray(preds), np.asarray(targets)
    masks = {"all": np.ones(len(texts), dtype=bool), **members(texts)}
    described = {"all": "every text", **{name: desc for name, (desc, _) in SLICES.items()}}
    rows = []
    for name, mask in masks.items():
        n = int(mask.sum())
        values = metrics.scores(preds[mask], targets[mask], num_classes) if n else {}
        rows.append(
            {
                "slice": name,
                "description": described[name],
                "n": n,
                "acc": round(values["acc"], 6) if n else None,
                "f1_macro": round(values["f1_macro"], 6) if n else None,
                "small": n < MIN_SIZE,
            }
        )
    return rows
