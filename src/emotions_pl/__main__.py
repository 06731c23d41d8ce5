"""``python -m emotions_pl <subcommand>``: the LightningCLI subcommands plus the small tools beside them."""

from __future__ import annotations

import importlib
import sys

# Sub-commands that are not LightningCLI's; each module exposes ``main(argv)``.
TOOLS = {
    "export": "emotions_pl.export",
    "serve": "emotions_pl.serve",
    "data": "emotions_pl.materialize",
    "evaluate": "emotions_pl.evaluate",
    "drift": "emotions_pl.drift",
    "robustness": "emotions_pl.robustness",
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in TOOLS:
        sys.exit(importlib.import_module(TOOLS[argv[0]]).main(argv[1:]))
    from emotions_pl.cli import run_cli

    run_cli(argv if argv != sys.argv[1:] else None)


if __name__ == "__main__":
    main()
