"""Classification metrics, defined once with torchmetrics: for training, ``evaluate`` and ``robustness``.

``METRICS`` is the list: the model logs each as ``val/<name>`` and ``test/<name>`` (synchronised
across DDP ranks by torchmetrics), and ``report`` computes the same objects on a finished set of
predictions. Add a metric here and every stage reports it.

``calibration`` (ECE, MCE, Brier, NLL, a bootstrap interval for ECE) and ``reliability_bins`` (the
reliability diagram's data) score probabilities rather than labels: ``evaluate`` and the model card use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)
from torchmetrics.functional.classification import multiclass_calibration_error

# Equal-width bins of the top score (ECE, MCE, the reliability diagram); bootstrap of the ECE interval.
CALIBRATION_BINS = 15
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0

# name -> (torchmetrics class, its keyword arguments). A class with no examples or predictions scores 0.
METRICS: dict[str, tuple[type[Metric], dict[str, Any]]] = {
    "acc": (MulticlassAccuracy, {"average": "micro"}),
    "f1_macro": (MulticlassF1Score, {"average": "macro"}),
    "precision_macro": (MulticlassPrecision, {"average": "macro"}),
    "recall_macro": (MulticlassRecall, {"average": "macro"}),
    "f1_weighted": (MulticlassF1Score, {"average": "weighted"}),
}
# Per-class columns of the report (``test/f1/<label>`` for F1).
PER_CLASS: dict[str, type[Metric]] = {
    "precision": MulticlassPrecision,
    "recall": MulticlassRecall,
    "f1": MulticlassF1Score,
}


def metric_collection(num_classes: int) -> MetricCollection:
    return MetricCollection({name: cls(num_classes, **kw) for name, (cls, kw) in METRICS.items()})


def per_class_f1(num_classes: int) -> MulticlassF1Score:
    return MulticlassF1Score(num_classes, average=None)


def _as_tensor(values: Any, dtype: torch.dtype) -> torch.Tensor:
    return values.to(dtype) if isinstance(values, torch.Tensor) else torch.as_tensor(values, dtype=dtype)


def scores(preds: Any, targets: Any, num_classes: int) -> dict[str, float]:
    """``METRICS`` for predicted label indices (or class scores ``[n, classes]``) against targets."""
    preds = _as_tensor(preds, torch.float64 if getattr(preds, "ndim", 1) == 2 else torch.long)
    targets = _as_tensor(targets, torch.long)
    return {name: float(metric(preds, targets)) for name, metric in metric_collection(num_classes).items()}


def report(probs: Any, targets: Any, label_names: Sequence[str], prefix: str = "test/") -> dict[str, Any]:
    """Everything ``evaluate`` writes: the metrics (named as ``fit``/``test`` log them, plus the loss and
    per-class F1), the per-class table and the confusion matrix (rows true, columns predicted)."""
    probs = _as_tensor(probs, torch.float64)
    targets = _as_tensor(targets, torch.long)
    n = len(label_names)
    values = {f"{prefix}{k}": v for k, v in scores(probs, targets, n).items()}
    values[f"{prefix}loss"] = float(F.nll_loss(probs.clamp_min(1e-12).log(), targets))
    table: dict[str, list[Any]] = {"label": list(label_names)}
    for column, cls in PER_CLASS.items():
        table[column] = cls(n, average=None)(probs, targets).tolist()
    table["support"] = torch.bincount(targets, minlength=n).tolist()
    values |= {f"{prefix}f1/{name}": f for name, f in zip(label_names, table["f1"], strict=True)}
    confusion = MulticlassConfusionMatrix(n)(probs, targets)
    return {
        "metrics": {k: round(v, 6) for k, v in values.items()},
        "per_class": table,
        "confusion": confusion,
    }


def softmax64(logits: Any) -> np.ndarray:
    """Probabilities in float64, so that a confident wrong answer's NLL is not cut at float32's floor."""
    return torch.softmax(_as_tensor(logits, torch.float64), -1).numpy()


def _ece(probs: torch.Tensor, targets: torch.Tensor, norm: Literal["l1", "max"]) -> float:
    n = probs.shape[1]
    return float(multiclass_calibration_error(probs, targets, n, CALIBRATION_BINS, norm, validate_args=False))


def resample_indices(n: int, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> torch.Tensor:
    """``[samples, n]`` row indices drawn with replacement, seeded: the bootstrap's resamples."""
    return torch.randint(0, n, (samples, n), generator=torch.Generator().manual_seed(seed))


def _bins(confidence: torch.Tensor) -> torch.Tensor:
    """torchmetrics' equal-width bins of the top score: ``CALIBRATION_BINS`` of them, and a top score of
    exactly 1.0 in a bin of its own."""
    edges = torch.linspace(0, 1, CALIBRATION_BINS + 1, dtype=torch.float64)
    return torch.bucketize(confidence, edges, right=True) - 1  # 0..CALIBRATION_BINS


def _mass_bins(confidence: torch.Tensor) -> torch.Tensor:
    """``CALIBRATION_BINS`` bins of (nearly) equal size by rank of the top score: none is empty and none
    rests on a handful of texts, so the estimate is less biased where the scores crowd near 1."""
    order = torch.argsort(confidence, stable=True)
    bins = torch.empty_like(order)
    bins[order] = torch.arange(len(order)) * CALIBRATION_BINS // len(order)
    return bins


def _binned_ece(bins: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
    """ECE from each text's bin and its (correct - confidence) gap, for every row of ``gap`` at once:
    the sum over bins of |the gaps' sum|, over the number of texts."""
    gap = gap.reshape(-1, gap.shape[-1])
    sums = torch.zeros(len(gap), CALIBRATION_BINS + 1, dtype=torch.float64)
    sums.scatter_add_(1, bins.expand_as(gap), gap)
    return sums.abs().sum(1) / gap.shape[1]


def bootstrap_ece(probs: Any, targets: Any, indices: torch.Tensor) -> np.ndarray:
    """ECE of each resample (a row of ``indices``), all at once, with one ``scatter_add`` instead of a
    torchmetrics call per resample (the same bins)."""
    probs = _as_tensor(probs, torch.float64)
    targets = _as_tensor(targets, torch.long)
    confidence, predicted = probs.max(1)
    gap = (predicted == targets).to(torch.float64) - confidence  # per text: correct minus confidence
    sums = torch.zeros(len(indices), CALIBRATION_BINS + 1, dtype=torch.float64)
    sums.scatter_add_(1, _bins(confidence)[indices], gap[indices])
    return (sums.abs().sum(1) / indices.shape[1]).numpy()


def ece_floor(
    probs: Any, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED, equal_mass: bool = False
) -> np.ndarray:
    """The ECE a perfectly calibrated model with these scores would show on this many texts: each text's
    label is drawn from its own probabilities, ``samples`` times (seeded), and the same ECE computed on
    each draw. Its top class is then right with probability equal to its top score, so only that
    Bernoulli draw is needed. A measured ECE inside this spread is noise, not miscalibration."""
    confidence = _as_tensor(probs, torch.float64).max(1).values
    generator = torch.Generator().manual_seed(seed)
    right = torch.rand((samples, len(confidence)), generator=generator, dtype=torch.float64) < confidence
    bins = _mass_bins(confidence) if equal_mass else _bins(confidence)
    return _binned_ece(bins, right.to(torch.float64) - confidence).numpy()


def calibration(
    probs: Any, targets: Any, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED
) -> dict[str, float]:
    """How far the top score is from the chance of being right, for probabilities ``[n, classes]``.

    ``ece``: the bin-size weighted mean of |accuracy - mean confidence| over ``CALIBRATION_BINS``
    equal-width bins of the top score (torchmetrics, norm l1); ``mce``: the largest such gap (norm
    max); ``ece_low``/``ece_high``: the 2.5 and 97.5 percentiles of ECE over ``samples`` bootstrap
    resamples of the texts (seeded: the same inputs give the same interval); ``ece_floor_median`` and
    ``ece_floor_p95``: the median and 95th percentile of the ECE a perfectly calibrated model with the
    same scores would show (``ece_floor``); ``ece_mass`` and its floor: the same over equal-mass bins;
    ``brier``: the mean over
    texts of the squared distance between the probabilities and the one-hot truth (summed over classes,
    0 to 2); ``nll``: the mean of -log p(true class); ``acc``: top-1 accuracy.
    """
    probs = _as_tensor(probs, torch.float64)
    targets = _as_tensor(targets, torch.long)
    onehot = F.one_hot(targets, probs.shape[1]).to(torch.float64)
    resampled = bootstrap_ece(probs, targets, resample_indices(len(targets), samples, seed))
    low, high = np.percentile(resampled, [2.5, 97.5])
    confidence, predicted = probs.max(1)
    gap = (predicted == targets).to(torch.float64) - confidence
    floor = np.percentile(ece_floor(probs, samples, seed), [50, 95])
    mass_floor = np.percentile(ece_floor(probs, samples, seed, equal_mass=True), [50, 95])
    return {
        "ece": _ece(probs, targets, "l1"),
        "ece_low": float(low),
        "ece_high": float(high),
        "ece_floor_median": float(floor[0]),
        "ece_floor_p95": float(floor[1]),
        "ece_mass": float(_binned_ece(_mass_bins(confidence), gap)[0]),
        "ece_mass_floor_median": float(mass_floor[0]),
        "ece_mass_floor_p95": float(mass_floor[1]),
        "mce": _ece(probs, targets, "max"),
        "brier": float(((probs - onehot) ** 2).sum(1).mean()),
        "nll": float(F.nll_loss(probs.clamp_min(1e-300).log(), targets)),
        "acc": float((probs.argmax(1) == targets).to(torch.float64).mean()),
    }


def reliability_bins(probs: Any, targets: Any) -> list[dict[str, Any]]:
    """Per equal-width bin of the top score: its bounds, size, mean confidence and accuracy (``None``
    when empty). The bins ECE sums over, except that a score of exactly 1.0 falls in the last bin here
    (torchmetrics gives it a bin of its own)."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets)
    confidence, correct = probs.max(1), probs.argmax(1) == targets
    edges = np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, CALIBRATION_BINS - 1)
    rows = []
    for b in range(CALIBRATION_BINS):
        inside = index == b
        count = int(inside.sum())
        rows.append(
            {
                "bin": b,
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": count,
                "confidence": float(confidence[inside].mean()) if count else None,
                "accuracy": float(correct[inside].mean()) if count else None,
            }
        )
    return rows
