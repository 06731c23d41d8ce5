"""``python -m emotions_pl <command>`` (or ``emotions-pl``): one surface over the LightningCLI
subcommands and the tools beside them (the registry is ``commands.py``).

User errors print ``error: <message>`` and exit 2 (``errors.py``); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from importlib import metadata

from emotions_pl import __version__
from emotions_pl.commands import BY_NAME, COMMANDS, PROG, main_help
from emotions_pl.errors import DEBUG_ENV, debug_enabled, user_message

VERSIONS_OF = ("torch", "pytorch-lightning", "transformers", "litserve")


def versions() -> str:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return f"{PROG} {__version__} (" + ", ".join(f"{n} {version(n)}" for n in VERSIONS_OF) + ")"


def dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"}:
        (sys.stdout if argv else sys.stderr).write(main_help())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(versions())
        return 0
    if argv[0] == "--print_completion":
        from emotions_pl.completion import main as completion

        return completion(argv[1:])
    name, rest = argv[0], argv[1:]
    command = BY_NAME.get(name)
    if command is None:
        close = difflib.get_close_matches(name, [c.name for c in COMMANDS], n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else f"; run '{PROG} --help' for the list"
        print(f"error: unknown command '{name}'{hint}", file=sys.stderr)
        return 2
    if command.module is None:
        from emotions_pl.train.cli import run_cli

        sys.argv[1:] = argv  # LightningCLI reads sys.argv (and warns when given both)
        run_cli()
        return 0
    module = importlib.import_module(command.module)
    return module.run(module.build_parser().parse_args(rest))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:
        argv = [a for a in argv if a != "--debug"]
        os.environ[DEBUG_ENV] = "1"  # also for the processes a run starts (DDP)
    try:
        code = dispatch(argv)
        sys.stdout.flush()  # a reader that went away shows here, not as an exception at exit
    except BrokenPipeError:
        # `emotions-pl compare ... | head`: stop quietly like any filter. Python flushes stdout again at
        # exit, so it points at /dev/null first (the recipe of the `signal` module's docs), exit 1 as there.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    except Exception as error:
        found = None if debug_enabled() else user_message(error)
        if found is None:
            raise
        message, code = found
        print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
