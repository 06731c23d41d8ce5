"""Classification metrics, defined once with torchmetrics: for training, ``evaluate`` and ``robustness``.

``METRICS`` is the list: the model logs each as ``val/<name>`` and ``test/<name>`` (synchronised
across DDP ranks by torchmetrics), and ``report`` computes the same objects on a finished set of
predictions. Add a metric here and every stage reports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
