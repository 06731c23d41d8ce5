"""Evidence statistics (``stats.py``) and the calibration floor (``metrics.ece_floor``), on cases whose
answers are known: closed-form intervals, exact McNemar values, hand-computed pools."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emotions_pl import metrics, stats

LABELS = ["sadness", "joy", "love", "anger", "fear", "surprise"]


def labelled(n: int, accuracy: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Targets over six classes and predictions right on exactly ``accuracy * n`` rows."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 6, n)
    preds = targets.copy()
    wrong = rng.choice(n, size=round((1 - accuracy) * n), replace=False)
    preds[wrong] = (targets[wrong] + 1 + rng.integers(0, 5, len(wrong))) % 6
    return preds, targets


def test_the_accuracy_interval_matches_the_binomial_one_in_closed_form() -> None:
    # n = 2,000 at 92.5 %: the normal-approximation half-width 1.96 * sqrt(p (1 - p) / n) = 1.154 points.
    preds, targets = labelled(2000, 0.925)
    found = stats.intervals(preds, targets, LABELS)["acc"]
    half = (found["ci_high"] - found["ci_low"]) / 2
    expected = 1.959964 * math.sqrt(0.925 * 0.075 / 2000)
    assert found["value"] == pytest.approx(0.925)
    assert half == pytest.approx(expected, rel=0.08)
    assert found["ci_low"] < 0.925 < found["ci_high"]


def test_scores_match_torchmetrics_and_intervals_are_seeded() -> None:
    preds, targets = labelled(500, 0.8, seed=3)
    observed = stats.pool_scores(preds, targets, 6)
    reference = metrics.scores(preds, targets, 6)
    assert observed["acc"][0] == pytest.approx(reference["acc"], abs=1e-6)
    assert observed["f1_macro"][0] == pytest.approx(reference["f1_macro"], abs=1e-6)
    assert stats.intervals(preds, targets, LABELS) == stats.intervals(preds, targets, LABELS)
    assert stats.intervals(preds, targets, LABELS, seed=1) != stats.intervals(preds, targets, LABELS)


def test_a_model_against_itself_differs_by_nothing() -> None:
    preds, targets = labelled(2000, 0.9)
    result = stats.paired(preds, preds, targets, LABELS)
    for metric in ("acc", "f1_macro"):
        assert result["difference"][metric] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    assert result["mcnemar"] == [{"a": 0, "b": 0, "only_a": 0, "only_b": 0, "p": 1.0}]
    assert result["verdict"].startswith("no detectable difference")


@pytest.mark.parametrize("k", [1, 5, 40])
def test_turning_k_right_rows_wrong_costs_k_over_n_with_the_exact_binomial_p(k: int) -> None:
    preds, targets = labelled(2000, 0.9)
    worse = preds.copy()
    right = np.flatnonzero(preds == targets)[:k]
    worse[right] = (targets[right] + 1) % 6
    result = stats.paired(preds, worse, targets, LABELS, names=("base", "worse"))
    assert result["difference"]["acc"]["value"] == -k / 2000
    assert result["correct"] == {"a": [1800], "b": [1800 - k]}
    # only A is right on k rows, only B on none: two-sided exact p = 2 * 0.5^k, capped at 1.
    assert result["mcnemar"][0]["only_a"] == k and result["mcnemar"][0]["only_b"] == 0
    assert result["mcnemar"][0]["p"] == pytest.approx(min(1.0, 2 * 0.5**k), rel=1e-12)
    if k == 40:
        assert result["difference"]["acc"]["ci_high"] < 0
        assert result["verdict"].startswith("base is better on accuracy")


def test_pools_average_each_rows_correctness_over_their_members() -> None:
    # Four rows, one class; A's two members are right on rows {0, 1} and {0, 2}: per-row correctness
    # 1, .5, .5, 0 (mean .5). B's single member is right on rows {0, 1, 2}: .75. B - A = .25.
    targets = np.zeros(4, dtype=int)
    a = np.array([[0, 0, 1, 1], [0, 1, 0, 1]])
    b = np.array([0, 0, 0, 1])
    result = stats.paired(a, b, targets, LABELS[:2])
    assert result["a"]["acc"] == pytest.approx(0.5)
    assert result["b"]["acc"] == pytest.approx(0.75)
    assert result["difference"]["acc"]["value"] == pytest.approx(0.25)
    assert result["correct"] == {"a": [2, 2], "b": [3]}
    # macro-F1 of a pool is the mean of its members' (class 1 has no examples: F1 0, as torchmetrics)
    f1_a = np.mean([metrics.scores(m, targets, 2)["f1_macro"] for m in a])
    assert result["a"]["f1_macro"] == pytest.approx(f1_a, abs=1e-6)
    # one model against a pool of two: McNemar pairs it with each member
    assert [(t["a"], t["b"]) for t in result["mcnemar"]] == [(0, 0), (1, 0)]
    assert [(t["only_a"], t["only_b"]) for t in result["mcnemar"]] == [(0, 1), (0, 1)]
    same_size = stats.paired(a, a[::-1], targets, LABELS[:2])
    assert [(t["a"], t["b"]) for t in same_size["mcnemar"]] == [(0, 0), (1, 1)]


def test_the_verdict_reads_both_intervals() -> None:
    up, flat, down = (
        {"ci_low": lo, "ci_high": hi} for lo, hi in ((0.01, 0.02), (-0.01, 0.01), (-0.02, -0.01))
    )
    assert stats.verdict({"acc": up, "f1_macro": up}, "A", "B") == "B is better on accuracy and macro-F1"
    assert stats.verdict({"acc": flat, "f1_macro": up}, "A", "B") == (
        "B is better on macro-F1; no detectable difference in accuracy"
    )
    assert (
        stats.verdict({"acc": up, "f1_macro": down}, "A", "B")
        == "mixed: B is better on accuracy, A on macro-F1"
    )
    assert stats.verdict({"acc": down, "f1_macro": flat}, "A", "B").startswith("A is better on accuracy")


def test_the_ece_floor_is_what_a_calibrated_model_shows() -> None:
    # Labels drawn from the model's own probabilities: its measured ECE is one draw of the floor, so it
    # falls inside the floor's spread; the same scores against labels from sharper ones fall outside.
    rng = np.random.default_rng(0)
    probs = metrics.softmax64(rng.normal(size=(2000, 6)) * 3)
    floor = metrics.ece_floor(probs)
    assert floor.shape == (metrics.BOOTSTRAP_SAMPLES,)
    calibrated = np.array([rng.choice(6, p=p) for p in probs])
    found = metrics.calibration(probs, calibrated)
    assert found["ece_floor_median"] == pytest.approx(np.median(floor))
    assert found["ece"] <= found["ece_floor_p95"]
    assert found["ece_mass"] <= found["ece_mass_floor_p95"]
    sharper = metrics.softmax64(np.log(probs) * 3)
    overconfident = metrics.calibration(sharper, calibrated)
    assert overconfident["ece"] > overconfident["ece_floor_p95"]
    assert overconfident["ece_mass"] > overconfident["ece_mass_floor_p95"]


def test_equal_mass_bins_hold_equal_counts() -> None:
    import torch

    confidence = torch.rand(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bins = metrics._mass_bins(confidence)
    counts = torch.bincount(bins, minlength=metrics.CALIBRATION_BINS)
    assert (
        counts.min() >= 1000 // metrics.CALIBRATION_BINS
        and counts.max() <= 1000 // metrics.CALIBRATION_BINS + 1
    )
    # ordered by confidence: every text of a bin is at or below every text of the next
    for b in range(metrics.CALIBRATION_BINS - 1):
        assert confidence[bins == b].max() <= confidence[bins == b + 1].min()
