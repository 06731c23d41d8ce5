"""The command surface: every subcommand, its group, a one-line summary and an example (``commands.toml``).

``python -m emotions_pl --help`` is printed from here without importing any stage, and every tool
builds its parser with ``tool_parser`` so that all subcommands share one program name and style.
A LightningCLI subcommand has no module (``train.cli`` runs it).
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import NoReturn

PROG = "emotions-pl"
DESCRIPTION = "Fine-tune, version, ship and monitor a transformer emotion classifier (PyTorch Lightning)."
GROUPS = ("train", "ship", "watch", "data")
RUN = "runs/offline/checkpoints/last.ckpt"


@dataclass(frozen=True)
class Command:
    name: str
    group: str
    summary: str
    example: str
    module: str | None = None  # exposes build_parser() and run(args); None: a LightningCLI subcommand


def _load() -> list[Command]:
    table = tomllib.loads(resources.files("emotions_pl").joinpath("commands.toml").read_text("utf-8"))
    return [
        Command(
            name,
            entry["group"],
            entry["summary"],
            entry["example"].format(prog=PROG, run=RUN),
            entry.get("module"),
        )
        for name, entry in table.items()
    ]


COMMANDS = _load()
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
