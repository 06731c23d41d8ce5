"""LightningCLI: ``fit``/``validate``/``test``/``predict`` with composed configs and linked arguments."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
from jsonargparse import DefaultHelpFormatter, Namespace
from pytorch_lightning import Callback
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from emotions_pl.commands import COMMANDS, PROG
from emotions_pl.errors import debug_enabled
from emotions_pl.train import distill
from emotions_pl.train.callbacks import RandomState, RunSummary
from emotions_pl.train.data import EmotionDataModule
from emotions_pl.train.model import EmotionClassifier

RUNS_ROOT = "runs"


def auto_precision(accelerator: str) -> str:
    """bf16 mixed precision where the GPU supports it, full 32-bit everywhere else."""
    wants_gpu = str(accelerator) in {"auto", "gpu", "cuda"}
    if wants_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


# Path arguments that, left null, live inside the run folder (trainer.default_root_dir).
RUN_PATHS = {"dirpath": "checkpoints", "output_path": "predictions.jsonl"}


def fill_run_paths(config: Namespace) -> None:
    """Name the run folder after the experiment when unset (``runs/<experiment>``), and put the
    checkpoints' and predictions' unset paths inside it."""
    trainer = config.trainer
    if trainer.default_root_dir is None:
        configs = [Path(str(c)) for c in (config.get("config") or [])]
        trainer.default_root_dir = str(Path(RUNS_ROOT) / (configs[0].stem if configs else "default"))
    root = Path(trainer.default_root_dir)
    logger_args = getattr(trainer.logger, "init_args", None)
    if logger_args is not None and "save_dir" in logger_args and logger_args.save_dir is None:
        logger_args.save_dir = str(root)  # the link from default_root_dir ran before it was named
    for callback in trainer.callbacks or []:
        init_args = getattr(callback, "init_args", None)
        for key, sub in RUN_PATHS.items():
            if init_args is not None and key in init_args and init_args[key] is None:
                init_args[key] = str(root / sub)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help, with the description and the example kept as written (like the tools')."""


class EmotionsArgumentParser(LightningArgumentParser):
    """A bad flag or config value is one ``error:`` line naming it (exit 2), not a usage screen."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or debug_enabled():
            super().error(message, ex)
        lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
        sys.stderr.write(f"error: {' '.join(lines[:2])}\n")
        sys.stderr.write(f"(see {self.prog.replace(' [options]', '')} --help)\n")
        sys.exit(2)


class EmotionsCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # One setting each: the tokenizer is the model's, the labels are the data's.
        parser.link_arguments("model.model_name_or_path", "data.tokenizer_name")
        parser.link_arguments("data.label_names", "model.label_names")
        parser.link_arguments("seed_everything", "data.seed")
        parser.link_arguments("trainer.default_root_dir", "trainer.logger.init_args.save_dir")
        # Distillation is one group (configs/distill/), so an experiment composes it as a file of its own.
        parser.add_class_arguments(distill.Distillation, "distill")
        parser.link_arguments("distill.teacher_logits", "data.teacher_logits")
        parser.link_arguments(
            ("distill.teacher_logits", "distill.temperature", "distill.alpha"),
            "model.distill",
            compute_fn=distill.model_setting,
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.trainer.precision is None:
            config.trainer.precision = auto_precision(config.trainer.accelerator)
        fill_run_paths(config)

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
        if self.subcommand == "fit":
            print(f"run summary: {Path(trainer.default_root_dir) / 'run.json'}")
        if log_dir:
            print(f"logs and resolved config: {log_dir}")
        metrics = {
            k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if not k.startswith("lr-")
        }
        if metrics:
            print("metrics: " + json.dumps(metrics, sort_keys=True))

    after_fit = after_validate = after_test = after_predict = _report


def parser_kwargs() -> dict[str, Any]:
    """One program name and style for the four subcommands, each with its summary and an example."""
    per_command = {
        c.name: {
            "description": c.summary[0].upper() + c.summary[1:] + ".",
            "epilog": f"example:\n  {c.example}",
            "formatter_class": HelpFormatter,
        }
        for c in COMMANDS
        if c.module is None
    }
    return {"parser_mode": "omegaconf", "prog": PROG, "formatter_class": HelpFormatter, **per_command}


def run_cli(
    cli_class: type[EmotionsCLI] = EmotionsCLI,
    args: list[str] | None = None,
    callbacks: Sequence[Callback] = (),
) -> EmotionsCLI:
    """Run the LightningCLI on ``args``, or on ``sys.argv`` (``__main__`` puts the subcommand's arguments
    there). ``callbacks`` join the trainer's (``tune``'s pruning) and stay out of the saved config."""
    return cli_class(
        EmotionClassifier,
        EmotionDataModule,
        seed_everything_default=42,
        save_config_kwargs={"overwrite": True},
        parser_kwargs=parser_kwargs(),
        parser_class=EmotionsArgumentParser,
        trainer_defaults={"callbacks": [RunSummary(), RandomState(), *callbacks]},
        args=args,
    )
