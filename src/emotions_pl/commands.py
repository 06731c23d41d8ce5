"""The command surface: every subcommand, its group, a one-line summary and an example, in one registry.

``python -m emotions_pl --help`` is printed from here without importing any stage, and every tool
builds its parser with ``tool_parser`` so that all subcommands share one program name and style.
A LightningCLI subcommand has no module (``train.cli`` runs it).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import NoReturn

PROG = "emotions-pl"
DESCRIPTION = "Fine-tune, version, ship and monitor a transformer emotion classifier (PyTorch Lightning)."
GROUPS = {"train": "train", "ship": "ship", "watch": "watch", "data": "data"}
RUN = "runs/offline/checkpoints/last.ckpt"


@dataclass(frozen=True)
class Command:
    name: str
    group: str
    summary: str
    example: str
    module: str | None = None  # exposes build_parser() and run(args); None: a LightningCLI subcommand


COMMANDS = [
    Command("fit", "train", "train a model; checkpoints, logs and run.json land in the run folder",
            f"{PROG} fit --config configs/experiment/offline.yaml --trainer.max_epochs 1"),
    Command("validate", "train", "score a checkpoint on the validation split",
            f"{PROG} validate --config configs/experiment/offline.yaml --ckpt_path {RUN}"),
    Command("test", "train", "score a checkpoint on the test split (recorded in the run's run.json)",
            f"{PROG} test --config configs/experiment/offline.yaml --ckpt_path {RUN}"),
    Command("predict", "train", "write predictions.jsonl (text, label, score, scores) for a split",
            f"{PROG} predict --config configs/experiment/offline.yaml --ckpt_path {RUN}"),
    Command("export", "ship", "checkpoint -> Hugging Face folder (+ ONNX / int8), parity-checked",
            f"{PROG} export --ckpt {RUN} --output models/emotions --int8", "emotions_pl.artifact.export"),
    Command("serve", "ship", "serve an export folder over HTTP (LitServe): /predict, /health, /metrics",
            f"{PROG} serve --model models/emotions --variant int8 --port 8000", "emotions_pl.serve.options"),
    Command("evaluate", "watch", "test metrics, per-class table, confusion matrix and curves of a checkpoint",
            f"{PROG} evaluate --ckpt {RUN} --data ../shared/data/emotion --output reports",
            "emotions_pl.monitor.evaluate"),
    Command("drift", "watch", "has the traffic moved away from the training data? (exit 1 on drift)",
            f"{PROG} drift --reference ../shared/data/emotion --current logs/ --output reports/drift",
            "emotions_pl.monitor.drift"),
    Command("robustness", "watch", "accuracy under typos, emoji, casing, negation... per exported variant",
            f"{PROG} robustness --model models/emotions --data ../shared/data/emotion --output reports/rob",
            "emotions_pl.monitor.robustness"),
    Command("data", "data", "copy a data set into validated train/validation/test files (the DVC data stage)",
            f"{PROG} data --source dair-ai/emotion --output data/emotion --report reports/data.json",
            "emotions_pl.train.materialize"),
]  # fmt: skip
BY_NAME = {c.name: c for c in COMMANDS}


def main_help() -> str:
    width = max(len(c.name) for c in COMMANDS)
    lines = [f"usage: {PROG} [--version] [--debug] <command> [<args>]", "", DESCRIPTION, ""]
    for group in GROUPS:
        lines.append(f"{group}:")
        lines += [f"  {c.name:<{width}}  {c.summary}" for c in COMMANDS if c.group == group]
        lines.append("")
    lines += [
        "options:",
        "  -h, --help     show this message",
        "  --version      the package version and those of torch, pytorch-lightning, transformers, litserve",
        "  --debug        show the traceback of a user error (or set EMOTIONS_DEBUG=1)",
        "  --print_completion {bash,zsh}",
        "                 a shell completion script (README: Shell completion)",
        "",
        f"Run '{PROG} <command> --help' for a command's options and an example.",
    ]
    return "\n".join(lines) + "\n"


class ToolParser(argparse.ArgumentParser):
    """A tool's parser: a bad flag is one ``error:`` line naming it, exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message}\n(see {self.prog} --help)\n")
        sys.exit(2)


def tool_parser(name: str) -> ToolParser:
    command = BY_NAME[name]
    return ToolParser(
        prog=f"{PROG} {name}",
        description=command.summary[0].upper() + command.summary[1:] + ".",
        epilog=f"example:\n  {command.example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
