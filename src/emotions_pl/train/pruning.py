"""``OptunaPruning``: the callback that lets an Optuna pruner stop a ``fit`` (used by ``tune``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pytorch_lightning as pl

from emotions_pl.errors import UserError

OBJECTIVE = "val/f1_macro"


class OptunaPruning(pl.Callback):
    """Report the objective to the trial after each validation; stop the fit when the pruner says so.

    ``optuna-integration``'s ``PyTorchLightningPruningCallback`` subclasses ``lightning.pytorch``'s
    Callback, not standalone ``pytorch_lightning``'s, which is what this project's Trainer takes. The
    step is the validation round (the epoch, validating once per epoch), which is what the pruner's
    ``n_warmup_steps`` counts. Only rank 0 reports; all ranks take its decision.
    """

    def __init__(self, trial: Any, monitor: str = OBJECTIVE) -> None:
        self.trial = trial
        self.monitor = monitor
        self.scores: list[float] = []
        self.config_path: Path | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.log_dir:
            self.config_path = Path(trainer.log_dir) / "config.yaml"  # LightningCLI's resolved config

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            logged = ", ".join(sorted(k for k in metrics if k.startswith("val/"))) or "nothing"
            raise UserError(f"the objective {self.monitor} is not logged (validation logs {logged})")
        value = float(metrics[self.monitor])
        step = len(self.scores)
        self.scores.append(value)
        prune = False
        if trainer.is_global_zero:
            self.trial.report(value, step)
            prune = self.trial.should_prune()
        if trainer.strategy.broadcast(prune):
            raise optuna.TrialPruned(f"{self.monitor}={value:.4f} at validation {step}")

    def best(self, direction: str) -> float | None:
        finite = [s for s in self.scores if math.isfinite(s)]
        if not finite:
            return None
        return max(finite) if direction == "maximize" else min(finite)
