"""LightningCLI: ``fit``/``validate``/``test``/``predict`` with composed configs and linked arguments."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from jsonargparse import Namespace
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from emotions_pl.data import EmotionDataModule
from emotions_pl.model import EmotionClassifier


def auto_precision(accelerator: str) -> str:
    """bf16 mixed precision where the GPU supports it, full 32-bit everywhere else."""
    wants_gpu = str(accelerator) in {"auto", "gpu", "cuda"}
    if wants_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


# Path arguments that, left null, live inside the run folder (trainer.default_root_dir).
RUN_PATHS = {"dirpath": "checkpoints", "output_path": "predictions.jsonl"}


def fill_run_paths(trainer: Namespace) -> None:
    """Put the checkpoints' and predictions' unset paths inside ``trainer.default_root_dir``."""
    root = Path(trainer.default_root_dir or ".")
    for callback in trainer.callbacks or []:
        init_args = getattr(callback, "init_args", None)
        for key, sub in RUN_PATHS.items():
            if init_args is not None and key in init_args and init_args[key] is None:
                init_args[key] = str(root / sub)


class EmotionsCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # One setting each: the tokenizer is the model's, the labels are the data's.
        parser.link_arguments("model.model_name_or_path", "data.tokenizer_name")
        parser.link_arguments("data.label_names", "model.label_names")
        parser.link_arguments("seed_everything", "data.seed")
        parser.link_arguments("trainer.default_root_dir", "trainer.logger.init_args.save_dir")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.trainer
        if trainer.precision is None:
            trainer.precision = auto_precision(trainer.accelerator)
        fill_run_paths(trainer)

    def _report(self) -> None:
        trainer = self.trainer
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask
        if not trainer.is_global_zero:
            return
        for ckpt in trainer.checkpoint_callbacks if self.subcommand == "fit" else []:
            if ckpt.monitor and ckpt.best_model_path:
                print(f"checkpoint: best {ckpt.best_model_path} ({ckpt.monitor}={ckpt.best_model_score:.4f})")
            elif ckpt.best_model_path:
                print(f"checkpoint: latest {ckpt.best_model_path}")
        if log_dir:
            print(f"logs and resolved config: {log_dir}")
        metrics = {
            k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if not k.startswith("lr-")
        }
        if metrics:
            print("metrics: " + json.dumps(metrics, sort_keys=True))

    after_fit = after_validate = after_test = after_predict = _report


def run_cli(args: list[str] | None = None) -> EmotionsCLI:
    return EmotionsCLI(
        EmotionClassifier,
        EmotionDataModule,
        seed_everything_default=42,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "omegaconf"},
        args=args,
    )
