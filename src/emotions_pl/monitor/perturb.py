"""Seeded text perturbations for robustness checks: noise a user's text might carry, plus negation.

Each perturbation is a pure function ``(text, rng) -> text``. ``apply`` seeds a fresh
``random.Random`` from the perturbation name, the global seed and the row index, so a row's output
never depends on which other rows or perturbations run beside it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

EMOJI = ["😂", "😭", "🙏", "✨", "👀", "🔥", "💯", "🤷", "😅", "🙃"]
# Topic tags with no emotion of their own, so that they add noise without adding signal.
HASHTAGS = ["#monday", "#tbt", "#nofilter", "#life", "#weekend", "#random", "#blog", "#thoughts"]
URLS = [
    "https://t.co/x7Qk2LmP9a",
    "http://bit.ly/3fZq8Rw",
    "https://example.com/post/48213",
    "www.tumblr.com/a1b2",
]

# Negation in the data's own style: lower case, apostrophes dropped ("dont", "didnt").
FEEL_NEGATION = {"feel": "dont feel", "feels": "doesnt feel", "felt": "didnt feel", "feeling": "not feeling"}
AUXILIARIES = {
    "am", "is", "are", "was", "were", "will", "would", "can", "could", "should",
    "do", "does", "did", "have", "has", "had", "im", "ive", "its",
}  # fmt: skip
NEGATION_FALLBACK = "it is not true that "

Perturbation = Callable[[str, random.Random], str]


def typos(text: str, rng: random.Random, rate: float = 0.15) -> str:
    """Swap two neighbouring letters or drop one, in about ``rate`` of the words with 3+ characters.

    At least one word changes when any is long enough, so every row is really perturbed.
    """
    words = text.split(" ")
    eligible = [i for i, w in enumerate(words) if len(w) >= 3]
    if not eligible:
        return text
    chosen = [i for i in eligible if rng.random() < rate] or [rng.choice(eligible)]
    for i in chosen:
        word = words[i]
        swappable = [p for p in range(len(word) - 1) if word[p] != word[p + 1]]  # "ee" swapped is no typo
        if swappable and rng.random() < 0.5:
            pos = rng.choice(swappable)
            words[i] = word[:pos] + word[pos + 1] + word[pos] + word[pos + 2 :]
        else:
            pos = rng.randrange(len(word))
            words[i] = word[:pos] + word[pos + 1 :]
    return " ".join(words)


def uppercase(text: str, rng: random.Random) -> str:
    return text.upper()


def _insert(text: str, token: str, rng: random.Random) -> str:
    """Put ``token`` at the end (twice as likely) or the start of the text."""
    return f"{token} {text}" if rng.random() < 1 / 3 else f"{text} {token}"


def emoji(text: str, rng: random.Random) -> str:
    return _insert(text, "".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 3))), rng)


def hashtags(text: str, rng: random.Random) -> str:
    return f"{text} {' '.join(rng.sample(HASHTAGS, rng.randint(1, 3)))}"


def url(text: str, rng: random.Random) -> str:
    return _insert(text, rng.choice(URLS), rng)


def word_dropout(text: str, rng: random.Random, rate: float = 0.15) -> str:
    """Drop about ``rate`` of the words; always drop one and keep one when there are two or more."""
    words = text.split()
    if len(words) < 2:
        return text
    keep = [rng.random() >= rate for _ in words]
    if all(keep):
        keep[rng.randrange(len(words))] = False
    if not any(keep):
        keep[rng.randrange(len(words))] = True
    return " ".join(w for w, k in zip(words, keep, strict=True) if k)


def negation(text: str, rng: random.Random) -> str:
    """Negate the first feeling verb or auxiliary ("i feel" -> "i dont feel", "i am" -> "i am not").

    This can change the true emotion, so robustness reports it as a flip rate, not as accuracy.
    """
    words = text.split(" ")
    for i, word in enumerate(words):
        key = word.lower()
        if key in FEEL_NEGATION:
            negated = FEEL_NEGATION[key]
            words[i] = negated.upper() if word.isupper() else negated
            return " ".join(words)
        if key in AUXILIARIES:
            words[i] = f"{word} {'NOT' if word.isupper() else 'not'}"
            return " ".join(words)
    return NEGATION_FALLBACK + text


PERTURBATIONS: dict[str, Perturbation] = {
    "typos": typos,
    "uppercase": uppercase,
    "emoji": emoji,
    "hashtags": hashtags,
    "url": url,
    "word_dropout": word_dropout,
    "negation": negation,
}
# Perturbations that may change the true label: their accuracy against the original labels is not a
# robustness score; the prediction flip rate is what they measure.
LABEL_CHANGING = frozenset({"negation"})


def apply(name: str, texts: Sequence[str], seed: int = 0) -> list[str]:
    """Perturb every text with perturbation ``name``; deterministic per (name, seed, row index)."""
    if name not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {name!r}; choose from {sorted(PERTURBATIONS)}.")
    fn = PERTURBATIONS[name]
    return [fn(text, random.Random(f"{name}:{seed}:{i}")) for i, text in enumerate(texts)]
