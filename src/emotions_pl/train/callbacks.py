"""Trainer plug-ins: atomic checkpoint writes, the predictions file, the run summary and the random state."""

from __future__ import annotations

import json
import random
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import BasePredictionWriter, Callback

from emotions_pl.files import atomic_write, atomic_write_text
from emotions_pl.train import summary

# Trainer settings worth a line in the model card.
TRAINER_KEYS = (
    "max_epochs",
    "max_steps",
    "precision",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "limit_train_batches",
    "val_check_interval",
)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save to a temporary file and rename; load with ``weights_only=True`` (no arbitrary unpickling)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        atomic_write(Path(path), lambda tmp: super(AtomicCheckpointIO, self).save_checkpoint(checkpoint, tmp))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


class PredictionsWriter(BasePredictionWriter):
    """Write ``predict`` results as jsonl (text, label, score, scores) to ``output_path``."""

    def __init__(self, output_path: str | None = None):
        super().__init__(write_interval="epoch")
        self.output_path = Path(output_path or "predictions.jsonl")

    def write_on_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        path = self.output_path
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        rows = [row for batch in predictions for row in batch]
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
        print(f"predictions: {len(rows)} rows -> {path}")


def _floats(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    return {
        k: round(float(v), 6) for k, v in metrics.items() if k.startswith(prefix) and not k.startswith("lr-")
    }


def _public(hparams: Any) -> dict[str, Any]:
    return {k: v for k, v in dict(hparams or {}).items() if not k.startswith("_")}


class RandomState(Callback):
    """Every random generator training draws from, in each checkpoint, so a resumed fit goes on exactly.

    Saved: torch's (CPU, and CUDA's when in use), numpy's and Python's global generators, and the train
    sampler's seed and epoch. The generators are restored at the first training batch after a resume,
    not when the checkpoint loads: whatever runs in between (building the loaders, the sanity check)
    then draws nothing the uninterrupted run would not have. Between a checkpoint and the next batch
    the uninterrupted run draws nothing either: the train loader seeds itself from its own generator
    (``data.EmotionDataModule``). Numpy's state is stored as plain ints, which ``weights_only`` loads.
    The CLI adds it to every run.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None
        self._trainer: pl.Trainer | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer  # state_dict() gets no trainer; the sampler is the fit loop's

    def _sampler(self) -> Any:
        loader = self._trainer.fit_loop._combined_loader if self._trainer is not None else None
        return getattr(loader.flattened[0], "sampler", None) if loader is not None else None

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": [str(kind), keys.tolist(), int(pos), int(has_gauss), float(gauss)],
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        sampler = self._sampler()
        if hasattr(sampler, "epoch") and hasattr(sampler, "seed"):
            state["sampler"] = {"seed": int(sampler.seed), "epoch": int(sampler.epoch)}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        saved, sampler = state.get("sampler"), self._sampler()
        if saved and getattr(sampler, "seed", saved["seed"]) != saved["seed"]:
            warnings.warn(
                f"resuming with sampler seed {sampler.seed}, the checkpoint's is {saved['seed']}: the "
                "batches differ from the interrupted run's (pass the same --seed_everything)",
                stacklevel=1,
            )
        torch.set_rng_state(state["torch"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class RunSummary(Callback):
    """Writes ``<run>/run.json`` (``summary.py``) as ``fit`` ends; ``test`` adds its metrics to it.

    The CLI adds it to every run, so the stages after ``fit`` never parse a logger's files. Its history
    (validation metrics per epoch, the training loss) is callback state in every checkpoint, so a fit
    resumed from ``last.ckpt`` writes the whole run, not only the part after the resume.
    """

    def __init__(self) -> None:
        self.epochs: list[dict[str, Any]] = []
        self.train_loss: list[list[float]] = []
        self.seconds = 0.0  # wall time of the fit before this process (a resumed fit's earlier part)
        self._started = time.monotonic()

    def elapsed(self) -> float:
        return self.seconds + time.monotonic() - self._started

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "train_loss": self.train_loss, "seconds": self.elapsed()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs = list(state_dict.get("epochs", []))
        self.train_loss = list(state_dict.get("train_loss", []))
        self.seconds = float(state_dict.get("seconds", 0.0))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.monotonic()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx
    ) -> None:
        step = trainer.global_step
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None and step % max(trainer.log_every_n_steps, 1) == 0:
            self.train_loss.append([step, round(float(loss), 6)])

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        values = _floats(trainer.callback_metrics, "val/")
        self.epochs.append({"epoch": trainer.current_epoch, "step": trainer.global_step, **values})

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        checkpoints: dict[str, Any] = {}
        for ckpt in trainer.checkpoint_callbacks:
            if ckpt.monitor and ckpt.best_model_path:
                score = ckpt.best_model_score
                checkpoints |= {
                    "best": str(Path(ckpt.best_model_path).resolve()),
                    "monitor": ckpt.monitor,
                    "best_score": None if score is None else round(float(score), 6),
                }
            elif ckpt.last_model_path or ckpt.best_model_path:
                checkpoints["last"] = str(Path(ckpt.last_model_path or ckpt.best_model_path).resolve())
        datamodule = trainer.datamodule
        record = {
            "checkpoints": checkpoints,
            "epochs": self.epochs,
            "train_loss": self.train_loss,
            "metrics": _floats(trainer.callback_metrics),
            "global_step": trainer.global_step,
            "fit_seconds": round(self.elapsed(), 1),
            "model": _public(pl_module.hparams),
            "data": _public(datamodule.hparams) if datamodule is not None else {},
            "trainer": {k: _jsonable(getattr(trainer, k, None)) for k in TRAINER_KEYS},
            "tests": summary.read(self._path(trainer)).get("tests", []),
        }
        atomic_write_text(self._path(trainer), json.dumps(record, indent=1, default=str) + "\n")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or not trainer.ckpt_path:
            return
        ckpt = Path(trainer.ckpt_path).resolve()
        path = summary.find(ckpt) or self._path(trainer)
        record = summary.read(path)
        tests = [t for t in record.get("tests", []) if not summary.same_file(t.get("ckpt_path"), ckpt)]
        tests.append({"ckpt_path": str(ckpt), "metrics": _floats(trainer.callback_metrics, "test/")})
        atomic_write_text(path, json.dumps(record | {"tests": tests}, indent=1, default=str) + "\n")

    @staticmethod
    def _path(trainer: pl.Trainer) -> Path:
        return Path(trainer.default_root_dir) / summary.RUN_FILE


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, int | float | str | type(None)) else str(value)
