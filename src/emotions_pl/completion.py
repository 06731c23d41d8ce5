"""``emotions-pl --print_completion bash|zsh``: one completion script for the whole command surface.

shtab (a dependency of DVC, already pinned) writes the script from an argparse tree: the tools' own
parsers, and for ``fit``/``validate``/``test``/``predict`` the flags of LightningCLI's jsonargparse
parsers (every ``--trainer.*``, ``--model.*`` and ``--data.*``). jsonargparse's own
``--print_completion`` covers only the LightningCLI half, so this builds the tree once for both.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from emotions_pl.commands import COMMANDS, DESCRIPTION, PROG

SHELLS = ("bash", "zsh")
FILE_FLAGS = ("--config", "-c", "--ckpt_path", "--trainer", "--model", "--data")


class _Parsers(Exception):
    """Raised instead of parsing, to carry LightningCLI's subcommand parsers out of its constructor."""


def lightning_parsers() -> dict[str, Any]:
    from emotions_pl.train.cli import EmotionsCLI, run_cli

    class ParsersOnly(EmotionsCLI):
        def parse_arguments(self, parser: Any, args: Any) -> None:
            raise _Parsers(self._subcommand_parsers)

    try:
        run_cli(ParsersOnly)
    except _Parsers as built:
        return built.args[0]
    raise RuntimeError("LightningCLI parsed arguments instead of raising")  # pragma: no cover


def surface_parser() -> argparse.ArgumentParser:
    import shtab

    root = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    root.add_argument("--version", action="store_true")
    root.add_argument("--debug", action="store_true")
    root.add_argument("--print_completion", choices=SHELLS)
    commands = root.add_subparsers(dest="command")
    lightning = lightning_parsers()
    for command in COMMANDS:
        if command.module is not None:
            tool = importlib.import_module(command.module).build_parser()
            commands.add_parser(command.name, parents=[tool], add_help=False, help=command.summary)
            continue
        sub = commands.add_parser(command.name, help=command.summary, conflict_handler="resolve")
        for action in lightning[command.name]._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            if action.nargs == 0:
                sub.add_argument(*action.option_strings, action="store_true")
                continue
            choices = action.choices if isinstance(action.choices, list | tuple) else None
            added = sub.add_argument(*action.option_strings, choices=choices)
            if set(action.option_strings) & set(FILE_FLAGS):
                added.complete = shtab.FILE
    return root


def main(argv: list[str]) -> int:
    import shtab

    if len(argv) != 1 or argv[0] not in SHELLS:
        print(f"error: --print_completion takes one of {', '.join(SHELLS)}", file=sys.stderr)
        return 2
    print(shtab.complete(surface_parser(), shell=argv[0]))
    return 0
