"""Trainer plug-ins: atomic checkpoint writes, the predictions file, and where-did-it-go messages."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import BasePredictionWriter


def atomic_write_text(path: Path, text: str) -> None:
    """Write next to the target and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save to a temporary file and rename; load with ``weights_only=True`` (no arbitrary unpickling)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


class PredictionsWriter(BasePredictionWriter):
    """Write ``predict`` results as jsonl (text, label, score, probabilities) to ``output_path``."""

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
