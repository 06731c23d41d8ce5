"""The classifier as a LightningModule around ``AutoModelForSequenceClassification``."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from transformers import get_linear_schedule_with_warmup

from emotions_pl import metrics, schema
from emotions_pl.errors import UserError
from emotions_pl.patches import cls_only
from emotions_pl.schema import LABELS
from emotions_pl.train.backbone import build_backbone, layer_depth
from emotions_pl.train.data import TEACHER

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
DISTILL_KEYS = ("temperature", "alpha")


def check_distill(distill: dict[str, float] | None) -> None:
    if distill is None:
        return
    if sorted(distill) != sorted(DISTILL_KEYS):
        raise UserError(f"model.distill needs exactly {list(DISTILL_KEYS)}, got {sorted(distill)}.")
    if not distill["temperature"] > 0:
        raise UserError(f"model.distill.temperature must be > 0, got {distill['temperature']}.")
    if not 0.0 <= distill["alpha"] <= 1.0:
        raise UserError(f"model.distill.alpha must be in [0, 1], got {distill['alpha']}.")


def kd_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)), summed over classes, averaged over rows.

    ``teacher`` may be logits or log-probabilities: softmax ignores a per-row shift."""
    return F.kl_div(
        F.log_softmax(student.float() / temperature, -1),
        F.log_softmax(teacher.float() / temperature, -1),
        reduction="batchmean",
        log_target=True,
    )


class EmotionClassifier(pl.LightningModule):
    """Fine-tunes a sequence classifier with AdamW and linear warm-up/decay.

    Args:
        model_name_or_path: hub id, local folder or ``package:<module>/<folder>``; the tokenizer comes
            from the same place (the CLI links it to the data module).
        label_names: class names in index order (linked from the data module).
        random_init_config: a ``transformers`` config dict with ``model_type`` for a randomly
            initialised model (tiny test models); ``None`` loads pretrained weights.
        warmup_ratio: fraction of all optimizer steps spent warming up the learning rate.
        label_smoothing / class_weights: options for the imbalanced classes (love, surprise).
        layer_lr_decay: layer-wise lr decay; block ``i`` of ``L`` trains at
            ``learning_rate * layer_lr_decay ** (L - i)``, the embeddings one step lower, the head at
            ``learning_rate``. ``1.0`` is one rate for all.
        cls_only_last_layer: in steps run by a Trainer, the last encoder layer computes only the
            [CLS] position the head reads (``cls_only.py``): same logits and gradients, about 1/7
            fewer FLOPs for 6-layer BERT and DistilBERT. The model outside a Trainer (export,
            ``save_pretrained``) is the unchanged HF model.
        compile: ``torch.compile`` the backbone in place (parameter names and checkpoints unchanged).
        distill: ``{temperature: T, alpha: a}`` trains on the teacher's soft labels too (the data
            module's ``teacher_logits``): loss = a * T^2 * KL(softmax(teacher/T) || softmax(student/T))
            + (1 - a) * cross-entropy. ``T^2`` keeps the soft term's gradients on the scale of the
            hard term's as T grows (Hinton et al. 2015). Validation and test losses stay the
            cross-entropy. ``None``: plain fine-tuning.
    """

    def __init__(
        self,
        model_name_or_path: str = "distilbert-base-uncased",
        label_names: list[str] = LABELS,
        random_init_config: dict[str, Any] | None = None,
        learning_rate: float = 2e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        label_smoothing: float = 0.0,
        class_weights: list[float] | None = None,
        layer_lr_decay: float = 1.0,
        cls_only_last_layer: bool = True,
        compile: bool = False,
        distill: dict[str, float] | None = None,
    ):
        super().__init__()
        check_distill(distill)
        self.save_hyperparameters()
        self.label_names = list(label_names)
        # from_pretrained returns eval mode and Lightning keeps module modes: switch dropout back on.
        self.model = build_backbone(model_name_or_path, self.label_names, random_init_config).train()
        if not 0.0 < layer_lr_decay <= 1.0:
            raise ValueError(f"model.layer_lr_decay must be in (0, 1], got {layer_lr_decay}.")
        if class_weights is not None and len(class_weights) != len(self.label_names):
            raise ValueError(
                f"model.class_weights has {len(class_weights)} values for {len(self.label_names)} labels."
            )
        weights = torch.tensor(class_weights, dtype=torch.float) if class_weights else None
        self.register_buffer("class_weights", weights, persistent=False)
        n = len(self.label_names)
        self.val_metrics = metrics.metric_collection(n).clone(prefix="val/")
        self.test_metrics = metrics.metric_collection(n).clone(prefix="test/")
        self.test_f1_per_class = metrics.per_class_f1(n)
        self._configured = False

    def configure_model(self) -> None:
        # Once per module: weight averaging (configs/callbacks/ema.yaml) calls this hook from its own
        # setup() to build the averaged copy, before the Trainer calls it; a second compile would wrap twice.
        if self._configured:
            return
        self._configured = True
        if self.hparams.cls_only_last_layer:
            cls_only.apply(self.model)
        # In place, so state_dict keys keep their names (no ``_orig_mod.``) and checkpoints stay portable.
        if self.hparams.compile:
            self.model.compile(dynamic=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.float(), labels, weight=self.class_weights, label_smoothing=self.hparams.label_smoothing
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch["input_ids"], batch["attention_mask"])
        size = batch["labels"].shape[0]
        loss = self._loss(logits, batch["labels"])
        distill = self.hparams.distill
        if (TEACHER in batch) != (distill is not None):
            raise UserError(
                "model.distill needs data.teacher_logits (a file from `emotions_pl teacher`)"
                if distill
                else "data.teacher_logits is set but model.distill is not (give {temperature: T, alpha: a})"
            )
        if distill is not None:
            t, a = distill["temperature"], distill["alpha"]
            kl = kd_kl(logits, batch[TEACHER], t)
            self.log_dict({"train/ce": loss, "train/kl": kl}, batch_size=size)
            loss = a * t * t * kl + (1.0 - a) * loss
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch["input_ids"], batch["attention_mask"])
        size = batch["labels"].shape[0]
        self.log(
            "val/loss", self._loss(logits, batch["labels"]), prog_bar=True, batch_size=size, sync_dist=True
        )
        self.val_metrics.update(logits, batch["labels"])
        self.log_dict(self.val_metrics, prog_bar=True, batch_size=size)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch["input_ids"], batch["attention_mask"])
        size = batch["labels"].shape[0]
        self.log("test/loss", self._loss(logits, batch["labels"]), batch_size=size, sync_dist=True)
        self.test_metrics.update(logits, batch["labels"])
        self.test_f1_per_class.update(logits, batch["labels"])
        self.log_dict(self.test_metrics, batch_size=size)

    def on_test_epoch_end(self) -> None:
        for name, value in zip(self.label_names, self.test_f1_per_class.compute(), strict=True):
            self.log(f"test/f1/{name}", value)
        self.test_f1_per_class.reset()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        probs = self(batch["input_ids"], batch["attention_mask"]).float().softmax(-1).cpu().tolist()
        texts = batch.get("text") or [None] * len(probs)
        return [
            {"text": text, **schema.prediction(self.label_names, p)}
            for text, p in zip(texts, probs, strict=True)
        ]

    def configure_optimizers(self) -> dict[str, Any]:
        lr, decay = self.hparams.learning_rate, self.hparams.layer_lr_decay
        num_layers = self.model.config.num_hidden_layers
        by_depth: dict[tuple[int, bool], list[torch.nn.Parameter]] = {}
        for name, param in self.named_parameters():
            if param.requires_grad:
                depth = layer_depth(name, num_layers) if decay < 1.0 else num_layers + 1
                by_depth.setdefault((depth, name.endswith(NO_DECAY)), []).append(param)
        groups = [
            {
                "params": params,
                "lr": lr * decay ** (num_layers + 1 - depth),
                "weight_decay": 0.0 if no_decay else self.hparams.weight_decay,
            }
            for (depth, no_decay), params in sorted(by_depth.items())
        ]
        # One fused kernel per step on CPU and GPU alike: the update touches every weight, gradient and
        # both moments, a sixth of a CPU step with the foreach path (docs/operations.md, profiling).
        optimizer = torch.optim.AdamW(groups, lr=lr, fused=True)
        total = self.trainer.estimated_stepping_batches
        scheduler = get_linear_schedule_with_warmup(optimizer, int(self.hparams.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
