"""Temperature scaling: one scalar T fitted by NLL on validation logits, folded into the classifier head.

``export`` divides the weight and bias of the head's last ``nn.Linear`` by T before anything is
written, so the safetensors weights, the ONNX graph and the int8 graph quantized from it all give
``logits / T``: every path that turns logits into scores (the Predictor, ``predict``, the server, the
client, a plain ``transformers.pipeline``) is calibrated without knowing T. Dividing by T > 0 keeps
the argmax, so accuracy is unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# The search is on log T, bounded here: outside this range the fit has gone wrong (e.g. a constant model).
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0


def nll(logits: Any, targets: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``softmax(logits / temperature)`` (float64)."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    return float(F.cross_entropy(z / temperature, torch.as_tensor(np.asarray(targets), dtype=torch.long)))


def fit_temperature(logits: Any, targets: Any) -> float:
    """The T that minimises the NLL of ``softmax(logits / T)``: LBFGS (strong Wolfe line search) on log T
    from T = 1, clamped to [``MIN_TEMPERATURE``, ``MAX_TEMPERATURE``]. The NLL is convex in 1/T, so the
    minimum found is the minimum."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [log_t],
        lr=1.0,
        max_iter=200,
        tolerance_grad=1e-12,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not np.isfinite(temperature):
        raise ValueError(f"temperature fit diverged (T = {temperature}); are the logits finite?")
    return min(max(temperature, MIN_TEMPERATURE), MAX_TEMPERATURE)


def head(model: torch.nn.Module, num_labels: int) -> tuple[str, torch.nn.Linear]:
    """The classifier's last ``nn.Linear`` with ``num_labels`` outputs and its name (BERT and DistilBERT
    ``classifier``, MPNet and RoBERTa ``classifier.out_proj``)."""
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module.out_features == num_labels
    ]
    if not found:
        raise ValueError(f"{type(model).__name__}: no nn.Linear with {num_labels} outputs to fold T into")
    return found[-1]


def fold_temperature(model: torch.nn.Module, temperature: float, num_labels: int) -> str:
    """Divide the head's weight and bias by ``temperature`` in place; return the head's module name."""
    name, linear = head(model, num_labels)
    with torch.no_grad():
        linear.weight.div_(temperature)
        if linear.bias is not None:
            linear.bias.div_(temperature)
    return name
