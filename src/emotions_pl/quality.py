"""Data quality: texts in more than one split, identical texts with conflicting labels, near-duplicates.

One implementation for the ``data`` stage's report and for ``evaluate`` (which also scores the test
split without the texts it shares with train or validation, so that leakage is visible). A
near-duplicate is a text that differs from another only in case or whitespace (``normalise``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

EXAMPLES = 5  # examples listed per finding


def normalise(text: str) -> str:
    """Case-folded, whitespace runs as one space, no leading or trailing space."""
    return " ".join(text.casefold().split())


def _where(splits: Iterable[str], order: Sequence[str]) -> str:
    """The splits named, in split order, joined by "&" (the key findings are counted under)."""
    present = set(splits)
    return "&".join(s for s in order if s in present)


def report(
    splits: Mapping[str, tuple[Sequence[str], Sequence[int]]],
    label_names: Sequence[str],
    examples: int = EXAMPLES,
) -> dict[str, Any]:
    """Counts and examples for split files given as ``{split: (texts, label indices)}``.

    - ``cross_split``: per pair of splits, the distinct texts found word for word in both;
    - ``conflicting_labels``: distinct texts that carry more than one label, by the splits they are in
      (``train&test``: a text in both whose labels differ; ``train``: twice in train, two labels);
    - ``near_duplicates``: groups of distinct texts that are equal after ``normalise``, by splits;
    - ``duplicates``: per split, rows whose exact text occurs earlier in the same split.
    """
    order = list(splits)
    seen: dict[str, list[tuple[str, int]]] = defaultdict(list)  # text -> (split, label) per row
    for split, (texts, labels) in splits.items():
        for text, label in zip(texts, labels, strict=True):
            seen[text].append((split, int(label)))

    sets = {split: set(texts) for split, (texts, _) in splits.items()}
    cross: dict[str, Any] = {}
    for i, a in enumerate(order):
        for b in order[i + 1 :]:
            shared = sorted(sets[a] & sets[b])
            cross[f"{a}&{b}"] = {"texts": len(shared), "examples": shared[:examples]}

    conflicts: dict[str, int] = defaultdict(int)
    conflict_examples = []
    for text, rows in seen.items():
        if len({label for _, label in rows}) > 1:
            conflicts[_where((s for s, _ in rows), order)] += 1
            if len(conflict_examples) < examples:
                by_split: dict[str, list[str]] = defaultdict(list)
                for split, label in rows:
                    by_split[split].append(label_names[label])
                conflict_examples.append({"text": text, "labels": dict(by_split)})

    groups: dict[str, set[str]] = defaultdict(set)
    for text in seen:
        groups[normalise(text)].add(text)
    near: dict[str, int] = defaultdict(int)
    near_examples = []
    for variants in groups.values():
        if len(variants) > 1:
            near[_where((s for t in variants for s, _ in seen[t]), order)] += 1
            if len(near_examples) < examples:
                near_examples.append(sorted(variants))

    return {
        "cross_split": cross,
        "conflicting_labels": {
            "texts": sum(conflicts.values()),
            "by_splits": dict(conflicts),
            "examples": conflict_examples,
        },
        "near_duplicates": {"groups": sum(near.values()), "by_splits": dict(near), "examples": near_examples},
        "duplicates": {split: len(texts) - len(sets[split]) for split, (texts, _) in splits.items()},
    }


def leaked(texts: Sequence[str], others: Iterable[str]) -> np.ndarray:
    """Which of ``texts`` also occur in ``others``, after ``normalise`` (so exact copies count too)."""
    known = {normalise(t) for t in others}
    return np.array([normalise(t) in known for t in texts], dtype=bool)
