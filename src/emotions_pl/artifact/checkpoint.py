"""A ``fit`` checkpoint read back without Lightning: the HF model with its weights, the tokenizer,
``max_length``, the labels and the run summary beside it.

``export`` and ``evaluate`` start here. The checkpoint is loaded with ``weights_only=True``; the
settings come from what the checkpoint recorded, never from restated defaults.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emotions_pl import sources
from emotions_pl.errors import UserError
from emotions_pl.train import summary
from emotions_pl.train.backbone import build_backbone

MODEL_PREFIX = "model."  # EmotionClassifier keeps the HF model as ``self.model``


class CheckpointError(UserError):
    """The file is not a checkpoint written by ``emotions_pl fit``; the message names it."""


@dataclass
class FitCheckpoint:
    path: Path
    model: Any  # the transformers model, in eval mode
    tokenizer: Any
    labels: list[str]
    max_length: int
    hparams: dict[str, Any]  # the classifier's
    data: dict[str, Any]  # the data module's
    epoch: int | None
    global_step: int | None
    run: dict[str, Any]  # run.json, or {} when there is none

    def predictor(self, device: str = "cpu") -> Any:
        from emotions_pl.artifact.predictor import Predictor

        return Predictor.from_model(self.model, self.tokenizer, self.labels, self.max_length, device)

    def metrics(self) -> dict[str, Any]:
        """Validation metrics of this checkpoint's epoch and test metrics of runs that tested this file."""
        return summary.checkpoint_metrics(self.run, self.path, self.epoch)


def _public(values: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (values or {}).items() if not k.startswith("_")}


def load(path: Path, device: str = "cpu") -> FitCheckpoint:
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint, or one holding more than tensors and plain values "
            f"(it is loaded with weights_only=True; {type(e).__name__})."
        ) from e
    data = _public(ckpt.get("datamodule_hyper_parameters"))
    hparams = _public(ckpt.get("hyper_parameters"))
    missing = [k for k in ("tokenizer_name", "max_length") if k not in data]
    if missing or "model_name_or_path" not in hparams or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{path}: no model and data hyper-parameters ({', '.join(missing) or 'model_name_or_path'}); "
            "was it written by `emotions_pl fit`?"
        )
    labels = list(hparams.get("label_names") or data["label_names"])
    hf_logging.set_verbosity_error()  # a fresh head is reported "newly initialized" until the weights load
    try:
        model = build_backbone(
            hparams["model_name_or_path"], labels, hparams.get("random_init_config"), pretrained=False
        )
    finally:
        hf_logging.set_verbosity_warning()
    weights = {k[len(MODEL_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(MODEL_PREFIX)}
    model.load_state_dict(weights, strict=True)
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(sources.resolve(data["tokenizer_name"]))
    return FitCheckpoint(
        path=path,
        model=model,
        tokenizer=tokenizer,
        labels=labels,
        max_length=int(data["max_length"]),
        hparams=hparams,
        data=data,
        epoch=ckpt.get("epoch"),
        global_step=ckpt.get("global_step"),
        run=summary.read(summary.find(path)),
    )
