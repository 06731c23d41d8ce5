"""Evidence: how sure a quality number is, and whether two models (or two pools of seeds) really differ.

Everything works on predicted labels over the same rows, so it needs no model:

- ``pool_scores``: accuracy, macro-F1 and per-class F1 of a pool of predictions (``[seeds, rows]``),
  each the mean over the pool's members, for the observed rows or for every bootstrap resample at once
  (a resample is a row of counts, so a metric over 1,000 resamples is one matrix product).
- ``intervals``: seeded percentile-bootstrap 95 % intervals of those scores.
- ``paired``: B - A over the same resamples of the rows, so the interval is of the paired difference;
  McNemar's exact test on the rows where exactly one side is right; a one-line verdict.

The bootstrap resamples rows, not seeds: the interval covers the sampling noise of the test split, and
pooling seeds first (each row's correctness averaged over the seeds) takes the seed noise out of the
difference rather than into it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

SAMPLES = 1000
SEED = 0
LEVEL = 0.95
METRIC_NAMES = ("acc", "f1_macro")


def resample_weights(n: int, samples: int = SAMPLES, seed: int = SEED) -> np.ndarray:
    """``[samples, n]``: how often each row is drawn in each resample (draws with replacement, seeded)."""
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n, size=(samples, n)) + n * np.arange(samples)[:, None]
    return np.bincount(drawn.ravel(), minlength=samples * n).reshape(samples, n).astype(np.float64)


def as_pool(preds: Any) -> np.ndarray:
    """Predicted labels as ``[members, rows]`` (one model is a pool of one)."""
    pool = np.asarray(preds, dtype=np.int64)
    return pool[None] if pool.ndim == 1 else pool


def pool_scores(
    preds: Any, targets: Any, num_classes: int, weights: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Accuracy, macro-F1 and per-class F1 (``[..., classes]``), each averaged over the pool's members,
    for each row of ``weights`` (resamples), or for the rows as they are when ``weights`` is None (then
    every value has a leading axis of 1). F1 of a class with no examples and no predictions is 0, as
    torchmetrics scores it (``metrics.py``)."""
    pool, targets = as_pool(preds), np.asarray(targets, dtype=np.int64)
    if weights is None:
        weights = np.ones((1, len(targets)))
    eye = np.eye(num_classes)
    true = eye[targets]  # [n, C]
    acc, f1 = [], []
    for member in pool:
        predicted = eye[member]
        hits = weights @ (predicted * true)  # [R, C] true positives
        denominator = weights @ predicted + weights @ true  # TP + FP + TP + FN
        f1.append(np.divide(2 * hits, denominator, out=np.zeros_like(hits), where=denominator > 0))
        acc.append(hits.sum(1) / weights.sum(1))
    per_class = np.mean(f1, axis=0)
    return {"acc": np.mean(acc, axis=0), "f1_macro": per_class.mean(1), "f1": per_class}


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail], axis=0)
    return float(low), float(high)


def intervals(
    preds: Any, targets: Any, labels: Sequence[str], samples: int = SAMPLES, seed: int = SEED
) -> dict[str, Any]:
    """Each score with its bootstrap interval: ``{acc: {value, ci_low, ci_high}, f1_macro: ..., f1:
    {label: ...}}`` plus the resampling settings. Seeded: the same predictions give the same interval."""
    n = len(labels)
    observed = pool_scores(preds, targets, n)
    resampled = pool_scores(preds, targets, n, resample_weights(len(targets), samples, seed))

    def entry(value: float, values: np.ndarray) -> dict[str, float]:
        low, high = percentile_interval(values)
        return {"value": float(value), "ci_low": low, "ci_high": high}

    return {
        **{m: entry(observed[m][0], resampled[m]) for m in METRIC_NAMES},
        "f1": {label: entry(observed["f1"][0, k], resampled["f1"][:, k]) for k, label in enumerate(labels)},
        "bootstrap": {"samples": samples, "seed": seed, "level": LEVEL, "rows": len(targets)},
    }


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, Any]:
    """McNemar's exact test: among the rows where exactly one side is right, is either side right more
    often than a fair coin says? Two-sided binomial p-value (scipy); 1 when no row is discordant."""
    from scipy.stats import binomtest

    only_a = int((correct_a & ~correct_b).sum())
    only_b = int((~correct_a & correct_b).sum())
    p = 1.0 if only_a + only_b == 0 else float(binomtest(only_b, only_a + only_b, 0.5).pvalue)
    return {"only_a": only_a, "only_b": only_b, "p": p}


def member_pairs(a: int, b: int) -> list[tuple[int, int]]:
    """Which members McNemar pairs: by position for pools of one size (seed i with seed i), one model
    against each member of a pool, every pair otherwise."""
    if a == b:
        return [(i, i) for i in range(a)]
    return [(i, j) for i in range(a) for j in range(b)]


def verdict(differences: dict[str, dict[str, float]], name_a: str, name_b: str) -> str:
    """One line from the intervals of B - A: a side is better on a metric when its interval excludes 0."""
    signs = {}
    for metric, d in differences.items():
        signs[metric] = 1 if d["ci_low"] > 0 else -1 if d["ci_high"] < 0 else 0
    words = {"acc": "accuracy", "f1_macro": "macro-F1"}
    if not any(signs.values()):
        return "no detectable difference (both 95 % intervals of B - A contain 0)"
    better = {s: [words[m] for m, v in signs.items() if v == s] for s in (1, -1)}
    if better[1] and better[-1]:
        return f"mixed: {name_b} is better on {better[1][0]}, {name_a} on {better[-1][0]}"
    side, sign = (name_b, 1) if better[1] else (name_a, -1)
    tied = [words[m] for m, v in signs.items() if v == 0]
    line = f"{side} is better on {' and '.join(better[sign])}"
    return line + (f"; no detectable difference in {' and '.join(tied)}" if tied else "")


def paired(
    preds_a: Any,
    preds_b: Any,
    targets: Any,
    labels: Sequence[str],
    names: tuple[str, str] = ("A", "B"),
    samples: int = SAMPLES,
    seed: int = SEED,
) -> dict[str, Any]:
    """Side A against side B over the same rows: each side's scores, B - A with its paired-bootstrap
    interval (the same resampled rows for both sides), McNemar per member pair, per-class F1 changes
    and the verdict. A side is one model's labels ``[rows]`` or a pool's ``[members, rows]``."""
    pool_a, pool_b = as_pool(preds_a), as_pool(preds_b)
    targets = np.asarray(targets, dtype=np.int64)
    rows, n = len(targets), len(labels)
    if pool_a.shape[1] != rows or pool_b.shape[1] != rows:
        raise ValueError(f"both sides must predict the same {rows} rows: {pool_a.shape}, {pool_b.shape}")
    weights = resample_weights(rows, samples, seed)
    observed = {s: pool_scores(p, targets, n) for s, p in (("a", pool_a), ("b", pool_b))}
    resampled = {s: pool_scores(p, targets, n, weights) for s, p in (("a", pool_a), ("b", pool_b))}
    correct = {s: p == targets for s, p in (("a", pool_a), ("b", pool_b))}
    counts = {s: [int(c.sum()) for c in correct[s]] for s in correct}

    differences: dict[str, dict[str, float]] = {}
    for metric in METRIC_NAMES:
        low, high = percentile_interval(resampled["b"][metric] - resampled["a"][metric])
        differences[metric] = {"value": 0.0, "ci_low": low, "ci_high": high}
    # Accuracy's difference from the integer counts: exact, and exactly 0 for a model against itself.
    differences["acc"]["value"] = (
        sum(counts["b"]) * len(counts["a"]) - sum(counts["a"]) * len(counts["b"])
    ) / (len(counts["a"]) * len(counts["b"]) * rows)
    differences["f1_macro"]["value"] = float(observed["b"]["f1_macro"][0] - observed["a"]["f1_macro"][0])
    per_class = {}
    for k, label in enumerate(labels):
        low, high = percentile_interval(resampled["b"]["f1"][:, k] - resampled["a"]["f1"][:, k])
        change = float(observed["b"]["f1"][0, k] - observed["a"]["f1"][0, k])
        per_class[label] = {"a": float(observed["a"]["f1"][0, k]), "b": float(observed["b"]["f1"][0, k])}
        per_class[label] |= {"difference": change, "ci_low": low, "ci_high": high}
    tests = [
        {"a": i, "b": j, **mcnemar(correct["a"][i], correct["b"][j])}
        for i, j in member_pairs(len(pool_a), len(pool_b))
    ]
    return {
        "names": {"a": names[0], "b": names[1]},
        "rows": rows,
        "members": {"a": len(pool_a), "b": len(pool_b)},
        "correct": counts,
        "a": {m: float(observed["a"][m][0]) for m in METRIC_NAMES},
        "b": {m: float(observed["b"][m][0]) for m in METRIC_NAMES},
        "difference": differences,
        "f1_per_class": per_class,
        "mcnemar": tests,
        "bootstrap": {"samples": samples, "seed": seed, "level": LEVEL, "paired": True},
        "verdict": verdict(differences, *names),
    }
