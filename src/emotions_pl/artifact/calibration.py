"""Calibration: one per-class affine map of the logits, fitted by NLL on validation logits and folded
into the classifier head.

Two maps are fitted: temperature scaling (``z / T``, one parameter) and vector scaling (``a * z + c``,
a scale and a bias per class, which contains temperature as ``a = 1/T, c = 0``). Because vector
scaling contains temperature it always wins on the rows it was fitted on, so ``choose`` compares the
two by cross-validated NLL and keeps vector scaling only when it does better on held-out rows.

``export`` folds the kept map into the head's last ``nn.Linear`` (``W' = diag(a) W``, ``b' = a b + c``)
before anything is written, so the safetensors weights, the ONNX graph and the int8 graph quantized
from it all give calibrated logits: every path that turns logits into scores (the Predictor,
``predict``, the server, the client, a plain ``transformers.pipeline``) is calibrated without knowing
the map. Temperature (T > 0, no bias) keeps the argmax, so accuracy is unchanged; vector scaling may
move a label, and therefore accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# The search is on log T, bounded here: outside this range the fit has gone wrong (e.g. a constant model).
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
METHODS = ("temperature", "vector")


@dataclass(frozen=True)
class Affine:
    """Calibrated logits = scale * logits + bias, per class (temperature: scale = 1/T everywhere, bias 0)."""

    method: str  # "temperature", "vector" or "none" (scale 1, bias 0)
    scale: tuple[float, ...]  # one per class
    bias: tuple[float, ...]  # one per class

    def __post_init__(self) -> None:
        if self.method not in (*METHODS, "none"):
            raise ValueError(f"unknown calibration method {self.method!r}")
        if len(self.scale) != len(self.bias):
            raise ValueError(f"{len(self.scale)} scales but {len(self.bias)} biases")
        # A zero scale would erase a class's logit, and ``undo`` could not recover it.
        if not all(np.isfinite(self.scale)) or 0.0 in self.scale or not all(np.isfinite(self.bias)):
            raise ValueError(f"calibration scale must be finite and non-zero, bias finite: {self}")

    def apply(self, logits: np.ndarray) -> np.ndarray:
        return np.asarray(logits, dtype=np.float64) * np.array(self.scale) + np.array(self.bias)

    def undo(self, logits: np.ndarray) -> np.ndarray:
        """The logits before calibration, from calibrated ones."""
        return (np.asarray(logits, dtype=np.float64) - np.array(self.bias)) / np.array(self.scale)

    @property
    def keeps_argmax(self) -> bool:
        """True when no label can move: a positive scale common to all classes and a common bias (a
        softmax-invariant shift). Temperature and none always; vector scaling in general not."""
        return len(set(self.scale)) == 1 and self.scale[0] > 0 and len(set(self.bias)) == 1

    @property
    def temperature(self) -> float | None:
        """T for method temperature (1.0 for none); None for vector, which has no single T."""
        return None if self.method == "vector" else 1.0 / self.scale[0]

    def record(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "scale": list(self.scale),
            "bias": list(self.bias),
            "temperature": self.temperature,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any] | None, num_labels: int) -> Affine:
        """The map an export_info ``calibration`` record describes. Exports from before vector scaling
        wrote only ``temperature`` (1.0 when nothing was folded), which reads as temperature."""
        if not record:
            return cls.identity(num_labels)
        if "method" not in record:
            return cls.from_temperature(float(record["temperature"]), num_labels)
        affine = cls(record["method"], tuple(map(float, record["scale"])), tuple(map(float, record["bias"])))
        if len(affine.scale) != num_labels:
            raise ValueError(f"calibration record has {len(affine.scale)} classes, the model {num_labels}")
        return affine

    @classmethod
    def identity(cls, num_labels: int) -> Affine:
        return cls("none", (1.0,) * num_labels, (0.0,) * num_labels)

    @classmethod
    def from_temperature(cls, temperature: float, num_labels: int) -> Affine:
        if not temperature > 0:  # also refuses NaN
            raise ValueError(f"temperature must be > 0, got {temperature}")
        return cls("temperature", (1.0 / temperature,) * num_labels, (0.0,) * num_labels)


def nll(logits: Any, targets: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``softmax(logits / temperature)`` (float64)."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    return float(F.cross_entropy(z / temperature, torch.as_tensor(np.asarray(targets), dtype=torch.long)))


def _minimise(params: list[torch.Tensor], loss_fn: Callable[[], torch.Tensor]) -> None:
    """LBFGS with a strong Wolfe line search: every accepted step lowers the loss, so the result is
    never worse than the start."""
    optimizer = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=200,
        tolerance_grad=1e-12,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    optimizer.step(closure)


def fit_temperature(logits: Any, targets: Any) -> float:
    """The T that minimises the NLL of ``softmax(logits / T)``: LBFGS on log T from T = 1, clamped to
    [``MIN_TEMPERATURE``, ``MAX_TEMPERATURE``]. The NLL is convex in 1/T, so the minimum found is the
    minimum."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    _minimise([log_t], lambda: F.cross_entropy(z / log_t.exp(), y))
    temperature = float(log_t.detach().exp())
    if not np.isfinite(temperature):
        raise ValueError(f"temperature fit diverged (T = {temperature}); are the logits finite?")
    return min(max(temperature, MIN_TEMPERATURE), MAX_TEMPERATURE)


def fit_vector(logits: Any, targets: Any) -> Affine:
    """Per-class scale a and bias c minimising the NLL of ``softmax(a * z + c)``. The logits are linear
    in (a, c), so the NLL is convex and LBFGS finds its minimum; it starts from the temperature fit
    (a = 1/T, c = 0), so the training NLL is never above temperature's. Softmax ignores a constant added
    to every c: c is centred to mean 0 so that the answer is unique. With a class that has no rows, or
    rows a map separates perfectly, there is no minimum and the fit runs to its iteration limit; ``choose``
    refuses the first, and cross-validation scores the second badly."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    a = torch.full((z.shape[1],), 1.0 / fit_temperature(z, y), dtype=torch.float64, requires_grad=True)
    c = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    _minimise([a, c], lambda: F.cross_entropy(z * a + c, y))
    scale, bias = a.detach().numpy(), c.detach().numpy()
    if not (np.isfinite(scale).all() and np.isfinite(bias).all()):
        raise ValueError(f"vector scaling fit diverged (a = {scale}, c = {bias}); are the logits finite?")
    return Affine("vector", tuple(scale.tolist()), tuple((bias - bias.mean()).tolist()))


def fit(method: str, logits: Any, targets: Any) -> Affine:
    """Fit ``method`` ("temperature" or "vector") on validation logits and targets."""
    if method == "temperature":
        return Affine.from_temperature(fit_temperature(logits, targets), np.shape(logits)[1])
    if method == "vector":
        return fit_vector(logits, targets)
    raise ValueError(f"unknown calibration method {method!r}; expected one of {METHODS}")


def _fold_of(targets: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each row's fold: the rows in a seeded random order, sorted by class (stably), dealt out in turn,
    so every class is split across the folds as evenly as its count allows (stratified)."""
    order = np.random.default_rng(seed).permutation(len(targets))
    order = order[np.argsort(targets[order], kind="stable")]
    fold_of = np.empty(len(targets), dtype=np.int64)
    fold_of[order] = np.arange(len(targets)) % folds
    return fold_of


def cross_validated_nll(logits: Any, targets: Any, folds: int = 5, seed: int = 0) -> dict[str, float]:
    """For each method, the NLL on each held-out fold of the map fitted on the other folds, averaged
    over all rows (each row is held out once)."""
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(targets, dtype=np.int64)
    if not 2 <= folds <= len(y):
        raise ValueError(f"need 2 <= folds <= rows, got {folds} folds for {len(y)} rows")
    fold_of = _fold_of(y, folds, seed)
    total = dict.fromkeys(METHODS, 0.0)
    for k in range(folds):
        held, kept = fold_of == k, fold_of != k
        for method in METHODS:
            affine = fit(method, z[kept], y[kept])
            total[method] += nll(affine.apply(z[held]), y[held]) * float(held.sum())
    return {method: value / len(y) for method, value in total.items()}


def choose(logits: Any, targets: Any, folds: int = 5, seed: int = 0) -> tuple[Affine, dict[str, Any]]:
    """Temperature or vector scaling, by cross-validated NLL (in-sample NLL always prefers vector, which
    contains temperature); the kept method refitted on all rows, and a record of the choice."""
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(targets, dtype=np.int64)
    cv = cross_validated_nll(z, y, folds, seed)
    missing = sorted(set(range(z.shape[1])) - set(y.tolist()))
    numbers = (
        f"cross-validated NLL ({folds} folds) vector {cv['vector']:.4f}, temperature {cv['temperature']:.4f}"
    )
    if missing:
        # No held-out row can penalise a class that never occurs, so CV would reward driving its bias
        # to -inf: a model that can never predict it.
        kept, why = (
            "temperature",
            f"classes {missing} have no rows, so vector scaling is not kept; {numbers}",
        )
    elif cv["vector"] < cv["temperature"]:
        kept, why = "vector", f"{numbers}: per-class scales and biases do better on held-out rows"
    else:
        kept, why = "temperature", f"{numbers}: vector scaling does not beat one temperature on held-out rows"
    info = {"cv_folds": folds, "cv_seed": seed, "cv_nll": cv, "kept": kept, "why": why}
    return fit(kept, z, y), info


def head(model: torch.nn.Module, num_labels: int) -> tuple[str, torch.nn.Linear]:
    """The classifier's last ``nn.Linear`` with ``num_labels`` outputs and its name (BERT and DistilBERT
    ``classifier``, MPNet and RoBERTa ``classifier.out_proj``)."""
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module.out_features == num_labels
    ]
    if not found:
        raise ValueError(f"{type(model).__name__}: no nn.Linear with {num_labels} outputs to fold into")
    return found[-1]


def fold(model: torch.nn.Module, affine: Affine, num_labels: int) -> str:
    """Fold ``affine`` into the head's last ``nn.Linear`` in place (``W' = diag(a) W``, ``b' = a b + c``,
    computed in float64); return the head's module name."""
    if len(affine.scale) != num_labels:
        raise ValueError(f"calibration has {len(affine.scale)} classes, the model {num_labels}")
    name, linear = head(model, num_labels)
    if linear.bias is None and any(affine.bias):
        raise ValueError(f"{name} has no bias to fold the calibration bias {affine.bias} into")
    a = torch.tensor(affine.scale, dtype=torch.float64, device=linear.weight.device)
    c = torch.tensor(affine.bias, dtype=torch.float64, device=linear.weight.device)
    with torch.no_grad():
        linear.weight.copy_(linear.weight.double() * a[:, None])
        if linear.bias is not None:
            linear.bias.copy_(linear.bias.double() * a + c)
    return name
