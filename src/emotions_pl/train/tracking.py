"""Experiment tracking: a W&B logger that never prompts, and the confusion matrix after validation and test.

``EmotionsWandbLogger`` is chosen from the config (``--trainer.logger configs/logger/wandb.yaml``); it
goes online only when ``WANDB_API_KEY`` is set, so CI, tests and laptops without an account get an
offline run to ``wandb sync`` later instead of a login prompt. Beyond Lightning's ``WandbLogger`` it
logs the resolved CLI config, the best checkpoint as a ``model`` artifact, and attaches
``ConfusionMatrixLogger`` so that choosing the logger is enough to get the confusion matrix image.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only
from torchmetrics.classification import MulticlassConfusionMatrix

from emotions_pl.files import atomic_write, atomic_write_text
from emotions_pl.plots import confusion_figure

API_KEY_ENV = "WANDB_API_KEY"
MODE_ENV = "WANDB_MODE"
MODES = ("online", "offline", "disabled")
CONFIG_FILENAME = "config.yaml"  # what LightningCLI's SaveConfigCallback writes into trainer.log_dir
CLI_CONFIG_UPLOAD = "lightning_config.yaml"


def resolve_mode(mode: str | None = None, environ: dict[str, str] | None = None) -> str:
    """Pick the W&B mode so that nothing ever asks for a login.

    An explicit ``offline``/``disabled`` (argument first, then ``$WANDB_MODE``) always wins; otherwise
    the run is online exactly when ``$WANDB_API_KEY`` is set, and offline (synced later) when it is not.
    """
    env = os.environ if environ is None else environ
    wanted = (mode or env.get(MODE_ENV) or "").strip().lower()
    wanted = {"dryrun": "offline", "run": "online"}.get(wanted, wanted)
    if wanted and wanted not in MODES:
        raise ValueError(f"W&B mode {wanted!r} (logger mode or ${MODE_ENV}) is not one of {MODES}.")
    if wanted in {"offline", "disabled"}:
        return wanted
    if env.get(API_KEY_ENV):
        return "online"
    if wanted == "online":
        rank_zero_info(f"W&B: {MODE_ENV}=online but ${API_KEY_ENV} is not set; logging offline instead.")
    return "offline"


class ConfusionMatrixLogger(Callback):
    """Counts predictions against labels during validation and test, then saves and logs the matrix.

    Writes ``<run>/confusion_matrix/{val,test}.png`` and ``.json`` (the latest epoch; atomic), and logs
    the image as ``val/confusion_matrix`` / ``test/confusion_matrix`` to W&B and TensorBoard loggers.
    The logits are taken from the module's own forward call (a forward hook), so no batch is run twice.
    """

    STAGES = {"validation": "val", "test": "test"}

    def __init__(self) -> None:
        self.matrix: MulticlassConfusionMatrix | None = None
        self._logits: torch.Tensor | None = None
        self._hook: Any = None

    # -- collecting ---------------------------------------------------------------------------
    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._hook is not None:  # a previous loop that ended in an exception
            self._hook.remove()
        self.matrix = MulticlassConfusionMatrix(len(pl_module.label_names)).to(pl_module.device)
        self._hook = pl_module.register_forward_hook(self._capture)

    def _capture(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        self._logits = output.detach() if isinstance(output, torch.Tensor) else None

    def _update(self, outputs: Any, batch: dict[str, Any]) -> None:
        logits = outputs if isinstance(outputs, torch.Tensor) else self._logits
        if self.matrix is not None and logits is not None and "labels" in batch:
            self.matrix.update(logits, batch["labels"])
        self._logits = None

    def _end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.matrix is None:
            return
        counts = self.matrix.compute().cpu()  # summed over all ranks
        self.matrix = None
        if trainer.is_global_zero and int(counts.sum()) > 0:
            self._publish(trainer, pl_module.label_names, counts, self.STAGES[split])

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._start(trainer, pl_module)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._update(outputs, batch)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer, pl_module, "validation")

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer, pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(outputs, batch)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer, pl_module, "test")

    # -- publishing ---------------------------------------------------------------------------
    def _publish(self, trainer: pl.Trainer, labels: list[str], counts: torch.Tensor, stage: str) -> None:
        folder = Path(trainer.default_root_dir) / "confusion_matrix"
        record = {
            "stage": stage,
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "labels": list(labels),
            "matrix": counts.tolist(),  # rows: true label, columns: predicted label
        }
        atomic_write_text(folder / f"{stage}.json", json.dumps(record, indent=1) + "\n")
        figure = confusion_figure(counts.numpy(), labels, f"{stage} · epoch {trainer.current_epoch}")
        png = folder / f"{stage}.png"
        atomic_write(png, lambda tmp: figure.savefig(tmp, format="png"))
        key = f"{stage}/confusion_matrix"
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=key, images=[str(png)], step=trainer.global_step)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(key, figure, global_step=trainer.global_step)
        import matplotlib.pyplot as plt

        plt.close(figure)


class EmotionsWandbLogger(WandbLogger):
    """Lightning's ``WandbLogger`` that picks its mode from the environment and logs the whole run.

    Args:
        save_dir: linked by the CLI to ``trainer.default_root_dir``; W&B files go to ``<save_dir>/wandb``.
        project / entity / group / tags / job_type / notes: passed to ``wandb.init``
            (``project`` defaults to ``$WANDB_PROJECT`` or ``emotions-pl``).
        mode: ``online``, ``offline`` or ``disabled``; ``None`` = ``resolve_mode`` (online only with a key).
        log_model: log the best checkpoint as a ``model`` artifact (aliases ``best``, ``latest``) when
            fitting ends; offline runs keep it for ``wandb sync``.
        confusion_matrix: attach ``ConfusionMatrixLogger`` unless the trainer already has one.
    """

    def __init__(
        self,
        name: str | None = None,
        save_dir: str = ".",
        version: str | None = None,
        project: str | None = None,
        entity: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        job_type: str | None = None,
        notes: str | None = None,
        mode: str | None = None,
        log_model: bool = True,
        checkpoint_name: str | None = None,
        confusion_matrix: bool = True,
    ) -> None:
        self.mode = resolve_mode(mode)
        extra = {"entity": entity, "group": group, "tags": tags, "job_type": job_type, "notes": notes}
        super().__init__(
            name=name,
            save_dir=save_dir,
            version=version,
            project=project or os.environ.get("WANDB_PROJECT", "emotions-pl"),
            log_model=False,  # the best checkpoint is logged by ``finalize`` below, once
            checkpoint_name=checkpoint_name,
            mode=self.mode,
            **{k: v for k, v in extra.items() if v is not None},
        )
        Path(save_dir).mkdir(parents=True, exist_ok=True)  # wandb falls back to /tmp when dir is missing
        self.log_best_model = log_model
        self.confusion_matrix = confusion_matrix
        self._best_sources: dict[int, ModelCheckpoint] = {}

    def log_hyperparams(self, params: Any) -> None:
        super().log_hyperparams(params)
        self._log_cli_config()

    @rank_zero_only
    def _log_cli_config(self) -> None:
        """Add the resolved CLI config (trainer, model, data, seed) to the run config and its files."""
        path = Path(self.save_dir or ".") / CONFIG_FILENAME
        if not path.is_file():
            return
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        self.experiment.config.update({"cli": config}, allow_val_change=True)
        # Files in the run folder are uploaded with the run; W&B's own config.yaml is taken, hence the name.
        shutil.copyfile(path, Path(self.experiment.dir) / CLI_CONFIG_UPLOAD)

    def log_graph(self, model: pl.LightningModule, input_array: Any = None) -> None:
        """Called once on every rank when a run starts: the hook that attaches the confusion matrix."""
        super().log_graph(model, input_array)
        trainer = model._trainer
        attached = trainer is None or any(isinstance(c, ConfusionMatrixLogger) for c in trainer.callbacks)
        if self.confusion_matrix and not attached:
            trainer.callbacks.append(ConfusionMatrixLogger())

    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        if self.log_best_model and isinstance(checkpoint_callback, ModelCheckpoint):
            self._best_sources[id(checkpoint_callback)] = checkpoint_callback

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if status != "success" or self._experiment is None:
            return
        for callback in self._best_sources.values():
            if callback.best_model_path and Path(callback.best_model_path).is_file():
                score = callback.best_model_score
                log_model_artifact(
                    self.experiment,
                    Path(callback.best_model_path),
                    name=self._checkpoint_name or f"model-{self.experiment.id}",
                    metadata={
                        "monitor": callback.monitor,
                        "score": None if score is None else float(score),
                        "original_filename": Path(callback.best_model_path).name,
                    },
                )
        self._best_sources.clear()


def log_model_artifact(
    run: Any,
    path: Path,
    name: str,
    metadata: dict[str, Any] | None = None,
    aliases: tuple[str, ...] = ("best", "latest"),
) -> Any:
    """Log a checkpoint file (as ``model.ckpt``) or an exported model folder as a W&B ``model`` artifact."""
    import wandb

    artifact = wandb.Artifact(name=name, type="model", metadata=metadata or {})
    if path.is_dir():
        artifact.add_dir(str(path))
    else:
        artifact.add_file(str(path), name="model.ckpt")
    run.log_artifact(artifact, aliases=list(aliases))
    return artifact
